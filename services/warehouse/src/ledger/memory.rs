//! The in-memory ledger: the default when no database is configured. Fast and lock-free, but
//! lost on restart and private to one process (a redelivery to a restarted or a second warehouse
//! is applied again).
//!
//! The uid set and the product map are sharded `DashMap`s and every total is an atomic counter:
//! no global lock. The uid check-and-insert is one atomic operation, so two channels racing on
//! the same uid apply it exactly once. The uid set grows by one entry per order for the life of
//! the process.

use super::{quantities, ApplyError, LedgerStore, Outcome, Totals};
use common::messaging::OrderMessage;
use common::store::{StoreKind, StoreUnavailable};
use dashmap::{DashMap, DashSet};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct MemoryLedger {
    applied: DashSet<String>,
    products: DashMap<i32, AtomicU64>,
    orders: AtomicU64,
}

impl MemoryLedger {
    pub fn new() -> Self {
        Self::default()
    }

    fn apply(&self, order: &OrderMessage) -> Outcome {
        // `insert` is the atomic check-and-set: exactly one caller sees `true` for a uid.
        if !self.applied.insert(order.order_uid.clone()) {
            return Outcome::Duplicate;
        }
        for (product_id, quantity) in quantities(order) {
            self.add_quantity(product_id, quantity);
        }
        self.orders.fetch_add(1, Ordering::Relaxed);
        Outcome::Applied
    }

    fn add_quantity(&self, product_id: i32, quantity: u64) {
        // Fast path: a shard read lock and an atomic add. Only a product's first order takes the
        // shard's write lock to create its counter.
        if let Some(total) = self.products.get(&product_id) {
            total.fetch_add(quantity, Ordering::Relaxed);
            return;
        }
        self.products
            .entry(product_id)
            .or_default()
            .fetch_add(quantity, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl LedgerStore for MemoryLedger {
    fn kind(&self) -> StoreKind {
        StoreKind::Memory
    }

    /// Each order is applied atomically on its own; a batch is not (nothing survives a crash
    /// here anyway).
    async fn apply_batch(
        &self,
        _lane: u16,
        orders: &[&OrderMessage],
    ) -> Result<Vec<Outcome>, ApplyError> {
        Ok(orders.iter().map(|order| self.apply(order)).collect())
    }

    /// Each counter is read atomically; not a global snapshot while orders are being applied.
    async fn totals(&self) -> Result<Totals, StoreUnavailable> {
        Ok(Totals {
            orders_processed: self.orders.load(Ordering::Relaxed),
            products: self
                .products
                .iter()
                .map(|entry| (*entry.key(), entry.value().load(Ordering::Relaxed)))
                .collect(),
        })
    }

    async fn is_applied(&self, order_uid: &str) -> Result<bool, StoreUnavailable> {
        Ok(self.applied.contains(order_uid))
    }
}
