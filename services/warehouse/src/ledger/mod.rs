//! The warehouse's books: every order's outcome, how many orders were fulfilled or cancelled,
//! and how much of each product the fulfilled ones took.
//!
//! The ledger records, per `order_uid`, exactly one outcome, decided by whichever of the order
//! and a cancel for it is applied first: the order first makes it `fulfilled` (its quantities are
//! added to the totals); a cancel first makes it `cancelled` (nothing is added, and the order,
//! should it arrive later, is refused). Whatever comes afterwards for the uid (a redelivery of
//! either, the other one) changes nothing and is told the recorded outcome. The broker delivers
//! at least once (a redelivery after a lost connection or a crash, a republish by the cart after
//! a lost confirm), so this is also the dedupe.
//!
//! - [`LedgerStore`] is where the books live: [`memory::MemoryLedger`] (the default, lost on
//!   restart) or [`postgres::PgLedger`] (durable, shared by every warehouse on the database). A
//!   store applies a *batch* of entries: with PostgreSQL the outcomes and their effect on the
//!   totals are one transaction, so a crash leaves either all of a batch or none of it.
//! - [`Ledger`] wraps a store with this process's counters (`/metrics`, `/stats`): orders
//!   fulfilled here, cancels that won or lost here, duplicates, orders refused, poison, events.
//!   Those are per process on purpose; `orders_processed`, `orders_cancelled` and the product
//!   totals in [`Stats`] come from the store.

pub mod memory;
pub mod postgres;

use common::messaging::{CancelMessage, CancelReason, OrderMessage, OrderOutcome};
use common::metrics::{Counter, Metrics};
use common::store::{StoreKind, StoreUnavailable};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The longest `order_uid` the warehouse stores (the cart's are 36-character UUIDs). A longer
/// one could not be indexed by PostgreSQL and would block its batch for ever, so it is poison.
pub const MAX_UID_BYTES: usize = 200;

/// What a delivery asks of the ledger.
#[derive(Debug, Clone, Copy)]
pub enum Entry<'a> {
    /// Fulfil this order, unless its uid already has an outcome.
    Order(&'a OrderMessage),
    /// Cancel this order, unless its uid already has an outcome.
    Cancel(&'a CancelMessage),
}

impl<'a> Entry<'a> {
    pub fn uid(&self) -> &'a str {
        match self {
            Self::Order(order) => &order.order_uid,
            Self::Cancel(cancel) => &cancel.order_uid,
        }
    }

    /// The outcome this entry records if it is the first for its uid.
    pub fn outcome(&self) -> OrderOutcome {
        match self {
            Self::Order(_) => OrderOutcome::Fulfilled,
            Self::Cancel(_) => OrderOutcome::Cancelled,
        }
    }

    /// The cancel's reason, for a cancel.
    pub fn reason(&self) -> Option<CancelReason> {
        match self {
            Self::Order(_) => None,
            Self::Cancel(cancel) => Some(cancel.reason),
        }
    }
}

impl<'a> From<&'a OrderMessage> for Entry<'a> {
    fn from(order: &'a OrderMessage) -> Self {
        Self::Order(order)
    }
}

impl<'a> From<&'a CancelMessage> for Entry<'a> {
    fn from(cancel: &'a CancelMessage) -> Self {
        Self::Cancel(cancel)
    }
}

/// What applying an entry did, or found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An order, first for its uid: fulfilled, the totals now include it.
    Applied,
    /// An order whose uid was already fulfilled (earlier, or earlier in the same batch).
    Duplicate,
    /// An order whose uid was already cancelled: refused, never fulfilled.
    Refused,
    /// A cancel, first for its uid: the order is cancelled for good.
    Cancelled,
    /// A cancel whose uid was already fulfilled: it lost, the order stays fulfilled.
    CancelLost,
    /// A cancel whose uid was already cancelled.
    DuplicateCancel,
}

impl Outcome {
    /// How an entry of `kind` relates to its uid's recorded outcome.
    pub fn of(kind: OrderOutcome, recorded: OrderOutcome, decided: bool) -> Self {
        match (kind, recorded, decided) {
            (OrderOutcome::Fulfilled, OrderOutcome::Fulfilled, true) => Self::Applied,
            (OrderOutcome::Fulfilled, OrderOutcome::Fulfilled, false) => Self::Duplicate,
            (OrderOutcome::Fulfilled, OrderOutcome::Cancelled, _) => Self::Refused,
            (OrderOutcome::Cancelled, OrderOutcome::Cancelled, true) => Self::Cancelled,
            (OrderOutcome::Cancelled, OrderOutcome::Cancelled, false) => Self::DuplicateCancel,
            (OrderOutcome::Cancelled, OrderOutcome::Fulfilled, _) => Self::CancelLost,
        }
    }

