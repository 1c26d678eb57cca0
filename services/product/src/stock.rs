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

use crate::store::CatalogError;
use axum::http::StatusCode;
use common::messaging::{OrderEvent, OrderOutcome};
use common::ApiError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;

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

/// Where a reservation stands. `held` and `confirmed` hold stock in `reserved`; `released` gave
/// it back to `on_hand`; `committed` sold it. Only `held` is ever released by the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Held,
    Confirmed,
    Released,
    Committed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Confirmed => "confirmed",
            Self::Released => "released",
            Self::Committed => "committed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "held" => Some(Self::Held),
            "confirmed" => Some(Self::Confirmed),
            "released" => Some(Self::Released),
            "committed" => Some(Self::Committed),
            _ => None,
        }
    }
}

/// One checkout's hold on stock, under its order uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub order_uid: String,
    pub status: Status,
    /// Normalised: one line per product, sorted by product id.
    pub items: Vec<Item>,
    pub created_at: OffsetDateTime,
    /// When the status last changed; for a `held` reservation, since when it is held (what the
    /// timeout counts from).
    pub updated_at: OffsetDateTime,
}

#[derive(Serialize)]
struct Summary<'a> {
    order_uid: &'a str,
    status: Status,
    items: &'a [Item],
}

#[derive(Serialize)]
struct Detail<'a> {
    order_uid: &'a str,
    status: Status,
    items: &'a [Item],
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
}

impl Reservation {
    /// `{order_uid, status, items}`: the answer to a reserve or a release.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::to_value(Summary {
            order_uid: &self.order_uid,
            status: self.status,
            items: &self.items,
        })
        .unwrap_or_default()
    }

    /// `{order_uid, status, items, created_at, updated_at}`: the answer to a `GET`.
    pub fn detail(&self) -> serde_json::Value {
        serde_json::to_value(Detail {
            order_uid: &self.order_uid,
            status: self.status,
            items: &self.items,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
        .unwrap_or_default()
    }
}

/// The current time at PostgreSQL's precision (microseconds), so both stores answer alike.
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap_or(now)
}

/// One product's stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    pub on_hand: i64,
    pub reserved: i64,
    pub sold: i64,
    pub oversold: i64,
    /// Initial stock plus every adjustment: what `on_hand + reserved + sold` always adds up to.
    pub received: i64,
}

impl Levels {
    pub fn new(stock: i64) -> Self {
        Self {
            on_hand: stock,
            reserved: 0,
            sold: 0,
            oversold: 0,
            received: stock,
        }
    }

    /// The invariant.
    pub fn is_balanced(&self) -> bool {
        self.on_hand >= 0
            && self.reserved >= 0
            && self.sold >= 0
            && self.oversold >= 0
            && self.on_hand + self.reserved + self.sold == self.received
    }

    /// `GET /products/{id}/stock`.
    pub fn public_view(&self, product_id: i32) -> serde_json::Value {
        serde_json::json!({ "product_id": product_id, "quantity_on_hand": self.on_hand })
    }

    /// `GET /internal/products/{id}/stock`.
    pub fn internal_view(&self, product_id: i32) -> serde_json::Value {
        serde_json::json!({
            "product_id": product_id,
            "quantity_on_hand": self.on_hand,
            "reserved": self.reserved,
            "sold": self.sold,
            "oversold": self.oversold,
        })
    }
}

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

/// What one operation touches: the reservations and stock rows it loaded (locked), and the same
/// as loaded, to tell what changed.
#[derive(Debug, Clone, Default)]
pub struct Working {
    pub reservations: BTreeMap<String, Reservation>,
    pub rows: BTreeMap<i32, Levels>,
    loaded_reservations: BTreeMap<String, Reservation>,
    loaded_rows: BTreeMap<i32, Levels>,
}

impl Working {
    pub fn new(reservations: BTreeMap<String, Reservation>, rows: BTreeMap<i32, Levels>) -> Self {
        Self {
            loaded_reservations: reservations.clone(),
            loaded_rows: rows.clone(),
            reservations,
            rows,
        }
    }

    /// The reservations to write back.
    pub fn changed_reservations(&self) -> Vec<&Reservation> {
        self.reservations
            .values()
            .filter(|r| self.loaded_reservations.get(&r.order_uid) != Some(*r))
            .collect()
    }

