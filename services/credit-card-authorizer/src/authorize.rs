//! `POST /credit-card-authorizer/authorize`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use common::auth::Internal;
use common::card;
use common::metrics::Counter;
use common::{ApiError, ApiJson};
use rand::Rng;
use serde::{Deserialize, Serialize};

pub const PATH: &str = "/credit-card-authorizer/authorize";

#[derive(Deserialize)]
pub struct AuthorizeRequest {
    pub credit_card_number: String,
}

// Never derive Debug on the request: it would print the full number.

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Authorization {
    pub authorization_id: String,
    pub status: String,
}

#[derive(Clone)]
pub struct Outcomes {
    pub approved: Counter,
    pub declined: Counter,
}

#[derive(Clone)]
struct AuthorizerState {
    decline_rate: f64,
    outcomes: Outcomes,
}

pub fn router(decline_rate: f64, outcomes: Outcomes) -> Router {
    Router::new()
        .route(PATH, post(authorize))
        .with_state(AuthorizerState {
            decline_rate,
            outcomes,
        })
}

#[tracing::instrument(level = "debug", skip_all, fields(card = %card::mask(&req.credit_card_number)))]
async fn authorize(
    _: Internal,
    State(state): State<AuthorizerState>,
    ApiJson(req): ApiJson<AuthorizeRequest>,
) -> Response {
    if !card::is_valid_format(&req.credit_card_number) {
        return ApiError::bad_request(
            "INVALID_CARD_NUMBER",
            "credit_card_number must look like 1234-5678-9012-3456",
        )
        .with_details("credit_card_number")
        .into_response();
    }
    if state.decline_rate > 0.0 && rand::rng().random::<f64>() < state.decline_rate {
        state.outcomes.declined.inc();
        tracing::debug!("card declined");
        return ApiError::new(
            axum::http::StatusCode::PAYMENT_REQUIRED,
            "PAYMENT_DECLINED",
            "the card was declined",
        )
        .into_response();
    }
    state.outcomes.approved.inc();
    Json(Authorization {
        authorization_id: uuid::Uuid::new_v4().to_string(),
        status: "APPROVED".to_string(),
    })
    .into_response()
}
