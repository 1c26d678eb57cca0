//! Why a stock operation failed, and the answer each reason gets.

use super::{Item, MAX_STOCK};
use crate::store::CatalogError;
use axum::http::StatusCode;
use common::ApiError;

/// A product a reservation asked more of than there is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortage {
    pub product_id: i32,
    pub requested: i64,
    pub available: i64,
}

/// Why a stock operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StockError {
    #[error("unknown products {0:?}")]
    ProductsNotFound(Vec<i32>),
    #[error("not enough stock: {0:?}")]
    OutOfStock(Vec<Shortage>),
    #[error("reservation {order_uid} holds other items")]
    Mismatch { order_uid: String, held: Vec<Item> },
    #[error("reservation {0} not found")]
    ReservationNotFound(String),
    #[error("reservation {0} is already sold")]
    Committed(String),
    #[error("product {product_id} has {on_hand} on hand, cannot apply {delta}")]
    Insufficient {
        product_id: i32,
        on_hand: i64,
        delta: i64,
    },
    #[error("product {product_id}: a delta of {delta} would take its stock above {MAX_STOCK}")]
    TooMuch { product_id: i32, delta: i64 },
    #[error(transparent)]
    Store(#[from] CatalogError),
}

impl StockError {
    /// A broken invariant found in the store: a bug, never the client's fault.
    pub fn internal(what: impl Into<String>) -> Self {
        Self::Store(CatalogError::Internal(what.into()))
    }
}

fn ids_text(ids: impl Iterator<Item = i32>) -> String {
    ids.map(|id| id.to_string()).collect::<Vec<_>>().join(", ")
}

fn items_text(items: &[Item]) -> String {
    items
        .iter()
        .map(|i| format!("product_id={} quantity={}", i.product_id, i.quantity))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<StockError> for ApiError {
    fn from(err: StockError) -> Self {
        match err {
            StockError::ProductsNotFound(ids) => {
                let noun = if ids.len() == 1 { "product" } else { "products" };
                let details = ids
                    .iter()
                    .map(|id| format!("product_id={id}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                ApiError::not_found(
                    "PRODUCT_NOT_FOUND",
                    format!("{noun} {} not found", ids_text(ids.iter().copied())),
                )
                .with_details(details)
            }
            StockError::OutOfStock(short) => {
                let details = short
                    .iter()
                    .map(|s| {
                        format!(
                            "product_id={} requested={} available={}",
                            s.product_id, s.requested, s.available
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                let noun = if short.len() == 1 { "product" } else { "products" };
                ApiError::new(
                    StatusCode::CONFLICT,
                    "OUT_OF_STOCK",
                    format!(
                        "not enough stock for {noun} {}; nothing was reserved",
                        ids_text(short.iter().map(|s| s.product_id))
                    ),
                )
                .with_details(details)
            }
            StockError::Mismatch { order_uid, held } => ApiError::new(
                StatusCode::CONFLICT,
                "RESERVATION_MISMATCH",
                format!("reservation {order_uid} already exists with other items"),
            )
            .with_details(format!("held: {}", items_text(&held))),
            StockError::ReservationNotFound(uid) => ApiError::not_found(
                "RESERVATION_NOT_FOUND",
                format!("no reservation for order {uid}"),
            ),
            StockError::Committed(uid) => ApiError::new(
                StatusCode::CONFLICT,
                "RESERVATION_COMMITTED",
                format!("reservation {uid} is already sold and cannot be released"),
            ),
            StockError::Insufficient {
                product_id,
                on_hand,
                delta,
            } => ApiError::new(
                StatusCode::CONFLICT,
                "INSUFFICIENT_STOCK",
                format!("product {product_id} has {on_hand} on hand, a delta of {delta} would take it below zero"),
            )
            .with_details(format!("product_id={product_id} on_hand={on_hand} delta={delta}")),
            err @ StockError::TooMuch { .. } => ApiError::invalid_field("delta", err.to_string()),
            StockError::Store(CatalogError::Unavailable(err)) => ApiError::from(err),
            StockError::Store(err) => ApiError::internal(err.to_string()),
        }
    }
}