    /// The stock rows to write back, each checked against the invariant first.
    pub fn changed_rows(&self) -> Result<Vec<(i32, Levels)>, StockError> {
        let mut changed = Vec::new();
        for (&id, levels) in &self.rows {
            if self.loaded_rows.get(&id) == Some(levels) {
                continue;
            }
            if !levels.is_balanced() {
                return Err(StockError::internal(format!(
                    "product {id}: stock out of balance: {levels:?}"
                )));
            }
            changed.push((id, *levels));
        }
        Ok(changed)
    }
}

/// What a reserve does with the reservation already under its uid (if any).
#[derive(Debug)]
pub enum ReservePlan {
    /// Answer it as it is (200): an idempotent retry.
    Current(Reservation),
    /// Take the stock (201): a new reservation, or one released earlier and asked for again.
    Hold,
}

pub fn plan_reserve(
    existing: Option<&Reservation>,
    items: &[Item],
) -> Result<ReservePlan, StockError> {
    match existing {
        None => Ok(ReservePlan::Hold),
        // A released one holds nothing, so it may be asked for again with other items: a cart
        // whose checkout failed for certain (declined, not published) keeps its order uid and
        // may change before the next attempt.
        Some(r) if r.status == Status::Released => Ok(ReservePlan::Hold),
        Some(r) if r.items != items => Err(StockError::Mismatch {
            order_uid: r.order_uid.clone(),
            held: r.items.clone(),
        }),
        Some(r) => Ok(ReservePlan::Current(r.clone())),
    }
}

/// Takes every item from `on_hand` into `reserved`, or none: unknown products first (404), then
/// every shortage (409), both checked before anything moves.
pub fn hold(rows: &mut BTreeMap<i32, Levels>, items: &[Item]) -> Result<(), StockError> {
    let missing: Vec<i32> = items
        .iter()
        .map(|i| i.product_id)
        .filter(|id| !rows.contains_key(id))
        .collect();
    if !missing.is_empty() {
        return Err(StockError::ProductsNotFound(missing));
    }
    let short: Vec<Shortage> = items
        .iter()
        .filter_map(|item| {
            let available = rows.get(&item.product_id)?.on_hand;
            (available < i64::from(item.quantity)).then_some(Shortage {
                product_id: item.product_id,
                requested: i64::from(item.quantity),
                available,
            })
        })
        .collect();
    if !short.is_empty() {
        return Err(StockError::OutOfStock(short));
    }
    for item in items {
        let levels = row(rows, item.product_id)?;
        let q = i64::from(item.quantity);
        levels.on_hand -= q;
        levels.reserved += q;
    }
    Ok(())
}

/// The reservation after a successful [`hold`]: new, or the released one held again (its
/// `created_at` kept, its timeout counted from now).
pub fn held(
    existing: Option<Reservation>,
    order_uid: &str,
    items: Vec<Item>,
    now: OffsetDateTime,
) -> Reservation {
    match existing {
        Some(mut r) => {
            r.status = Status::Held;
            r.items = items;
            r.updated_at = now;
            r
        }
        None => Reservation {
            order_uid: order_uid.to_string(),
            status: Status::Held,
            items,
            created_at: now,
            updated_at: now,
        },
    }
}

/// What a release does.
#[derive(Debug)]
pub enum ReleasePlan {
    /// Already released: answer it as it is.
    Current(Reservation),
    /// Give its stock back.
    Release,
}

pub fn plan_release(r: &Reservation) -> Result<ReleasePlan, StockError> {
    match r.status {
        Status::Held | Status::Confirmed => Ok(ReleasePlan::Release),
        Status::Released => Ok(ReleasePlan::Current(r.clone())),
        Status::Committed => Err(StockError::Committed(r.order_uid.clone())),
    }
}

fn row(rows: &mut BTreeMap<i32, Levels>, product_id: i32) -> Result<&mut Levels, StockError> {
    rows.get_mut(&product_id)
        .ok_or_else(|| StockError::internal(format!("no stock row for product {product_id}")))
}

/// `reserved` → `on_hand` for every item of a held or confirmed reservation.
pub fn unhold(rows: &mut BTreeMap<i32, Levels>, items: &[Item]) -> Result<(), StockError> {
    for item in items {
        let levels = row(rows, item.product_id)?;
        let q = i64::from(item.quantity);
        if levels.reserved < q {
            return Err(StockError::internal(format!(
                "product {}: releasing {q} but only {} reserved",
                item.product_id, levels.reserved
            )));
        }
        levels.reserved -= q;
        levels.on_hand += q;
    }
    Ok(())
}

