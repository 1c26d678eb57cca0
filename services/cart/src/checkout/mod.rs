//! The checkout: `POST /shopping-carts/{id}/checkout`.
//!
//! - this module: the HTTP side. It checks the request, hands it to the workflow and maps the
//!   workflow's [`Outcome`] and [`CheckoutError`] to the contract's answers: 200 `placed` once
//!   the broker confirmed, 202 `pending` when the publish's fate is unknown.
//! - [`workflow`]: the checkout itself (take the cart, reserve, authorize, publish under
//!   confirms, record and close the cart; undo exactly what a failed one did).
//! - [`ports`]: the small traits the workflow needs from the authorizer, the publisher and the
//!   stock reservations, implemented for the real clients.

pub mod ports;
pub mod workflow;

use crate::carts::CartError;
use crate::clients::stock::StockReservations;
use crate::clients::Authorizer;
use crate::orders::OrderStatus;
use crate::publisher::OrderPublisher;
use crate::routes::CartRouteError;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use common::auth::Principal;
use common::{card, ApiError, ApiJson, PathId, RequestId};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub use workflow::{CheckoutError, CheckoutOutcomes, CheckoutWorkflow, Outcome};

/// The service's checkout: the workflow over the real clients.
pub type Workflow = CheckoutWorkflow<Authorizer, OrderPublisher, StockReservations>;

#[derive(Deserialize)]
pub struct Checkout {
    pub credit_card_number: String,
}

/// The checkout's answer: 200 once the broker confirmed the order; 202 with `status: pending`
/// when the publish's fate is unknown (`GET /orders/{id}` settles it). The HTTP view of an
/// [`Outcome`], not the order message the broker carries.
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

impl From<Outcome> for OrderPlaced {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Placed { order_id } => Self {
                order_id,
                status: Some(OrderStatus::Placed),
            },
            Outcome::Pending { order_id } => Self {
                order_id,
                status: Some(OrderStatus::Pending),
            },
            Outcome::AlreadyCheckedOut { order_id, status } => Self { order_id, status },
        }
    }
}

impl From<CheckoutError> for CartRouteError {
    fn from(err: CheckoutError) -> Self {
        match err {
            CheckoutError::Cart(err) => err.into(),
            CheckoutError::Orders(err) => Self::Orders(err),
            CheckoutError::StockRefused(status, body) => Self::StockRefused(status, body),
            CheckoutError::Declined(body) => Self::Declined(body),
            CheckoutError::CardRejected(body) => Self::CardRejected(body),
            CheckoutError::Dependency(err) => Self::Dependency(err),
            CheckoutError::NotPublished(err) => Self::Publish(err),
            crashed @ CheckoutError::Crashed(_) => {
                Self::Api(ApiError::internal(crashed.to_string()))
            }
        }
    }
}

// Per-request spans and the per-order line are DEBUG: at thousands of checkouts a second, a log
// line each costs more CPU than the checkout's own logic. Failures are logged at WARN; counts
// are on /metrics.
#[tracing::instrument(level = "debug", skip_all, fields(cart_id = cart_id, card = %card::mask(&body.credit_card_number)))]
pub(crate) async fn checkout(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    PathId(cart_id): PathId,
    RequestId(request_id): RequestId,
    ApiJson(body): ApiJson<Checkout>,
) -> Result<(StatusCode, Json<OrderPlaced>), CartRouteError> {
    crate::routes::authorize_cart(&state, &principal, cart_id).await?;
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
    let outcome = state
        .checkout
        .check_out(cart_id, body.credit_card_number, request_id)
        .await?;
    Ok(OrderPlaced::from(outcome).response())
}

#[cfg(test)]
mod tests {
    use super::{OrderPlaced, Outcome};
    use crate::orders::OrderStatus;
    use axum::http::StatusCode;

    fn code(outcome: Outcome) -> StatusCode {
        OrderPlaced::from(outcome).response().0
    }

    #[test]
    fn placed_is_200_pending_is_202_and_a_retry_answers_as_its_order_stands() {
        let order_id = 7;
        assert_eq!(code(Outcome::Placed { order_id }), StatusCode::OK);
        assert_eq!(code(Outcome::Pending { order_id }), StatusCode::ACCEPTED);
        let retried = |status| code(Outcome::AlreadyCheckedOut { order_id, status });
        assert_eq!(retried(Some(OrderStatus::Pending)), StatusCode::ACCEPTED);
        assert_eq!(retried(Some(OrderStatus::Fulfilled)), StatusCode::OK);
        // Not recorded yet: 200 and no status field.
        assert_eq!(retried(None), StatusCode::OK);
        let body = OrderPlaced::from(Outcome::AlreadyCheckedOut {
            order_id,
            status: None,
        });
        assert_eq!(
            serde_json::to_value(body).ok(),
            Some(serde_json::json!({ "order_id": 7 }))
        );
    }
}
