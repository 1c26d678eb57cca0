//! The checkout: `POST /shopping-carts/{id}/checkout` and the workflow behind it.
//!
//! The cart is taken (`open → checking_out`), the items are reserved at the product service, the
//! card is authorized, and the order is published under confirms; the answer is 200 `placed`
//! once the broker confirmed, 202 `pending` when the publish's fate is unknown. A checkout that
//! fails undoes exactly what it did ([`Progress`]); one that panics releases the cart.

use crate::carts::{CartError, CheckoutTicket, StoreError};
use crate::clients::stock::Reservation;
use crate::clients::Verdict;
use crate::orders::OrderStatus;
use crate::routes::CartRouteError;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use common::metrics::{Counter, Metrics};
use common::{card, ApiError, ApiJson, PathId, RequestId};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Deserialize)]
pub struct Checkout {
    pub credit_card_number: String,
}

/// The checkout's answer: 200 once the broker confirmed the order; 202 with `status: pending`
/// when the publish's fate is unknown (`GET /orders/{id}` settles it).
#[derive(Debug, Serialize)]
pub struct OrderPlaced {
    pub order_id: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<OrderStatus>,
}

impl OrderPlaced {
    fn response(self) -> (StatusCode, Json<OrderPlaced>) {
        let code = if self.status == Some(OrderStatus::Pending) {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
        (code, Json(self))
    }
}

/// Counts of checkout outcomes, for `/metrics`.
#[derive(Clone)]
pub struct CheckoutOutcomes {
    confirmed: Counter,
    pending: Counter,
    declined: Counter,
    out_of_stock: Counter,
    failed: Counter,
}

impl CheckoutOutcomes {
    pub fn register(metrics: &Metrics) -> Self {
        Self {
            confirmed: metrics.counter("checkouts_confirmed_total", "Checkouts answered 200."),
            pending: metrics.counter(
                "checkouts_pending_total",
                "Checkouts answered 202: the publish's fate was unknown.",
            ),
            declined: metrics.counter("checkouts_declined_total", "Checkouts declined (402)."),
            out_of_stock: metrics.counter(
                "checkouts_out_of_stock_total",
                "Checkouts refused for want of stock (409).",
            ),
            failed: metrics.counter(
                "checkouts_failed_total",
                "Checkouts that failed on a dependency (503).",
            ),
        }
    }
}

// Per-request spans and the per-order line are DEBUG: at thousands of checkouts a second, a log
// line each costs more CPU than the checkout's own logic. Failures are logged at WARN; counts
// are on /metrics.
#[tracing::instrument(level = "debug", skip_all, fields(cart_id = cart_id, card = %card::mask(&body.credit_card_number)))]
pub(crate) async fn checkout(
    State(state): State<Arc<AppState>>,
    PathId(cart_id): PathId,
    RequestId(request_id): RequestId,
    ApiJson(body): ApiJson<Checkout>,
) -> Result<(StatusCode, Json<OrderPlaced>), CartRouteError> {
    // An unknown cart is a 404 before a bad card is a 400. With a good card, taking the cart
    // says whether it exists: one store round trip instead of two.
    if !card::is_valid_format(&body.credit_card_number) {
        if !state.carts.exists(cart_id).await? {
            return Err(CartError::NotFound(cart_id).into());
        }
        return Err(CartRouteError::Api(
            ApiError::bad_request(
                "INVALID_CARD_NUMBER",
                "credit_card_number must look like 1234-5678-9012-3456",
            )
            .with_details("credit_card_number"),
        ));
    }
    let ticket = match state.carts.begin_checkout(cart_id).await {
        Ok(ticket) => ticket,
        // Checked out already (a client whose answer was lost, retrying): the order it placed,
        // rather than an error that hides the order id.
        Err(StoreError::Cart(CartError::AlreadyCheckedOut { order_id, .. })) => {
            let status = state.orders.get(order_id).await?.map(|order| order.status);
            return Ok(OrderPlaced { order_id, status }.response());
        }
        Err(err) => return Err(err.into()),
    };
    // The checkout runs in its own task: if the client hangs up, the order is still either
    // placed or released, never left half-done with the cart stuck in `checking_out`.
    let task = tokio::spawn(place_order(
        state,
        ticket,
        body.credit_card_number,
        request_id,
    ));
    match task.await {
        Ok(result) => result.map(OrderPlaced::response),
        Err(join_error) => Err(CartRouteError::Api(ApiError::internal(format!(
            "checkout task failed: {join_error}"
        )))),
    }
}

/// How far a checkout got, so a failure undoes exactly what it did.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    /// A reservation was asked for (it may exist even if the call failed).
    reserved: bool,
    /// A publish was attempted.
    published: bool,
}

/// Releases the cart if a checkout panics: the normal ways out settle it explicitly.
struct ReleaseOnPanic<'a> {
    state: &'a AppState,
    ticket: &'a CheckoutTicket,
    progress: Progress,
    settled: bool,
}

impl Drop for ReleaseOnPanic<'_> {
    fn drop(&mut self) {
        if !self.settled {
            let carts = Arc::clone(&self.state.carts);
            let (ticket, published) = (self.ticket.clone(), self.progress.published);
            // A reservation left behind is returned by the product service's timeout.
            tokio::spawn(async move { carts.abort_checkout(&ticket, published).await });
        }
    }
}