/// `reserved` → `sold` for every item of a held or confirmed reservation.
pub fn sell_held(rows: &mut BTreeMap<i32, Levels>, items: &[Item]) -> Result<(), StockError> {
    for item in items {
        let levels = row(rows, item.product_id)?;
        let q = i64::from(item.quantity);
        if levels.reserved < q {
            return Err(StockError::internal(format!(
                "product {}: selling {q} reserved units but only {} reserved",
                item.product_id, levels.reserved
            )));
        }
        levels.reserved -= q;
        levels.sold += q;
    }
    Ok(())
}

/// `on_hand` → `sold` for a reservation that was released before the order was fulfilled: what
/// is on hand is taken, the shortfall goes to `oversold`. Returns the shortfall.
pub fn sell_from_hand(rows: &mut BTreeMap<i32, Levels>, items: &[Item]) -> Result<i64, StockError> {
    let mut shortfall = 0;
    for item in items {
        let levels = row(rows, item.product_id)?;
        let q = i64::from(item.quantity);
        let taken = q.min(levels.on_hand);
        levels.on_hand -= taken;
        levels.sold += taken;
        levels.oversold = levels
            .oversold
            .checked_add(q - taken)
            .ok_or_else(|| StockError::internal("oversold overflows"))?;
        shortfall += q - taken;
    }
    Ok(shortfall)
}

/// Adds `delta` (maybe negative) to `on_hand` and `received`.
pub fn adjust(levels: &mut Levels, product_id: i32, delta: i64) -> Result<(), StockError> {
    let on_hand = levels.on_hand.checked_add(delta);
    let received = levels.received.checked_add(delta);
    match (on_hand, received) {
        (Some(on_hand), _) if on_hand < 0 => Err(StockError::Insufficient {
            product_id,
            on_hand: levels.on_hand,
            delta,
        }),
        (Some(on_hand), Some(received)) if received <= MAX_STOCK => {
            levels.on_hand = on_hand;
            levels.received = received;
            Ok(())
        }
        (None, _) if delta < 0 => Err(StockError::Insufficient {
            product_id,
            on_hand: levels.on_hand,
            delta,
        }),
        _ => Err(StockError::TooMuch { product_id, delta }),
    }
}

/// Releases every `held` reservation of the working set (those the store found past the
/// timeout; one confirmed meanwhile is left alone). Returns how many.
pub fn expire(w: &mut Working, now: OffsetDateTime) -> Result<u64, StockError> {
    let mut released = 0;
    for r in w.reservations.values_mut() {
        if r.status != Status::Held {
            continue;
        }
        unhold(&mut w.rows, &r.items)?;
        r.status = Status::Released;
        r.updated_at = now;
        released += 1;
    }
    Ok(released)
}

/// What one message of fulfilment events did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EventTally {
    /// Held or confirmed reservations sold.
    pub committed: u64,
    /// Released reservations sold from what was on hand (the timeout fired first).
    pub sold_after_release: u64,
    /// Units of those that were not on hand.
    pub oversold_units: u64,
    /// Held or confirmed reservations released by a cancellation.
    pub released: u64,
    /// Events that changed nothing (a redelivery, a cancel of a released reservation).
    pub unchanged: u64,
    /// Events for an order uid without a reservation (a checkout without reservations).
    pub unknown: u64,
    /// Cancellations of sold reservations (left sold: the warehouse picks one outcome).
    pub cancelled_after_commit: Vec<String>,
    /// Orders that were sold with a shortfall, and its units.
    pub oversold: Vec<(String, i64)>,
}

/// Applies one message's events in order. Idempotent: a redelivered event finds its
/// reservation already settled and changes nothing; an older event never undoes a newer state.
pub fn apply_events(
    w: &mut Working,
    events: &[OrderEvent],
    now: OffsetDateTime,
) -> Result<EventTally, StockError> {
    let mut tally = EventTally::default();
    for event in events {
        let Some(r) = w.reservations.get_mut(&event.order_uid) else {
            tally.unknown += 1;
            continue;
        };
        match (event.outcome, r.status) {
            (OrderOutcome::Fulfilled, Status::Held | Status::Confirmed) => {
                sell_held(&mut w.rows, &r.items)?;
                r.status = Status::Committed;
                r.updated_at = now;
                tally.committed += 1;
            }
            (OrderOutcome::Fulfilled, Status::Released) => {
                let shortfall = sell_from_hand(&mut w.rows, &r.items)?;
                r.status = Status::Committed;
                r.updated_at = now;
                tally.sold_after_release += 1;
                if shortfall > 0 {
                    tally.oversold_units += shortfall.unsigned_abs();
                    tally.oversold.push((r.order_uid.clone(), shortfall));
                }
            }
            (OrderOutcome::Cancelled, Status::Held | Status::Confirmed) => {
                unhold(&mut w.rows, &r.items)?;
                r.status = Status::Released;
                r.updated_at = now;
                tally.released += 1;
            }
            (OrderOutcome::Cancelled, Status::Committed) => {
                tally.cancelled_after_commit.push(r.order_uid.clone());
            }
            (OrderOutcome::Fulfilled, Status::Committed)
            | (OrderOutcome::Cancelled, Status::Released) => tally.unchanged += 1,
        }
    }
    Ok(tally)
}

