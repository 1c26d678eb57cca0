//! Orders: what became of each checkout. The cart service owns checkout, so it keeps the record;
//! the warehouse decides the outcome and announces it on the events exchange.
//!
//! ```text
//! checkout ──confirmed──▶ placed ──▶ fulfilled                 (the warehouse applied it)
//!    │                      │
//!    │                   cancel ──▶ cancelling ──▶ cancelled   (the cancel reached the warehouse first)
//!    │                                        └──▶ fulfilled   (the order did: the cancel lost)
//!    └──fate unknown──▶ pending ──▶ fulfilled                  (it did reach the warehouse)
//!                          └── not reported within PENDING_ORDER_TIMEOUT_MS
//!                              ──▶ cancelling (reason not_confirmed) ──▶ cancelled | fulfilled
//! ```
//!
//! - The checkout records the order once the publish has an outcome: `placed` (the broker
//!   confirmed) or `pending` (its fate is unknown). A certain failure records nothing. One write
//!   per checkout, after the publish, is enough because nothing is lost without it: a fulfilled
//!   order's event carries the order, so a record lost to a crash comes back with its outcome.
//!   (A write before the publish as well cost half the checkout's throughput on PostgreSQL.)
//! - `fulfilled` and `cancelled` are final: they come only from the warehouse, which records one
//!   outcome per order for ever, so events (delivered at least once, possibly out of order) can
//!   be applied blindly to anything that is not final yet.
//!
//! Orders live in memory by default, or in PostgreSQL (`DATABASE_URL`, schema `orders`) where
//! every cart instance reads the same records.

pub mod api;
pub mod events;
pub mod memory;
pub mod postgres;

use crate::carts::{line_items, LineItem};
use common::messaging::{CancelReason, OrderEvent, OrderItem, OrderMessage, OrderOutcome};
use common::store::{StoreKind, StoreUnavailable};
use serde::Serialize;
use time::OffsetDateTime;

pub use memory::MemoryOrderStore;
pub use postgres::PgOrderStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Written before the publish; the broker has not confirmed it (yet, or ever).
    Pending,
    /// The broker confirmed it: the warehouse will see it.
    Placed,
    /// A cancel was published; the warehouse has not said which of the two came first.
    Cancelling,
    Fulfilled,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Placed => "placed",
            Self::Cancelling => "cancelling",
            Self::Fulfilled => "fulfilled",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "placed" => Self::Placed,
            "cancelling" => Self::Cancelling,
            "fulfilled" => Self::Fulfilled,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// Decided by the warehouse; never changes again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Fulfilled | Self::Cancelled)
    }

    pub fn of_outcome(outcome: OrderOutcome) -> Self {
        match outcome {
            OrderOutcome::Fulfilled => Self::Fulfilled,
            OrderOutcome::Cancelled => Self::Cancelled,
        }
    }
}

pub fn reason_str(reason: CancelReason) -> &'static str {
    match reason {
        CancelReason::Customer => "customer",
        CancelReason::NotConfirmed => "not_confirmed",
    }
}

pub fn parse_reason(s: &str) -> Option<CancelReason> {
    match s {
        "customer" => Some(CancelReason::Customer),
        "not_confirmed" => Some(CancelReason::NotConfirmed),
        _ => None,
    }
}

/// What `GET /orders/{id}` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Order {
    pub order_id: i32,
    pub order_uid: String,
    pub shopping_cart_id: i32,
    pub customer_id: i32,
    pub items: Vec<LineItem>,
    pub status: OrderStatus,
    /// Why it is being, or was, cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<CancelReason>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Order {
    pub fn from_message(order: &OrderMessage, status: OrderStatus) -> Self {
        Self {
            order_id: order.order_id,
            order_uid: order.order_uid.clone(),
            shopping_cart_id: order.shopping_cart_id,
            customer_id: order.customer_id,
            items: line_items(&order.items),
            status,
            cancel_reason: None,
            created_at: order.created_at,
            updated_at: OffsetDateTime::now_utc(),
        }
    }

    /// The order as it was published, for a cancel or a republish.
    pub fn message(&self) -> OrderMessage {
        OrderMessage {
            order_uid: self.order_uid.clone(),
            order_id: self.order_id,
            shopping_cart_id: self.shopping_cart_id,
            customer_id: self.customer_id,
            items: self.items.iter().map(OrderItem::from).collect(),
            created_at: self.created_at,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum OrderStoreError {
    #[error(transparent)]
    Unavailable(#[from] StoreUnavailable),
    /// Two different orders with one id: the cart ids' counter was reset under a durable
    /// order store (e.g. Redis flushed while PostgreSQL kept the orders).
    #[error("order id {order_id} is already taken by another order")]
    IdTaken { order_id: i32 },
}

#[async_trait::async_trait]
pub trait OrderStore: Send + Sync {
    fn kind(&self) -> StoreKind;

    /// Records a checkout's order as `placed` or `pending`. Idempotent per `order_uid`: an order
    /// already recorded keeps its status (the warehouse's outcome may have arrived first).
    async fn record(
        &self,
        order: &OrderMessage,
        status: OrderStatus,
    ) -> Result<(), OrderStoreError>;

    async fn get(&self, order_id: i32) -> Result<Option<Order>, OrderStoreError>;

    /// A customer's orders, newest (highest id) first, with ids below `before` if given.
    async fn list_for_customer(
        &self,
        customer_id: i32,
        before: Option<i32>,
        limit: usize,
    ) -> Result<Vec<Order>, OrderStoreError>;

    /// `pending | placed → cancelling`: a cancel was published. Returns the order as it is now
    /// (unchanged if it was already cancelling or final), `None` if unknown.
    async fn mark_cancelling(
        &self,
        order_uid: &str,
        reason: CancelReason,
    ) -> Result<Option<Order>, OrderStoreError>;

    /// Applies the warehouse's outcomes: every order that is not final takes its outcome; an
    /// order this store never recorded is recorded from the event when it carries the order.
    /// Final statuses never change (the warehouse decides once).
    async fn apply_outcomes(&self, events: &[OrderEvent]) -> Result<(), OrderStoreError>;

    /// `pending` orders created before `created_before`, oldest first, at most `limit`.
    async fn stale_pending(
        &self,
        created_before: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<Order>, OrderStoreError>;

    /// `/ready`.
    async fn check(&self) -> Result<(), String>;
}
