//! The in-memory ledger: the default when no database is configured. Fast and lock-free, but
//! lost on restart and private to one process (a redelivery to a restarted or a second warehouse
//! is applied again, and a cancel it never saw does not stop an order there).
//!
//! The outcome records and the product map are sharded `DashMap`s and every total is an atomic
//! counter: no global lock. Deciding a uid's outcome is one atomic check-and-insert on its shard,
//! so an order and its cancel (or two copies of either) racing on two channels record exactly
//! one outcome. The records grow by one entry per order for the life of the process; a fulfilled
//! one keeps its order, so a cancel that loses can announce what it lost to.

use super::{quantities, ApplyError, Entry, LedgerStore, Outcome, Recorded, Totals};
use common::messaging::{CancelReason, OrderMessage, OrderOutcome};
use common::store::{StoreKind, StoreUnavailable};
use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// A uid's outcome, as decided by its first entry.
struct Record {
    outcome: OrderOutcome,
    reason: Option<CancelReason>,
    /// The fulfilled order.
    order: Option<OrderMessage>,
}

#[derive(Default)]
pub struct MemoryLedger {
    records: DashMap<String, Record>,
    products: DashMap<i32, AtomicU64>,
    orders: AtomicU64,
    cancelled: AtomicU64,
}

impl MemoryLedger {
    pub fn new() -> Self {
        Self::default()
    }

    fn apply(&self, entry: Entry<'_>) -> Recorded {
        let kind = entry.outcome();
        // The entry API holds the shard's lock from the lookup to the insert: exactly one
        // caller finds a uid vacant.
        match self.records.entry(entry.uid().to_string()) {
            MapEntry::Occupied(found) => {
                let record = found.get();
                let order = match entry {
                    Entry::Cancel(_) => record.order.clone(),
                    Entry::Order(_) => None,
                };
                Recorded {
                    outcome: Outcome::of(kind, record.outcome, false),
                    reason: record.reason,
                    order,
                }
            }
            MapEntry::Vacant(vacant) => {
                vacant.insert(Record {
                    outcome: kind,
                    reason: entry.reason(),
                    order: match entry {
                        Entry::Order(order) => Some(order.clone()),
                        Entry::Cancel(_) => None,
                    },
                });
                match entry {
                    Entry::Order(order) => {
                        for (product_id, quantity) in quantities(order) {
                            self.add_quantity(product_id, quantity);
                        }
                        self.orders.fetch_add(1, Ordering::Relaxed);
                    }
                    Entry::Cancel(_) => {
                        self.cancelled.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Recorded {
                    outcome: Outcome::of(kind, kind, true),
                    reason: entry.reason(),
                    order: None,
                }
            }
        }
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

    /// Each entry is applied atomically on its own; a batch is not (nothing survives a crash
    /// here anyway).
    async fn apply_batch(
        &self,
        _lane: u16,
        entries: &[Entry<'_>],
    ) -> Result<Vec<Recorded>, ApplyError> {
        Ok(entries.iter().map(|entry| self.apply(*entry)).collect())
    }

    /// Each counter is read atomically; not a global snapshot while orders are being applied.
    async fn totals(&self) -> Result<Totals, StoreUnavailable> {
        Ok(Totals {
            orders_processed: self.orders.load(Ordering::Relaxed),
            orders_cancelled: self.cancelled.load(Ordering::Relaxed),
            products: self
                .products
                .iter()
                .map(|entry| (*entry.key(), entry.value().load(Ordering::Relaxed)))
                .collect(),
        })
    }

    async fn outcome(&self, order_uid: &str) -> Result<Option<OrderOutcome>, StoreUnavailable> {
        Ok(self.records.get(order_uid).map(|record| record.outcome))
    }
}
