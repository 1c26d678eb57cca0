//! The operations: each a function over a [`Working`] set, the same code for both stores.

use super::{Item, Levels, Reservation, Shortage, Status, StockError, MAX_STOCK};
use common::messaging::{OrderEvent, OrderOutcome};
use std::collections::BTreeMap;
use time::OffsetDateTime;

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
