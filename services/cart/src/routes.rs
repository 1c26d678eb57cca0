//! The cart's HTTP API: create, add, change and remove items, view; the checkout's handler and
//! workflow are in [`crate::checkout`].

use crate::carts::{CartError, CartView, StoreError};
use crate::checkout;
use crate::clients::Unavailable;
use crate::orders::OrderStoreError;
use crate::publisher::PublishError;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use common::auth::Principal;
use common::store::StoreUnavailable;
use common::{ApiError, ApiJson, ErrorBody, PathId, RequestId};
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
            post(checkout::checkout).route_layer(idempotent),
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
    principal: Principal,
    ApiJson(body): ApiJson<CreateCart>,
) -> Result<(StatusCode, Json<CartCreated>), CartRouteError> {
    if body.customer_id < 1 {
        return Err(CartRouteError::Api(ApiError::invalid_field(
            "customer_id",
            "must be a positive integer",
        )));
    }
    principal
        .act_for(body.customer_id)
        .map_err(CartRouteError::Api)?;
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
    principal: Principal,
    PathId(cart_id): PathId,
) -> Result<Json<CartView>, CartRouteError> {
    let view = state.carts.view(cart_id).await?;
    principal
        .act_for(view.customer_id)
        .map_err(CartRouteError::Api)?;
    Ok(Json(view))
}

/// Refuses a customer's credential on another customer's cart (403); an unknown cart is 404.
/// Administrators (and `AUTH_MODE=off`) skip the lookup.
pub(crate) async fn authorize_cart(
    state: &AppState,
    principal: &Principal,
    cart_id: i32,
) -> Result<(), CartRouteError> {
    if !principal.is_customer_bound() {
        return Ok(());
    }
    match state.carts.owner(cart_id).await? {
        None => Err(CartError::NotFound(cart_id).into()),
        Some(owner) => principal.act_for(owner).map_err(CartRouteError::Api),
    }
}

#[derive(Deserialize)]
pub struct AddItem {
    pub product_id: i32,
    pub quantity: i32,
}

#[tracing::instrument(level = "debug", skip_all, fields(cart_id = cart_id, product_id = body.product_id, quantity = body.quantity))]
async fn add_item(
    State(state): State<Arc<AppState>>,
    principal: Principal,
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
    authorize_cart(&state, &principal, cart_id).await?;
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
    principal: Principal,
    path: ItemPath,
    ApiJson(body): ApiJson<SetQuantity>,
) -> Result<StatusCode, CartRouteError> {
    if body.quantity < 1 {
        return Err(CartRouteError::Api(ApiError::invalid_field(
            "quantity",
            "must be at least 1 (DELETE the item to remove it)",
        )));
    }
    authorize_cart(&state, &principal, path.cart_id).await?;
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
    principal: Principal,
    path: ItemPath,
) -> Result<StatusCode, CartRouteError> {
    authorize_cart(&state, &principal, path.cart_id).await?;
    state
        .carts
        .remove_item(path.cart_id, path.product_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
