//! The in-memory catalog: a sharded map (reads and writes never serialise on one lock) of
//! products with their JSON rendered once when stored. The default store when `DATABASE_URL` is
//! unset; its ids come from a per-process counter, so it is for a single instance only.
//!
//! Stock and reservations sit beside it in one [`Book`] under one lock (see `memory_stock.rs`):
//! an operation on several products is atomic without any lock ordering to get wrong.

use super::{CatalogError, CatalogStore};
use crate::catalog::{seed_product, NewProduct, Product};
use crate::stock::{Levels, Reservation};
use bytes::Bytes;
use common::store::StoreKind;
use dashmap::DashMap;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard};
use time::OffsetDateTime;

/// A stored product: the value and its JSON, rendered once.
#[derive(Debug, Clone)]
struct Stored {
    product: Product,
    json: Bytes,
}

/// Stock and reservations.
#[derive(Debug, Default)]
pub(super) struct Book {
    pub(super) levels: HashMap<i32, Levels>,
    pub(super) reservations: HashMap<String, Reservation>,
    /// Held reservations by the time they became held, oldest first, for the timeout. An entry
    /// whose reservation has moved on since is dropped when the sweep reaches it, so this holds
    /// about one timeout's worth of reservations, not all of them.
    pub(super) held: BTreeSet<(OffsetDateTime, String)>,
}

#[derive(Debug, Default)]
pub struct MemoryCatalog {
    products: DashMap<i32, Stored>,
    /// The last id handed out.
    last_id: AtomicI32,
    book: Mutex<Book>,
}

impl MemoryCatalog {
    fn insert(&self, new: NewProduct, stock: i64) -> Result<i32, CatalogError> {
        let id = self
            .last_id
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                last.checked_add(1)
            })
            .map_err(|_| CatalogError::Full)?
            + 1;
        // Stock first: a product that can be seen always has its stock.
        self.book().levels.insert(id, Levels::new(stock));
        let product = Product::new(id, new);
        let json = product.to_json();
        self.products.insert(id, Stored { product, json });
        Ok(id)
    }

    /// The book, locked. Nothing panics while holding it, and every operation writes back only
    /// once it has fully succeeded, so a poisoned lock still guards consistent data.
    pub(super) fn book(&self) -> MutexGuard<'_, Book> {
        self.book
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait::async_trait]
impl CatalogStore for MemoryCatalog {
    fn kind(&self) -> StoreKind {
        StoreKind::Memory
    }

    fn cached(&self, id: i32) -> Option<Bytes> {
        self.products.get(&id).map(|stored| stored.json.clone())
    }

    async fn get_json(&self, id: i32) -> Result<Option<Bytes>, CatalogError> {
        Ok(self.cached(id))
    }

    async fn get(&self, id: i32) -> Result<Option<Product>, CatalogError> {
        Ok(self.products.get(&id).map(|stored| stored.product.clone()))
    }

    async fn create(&self, new: NewProduct, stock: i64) -> Result<i32, CatalogError> {
        self.insert(new, stock)
    }

    /// Creates products 1..=n on an empty catalog. The memory store lives and dies with its
    /// process, so it is seeded once, at start, before anything else has been created.
    async fn seed(&self, n: u32, stock: i64) -> Result<(), CatalogError> {
        for i in 1..=n {
            self.insert(seed_product(i), stock)?;
        }
        Ok(())
    }

    async fn count(&self) -> Result<u64, CatalogError> {
        Ok(self.products.len() as u64)
    }

    /// Ids here are dense (1..=last, never deleted), so a page is a walk up from `after`; an id
    /// handed out but not inserted yet is simply not listed.
    async fn list(&self, after: i32, limit: u32) -> Result<Vec<Product>, CatalogError> {
        let last = self.last_id.load(Ordering::Acquire);
        let mut page = Vec::new();
        let mut id = after;
        while page.len() < limit as usize && id < last {
            id += 1;
            if let Some(stored) = self.products.get(&id) {
                page.push(stored.product.clone());
            }
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> NewProduct {
        crate::catalog::valid_new_product()
    }

    #[tokio::test]
    async fn a_full_catalog_refuses_instead_of_wrapping() {
        let c = MemoryCatalog::default();
        c.last_id.store(i32::MAX - 1, Ordering::SeqCst);
        assert_eq!(c.create(valid(), 1).await.ok(), Some(i32::MAX));
        assert!(matches!(
            c.create(valid(), 1).await,
            Err(CatalogError::Full)
        ));
        assert_eq!(c.count().await.ok(), Some(1));
    }
}