    /// The uid's outcome, as recorded (by this entry or an earlier one).
    pub fn recorded(self) -> OrderOutcome {
        match self {
            Self::Applied | Self::Duplicate | Self::CancelLost => OrderOutcome::Fulfilled,
            Self::Refused | Self::Cancelled | Self::DuplicateCancel => OrderOutcome::Cancelled,
        }
    }

    /// Whether this entry decided the outcome.
    pub fn decided(self) -> bool {
        matches!(self, Self::Applied | Self::Cancelled)
    }
}

/// One entry's result: what it did, and what the ledger knows of its uid's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub outcome: Outcome,
    /// The winning cancel's reason, when the outcome is cancelled (and the store knows it).
    pub reason: Option<CancelReason>,
    /// For a cancel entry only: the order as the store recorded it, when the store has it (an
    /// order fulfilled in an earlier batch). `None` for order entries, which carry their own.
    pub order: Option<OrderMessage>,
}

/// Why a batch was not applied. Either way nothing of it was applied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApplyError {
    /// The store is unreachable or failed transiently: retry the same batch later.
    #[error(transparent)]
    Unavailable(#[from] StoreUnavailable),
    /// The store refused the data itself (it would refuse it again): an entry in the batch can
    /// never be stored.
    #[error("the store refused the batch: {0}")]
    Refused(String),
}

/// The durable part of the books.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Orders fulfilled.
    pub orders_processed: u64,
    /// Orders cancelled (the cancel came first).
    pub orders_cancelled: u64,
    pub products: BTreeMap<i32, u64>,
}

/// Where the books live. Every implementation must record exactly one outcome per `order_uid`,
/// the first entry's, even when several appliers (tasks or processes) race on it.
#[async_trait::async_trait]
pub trait LedgerStore: Send + Sync + 'static {
    fn kind(&self) -> StoreKind;

    /// Applies `entries` (validated) as one unit and returns one result per entry, in order. Of
    /// the entries for one uid inside the batch the first is the one that may decide. `lane`
    /// tells concurrent writers of one process apart so they need not update the same total
    /// rows (0 when there is only one).
    async fn apply_batch(
        &self,
        lane: u16,
        entries: &[Entry<'_>],
    ) -> Result<Vec<Recorded>, ApplyError>;

    /// Orders fulfilled and cancelled and quantity per product, as of one point in time.
    async fn totals(&self) -> Result<Totals, StoreUnavailable>;

    /// The recorded outcome of an order uid, if it has one.
    async fn outcome(&self, order_uid: &str) -> Result<Option<OrderOutcome>, StoreUnavailable>;
}

/// Whether `order` can be stored at all (beyond [`OrderMessage::validate`]).
pub fn check_storable(order: &OrderMessage) -> Result<(), String> {
    check_uid(&order.order_uid)
}

/// Whether `cancel` is one the ledger can apply (beyond [`CancelMessage::from_json`]).
pub fn check_cancel(cancel: &CancelMessage) -> Result<(), String> {
    if cancel.order_id < 1 {
        return Err("order_id must be positive".to_string());
    }
    check_uid(&cancel.order_uid)
}

fn check_uid(uid: &str) -> Result<(), String> {
    if uid.len() > MAX_UID_BYTES {
        return Err(format!("order_uid is longer than {MAX_UID_BYTES} bytes"));
    }
    // PostgreSQL text cannot hold a NUL character (valid in JSON as \u0000).
    if uid.contains('\0') {
        return Err("order_uid contains a NUL character".to_string());
    }
    Ok(())
}

/// A store plus this process's counters.
pub struct Ledger {
    store: Arc<dyn LedgerStore>,
    counters: Counters,
}

/// This process's counts (exported on `/metrics` when registered).
#[derive(Default)]
struct Counters {
    applied: Counter,
    duplicates: Counter,
    refused: Counter,
    cancelled: Counter,
    cancels_lost: Counter,
    duplicate_cancels: Counter,
    rejected: Counter,
    events_published: Counter,
    event_publish_failures: Counter,
}

