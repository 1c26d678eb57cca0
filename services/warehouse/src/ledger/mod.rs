//! The warehouse's books: how many orders were applied and how much of each product they took.
//!
//! Applying is idempotent on `order_uid`. The broker delivers at least once (a redelivery after a
//! lost connection or a crash, a republish by the cart after a lost confirm), so the store
//! remembers every uid it has applied; a second delivery of the same uid is a duplicate and
//! changes no total.
//!
//! - [`LedgerStore`] is where the books live: [`memory::MemoryLedger`] (the default, lost on
//!   restart) or [`postgres::PgLedger`] (durable, shared by every warehouse on the database). A
//!   store applies a *batch* of orders: with PostgreSQL the uids and their effect on the totals
//!   are one transaction, so a crash leaves either all of a batch or none of it.
//! - [`Ledger`] wraps a store with this process's counters (`/metrics`): orders applied here,
//!   duplicate deliveries seen here, poison rejected here. Those three are per process on
//!   purpose; `orders_processed` and the product totals in [`Stats`] come from the store.

pub mod memory;
pub mod postgres;

use common::messaging::OrderMessage;
use common::metrics::{Counter, Metrics};
use common::store::{StoreKind, StoreUnavailable};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The longest `order_uid` the warehouse stores (the cart's are 36-character UUIDs). A longer
/// one could not be indexed by PostgreSQL and would block its batch for ever, so it is poison.
pub const MAX_UID_BYTES: usize = 200;

/// What applying an order did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// First time this uid was seen: the totals now include it.
    Applied,
    /// Already applied earlier (or earlier in the same batch): nothing changed.
    Duplicate,
}

/// Why a batch was not applied. Either way nothing of it was applied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApplyError {
    /// The store is unreachable or failed transiently: retry the same batch later.
    #[error(transparent)]
    Unavailable(#[from] StoreUnavailable),
    /// The store refused the data itself (it would refuse it again): an order in the batch can
    /// never be stored.
    #[error("the store refused the batch: {0}")]
    Refused(String),
}

/// The durable part of the books.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub orders_processed: u64,
    pub products: BTreeMap<i32, u64>,
}

/// Where the books live. Every implementation must apply each `order_uid` at most once, even
/// when several appliers (tasks or processes) race on it.
#[async_trait::async_trait]
pub trait LedgerStore: Send + Sync + 'static {
    fn kind(&self) -> StoreKind;

    /// Applies `orders` (validated) as one unit and returns one outcome per order, in order. A
    /// uid repeated inside the batch is applied once (its first occurrence). `lane` tells
    /// concurrent writers of one process apart so they need not update the same total rows (0
    /// when there is only one).
    async fn apply_batch(
        &self,
        lane: u16,
        orders: &[&OrderMessage],
    ) -> Result<Vec<Outcome>, ApplyError>;

    /// Orders applied and quantity per product, as of one point in time.
    async fn totals(&self) -> Result<Totals, StoreUnavailable>;

    /// Whether an order uid has been applied.
    async fn is_applied(&self, order_uid: &str) -> Result<bool, StoreUnavailable>;
}

/// Whether `order` can be stored at all (beyond [`OrderMessage::validate`]).
pub fn check_storable(order: &OrderMessage) -> Result<(), String> {
    if order.order_uid.len() > MAX_UID_BYTES {
        return Err(format!("order_uid is longer than {MAX_UID_BYTES} bytes"));
    }
    // PostgreSQL text cannot hold a NUL character (valid in JSON as \u0000).
    if order.order_uid.contains('\0') {
        return Err("order_uid contains a NUL character".to_string());
    }
    Ok(())
}

/// A store plus this process's counters.
pub struct Ledger {
    store: Arc<dyn LedgerStore>,
    applied: Counter,
    duplicates: Counter,
    rejected: Counter,
}

impl Ledger {
    /// A ledger whose counters are not exported.
    pub fn new(store: Arc<dyn LedgerStore>) -> Self {
        Self {
            store,
            applied: Counter::default(),
            duplicates: Counter::default(),
            rejected: Counter::default(),
        }
    }