/// The product ids a set of reservations touches, sorted (the order stock rows are locked in).
pub fn product_ids<'a>(reservations: impl Iterator<Item = &'a Reservation>) -> Vec<i32> {
    let mut ids: Vec<i32> = reservations
        .flat_map(|r| r.items.iter().map(|i| i.product_id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(product_id: i32, quantity: i32) -> Item {
        Item {
            product_id,
            quantity,
        }
    }

    fn rows(levels: &[(i32, i64)]) -> BTreeMap<i32, Levels> {
        levels
            .iter()
            .map(|&(id, stock)| (id, Levels::new(stock)))
            .collect()
    }

    fn detail_field(err: ApiError) -> Option<String> {
        err.body.details
    }

    #[test]
    fn items_are_merged_sorted_and_checked() {
        let merged = normalise(&[item(7, 1), item(3, 2), item(7, 4)]).expect("valid");
        assert_eq!(merged, vec![item(3, 2), item(7, 5)]);
        assert_eq!(
            detail_field(normalise(&[]).unwrap_err()).as_deref(),
            Some("items")
        );
        assert_eq!(
            detail_field(normalise(&[item(1, 1), item(0, 1)]).unwrap_err()).as_deref(),
            Some("items[1].product_id")
        );
        assert_eq!(
            detail_field(normalise(&[item(1, 0)]).unwrap_err()).as_deref(),
            Some("items[0].quantity")
        );
        let huge = normalise(&[item(1, i32::MAX), item(1, 1)]).unwrap_err();
        assert_eq!(detail_field(huge).as_deref(), Some("items"));
    }

    #[test]
    fn order_uids_are_checked() {
        assert!(check_order_uid("a").is_ok());
        assert!(check_order_uid(&"u".repeat(64)).is_ok());
        for bad in ["", "  ", "a\u{0}b", "a\nb"] {
            assert!(check_order_uid(bad).is_err(), "{bad:?}");
        }
        assert!(check_order_uid(&"é".repeat(65)).is_err());
    }

    #[test]
    fn hold_is_all_or_nothing_and_names_every_problem() {
        let mut r = rows(&[(1, 5), (2, 1), (3, 0)]);
        let before = r.clone();
        let err = hold(&mut r, &[item(1, 2), item(2, 2), item(3, 1)]).unwrap_err();
        match err {
            StockError::OutOfStock(short) => assert_eq!(
                short,
                vec![
                    Shortage {
                        product_id: 2,
                        requested: 2,
                        available: 1
                    },
                    Shortage {
                        product_id: 3,
                        requested: 1,
                        available: 0
                    }
                ]
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(r, before, "nothing moved");
        let api = ApiError::from(hold(&mut r, &[item(2, 2), item(3, 1)]).expect_err("short"));
        assert_eq!(api.status, StatusCode::CONFLICT);
        assert_eq!(
            api.body.details.as_deref(),
            Some("product_id=2 requested=2 available=1; product_id=3 requested=1 available=0")
        );
        let missing = hold(&mut r, &[item(1, 1), item(9, 1)]).unwrap_err();
        assert!(matches!(missing, StockError::ProductsNotFound(ref ids) if ids == &[9]));
        assert_eq!(r, before);
        hold(&mut r, &[item(1, 5), item(2, 1)]).expect("enough");
        assert_eq!(r[&1].on_hand, 0);
        assert_eq!(r[&1].reserved, 5);
        assert!(r.values().all(Levels::is_balanced));
    }

    #[test]
    fn selling_a_released_reservation_counts_the_shortfall() {
        let mut r = rows(&[(1, 3), (2, 0)]);
        let short = sell_from_hand(&mut r, &[item(1, 5), item(2, 1)]).expect("sold");
        assert_eq!(short, 3);
        assert_eq!(r[&1].on_hand, 0);
        assert_eq!(r[&1].sold, 3);
        assert_eq!(r[&1].oversold, 2);
        assert_eq!(r[&2].oversold, 1);
        assert!(r.values().all(Levels::is_balanced));
    }

    #[test]
    fn adjustments_keep_stock_within_bounds() {
        let mut l = Levels::new(5);
        adjust(&mut l, 1, -5).expect("to zero");
        assert_eq!((l.on_hand, l.received), (0, 0));
        assert!(matches!(
            adjust(&mut l, 1, -1),
            Err(StockError::Insufficient { on_hand: 0, .. })
        ));
        assert!(matches!(
            adjust(&mut l, 1, i64::MIN),
            Err(StockError::Insufficient { .. })
        ));
        assert!(matches!(
            adjust(&mut l, 1, MAX_STOCK + 1),
            Err(StockError::TooMuch { .. })
        ));
        assert!(matches!(
            adjust(&mut l, 1, i64::MAX),
            Err(StockError::TooMuch { .. })
        ));
        adjust(&mut l, 1, MAX_STOCK).expect("up to the cap");
        assert!(l.is_balanced());
    }

    fn reservation(uid: &str, status: Status, items: Vec<Item>) -> Reservation {
        let t = now();
        Reservation {
            order_uid: uid.into(),
            status,
            items,
            created_at: t,
            updated_at: t,
        }
    }

    fn event(uid: &str, outcome: OrderOutcome) -> OrderEvent {
        OrderEvent {
            order_uid: uid.into(),
            order_id: 1,
            outcome,
            reason: None,
            order: None,
        }
    }

    #[test]
    fn events_settle_reservations_once() {
        let mut levels = rows(&[(1, 10)]);
        hold(&mut levels, &[item(1, 2)]).expect("hold a");
        hold(&mut levels, &[item(1, 3)]).expect("hold b");
        let reservations = [
            reservation("a", Status::Held, vec![item(1, 2)]),
            reservation("b", Status::Confirmed, vec![item(1, 3)]),
            reservation("c", Status::Released, vec![item(1, 10)]),
        ]
        .into_iter()
        .map(|r| (r.order_uid.clone(), r))
        .collect();
        let mut w = Working::new(reservations, levels);
        let events = [
            event("a", OrderOutcome::Fulfilled),
            event("b", OrderOutcome::Cancelled),
            event("c", OrderOutcome::Fulfilled),
            event("zzz", OrderOutcome::Fulfilled),
            event("a", OrderOutcome::Fulfilled),
            event("a", OrderOutcome::Cancelled),
        ];
        let tally = apply_events(&mut w, &events, now()).expect("applied");
        assert_eq!(tally.committed, 1);
        assert_eq!(tally.released, 1);
        assert_eq!(tally.sold_after_release, 1);
        assert_eq!(
            tally.oversold_units, 2,
            "10 wanted, 8 on hand after b's release"
        );
        assert_eq!(tally.unknown, 1);
        assert_eq!(tally.unchanged, 1);
        assert_eq!(tally.cancelled_after_commit, vec!["a".to_string()]);
        let l = w.rows[&1];
        assert_eq!((l.on_hand, l.reserved, l.sold, l.oversold), (0, 0, 10, 2));
        assert_eq!(w.changed_reservations().len(), 3);
        // The same message again changes nothing.
        let mut again = Working::new(w.reservations.clone(), w.rows.clone());
        apply_events(&mut again, &events, now()).expect("applied");
        assert!(again.changed_reservations().is_empty());
        assert!(again.changed_rows().expect("balanced").is_empty());
    }

    #[test]
    fn reserve_plans() {
        let items = vec![item(1, 2)];
        assert!(matches!(plan_reserve(None, &items), Ok(ReservePlan::Hold)));
        for (status, hold_again) in [
            (Status::Held, false),
            (Status::Confirmed, false),
            (Status::Committed, false),
            (Status::Released, true),
        ] {
            let r = reservation("u", status, items.clone());
            let plan = plan_reserve(Some(&r), &items).expect("same items");
            assert_eq!(matches!(plan, ReservePlan::Hold), hold_again, "{status:?}");
            let other = plan_reserve(Some(&r), &[item(1, 3)]);
            if status == Status::Released {
                assert!(matches!(other, Ok(ReservePlan::Hold)), "{other:?}");
            } else {
                assert!(
                    matches!(other, Err(StockError::Mismatch { .. })),
                    "{other:?}"
                );
            }
        }
        let committed = reservation("u", Status::Committed, items);
        assert!(matches!(
            plan_release(&committed),
            Err(StockError::Committed(_))
        ));
    }
}
