//! The in-memory catalog: a sharded map (reads and writes never serialise on one lock) of
//! products with their JSON rendered once when stored. The default store when `DATABASE_URL` is
//! unset; its ids come from a per-process counter, so it is for a single instance only.

use super::{CatalogError, CatalogStore};
use crate::catalog::{seed_product, NewProduct, Product};
use bytes::Bytes;
use common::store::StoreKind;
use dashmap::DashMap;
use std::sync::atomic::{AtomicI32, Ordering};

/// A stored product: the value and its JSON, rendered once.
#[derive(Debug, Clone)]
struct Stored {
    product: Product,
    json: Bytes,
}

#[derive(Debug, Default)]
pub struct MemoryCatalog {
    products: DashMap<i32, Stored>,
    /// The last id handed out.
    last_id: AtomicI32,
}

impl MemoryCatalog {
    fn insert(&self, new: NewProduct) -> Result<i32, CatalogError> {
        let id = self
            .last_id
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                last.checked_add(1)
            })
            .map_err(|_| CatalogError::Full)?
            + 1;
        let product = Product::new(id, new);
        let json = product.to_json();
        self.products.insert(id, Stored { product, json });
        Ok(id)
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

    async fn create(&self, new: NewProduct) -> Result<i32, CatalogError> {
        self.insert(new)
    }

    /// Creates products 1..=n on an empty catalog. The memory store lives and dies with its
    /// process, so it is seeded once, at start, before anything else has been created.
    async fn seed(&self, n: u32) -> Result<(), CatalogError> {
        for i in 1..=n {
            self.insert(seed_product(i))?;
        }
        Ok(())
    }

    async fn count(&self) -> Result<u64, CatalogError> {
        Ok(self.products.len() as u64)
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
        assert_eq!(c.create(valid()).await.ok(), Some(i32::MAX));
        assert!(matches!(c.create(valid()).await, Err(CatalogError::Full)));
        assert_eq!(c.count().await.ok(), Some(1));
    }
}
