//! What the checkout workflow needs from the world besides its two stores: a card authorizer,
//! an order publisher and stock holds. Each is a small trait, implemented here for the real
//! client ([`Authorizer`], [`OrderPublisher`], [`StockReservations`]) and by fakes in the
//! workflow's tests, which then run without a broker or an HTTP service. The stores already are
//! traits ([`crate::store::CartStore`], [`crate::orders::OrderStore`]).
//!
//! The methods return `impl Future + Send` (native async in traits, no `async-trait`): the
//! workflow is generic over its ports and monomorphised for the real ones, so a checkout calls
//! the clients directly, with no boxed future and no virtual call per step. `Send` is spelled
//! out because the workflow runs in a spawned task.

use crate::clients::stock::{Reservation, StockReservations};
use crate::clients::{Authorizer, Unavailable, Verdict};
use crate::publisher::{OrderPublisher, PublishError};
use common::messaging::OrderMessage;
use std::future::Future;

/// Asks the bank whether a card may pay.
pub trait CardAuthorizer: Send + Sync + 'static {
    /// `Approved`, `Declined` (402) or `Rejected` (400); `Err` when no verdict could be had.
    fn authorize(
        &self,
        card_number: &str,
        request_id: &str,
    ) -> impl Future<Output = Result<Verdict, Unavailable>> + Send;
}

/// Hands an order to the broker and waits for its confirm.
pub trait OrderPublishing: Send + Sync + 'static {
    /// `Ok`: the broker confirmed. `Err`: see [`PublishError::certainly_not_enqueued`] for
    /// whether the order may be in the queue all the same.
    fn publish(
        &self,
        order: &OrderMessage,
        request_id: &str,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
}

/// Holds an order's items in stock while it is placed.
pub trait StockHolds: Send + Sync + 'static {
    /// Holds the order's items, all or nothing; idempotent per order uid.
    fn reserve(
        &self,
        order: &OrderMessage,
        request_id: &str,
    ) -> impl Future<Output = Result<Reservation, Unavailable>> + Send;

    /// Returns a held order's items (idempotent; nothing held is fine).
    fn release(
        &self,
        order_uid: &str,
        request_id: &str,
    ) -> impl Future<Output = Result<(), Unavailable>> + Send;

    /// The broker has the order: its hold must not time out. Fire and forget.
    fn confirm(&self, order_uid: &str);
}

impl CardAuthorizer for Authorizer {
    fn authorize(
        &self,
        card_number: &str,
        request_id: &str,
    ) -> impl Future<Output = Result<Verdict, Unavailable>> + Send {
        Authorizer::authorize(self, card_number, request_id)
    }
}

impl OrderPublishing for OrderPublisher {
    fn publish(
        &self,
        order: &OrderMessage,
        request_id: &str,
    ) -> impl Future<Output = Result<(), PublishError>> + Send {
        OrderPublisher::publish(self, order, request_id)
    }
}

impl StockHolds for StockReservations {
    fn reserve(
        &self,
        order: &OrderMessage,
        request_id: &str,
    ) -> impl Future<Output = Result<Reservation, Unavailable>> + Send {
        StockReservations::reserve(self, order, request_id)
    }

    fn release(
        &self,
        order_uid: &str,
        request_id: &str,
    ) -> impl Future<Output = Result<(), Unavailable>> + Send {
        StockReservations::release(self, order_uid, request_id)
    }

    fn confirm(&self, order_uid: &str) {
        StockReservations::confirm(self, order_uid);
    }
}
