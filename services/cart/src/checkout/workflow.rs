//! The checkout workflow, HTTP aside: take the cart (`open → checking_out`), reserve its items,
//! authorize the card, publish the order under confirms, then record the order and close the
//! cart. A checkout that fails undoes exactly what it did ([`Progress`]); one that panics
//! releases the cart ([`ReleaseOnPanic`]). Its dependencies are the two stores and the
//! [`ports`](super::ports); [`super`] maps its outcomes and errors to HTTP answers.

use super::ports::{CardAuthorizer, OrderPublishing, StockHolds};
use crate::carts::{CartError, CheckoutTicket, StoreError};
use crate::clients::stock::Reservation;
use crate::clients::{Unavailable, Verdict};
use crate::orders::{OrderStatus, OrderStore, OrderStoreError};
use crate::publisher::PublishError;
use crate::store::CartStore;
use common::metrics::{Counter, Gauge, Metrics};
use common::telemetry;
use common::ErrorBody;
use hyper::StatusCode;
use std::sync::Arc;

/// Counts of checkout outcomes, for `/metrics`.
#[derive(Clone)]
pub struct CheckoutOutcomes {
    confirmed: Counter,
    pending: Counter,
    declined: Counter,
    out_of_stock: Counter,
    failed: Counter,
    /// `checkouts_in_flight`: between taking the cart and the answer.
    in_flight: Gauge,
}

/// Counts a checkout in flight for as long as it lives (also when its task panics).
struct InFlight<'a>(&'a Gauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a Gauge) -> Self {
        gauge.add(1);
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.add(-1);
    }
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
            in_flight: metrics.gauge(
                "checkouts_in_flight",
                "Checkouts that have taken their cart and not answered yet.",
            ),
        }
    }
}

/// How a checkout ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The broker confirmed the order; it is recorded `placed` and the cart is checked out.
    Placed { order_id: i32 },
    /// The publish's fate is unknown (the order may be in the queue): it is recorded `pending`
    /// and the cart is checked out; the warehouse's outcome or the settler decides it.
    Pending { order_id: i32 },
    /// The cart was checked out before (a client retrying after a lost answer): its order,
    /// with the status on record (`None` if it is not recorded yet).
    AlreadyCheckedOut {
        order_id: i32,
        status: Option<OrderStatus>,
    },
}