async fn place_order(
    state: Arc<AppState>,
    ticket: CheckoutTicket,
    card_number: String,
    request_id: String,
) -> Result<OrderPlaced, CartRouteError> {
    let mut guard = ReleaseOnPanic {
        state: &state,
        ticket: &ticket,
        progress: Progress::default(),
        settled: false,
    };
    let outcome = reserve_authorize_publish(
        &state,
        &ticket,
        &card_number,
        &request_id,
        &mut guard.progress,
    )
    .await;
    guard.settled = true;
    let progress = guard.progress;
    let order = &ticket.order;
    let status = match outcome {
        Ok(status) => status,
        Err(err) => {
            undo(&state, &ticket, progress, &request_id).await;
            return Err(err);
        }
    };
    // The broker has the order (or may have it). The record is what `GET /orders/{id}` and a
    // retried checkout report; if it cannot be written now, the warehouse's outcome event
    // writes it later (it carries the order), so the answer stands.
    if let Err(err) = state.orders.record(order, status).await {
        tracing::warn!(%request_id, order_uid = %order.order_uid, error = %err, "order placed but not yet recorded");
    }
    // Either way the cart is done. If it cannot be closed, a retry after the lease takes it
    // over and finds the order recorded.
    if let Err(err) = state.carts.complete_checkout(&ticket).await {
        tracing::warn!(%request_id, order_uid = %order.order_uid, error = %err, "order placed but the cart could not be closed");
    }
    if status == OrderStatus::Placed {
        if let Some(stock) = &state.stock {
            stock.confirm(&order.order_uid);
        }
        state.outcomes.confirmed.inc();
    } else {
        state.outcomes.pending.inc();
    }
    tracing::debug!(
        order_id = order.order_id,
        order_uid = %order.order_uid,
        cart_id = ticket.cart_id,
        status = status.as_str(),
        "order placed"
    );
    Ok(OrderPlaced {
        order_id: order.order_id,
        status: Some(status),
    })
}

/// Undoes a checkout that will not place its order: the reservation, the hold on the cart.
/// Each step is idempotent; one that fails is left to its timeout (the reservation's TTL, the
/// cart's lease) rather than failing the answer a second time.
async fn undo(state: &AppState, ticket: &CheckoutTicket, progress: Progress, request_id: &str) {
    let order_uid = &ticket.order.order_uid;
    if progress.reserved {
        if let Some(stock) = &state.stock {
            if let Err(err) = stock.release(order_uid, request_id).await {
                tracing::warn!(%request_id, %order_uid, error = %err, "failed checkout: its reservation is left to time out");
            }
        }
    }
    // Not `published`: an order whose publish may have reached the queue is never undone (its
    // fate unknown, it is answered pending); only one that certainly did not comes here.
    if let Err(err) = state.carts.abort_checkout(ticket, false).await {
        tracing::warn!(%request_id, cart_id = ticket.cart_id, error = %err, "checkout failed and the cart could not be released");
    }
}

/// Reserves the stock, authorizes the card and publishes the order under confirms. `Placed`:
/// the broker confirmed. `Pending`: the publish's fate is unknown.
async fn reserve_authorize_publish(
    state: &AppState,
    ticket: &CheckoutTicket,
    card_number: &str,
    request_id: &str,
    progress: &mut Progress,
) -> Result<OrderStatus, CartRouteError> {
    let order = &ticket.order;
    if let Some(stock) = &state.stock {
        // Before the card: a customer is not charged for what cannot be sold.
        progress.reserved = true;
        match stock.reserve(order, request_id).await {
            Ok(Reservation::Held) => {}
            Ok(Reservation::Refused(status, body)) => {
                state.outcomes.out_of_stock.inc();
                return Err(CartRouteError::StockRefused(status, body));
            }
            Err(err) => {
                state.outcomes.failed.inc();
                tracing::warn!(%request_id, error = %err, "checkout failed: stock reservation");
                return Err(err.into());
            }
        }
    }
    let verdict = match state.authorizer.authorize(card_number, request_id).await {
        Ok(verdict) => verdict,
        Err(err) => {
            state.outcomes.failed.inc();
            tracing::warn!(%request_id, error = %err, "checkout failed: card authorizer");
            return Err(err.into());
        }
    };
    match verdict {
        Verdict::Approved => {}
        Verdict::Declined(body) => {
            state.outcomes.declined.inc();
            return Err(CartRouteError::Declined(body));
        }
        Verdict::Rejected(body) => return Err(CartRouteError::CardRejected(body)),
    }
    progress.published = true;
    match state.publisher.publish(order, request_id).await {
        Ok(()) => Ok(OrderStatus::Placed),
        Err(err) if err.certainly_not_enqueued() => {
            state.outcomes.failed.inc();
            tracing::warn!(%request_id, order_uid = %order.order_uid, error = %err, "checkout failed: order not accepted by the broker");
            Err(err.into())
        }
        Err(err) => {
            // It may be in the queue: neither a success nor a failure can be promised. The
            // order stays `pending`; the warehouse's outcome or the settler decides it.
            tracing::warn!(%request_id, order_uid = %order.order_uid, error = %err, "order publish unconfirmed: answered pending");
            Ok(OrderStatus::Pending)
        }
    }
}
