//! The warehouse's books: how many orders were applied and how much of each product they took.
//!
//! Applying is idempotent on `order_uid`. The broker delivers at least once (a redelivery after a
//! lost connection, a republish by the cart after a lost confirm), so the ledger remembers every
//! uid it has applied; a second delivery of the same uid is counted as a duplicate and changes no
//! total. The check and the insert are one atomic operation on a sharded concurrent set, so two
//! channels racing on the same uid apply it exactly once.
//!
//! Nothing here takes a global lock: the uid set and the product map are sharded `DashMap`s and
//! every total is an atomic counter.
//!
//! Limits, on purpose for now:
//! - everything lives in memory and is lost on restart (a durable store is future work);
//! - the uid set grows by one entry per order for the life of the process. Bounded alternatives
//!   (a time-windowed set, or dedupe in the store that persists the totals) are future work.

use common::messaging::OrderMessage;
use common::metrics::{Counter, Metrics};
use dashmap::{DashMap, DashSet};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// What applying an order did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// First time this uid was seen: the totals now include it.
    Applied,
    /// Already applied earlier: nothing changed.
    Duplicate,
}

#[derive(Default)]
pub struct Ledger {
    applied: DashSet<String>,
    products: DashMap<i32, AtomicU64>,
    orders: Counter,
    duplicates: Counter,
    rejected: Counter,
}

impl Ledger {
    /// A ledger whose counters are not exported.
    pub fn new() -> Self {
        Self::default()
    }

    /// A ledger whose counters also appear on `/metrics`.
    pub fn registered(metrics: &Metrics) -> Self {
        Self {
            applied: DashSet::new(),
            products: DashMap::new(),
            orders: metrics.counter(
                "warehouse_orders_processed_total",
                "Distinct orders applied to the totals.",
            ),
            duplicates: metrics.counter(
                "warehouse_duplicate_deliveries_total",
                "Deliveries of an order that was already applied (acked, not applied again).",
            ),
            rejected: metrics.counter(
                "warehouse_rejected_messages_total",
                "Messages that were not valid orders, dead-lettered without requeue.",
            ),
        }
    }

    /// Applies a (validated) order once per `order_uid`.
    pub fn apply(&self, order: &OrderMessage) -> Outcome {
        // `insert` is the atomic check-and-set: exactly one caller sees `true` for a uid.
        if !self.applied.insert(order.order_uid.clone()) {
            self.duplicates.inc();
            return Outcome::Duplicate;
        }
        for item in &order.items {
            // Validation guarantees quantity >= 1; never let a negative slip through as a huge u64.
            let quantity = u64::try_from(item.quantity).unwrap_or(0);
            self.add_quantity(item.product_id, quantity);
        }
        self.orders.inc();
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

    /// Counts a message that was not a valid order.
    pub fn record_rejected(&self) {
        self.rejected.inc();
    }

    pub fn orders_processed(&self) -> u64 {
        self.orders.get()
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates.get()
    }

    pub fn rejected(&self) -> u64 {
        self.rejected.get()
    }

    /// Whether an order uid has been applied.
    pub fn contains(&self, order_uid: &str) -> bool {
        self.applied.contains(order_uid)
    }

    /// A point-in-time copy of the totals (each counter read atomically; not a global snapshot
    /// while orders are still being applied).
    pub fn snapshot(&self) -> Stats {
        Stats {
            orders_processed: self.orders.get(),
            duplicates: self.duplicates.get(),
            rejected: self.rejected.get(),
            products: self
                .products
                .iter()
                .map(|entry| (*entry.key(), entry.value().load(Ordering::Relaxed)))
                .collect(),
        }
    }
}

/// `GET /stats` and the final report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub orders_processed: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// Product id → total quantity ordered (JSON object keys are the ids as strings).
    pub products: BTreeMap<i32, u64>,
}

impl Stats {
    pub fn total_quantity(&self) -> u64 {
        self.products.values().sum()
    }
}

impl fmt::Display for Stats {
    /// The report printed at shutdown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "warehouse final report")?;
        writeln!(f, "  total orders processed: {}", self.orders_processed)?;
        writeln!(f, "  duplicate deliveries:   {}", self.duplicates)?;
        writeln!(f, "  rejected messages:      {}", self.rejected)?;
        writeln!(f, "  quantity per product:")?;
        if self.products.is_empty() {
            writeln!(f, "    (none)")?;
        }
        for (product_id, quantity) in &self.products {
            writeln!(f, "    product {product_id}: {quantity}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::messaging::OrderItem;
    use std::sync::Arc;

    fn order(uid: &str, items: &[(i32, i32)]) -> OrderMessage {
        OrderMessage {
            order_uid: uid.to_string(),
            order_id: 1,
            shopping_cart_id: 1,
            customer_id: 1,
            items: items
                .iter()
                .map(|&(product_id, quantity)| OrderItem {
                    product_id,
                    quantity,
                })
                .collect(),
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn applies_once_per_uid() {
        let ledger = Ledger::new();
        assert_eq!(
            ledger.apply(&order("a", &[(1, 2), (2, 3)])),
            Outcome::Applied
        );
        assert_eq!(
            ledger.apply(&order("a", &[(1, 2), (2, 3)])),
            Outcome::Duplicate
        );
        assert_eq!(ledger.apply(&order("b", &[(1, 5)])), Outcome::Applied);
        ledger.record_rejected();
        let stats = ledger.snapshot();
        assert_eq!(stats.orders_processed, 2);
        assert_eq!(stats.duplicates, 1);
        assert_eq!(stats.rejected, 1);
        assert_eq!(stats.products, BTreeMap::from([(1, 7), (2, 3)]));
        assert!(ledger.contains("a") && !ledger.contains("c"));
    }

    #[test]
    fn racing_threads_apply_each_uid_once() {
        let ledger = Arc::new(Ledger::new());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let ledger = Arc::clone(&ledger);
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        ledger.apply(&order(&format!("uid-{i}"), &[(i % 7 + 1, 1)]));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread panicked");
        }
        let stats = ledger.snapshot();
        assert_eq!(stats.orders_processed, 1000);
        assert_eq!(stats.duplicates, 7000);
        assert_eq!(stats.total_quantity(), 1000);
    }

    #[test]
    fn stats_serialise_product_ids_as_keys_and_render_a_report() {
        let ledger = Ledger::new();
        ledger.apply(&order("a", &[(12, 4)]));
        let json = serde_json::to_value(ledger.snapshot()).expect("serialises");
        assert_eq!(
            json,
            serde_json::json!({"orders_processed": 1, "duplicates": 0, "rejected": 0, "products": {"12": 4}})
        );
        let report = ledger.snapshot().to_string();
        assert!(report.contains("total orders processed: 1"), "{report}");
        assert!(report.contains("product 12: 4"), "{report}");
    }
}