/// Why a checkout did not place its order. Everything it did has been undone (or is left to
/// its timeout), and the cart is open again, unless taking it is what failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// The cart could not be taken: unknown, empty, held by another checkout, store down.
    #[error(transparent)]
    Cart(#[from] StoreError),
    /// The order of a checked-out cart could not be looked up.
    #[error(transparent)]
    Orders(#[from] OrderStoreError),
    /// The product service refused the reservation (out of stock, unknown product): its
    /// status and error body, to pass on.
    #[error("{}", .1.message)]
    StockRefused(StatusCode, ErrorBody),
    /// The authorizer declined the card (402): its error body.
    #[error("payment declined")]
    Declined(ErrorBody),
    /// The authorizer found the card malformed (400): its error body.
    #[error("card rejected by the authorizer")]
    CardRejected(ErrorBody),
    /// The product service or the card authorizer could not be asked.
    #[error(transparent)]
    Dependency(#[from] Unavailable),
    /// The broker certainly did not take the order.
    #[error(transparent)]
    NotPublished(#[from] PublishError),
    /// The checkout's task panicked; its cart is released.
    #[error("checkout task failed: {0}")]
    Crashed(String),
}

/// The checkout over its ports: generic, so the service's instance (`super::Workflow`) is
/// monomorphised over the real clients and tests plug in fakes.
pub struct CheckoutWorkflow<A, P, S> {
    carts: Arc<dyn CartStore>,
    orders: Arc<dyn OrderStore>,
    authorizer: A,
    publisher: P,
    /// `None` when `RESERVE_STOCK=false`.
    stock: Option<S>,
    outcomes: CheckoutOutcomes,
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
    carts: &'a Arc<dyn CartStore>,
    ticket: &'a CheckoutTicket,
    progress: Progress,
    settled: bool,
}

impl Drop for ReleaseOnPanic<'_> {
    fn drop(&mut self) {
        if !self.settled {
            let carts = Arc::clone(self.carts);
            let (ticket, published) = (self.ticket.clone(), self.progress.published);
            // A reservation left behind is returned by the product service's timeout.
            tokio::spawn(async move { carts.abort_checkout(&ticket, published).await });
        }
    }
}

impl<A, P, S> CheckoutWorkflow<A, P, S>
where
    A: CardAuthorizer,
    P: OrderPublishing,
    S: StockHolds,
{
    pub fn new(
        carts: Arc<dyn CartStore>,
        orders: Arc<dyn OrderStore>,
        authorizer: A,
        publisher: P,
        stock: Option<S>,
        metrics: &Metrics,
    ) -> Self {
        Self {
            carts,
            orders,
            authorizer,
            publisher,
            stock,
            outcomes: CheckoutOutcomes::register(metrics),
        }
    }

    /// Checks the cart out with the card: takes the cart, then places its order. A cart
    /// checked out already answers the order it placed.
    pub async fn check_out(
        self: &Arc<Self>,
        cart_id: i32,
        card_number: String,
        request_id: String,
    ) -> Result<Outcome, CheckoutError> {
        let ticket = match self.carts.begin_checkout(cart_id).await {
            Ok(ticket) => ticket,
            // Checked out already (a client whose answer was lost, retrying): the order it
            // placed, rather than an error that hides the order id.
            Err(StoreError::Cart(CartError::AlreadyCheckedOut { order_id, .. })) => {
                let status = self.orders.get(order_id).await?.map(|order| order.status);
                return Ok(Outcome::AlreadyCheckedOut { order_id, status });
            }
            Err(err) => return Err(err.into()),
        };
        // The checkout runs in its own task: if the client hangs up, the order is still either
        // placed or released, never left half-done with the cart stuck in `checking_out`. It
        // carries the request's span, so its calls and its publish stay in the request's trace.
        let placing = Arc::clone(self).place_order(ticket, card_number, request_id);
        let task = tokio::spawn(telemetry::in_current_trace(placing));
        match task.await {
            Ok(result) => result,
            Err(join_error) => Err(CheckoutError::Crashed(join_error.to_string())),
        }
    }

    async fn place_order(
        self: Arc<Self>,
        ticket: CheckoutTicket,
        card_number: String,
        request_id: String,
    ) -> Result<Outcome, CheckoutError> {
        let _in_flight = InFlight::enter(&self.outcomes.in_flight);
        let mut guard = ReleaseOnPanic {
            carts: &self.carts,
            ticket: &ticket,
            progress: Progress::default(),
            settled: false,
        };
        let outcome = self
            .reserve_authorize_publish(&ticket, &card_number, &request_id, &mut guard.progress)
            .await;
        guard.settled = true;
        let progress = guard.progress;
        match outcome {
            Ok(status) => Ok(self.settle(&ticket, status, &request_id).await),
            Err(err) => {
                self.undo(&ticket, progress, &request_id).await;
                Err(err)
            }
        }
    }

    /// The broker has the order (or may have it): records it, closes the cart, confirms the
    /// reservation of a placed order.
    async fn settle(
        &self,
        ticket: &CheckoutTicket,
        status: OrderStatus,
        request_id: &str,
    ) -> Outcome {
        let order = &ticket.order;
        // The record is what `GET /orders/{id}` and a retried checkout report; if it cannot be
        // written now, the warehouse's outcome event writes it later (it carries the order), so
        // the answer stands.
        if let Err(err) = self.orders.record(order, status).await {
            tracing::warn!(%request_id, order_uid = %order.order_uid, error = %err, "order placed but not yet recorded");
        }
        // Either way the cart is done. If it cannot be closed, a retry after the lease takes it
        // over and finds the order recorded.
        if let Err(err) = self.carts.complete_checkout(ticket).await {
            tracing::warn!(%request_id, order_uid = %order.order_uid, error = %err, "order placed but the cart could not be closed");
        }
        if status == OrderStatus::Placed {
            if let Some(stock) = &self.stock {
                stock.confirm(&order.order_uid);
            }
            self.outcomes.confirmed.inc();
        } else {
            self.outcomes.pending.inc();
        }
        tracing::debug!(
            order_id = order.order_id,
            order_uid = %order.order_uid,
            cart_id = ticket.cart_id,
            status = status.as_str(),
            "order placed"
        );
        let order_id = order.order_id;
        if status == OrderStatus::Placed {
            Outcome::Placed { order_id }
        } else {
            Outcome::Pending { order_id }
        }
    }

    /// Undoes a checkout that will not place its order: the reservation, the hold on the cart.
    /// Each step is idempotent; one that fails is left to its timeout (the reservation's TTL,
    /// the cart's lease) rather than failing the answer a second time.
    async fn undo(&self, ticket: &CheckoutTicket, progress: Progress, request_id: &str) {
        let order_uid = &ticket.order.order_uid;
        if progress.reserved {
            if let Some(stock) = &self.stock {
                if let Err(err) = stock.release(order_uid, request_id).await {
                    tracing::warn!(%request_id, %order_uid, error = %err, "failed checkout: its reservation is left to time out");
                }
            }
        }
        // Not `published`: an order whose publish may have reached the queue is never undone
        // (its fate unknown, it is answered pending); only one that certainly did not comes here.
        if let Err(err) = self.carts.abort_checkout(ticket, false).await {
            tracing::warn!(%request_id, cart_id = ticket.cart_id, error = %err, "checkout failed and the cart could not be released");
        }
    }

    /// Reserves the stock, authorizes the card and publishes the order under confirms.
    /// `Placed`: the broker confirmed. `Pending`: the publish's fate is unknown.
    async fn reserve_authorize_publish(
        &self,
        ticket: &CheckoutTicket,
        card_number: &str,
        request_id: &str,
        progress: &mut Progress,
    ) -> Result<OrderStatus, CheckoutError> {
        let order = &ticket.order;
        if let Some(stock) = &self.stock {
            // Before the card: a customer is not charged for what cannot be sold.
            progress.reserved = true;
            match stock.reserve(order, request_id).await {
                Ok(Reservation::Held) => {}
                Ok(Reservation::Refused(status, body)) => {
                    self.outcomes.out_of_stock.inc();
                    return Err(CheckoutError::StockRefused(status, body));
                }
                Err(err) => {
                    self.outcomes.failed.inc();
                    tracing::warn!(%request_id, error = %err, "checkout failed: stock reservation");
                    return Err(err.into());
                }
            }
        }
        let verdict = match self.authorizer.authorize(card_number, request_id).await {
            Ok(verdict) => verdict,
            Err(err) => {
                self.outcomes.failed.inc();
                tracing::warn!(%request_id, error = %err, "checkout failed: card authorizer");
                return Err(err.into());
            }
        };
        match verdict {
            Verdict::Approved => {}
            Verdict::Declined(body) => {
                self.outcomes.declined.inc();
                return Err(CheckoutError::Declined(body));
            }
            Verdict::Rejected(body) => return Err(CheckoutError::CardRejected(body)),
        }
        progress.published = true;
        match self.publisher.publish(order, request_id).await {
            Ok(()) => Ok(OrderStatus::Placed),
            Err(err) if err.certainly_not_enqueued() => {
                self.outcomes.failed.inc();
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
}