    /// An in-memory ledger whose counters are not exported (tests, benchmarks).
    pub fn in_memory() -> Self {
        Self::new(Arc::new(memory::MemoryLedger::new()))
    }

    /// A ledger whose counters also appear on `/metrics`.
    pub fn registered(store: Arc<dyn LedgerStore>, metrics: &Metrics) -> Self {
        Self {
            store,
            applied: metrics.counter(
                "warehouse_orders_processed_total",
                "Distinct orders applied to the totals by this process.",
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

    pub fn store(&self) -> &Arc<dyn LedgerStore> {
        &self.store
    }

    /// Applies a batch through the store and counts the outcomes.
    pub async fn apply_batch(
        &self,
        lane: u16,
        orders: &[&OrderMessage],
    ) -> Result<Vec<Outcome>, ApplyError> {
        let outcomes = self.store.apply_batch(lane, orders).await?;
        let applied = outcomes.iter().filter(|o| **o == Outcome::Applied).count() as u64;
        self.applied.add(applied);
        self.duplicates.add(outcomes.len() as u64 - applied);
        Ok(outcomes)
    }

    /// Applies one order (a batch of one).
    pub async fn apply(&self, order: &OrderMessage) -> Result<Outcome, ApplyError> {
        let outcomes = self.apply_batch(0, &[order]).await?;
        Ok(outcomes.first().copied().unwrap_or(Outcome::Duplicate))
    }

    /// Counts a message that was not a valid order.
    pub fn record_rejected(&self) {
        self.rejected.inc();
    }

    /// Orders this process applied (the store's total may include other processes' work).
    pub fn applied_here(&self) -> u64 {
        self.applied.get()
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates.get()
    }

    pub fn rejected(&self) -> u64 {
        self.rejected.get()
    }

    /// The store's totals with this process's duplicate and rejected counts.
    pub async fn stats(&self) -> Result<Stats, StoreUnavailable> {
        let totals = self.store.totals().await?;
        Ok(Stats {
            orders_processed: totals.orders_processed,
            duplicates: self.duplicates.get(),
            rejected: self.rejected.get(),
            products: totals.products,
        })
    }
}

/// `GET /stats` and the final report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Distinct orders applied, from the store (with PostgreSQL: by every warehouse, ever).
    pub orders_processed: u64,
    /// Duplicate deliveries seen by this process.
    pub duplicates: u64,
    /// Poison messages dead-lettered by this process.
    pub rejected: u64,
    /// Product id → total quantity ordered, from the store (JSON keys are the ids as strings).
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

/// Each item's quantity as the store adds it. Validation guarantees quantity >= 1; never let a
/// negative slip through as a huge number.
fn quantities(order: &OrderMessage) -> impl Iterator<Item = (i32, u64)> + '_ {
    order
        .items
        .iter()
        .map(|item| (item.product_id, u64::try_from(item.quantity).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::messaging::OrderItem;

    fn order(uid: &str) -> OrderMessage {
        OrderMessage {
            order_uid: uid.to_string(),
            order_id: 1,
            shopping_cart_id: 1,
            customer_id: 1,
            items: vec![OrderItem {
                product_id: 1,
                quantity: 1,
            }],
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn uids_that_cannot_be_stored_are_refused_before_the_store() {
        assert!(check_storable(&order("4f6c1c7e-8a4e-4c43-9d55-2f0a3c1b9e11")).is_ok());
        assert!(check_storable(&order(&"x".repeat(MAX_UID_BYTES))).is_ok());
        assert!(check_storable(&order(&"x".repeat(MAX_UID_BYTES + 1))).is_err());
        assert!(check_storable(&order("a\0b")).is_err());
    }

    #[test]
    fn the_report_lists_totals_and_products() {
        let stats = Stats {
            orders_processed: 3,
            duplicates: 1,
            rejected: 2,
            products: BTreeMap::from([(12, 4)]),
        };
        let report = stats.to_string();
        assert!(report.contains("total orders processed: 3"), "{report}");
        assert!(report.contains("product 12: 4"), "{report}");
        let empty = Stats::default().to_string();
        assert!(empty.contains("(none)"), "{empty}");
    }
}
