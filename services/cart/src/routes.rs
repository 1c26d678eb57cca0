//! The cart's HTTP API: create, add, change and remove items, view, checkout.

use crate::carts::{CartError, CartView, CheckoutTicket, StoreError};
use crate::clients::stock::Reservation;
use crate::clients::{Unavailable, Verdict};
use crate::orders::{OrderStatus, OrderStoreError};
use crate::publisher::PublishError;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use common::metrics::{Counter, Metrics};
use common::store::StoreUnavailable;
use common::{card, ApiError, ApiJson, ErrorBody, PathId, RequestId};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub fn router(state: Arc<AppState>) -> Router {
    // `Idempotency-Key` on the two POSTs that are not idempotent by nature.
    let idempotent = from_fn_with_state(state.idempotency.clone(), crate::idempotency::guard);
    Router::new()
        .route(
            "/shopping-cart",
            post(create_cart).route_layer(idempotent.clone()),
        )
        .route("/shopping-carts/{shopping_cart_id}", get(get_cart))
        .route("/shopping-carts/{shopping_cart_id}/addItem", post(add_item))
        .route(
            "/shopping-carts/{shopping_cart_id}/checkout",
            post(checkout).route_layer(idempotent),
        )
        .route(
            "/shopping-carts/{shopping_cart_id}/items/{product_id}",
            patch(set_quantity).delete(remove_item),
        )
        .with_state(state)
}

/// Every way a cart request can fail, mapped once to the contract's responses.
#[derive(Debug, thiserror::Error)]
pub enum CartRouteError {
    #[error(transparent)]
    Cart(#[from] CartError),
    #[error(transparent)]
    /// Already a response: bad input, or an internal failure.
    Api(ApiError),
    #[error("product {0} not found")]
    ProductNotFound(i32),
    #[error(transparent)]
    Dependency(#[from] Unavailable),
    #[error("payment declined")]
    Declined(ErrorBody),
    #[error("card rejected by the authorizer")]
    CardRejected(ErrorBody),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Store(StoreUnavailable),
    #[error("{}", .1.message)]
    /// The product service refused the reservation (out of stock, unknown product): its answer.
    StockRefused(StatusCode, ErrorBody),
    #[error(transparent)]
    Orders(#[from] OrderStoreError),
}

impl From<StoreError> for CartRouteError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Cart(err) => Self::Cart(err),
            StoreError::Unavailable(err) => Self::Store(err),
        }
    }
}

impl IntoResponse for CartRouteError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let err = match self {
            Self::Cart(CartError::NotFound(_)) => ApiError::not_found("CART_NOT_FOUND", message),
            Self::Cart(CartError::AlreadyCheckedOut { order_id, .. }) => {
                ApiError::bad_request("CART_ALREADY_CHECKED_OUT", message)
                    .with_details(format!("order_id={order_id}"))
            }
            Self::Cart(CartError::Empty(_)) => ApiError::bad_request("CART_EMPTY", message),
            Self::Cart(CartError::ItemNotFound { .. }) => {
                ApiError::not_found("ITEM_NOT_FOUND", message)
            }
            Self::Cart(CartError::QuantityOverflow { .. }) => {
                ApiError::invalid_field("quantity", message)
            }
            Self::Cart(CartError::CheckoutInProgress(_)) => {
                ApiError::new(StatusCode::CONFLICT, "CHECKOUT_IN_PROGRESS", message)
            }
            Self::Cart(CartError::OrderPending(_)) => {
                ApiError::new(StatusCode::CONFLICT, "ORDER_PENDING", message)
                    .with_details("retry the checkout: the same order will be placed")
            }
            Self::Cart(CartError::IdsExhausted(_)) => ApiError::internal(message),
            Self::Api(err) => err,
            Self::ProductNotFound(_) => ApiError::not_found("PRODUCT_NOT_FOUND", message),
            Self::Dependency(Unavailable { service, .. }) => ApiError::unavailable(
                if service == "card authorizer" {
                    "PAYMENT_SERVICE_UNAVAILABLE"
                } else {
                    "PRODUCT_SERVICE_UNAVAILABLE"
                },
                message,
            ),
            Self::Declined(body) => ApiError {
                status: StatusCode::PAYMENT_REQUIRED,
                body,
            },
            Self::CardRejected(body) => ApiError {
                status: StatusCode::BAD_REQUEST,
                body,
            },
            Self::Publish(PublishError::Busy(_)) => ApiError::unavailable("BROKER_BUSY", message),
            Self::Publish(_) => ApiError::unavailable("ORDER_NOT_CONFIRMED", message)
                .with_details("nothing was placed and the cart is open; retry the checkout"),
            Self::Store(err) => err.into(),
            Self::StockRefused(status, body) => ApiError { status, body },
            Self::Orders(OrderStoreError::Unavailable(err)) => err.into(),
            Self::Orders(err) => ApiError::internal(err.to_string()),
        };
        err.into_response()
    }
}

