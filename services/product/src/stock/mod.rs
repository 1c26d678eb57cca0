//! Stock and reservations: the rules, written once for both stores.
//!
//! Every product has `on_hand` (free to reserve), `reserved` (held for checkouts not settled
//! yet), `sold`, and `received` (its initial stock plus every adjustment). At all times
//! `on_hand + reserved + sold == received`, and none is negative (PostgreSQL checks both on every
//! row). `oversold` counts the units the warehouse fulfilled beyond what was on hand: an order
//! whose reservation was released (by its timeout) before the warehouse fulfilled it takes what
//! is on hand into `sold` and records the shortfall there. Those units are *not* in `sold`, which
//! only counts units taken from stock, so the invariant holds and the oversell is visible on its
//! own (a column, `GET /internal/products/{id}/stock`, a metric and a warning).
//!
//! A store loads what an operation touches into a [`Working`] set (PostgreSQL: the rows locked
//! `FOR UPDATE`; memory: copies taken under its lock), runs the functions here on it, and writes
//! back what changed, only if the whole operation succeeded. The decisions are the same code on
//! both stores, and an operation that fails half-way changes nothing.

use common::ApiError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod error;
mod model;
mod rules;

pub use error::{Shortage, StockError};
pub use model::{now, Levels, Reservation, Status};
pub use rules::{
    adjust, apply_events, expire, held, hold, plan_release, plan_reserve, product_ids,
    sell_from_hand, sell_held, unhold, EventTally, ReleasePlan, ReservePlan, Working,
};

/// The most stock a product may have (`received`): far beyond any real warehouse, far below
/// where 64-bit arithmetic could overflow.
pub const MAX_STOCK: i64 = 1_000_000_000_000;
/// The longest order uid accepted (the cart's are 36-character UUIDs).
pub const MAX_ORDER_UID_CHARS: usize = 64;
/// The most uids one confirm call may carry.
pub const MAX_CONFIRM_UIDS: usize = 1000;

/// One line of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub product_id: i32,
    pub quantity: i32,
}

/// The body of `POST /internal/reservations`.
#[derive(Debug, Deserialize)]
pub struct ReserveRequest {
    pub order_uid: String,
    pub items: Vec<Item>,
}

impl ReserveRequest {
    /// The uid and the normalised items (see [`normalise`]); the error names the field.
    pub fn validate(self) -> Result<(String, Vec<Item>), ApiError> {
        check_order_uid(&self.order_uid)?;
        let items = normalise(&self.items)?;
        Ok((self.order_uid, items))
    }
}

/// The body of `POST /internal/reservations/confirm`.
#[derive(Debug, Deserialize)]
pub struct ConfirmRequest {
    pub order_uids: Vec<String>,
}

/// The body of `POST /internal/products/{id}/stock`.
#[derive(Debug, Deserialize)]
pub struct AdjustRequest {
    pub delta: i64,
}

/// A non-empty uid of at most [`MAX_ORDER_UID_CHARS`] characters without control characters
/// (PostgreSQL text cannot hold NUL; a newline in an id only ever hides a bug).
pub fn check_order_uid(uid: &str) -> Result<(), ApiError> {
    if uid.trim().is_empty() {
        return Err(ApiError::invalid_field("order_uid", "must not be empty"));
    }
    let len = uid.chars().count();
    if len > MAX_ORDER_UID_CHARS {
        return Err(ApiError::invalid_field(
            "order_uid",
            format!("must be at most {MAX_ORDER_UID_CHARS} characters, got {len}"),
        ));
    }
    if uid.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            "order_uid",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Whether a reservation could exist under `uid`. Anything else (say, a NUL that PostgreSQL text
/// cannot even hold) is answered as absent without asking the store, so both stores agree.
pub fn could_exist(uid: &str) -> bool {
    check_order_uid(uid).is_ok()
}

/// Checks the items and returns them with duplicates of a product summed, sorted by product id:
/// the canonical form a reservation is stored, compared and answered in. (Summing rather than
/// refusing duplicates: they mean the same units, and a retry that lists them differently is
/// still the same reservation.)
pub fn normalise(items: &[Item]) -> Result<Vec<Item>, ApiError> {
    if items.is_empty() {
        return Err(ApiError::invalid_field(
            "items",
            "must hold at least one item",
        ));
    }
    let mut merged: BTreeMap<i32, i64> = BTreeMap::new();
    for (index, item) in items.iter().enumerate() {
        if item.product_id < 1 {
            return Err(ApiError::invalid_field(
                &format!("items[{index}].product_id"),
                format!("must be at least 1, got {}", item.product_id),
            ));
        }
        if item.quantity < 1 {
            return Err(ApiError::invalid_field(
                &format!("items[{index}].quantity"),
                format!("must be at least 1, got {}", item.quantity),
            ));
        }
        *merged.entry(item.product_id).or_default() += i64::from(item.quantity);
    }
    merged
        .into_iter()
        .map(|(product_id, quantity)| {
            let quantity = i32::try_from(quantity).map_err(|_| {
                ApiError::invalid_field(
                    "items",
                    format!(
                        "the quantities of product {product_id} add up to {quantity}, more than {}",
                        i32::MAX
                    ),
                )
            })?;
            Ok(Item {
                product_id,
                quantity,
            })
        })
        .collect()
}

/// A stock level given at creation (`quantity_on_hand`, `SEED_STOCK`).
pub fn check_initial_stock(value: i64) -> Result<(), String> {
    if value < 0 {
        return Err(format!("must not be negative, got {value}"));
    }
    if value > MAX_STOCK {
        return Err(format!("must be at most {MAX_STOCK}, got {value}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
