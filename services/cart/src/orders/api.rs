//! The orders API: read an order, list a customer's orders, cancel an order.

use super::{Order, OrderStatus, OrderStore, OrderStoreError};
use crate::publisher::PublishError;
use crate::AppState;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::auth::Principal;
use common::extract::parse_id;
use common::messaging::{CancelMessage, CancelReason};
use common::{ApiError, PathId, RequestId};
use serde::Serialize;
use std::sync::Arc;
use time::OffsetDateTime;

pub const DEFAULT_PAGE: usize = 20;
pub const MAX_PAGE: usize = 100;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/orders/{order_id}", get(get_order))
        .route("/orders/{order_id}/cancel", post(cancel_order))
        .route("/customers/{customer_id}/orders", get(list_orders))
        .with_state(state)
}

#[derive(Debug, thiserror::Error)]
pub enum OrderRouteError {
    #[error("order {0} not found")]
    NotFound(i32),
    #[error("order {0} was already fulfilled by the warehouse; it can no longer be cancelled")]
    AlreadyFulfilled(i32),
    #[error("the cancel of order {order_id} could not be handed to the broker: {source}")]
    CancelNotPublished { order_id: i32, source: PublishError },
    #[error(transparent)]
    Store(#[from] OrderStoreError),
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl IntoResponse for OrderRouteError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let err = match self {
            Self::NotFound(_) => ApiError::not_found("ORDER_NOT_FOUND", message),
            Self::AlreadyFulfilled(_) => {
                ApiError::new(StatusCode::CONFLICT, "ORDER_ALREADY_FULFILLED", message)
            }
            Self::CancelNotPublished { .. } => ApiError::unavailable("BROKER_UNAVAILABLE", message)
                .with_details("the order is unchanged; retry the cancel"),
            Self::Store(OrderStoreError::Unavailable(err)) => err.into(),
            Self::Store(err @ OrderStoreError::IdTaken { .. }) => {
                ApiError::internal(err.to_string())
            }
            Self::Api(err) => err,
        };
        err.into_response()
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(order_id = order_id))]
async fn get_order(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    PathId(order_id): PathId,
) -> Result<Json<Order>, OrderRouteError> {
    match state.orders.get(order_id).await? {
        Some(order) => {
            principal.act_for(order.customer_id)?;
            Ok(Json(order))
        }
        None => Err(OrderRouteError::NotFound(order_id)),
    }
}

#[derive(Debug, Serialize)]
pub struct OrderPage {
    pub items: Vec<Order>,
    /// Pass as `cursor` for the next (older) page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `limit` (1..=100, default 20) and `cursor` (from a previous page) from the query string.
pub fn page_params(query: Option<&str>) -> Result<(usize, Option<i32>), ApiError> {
    let (mut limit, mut cursor) = (DEFAULT_PAGE, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid_field("limit", format!("must be 1..={MAX_PAGE}"))
                    })?;
            }
            "cursor" => {
                cursor = Some(parse_id(value).map_err(|_| {
                    ApiError::invalid_field("cursor", "must be a cursor from a previous page")
                })?);
            }
            // Unknown parameters are ignored, as most APIs do (caches and tracking add them).
            _ => {}
        }
    }
    Ok((limit, cursor))
}

#[tracing::instrument(level = "debug", skip_all, fields(customer_id = customer_id))]
async fn list_orders(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    PathId(customer_id): PathId,
    RawQuery(query): RawQuery,
) -> Result<Json<OrderPage>, OrderRouteError> {
    principal.act_for(customer_id)?;
    let (limit, cursor) = page_params(query.as_deref())?;
    // One more than asked says whether there is a next page without a second query.
    let mut items = state
        .orders
        .list_for_customer(customer_id, cursor, limit + 1)
        .await?;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|o| o.order_id.to_string())
    } else {
        None
    };
    Ok(Json(OrderPage { items, next_cursor }))
}

/// Asks the warehouse, over the broker, to cancel the order. 202 while the cancel travels
/// (status `cancelling`; `GET /orders/{id}` shows the outcome), 200 if it is already cancelled.
#[tracing::instrument(level = "debug", skip_all, fields(order_id = order_id))]
async fn cancel_order(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    PathId(order_id): PathId,
    RequestId(request_id): RequestId,
) -> Result<(StatusCode, Json<Order>), OrderRouteError> {
    let order = state
        .orders
        .get(order_id)
        .await?
        .ok_or(OrderRouteError::NotFound(order_id))?;
    principal.act_for(order.customer_id)?;
    match order.status {
        OrderStatus::Fulfilled => return Err(OrderRouteError::AlreadyFulfilled(order_id)),
        OrderStatus::Cancelled => return Ok((StatusCode::OK, Json(order))),
        // Asked before: the cancel is on its way (publishing it again would be harmless, but
        // it is not needed: the first one was confirmed).
        OrderStatus::Cancelling => return Ok((StatusCode::ACCEPTED, Json(order))),
        OrderStatus::Pending | OrderStatus::Placed => {}
    }
    let order = request_cancel(
        state.orders.as_ref(),
        &state.publisher,
        &order,
        CancelReason::Customer,
        &request_id,
    )
    .await?;
    let status = match order.status {
        OrderStatus::Cancelled => StatusCode::OK,
        OrderStatus::Fulfilled => return Err(OrderRouteError::AlreadyFulfilled(order_id)),
        _ => StatusCode::ACCEPTED,
    };
    Ok((status, Json(order)))
}

/// Publishes a cancel under confirms, then records `cancelling`. In that order: a cancel that
/// was recorded but never sent would leave the order `cancelling` for ever.
pub async fn request_cancel(
    orders: &dyn OrderStore,
    publisher: &crate::publisher::OrderPublisher,
    order: &Order,
    reason: CancelReason,
    request_id: &str,
) -> Result<Order, OrderRouteError> {
    let cancel = CancelMessage {
        order_uid: order.order_uid.clone(),
        order_id: order.order_id,
        reason,
        requested_at: OffsetDateTime::now_utc(),
    };
    publisher
        .publish_cancel(&cancel, request_id)
        .await
        .map_err(|source| OrderRouteError::CancelNotPublished {
            order_id: order.order_id,
            source,
        })?;
    let now = orders.mark_cancelling(&order.order_uid, reason).await?;
    Ok(now.unwrap_or_else(|| order.clone()))
}