#[derive(Deserialize)]
pub struct CreateCart {
    pub customer_id: i32,
}

#[derive(Serialize)]
pub struct CartCreated {
    pub shopping_cart_id: i32,
}

#[tracing::instrument(level = "debug", skip_all, fields(customer_id = body.customer_id))]
async fn create_cart(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<CreateCart>,
) -> Result<(StatusCode, Json<CartCreated>), CartRouteError> {
    if body.customer_id < 1 {
        return Err(CartRouteError::Api(ApiError::invalid_field(
            "customer_id",
            "must be a positive integer",
        )));
    }
    let id = state.carts.create(body.customer_id).await?;
    Ok((
        StatusCode::CREATED,
        Json(CartCreated {
            shopping_cart_id: id,
        }),
    ))
}

#[tracing::instrument(level = "debug", skip_all, fields(cart_id = cart_id))]
async fn get_cart(
    State(state): State<Arc<AppState>>,
    PathId(cart_id): PathId,
) -> Result<Json<CartView>, CartRouteError> {
    Ok(Json(state.carts.view(cart_id).await?))
}

#[derive(Deserialize)]
pub struct AddItem {
    pub product_id: i32,
    pub quantity: i32,
}

#[tracing::instrument(level = "debug", skip_all, fields(cart_id = cart_id, product_id = body.product_id, quantity = body.quantity))]
async fn add_item(
    State(state): State<Arc<AppState>>,
    PathId(cart_id): PathId,
    RequestId(request_id): RequestId,
    ApiJson(body): ApiJson<AddItem>,
) -> Result<StatusCode, CartRouteError> {
    if body.product_id < 1 {
        return Err(CartRouteError::Api(ApiError::invalid_field(
            "product_id",
            "must be a positive integer",
        )));
    }
    if body.quantity < 1 {
        return Err(CartRouteError::Api(ApiError::invalid_field(
            "quantity",
            "must be at least 1",
        )));
    }
    // An unknown cart is a 404 without bothering the product service. A product known to
    // exist needs no asking, and then the store's own answer says whether the cart exists:
    // one store round trip instead of two.
    if !state.products.is_known(body.product_id) {
        if !state.carts.exists(cart_id).await? {
            return Err(CartError::NotFound(cart_id).into());
        }
        if !state.products.exists(body.product_id, &request_id).await? {
            return Err(CartRouteError::ProductNotFound(body.product_id));
        }
    }
    state
        .carts
        .add_item(cart_id, body.product_id, body.quantity)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

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
async fn checkout(
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

#[derive(Deserialize)]
pub struct SetQuantity {
    pub quantity: i32,
}

/// `/shopping-carts/{shopping_cart_id}/items/{product_id}`: both ids, each a positive int32;
/// a bad one is 400 `INVALID_ID` naming it.
pub struct ItemPath {
    pub cart_id: i32,
    pub product_id: i32,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ItemPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let params = axum::extract::RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|rejection| {
                ApiError::bad_request("INVALID_ID", "the path does not carry valid ids")
                    .with_details(rejection.body_text())
            })?;
        let id = |field: &str| {
            let raw = params
                .iter()
                .find_map(|(name, value)| (name == field).then_some(value))
                .unwrap_or_default();
            common::extract::parse_id(raw).map_err(|err| {
                ApiError::bad_request("INVALID_ID", format!("{field}: {}", err.body.message))
                    .with_details(field)
            })
        };
        Ok(Self {
            cart_id: id("shopping_cart_id")?,
            product_id: id("product_id")?,
        })
    }
}

/// `PATCH`: sets the quantity of a product already in the cart. No product service call: the
/// product was checked when it was added.
#[tracing::instrument(level = "debug", skip_all, fields(cart_id = path.cart_id, product_id = path.product_id, quantity = body.quantity))]
async fn set_quantity(
    State(state): State<Arc<AppState>>,
    path: ItemPath,
    ApiJson(body): ApiJson<SetQuantity>,
) -> Result<StatusCode, CartRouteError> {
    if body.quantity < 1 {
        return Err(CartRouteError::Api(ApiError::invalid_field(
            "quantity",
            "must be at least 1 (DELETE the item to remove it)",
        )));
    }
    state
        .carts
        .set_quantity(path.cart_id, path.product_id, body.quantity)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE`: removes a product from the cart.
#[tracing::instrument(level = "debug", skip_all, fields(cart_id = path.cart_id, product_id = path.product_id))]
async fn remove_item(
    State(state): State<Arc<AppState>>,
    path: ItemPath,
) -> Result<StatusCode, CartRouteError> {
    state
        .carts
        .remove_item(path.cart_id, path.product_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
