//! Where the catalog lives: one trait, two stores.
//!
//! - [`memory::MemoryCatalog`]: a sharded in-memory map, the default when `DATABASE_URL` is unset.
//!   Fast, but lost on restart and not shared between instances.
//! - [`postgres::PgCatalog`]: the `catalog` schema of PostgreSQL, shared by every instance, with a
//!   bounded cache of found products in front ([`cache::JsonCache`]).
//!
//! Both hand out each product's JSON pre-rendered as [`Bytes`], so a hot `GET` is a map lookup
//! and a reference-count bump in either store.

pub mod cache;
pub mod memory;
pub mod postgres;

use crate::catalog::{NewProduct, Product};
use bytes::Bytes;
use common::store::{StoreKind, StoreUnavailable};

/// Why a catalog operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Every int32 id has been handed out; ids never wrap around.
    #[error("the catalog is full: no product id left in the int32 range")]
    Full,
    /// The store could not be reached or answered too slowly: a 503 the client may retry.
    #[error(transparent)]
    Unavailable(#[from] StoreUnavailable),
    /// The store answered with something this code does not expect (a bug, not an outage).
    #[error("the catalog store failed: {0}")]
    Internal(String),
}

/// The catalog's operations, whatever holds it. Products are immutable once created, which is
/// what lets a store cache them freely.
#[async_trait::async_trait]
pub trait CatalogStore: Send + Sync + 'static {
    /// Which store this is, for the start-up log line.
    fn kind(&self) -> StoreKind;

    /// The product's JSON if this instance already holds it, without awaiting anything. `None`
    /// means "ask [`CatalogStore::get_json`]", not "absent". (The hot path skips the boxed
    /// future of an async trait call this way.)
    fn cached(&self, id: i32) -> Option<Bytes>;

    /// The product's JSON, or `None` when no such product exists.
    async fn get_json(&self, id: i32) -> Result<Option<Bytes>, CatalogError>;

    /// The product, or `None` when no such product exists.
    async fn get(&self, id: i32) -> Result<Option<Product>, CatalogError>;

    /// Stores a validated product under a new id, unique across every instance of the store.
    async fn create(&self, new: NewProduct) -> Result<i32, CatalogError>;

    /// Makes sure the demo products 1..=n exist (see [`crate::catalog::seed_product`]). Safe to
    /// repeat, and safe when several instances seed the same store at once.
    async fn seed(&self, n: u32) -> Result<(), CatalogError>;

    /// How many products the catalog holds.
    async fn count(&self) -> Result<u64, CatalogError>;
}
