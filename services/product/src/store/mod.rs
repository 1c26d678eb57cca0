//! Where the catalog and its stock live: two traits, two stores, each store implementing both.
//!
//! - [`memory::MemoryCatalog`]: a sharded in-memory map, the default when `DATABASE_URL` is unset.
//!   Fast, but lost on restart and not shared between instances.
//! - [`postgres::PgCatalog`]: the `catalog` schema of PostgreSQL, shared by every instance, with a
//!   bounded cache of found products in front ([`cache::JsonCache`]).
//!
//! Both hand out each product's JSON pre-rendered as [`Bytes`], so a hot `GET` is a map lookup
//! and a reference-count bump in either store. Stock ([`StockStore`]) is mutable and never
//! cached; its rules are [`crate::stock`]'s, the stores only load, lock and write back
//! (`memory_stock.rs`, `postgres_stock.rs`; reservations on PostgreSQL are batched:
//! `postgres_reserve.rs`).

pub mod cache;
pub mod memory;
mod memory_stock;
pub mod postgres;
mod postgres_reserve;
mod postgres_stock;

use crate::catalog::{NewProduct, Product};
use crate::stock::{EventTally, Item, Levels, Reservation, StockError};
use bytes::Bytes;
use common::messaging::OrderEvent;
use common::store::{StoreKind, StoreUnavailable};
use std::time::Duration;

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

    /// Stores a validated product under a new id, unique across every instance of the store,
    /// together with its stock (`stock` units on hand), in one step.
    async fn create(&self, new: NewProduct, stock: i64) -> Result<i32, CatalogError>;

    /// Makes sure the demo products 1..=n exist (see [`crate::catalog::seed_product`]), each
    /// created with `stock` units on hand. Safe to repeat (existing products and their stock are
    /// kept), and safe when several instances seed the same store at once.
    async fn seed(&self, n: u32, stock: i64) -> Result<(), CatalogError>;

    /// How many products the catalog holds.
    async fn count(&self) -> Result<u64, CatalogError>;

    /// Up to `limit` products with ids above `after`, by id ascending.
    async fn list(&self, after: i32, limit: u32) -> Result<Vec<Product>, CatalogError>;
}

/// A reserve that succeeded: the reservation, and whether it took stock now (201) or was
/// already there (200).
#[derive(Debug)]
pub struct Reserved {
    pub reservation: Reservation,
    pub created: bool,
}

/// Stock and reservations. Every operation is atomic: it applies completely or not at all, and
/// the invariant of [`crate::stock`] holds after each.
#[async_trait::async_trait]
pub trait StockStore: Send + Sync + 'static {
    /// The product's stock, or `None` when no such product exists.
    async fn levels(&self, product_id: i32) -> Result<Option<Levels>, StockError>;

    /// Adds `delta` (maybe negative) to the product's on-hand stock.
    async fn adjust(&self, product_id: i32, delta: i64) -> Result<Levels, StockError>;

    /// Holds `items` (normalised, see [`crate::stock::normalise`]) under `order_uid`, all or
    /// nothing; idempotent per uid (see [`crate::stock::plan_reserve`]).
    async fn reserve(&self, order_uid: &str, items: &[Item]) -> Result<Reserved, StockError>;

    /// Returns a held or confirmed reservation's items to stock, once.
    async fn release(&self, order_uid: &str) -> Result<Reservation, StockError>;

    /// Marks the held reservations among `order_uids` confirmed; returns how many.
    async fn confirm(&self, order_uids: &[String]) -> Result<u64, StockError>;

    async fn reservation(&self, order_uid: &str) -> Result<Option<Reservation>, StockError>;

    /// Releases up to `limit` reservations held for longer than `ttl`; returns how many. Safe to
    /// run from several instances at once.
    async fn expire_held(&self, ttl: Duration, limit: usize) -> Result<u64, StockError>;

    /// Applies one message's fulfilment events, all in one transaction.
    async fn apply_events(&self, events: &[OrderEvent]) -> Result<EventTally, StockError>;
}
