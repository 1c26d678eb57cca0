//! The internal API: stock reservations for the cart's checkout, and stock levels for operators.
//! Not routed by the gateway (the cart calls `PRODUCT_URL` directly) and never failed on
//! purpose: `FAILURE_RATE` is the load-balancer demonstration, this is the checkout's path.
//!
//! | route | answer |
//! | --- | --- |
//! | `POST /internal/reservations` `{order_uid, items}` | 201 held now, 200 already there; 409 `OUT_OF_STOCK` / `RESERVATION_MISMATCH`; 404 `PRODUCT_NOT_FOUND` |
//! | `POST /internal/reservations/{order_uid}/release` | 200 released (also when it already was); 409 `RESERVATION_COMMITTED`; 404 `RESERVATION_NOT_FOUND` |
//! | `POST /internal/reservations/confirm` `{order_uids}` | 200 `{confirmed}` |
//! | `GET /internal/reservations/{order_uid}` | 200 with timestamps; 404 `RESERVATION_NOT_FOUND` |
//! | `GET /internal/products/{id}/stock` | 200 `{product_id, quantity_on_hand, reserved, sold, oversold}`; 404 |
//! | `POST /internal/products/{id}/stock` `{delta}` | 200 the new levels; 409 `INSUFFICIENT_STOCK`; 404 |

use crate::stock::{
    self, AdjustRequest, ConfirmRequest, ReserveRequest, StockError, MAX_CONFIRM_UIDS,
};
use crate::store::StockStore;
use axum::extract::{FromRequestParts, RawPathParams, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use common::auth::{Admin, Internal};
use common::{ApiError, ApiJson, PathId};
use serde_json::{json, Value};
use std::sync::Arc;

type Stock = Arc<dyn StockStore>;

pub fn router(stock: Stock) -> Router {
    Router::new()
        .route("/internal/reservations", post(reserve))
        .route("/internal/reservations/confirm", post(confirm))
        .route("/internal/reservations/{order_uid}", get(reservation))
        .route("/internal/reservations/{order_uid}/release", post(release))
        .route(
            "/internal/products/{product_id}/stock",
            get(levels).post(adjust),
        )
        .with_state(stock)
}

/// The `{order_uid}` segment of a path, percent-decoded.
pub struct PathUid(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathUid {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let invalid =
            || ApiError::invalid_field("order_uid", "the path does not carry an order uid");
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|rejection| invalid().with_details(rejection.body_text()))?;
        let uid = params
            .iter()
            .next()
            .map(|(_, value)| value.to_string())
            .ok_or_else(invalid)?;
        Ok(Self(uid))
    }
}

type Answer = Result<(StatusCode, Json<Value>), ApiError>;

#[tracing::instrument(level = "debug", skip_all, fields(order_uid = %body.order_uid))]
async fn reserve(
    _: Internal,
    State(stock): State<Stock>,
    ApiJson(body): ApiJson<ReserveRequest>,
) -> Answer {
    let (order_uid, items) = body.validate()?;
    let reserved = stock.reserve(&order_uid, &items).await?;
    let status = if reserved.created {
        tracing::debug!(%order_uid, "stock reserved");
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(reserved.reservation.summary())))
}

#[tracing::instrument(level = "debug", skip_all, fields(order_uid = %order_uid))]
async fn release(_: Internal, State(stock): State<Stock>, PathUid(order_uid): PathUid) -> Answer {
    if !stock::could_exist(&order_uid) {
        return Err(StockError::ReservationNotFound(order_uid).into());
    }
    let released = stock.release(&order_uid).await?;
    Ok((StatusCode::OK, Json(released.summary())))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn confirm(
    _: Internal,
    State(stock): State<Stock>,
    ApiJson(body): ApiJson<ConfirmRequest>,
) -> Answer {
    if body.order_uids.len() > MAX_CONFIRM_UIDS {
        return Err(ApiError::invalid_field(
            "order_uids",
            format!(
                "at most {MAX_CONFIRM_UIDS} per call, got {}",
                body.order_uids.len()
            ),
        ));
    }
    let uids: Vec<String> = body
        .order_uids
        .into_iter()
        .filter(|uid| stock::could_exist(uid))
        .collect();
    let confirmed = stock.confirm(&uids).await?;
    Ok((StatusCode::OK, Json(json!({ "confirmed": confirmed }))))
}

#[tracing::instrument(level = "debug", skip_all, fields(order_uid = %order_uid))]
async fn reservation(
    _: Internal,
    State(stock): State<Stock>,
    PathUid(order_uid): PathUid,
) -> Answer {
    let found = if stock::could_exist(&order_uid) {
        stock.reservation(&order_uid).await?
    } else {
        None
    };
    let found = found.ok_or(StockError::ReservationNotFound(order_uid))?;
    Ok((StatusCode::OK, Json(found.detail())))
}

#[tracing::instrument(level = "debug", skip_all, fields(product_id = id))]
async fn levels(_: Internal, State(stock): State<Stock>, PathId(id): PathId) -> Answer {
    let levels = stock
        .levels(id)
        .await?
        .ok_or_else(|| StockError::ProductsNotFound(vec![id]))?;
    Ok((StatusCode::OK, Json(levels.internal_view(id))))
}

#[tracing::instrument(skip_all, fields(product_id = id, delta = body.delta))]
async fn adjust(
    _: Admin,
    State(stock): State<Stock>,
    PathId(id): PathId,
    ApiJson(body): ApiJson<AdjustRequest>,
) -> Answer {
    let levels = stock.adjust(id, body.delta).await?;
    tracing::info!(
        product_id = id,
        delta = body.delta,
        on_hand = levels.on_hand,
        "stock adjusted"
    );
    Ok((StatusCode::OK, Json(levels.internal_view(id))))
}