impl Counters {
    fn registered(metrics: &Metrics) -> Self {
        Self {
            applied: metrics.counter(
                "warehouse_orders_processed_total",
                "Distinct orders fulfilled (applied to the totals) by this process.",
            ),
            duplicates: metrics.counter(
                "warehouse_duplicate_deliveries_total",
                "Deliveries of an order that was already fulfilled (acked, not applied again).",
            ),
            refused: metrics.counter(
                "warehouse_orders_refused_cancelled_total",
                "Deliveries of an order that was already cancelled (acked, never fulfilled).",
            ),
            cancelled: metrics.counter(
                "warehouse_orders_cancelled_total",
                "Cancels that came first and cancelled their order, applied by this process.",
            ),
            cancels_lost: metrics.counter(
                "warehouse_cancels_lost_total",
                "Cancels of an order that was already fulfilled (the cancel lost).",
            ),
            duplicate_cancels: metrics.counter(
                "warehouse_duplicate_cancels_total",
                "Deliveries of a cancel for an order that was already cancelled.",
            ),
            rejected: metrics.counter(
                "warehouse_rejected_messages_total",
                "Messages that were not valid orders or cancels, dead-lettered without requeue.",
            ),
            events_published: metrics.counter(
                "warehouse_events_published_total",
                "Outcome events (one per settled delivery) confirmed by the broker.",
            ),
            event_publish_failures: metrics.counter(
                "warehouse_event_publish_failures_total",
                "Events messages (one per batch) the broker did not confirm; the batch was requeued.",
            ),
        }
    }

    fn count(&self, outcome: Outcome) {
        match outcome {
            Outcome::Applied => &self.applied,
            Outcome::Duplicate => &self.duplicates,
            Outcome::Refused => &self.refused,
            Outcome::Cancelled => &self.cancelled,
            Outcome::CancelLost => &self.cancels_lost,
            Outcome::DuplicateCancel => &self.duplicate_cancels,
        }
        .inc();
    }
}

impl Ledger {
    /// A ledger whose counters are not exported.
    pub fn new(store: Arc<dyn LedgerStore>) -> Self {
        Self {
            store,
            counters: Counters::default(),
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
            counters: Counters::registered(metrics),
        }
    }

    pub fn store(&self) -> &Arc<dyn LedgerStore> {
        &self.store
    }

    /// Applies a batch through the store and counts the outcomes.
    pub async fn apply_batch(
        &self,
        lane: u16,
        entries: &[Entry<'_>],
    ) -> Result<Vec<Recorded>, ApplyError> {
        let recorded = self.store.apply_batch(lane, entries).await?;
        for result in &recorded {
            self.counters.count(result.outcome);
        }
        Ok(recorded)
    }

    /// Applies one order (a batch of one).
    pub async fn apply(&self, order: &OrderMessage) -> Result<Outcome, ApplyError> {
        self.apply_one(Entry::Order(order)).await
    }

    /// Applies one cancel (a batch of one).
    pub async fn cancel(&self, cancel: &CancelMessage) -> Result<Outcome, ApplyError> {
        self.apply_one(Entry::Cancel(cancel)).await
    }

    async fn apply_one(&self, entry: Entry<'_>) -> Result<Outcome, ApplyError> {
        let recorded = self.apply_batch(0, &[entry]).await?;
        recorded
            .first()
            .map(|r| r.outcome)
            .ok_or_else(|| ApplyError::Refused("the store returned no result".to_string()))
    }

    /// Counts a message that was not a valid order or cancel.
    pub fn record_rejected(&self) {
        self.counters.rejected.inc();
    }

    /// Counts `events` outcome events the broker confirmed.
    pub fn record_events_published(&self, events: u64) {
        self.counters.events_published.add(events);
    }

    /// Counts an events message the broker did not confirm.
    pub fn record_event_publish_failure(&self) {
        self.counters.event_publish_failures.inc();
    }

    /// Orders this process fulfilled (the store's total may include other processes' work).
    pub fn applied_here(&self) -> u64 {
        self.counters.applied.get()
    }

    /// Orders this process cancelled (its cancel came first).
    pub fn cancelled_here(&self) -> u64 {
        self.counters.cancelled.get()
    }

    pub fn duplicates(&self) -> u64 {
        self.counters.duplicates.get()
    }

    pub fn refused(&self) -> u64 {
        self.counters.refused.get()
    }

    pub fn cancels_lost(&self) -> u64 {
        self.counters.cancels_lost.get()
    }

    pub fn duplicate_cancels(&self) -> u64 {
        self.counters.duplicate_cancels.get()
    }

    pub fn rejected(&self) -> u64 {
        self.counters.rejected.get()
    }

    pub fn events_published(&self) -> u64 {
        self.counters.events_published.get()
    }

    pub fn event_publish_failures(&self) -> u64 {
        self.counters.event_publish_failures.get()
    }

    /// Deliveries this process settled through the ledger (every outcome).
    pub fn settled_here(&self) -> u64 {
        self.applied_here()
            + self.duplicates()
            + self.refused()
            + self.cancelled_here()
            + self.cancels_lost()
            + self.duplicate_cancels()
    }

    /// The store's totals with this process's counts.
    pub async fn stats(&self) -> Result<Stats, StoreUnavailable> {
        let totals = self.store.totals().await?;
        Ok(Stats {
            orders_processed: totals.orders_processed,
            duplicates: self.duplicates(),
            rejected: self.rejected(),
            products: totals.products,
            orders_cancelled: totals.orders_cancelled,
            orders_refused: self.refused(),
            cancels_lost: self.cancels_lost(),
            duplicate_cancels: self.duplicate_cancels(),
            events_published: self.events_published(),
            event_publish_failures: self.event_publish_failures(),
        })
    }
}

/// `GET /stats` and the final report. The first four fields are the original API (scripts and
/// tests read them); the rest came with cancellations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Distinct orders fulfilled, from the store (with PostgreSQL: by every warehouse, ever).
    pub orders_processed: u64,
    /// Deliveries of an already fulfilled order seen by this process.
    pub duplicates: u64,
    /// Poison messages (orders or cancels) dead-lettered by this process.
    pub rejected: u64,
    /// Product id → total quantity of the fulfilled orders, from the store (JSON keys are the
    /// ids as strings).
    pub products: BTreeMap<i32, u64>,
    /// Distinct orders cancelled (the cancel came first), from the store.
    pub orders_cancelled: u64,
    /// Deliveries of an already cancelled order seen by this process (refused, not fulfilled).
    pub orders_refused: u64,
    /// Cancels that arrived after their order was fulfilled, seen by this process.
    pub cancels_lost: u64,
    /// Deliveries of a cancel for an already cancelled order seen by this process.
    pub duplicate_cancels: u64,
    /// Outcome events (one per settled delivery) confirmed by the broker for this process.
    pub events_published: u64,
    /// Events messages (one per batch) that were not confirmed; their batch was requeued.
    pub event_publish_failures: u64,
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
        writeln!(f, "  orders cancelled:       {}", self.orders_cancelled)?;
        writeln!(f, "  duplicate deliveries:   {}", self.duplicates)?;
        writeln!(f, "  orders refused:         {}", self.orders_refused)?;
        writeln!(f, "  cancels lost:           {}", self.cancels_lost)?;
        writeln!(f, "  duplicate cancels:      {}", self.duplicate_cancels)?;
        writeln!(f, "  rejected messages:      {}", self.rejected)?;
        writeln!(
            f,
            "  events published:       {} ({} failed publishes)",
            self.events_published, self.event_publish_failures
        )?;
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
        let cancel = |uid: &str, order_id: i32| CancelMessage {
            order_uid: uid.to_string(),
            order_id,
            reason: CancelReason::Customer,
            requested_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        assert!(check_cancel(&cancel("u", 1)).is_ok());
        assert!(check_cancel(&cancel("u", 0)).is_err());
        assert!(check_cancel(&cancel(&"x".repeat(MAX_UID_BYTES + 1), 1)).is_err());
        assert!(check_cancel(&cancel("a\0b", 1)).is_err());
    }

    #[test]
    fn an_entry_relates_to_the_recorded_outcome() {
        use OrderOutcome::{Cancelled, Fulfilled};
        let cases = [
            (Fulfilled, Fulfilled, true, Outcome::Applied),
            (Fulfilled, Fulfilled, false, Outcome::Duplicate),
            (Fulfilled, Cancelled, false, Outcome::Refused),
            (Cancelled, Cancelled, true, Outcome::Cancelled),
            (Cancelled, Cancelled, false, Outcome::DuplicateCancel),
            (Cancelled, Fulfilled, false, Outcome::CancelLost),
        ];
        for (kind, recorded, decided, expected) in cases {
            let outcome = Outcome::of(kind, recorded, decided);
            assert_eq!(outcome, expected);
            assert_eq!(outcome.recorded(), recorded);
            assert_eq!(outcome.decided(), decided);
        }
    }

    #[test]
    fn the_report_lists_totals_and_products() {
        let stats = Stats {
            orders_processed: 3,
            duplicates: 1,
            rejected: 2,
            products: BTreeMap::from([(12, 4)]),
            orders_cancelled: 5,
            cancels_lost: 6,
            ..Stats::default()
        };
        let report = stats.to_string();
        assert!(report.contains("total orders processed: 3"), "{report}");
        assert!(report.contains("orders cancelled:       5"), "{report}");
        assert!(report.contains("cancels lost:           6"), "{report}");
        assert!(report.contains("product 12: 4"), "{report}");
        let empty = Stats::default().to_string();
        assert!(empty.contains("(none)"), "{empty}");
    }
}
