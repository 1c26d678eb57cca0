//! Stock and reservations on PostgreSQL (tables `stock` and `reservations`, migration
//! `20261204000001_stock.sql`).
//!
//! Every operation is one transaction that locks what it touches, runs the shared rules of
//! [`crate::stock`] on it, and writes back what changed. Locks are always taken in the same
//! order, so concurrent operations (on one instance or several) never deadlock:
//!
//! 1. reservation rows first, by `order_uid` (byte order: the column is `COLLATE "C"`);
//! 2. then stock rows, by `product_id` (`ORDER BY product_id FOR UPDATE`).
//!
//! The timeout sweep takes its reservations `FOR UPDATE SKIP LOCKED`: several instances sweep
//! together without waiting on each other or on a checkout that is settling the same row. Each
//! transaction is bounded by `STORE_TIMEOUT_MS`, like every other request-path query.
//!
//! Reserving (batched, and the single path it falls back to) is `postgres_reserve.rs`; it uses
//! the helpers here and keeps the same lock order.

use super::postgres::{classify, PgCatalog};
use super::{Reserved, StockStore};
use crate::stock::{
    self, EventTally, Item, Levels, ReleasePlan, Reservation, Status, StockError, Working,
};
use common::messaging::OrderEvent;
use common::store::StoreUnavailable;
use sqlx::{PgConnection, Postgres, Transaction};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use time::OffsetDateTime;

type LevelsRow = (i32, i64, i64, i64, i64, i64);
/// A reservation, and the transaction's `now()`.
type ReservationRow = (
    String,
    String,
    Vec<i32>,
    Vec<i32>,
    OffsetDateTime,
    OffsetDateTime,
    OffsetDateTime,
);

const READ_LEVELS: &str = "SELECT product_id, on_hand, reserved, sold, oversold, received \
     FROM stock WHERE product_id = $1";

const LOCK_LEVELS: &str = "SELECT product_id, on_hand, reserved, sold, oversold, received \
     FROM stock WHERE product_id = ANY($1) ORDER BY product_id FOR UPDATE";

/// The `= ANY($1)` repeats the join on purpose: without it the planner joins the unnested rows
/// to a sequential scan of the whole table (cheaper on paper for a catalog of a thousand
/// products), which in a profile under load took about 5 % of the backends' time; with it, the
/// rows are found by the primary key whatever the catalog's size.
const WRITE_LEVELS: &str = "UPDATE stock AS s SET on_hand = u.on_hand, reserved = u.reserved, \
     sold = u.sold, oversold = u.oversold, received = u.received \
     FROM unnest($1::integer[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], \
                 $6::bigint[]) AS u(product_id, on_hand, reserved, sold, oversold, received) \
     WHERE s.product_id = u.product_id AND s.product_id = ANY($1)";

const READ_RESERVATION: &str = "SELECT order_uid, status, product_ids, quantities, created_at, \
     updated_at, now() FROM reservations WHERE order_uid = $1";

const LOCK_RESERVATION: &str = "SELECT order_uid, status, product_ids, quantities, created_at, \
     updated_at, now() FROM reservations WHERE order_uid = $1 FOR UPDATE";

const LOCK_RESERVATIONS: &str = "SELECT order_uid, status, product_ids, quantities, created_at, \
     updated_at, now() FROM reservations WHERE order_uid = ANY($1) \
     ORDER BY order_uid FOR UPDATE";

/// Held for longer than the timeout (`$1` seconds), oldest first, skipping rows another
/// transaction holds (another instance's sweep, a checkout settling it right now).
const LOCK_EXPIRED: &str = "SELECT order_uid, status, product_ids, quantities, created_at, \
     updated_at, now() FROM reservations \
     WHERE status = 'held' AND updated_at < now() - make_interval(secs => $1) \
     ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED";

const WRITE_RESERVATIONS: &str = "UPDATE reservations AS r SET status = u.status, \
     updated_at = u.updated_at \
     FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS u(order_uid, status, updated_at) \
     WHERE r.order_uid = u.order_uid AND r.order_uid = ANY($1)";

/// Confirming: the reservations' rows are locked in uid order like everywhere else, their
/// statuses read, and only the held ones updated.
///
/// No status test in SQL, on purpose: `status = 'held'` is the predicate of the partial index
/// `reservations_held_since`, and the planner then finds the rows through it, reading the dead
/// entry of every reservation confirmed since the last vacuum. Measured under a checkout load:
/// about 9,000 index entries read per confirm, growing with the table. By the primary key it is
/// one per uid.
const LOCK_FOR_CONFIRM: &str = "SELECT order_uid, status FROM reservations \
     WHERE order_uid = ANY($1) ORDER BY order_uid FOR UPDATE";
const CONFIRM: &str = "UPDATE reservations SET status = 'confirmed', updated_at = now() \
     WHERE order_uid = ANY($1)";

/// A stock operation that got no answer within `timeout`: the store is slow or away (503).
pub(super) fn timed_out(timeout: Duration) -> StockError {
    StockError::Store(
        StoreUnavailable::new("PostgreSQL", format!("no answer within {timeout:?}")).into(),
    )
}

/// Runs `op`, or gives up after `timeout` with [`timed_out`].
pub(super) async fn within<T>(
    timeout: Duration,
    op: impl Future<Output = Result<T, StockError>>,
) -> Result<T, StockError> {
    tokio::time::timeout(timeout, op)
        .await
        .unwrap_or_else(|_| Err(timed_out(timeout)))
}

pub(super) fn db(err: sqlx::Error) -> StockError {
    StockError::Store(classify(err))
}

fn levels_from_row(
    (product_id, on_hand, reserved, sold, oversold, received): LevelsRow,
) -> (i32, Levels) {
    (
        product_id,
        Levels {
            on_hand,
            reserved,
            sold,
            oversold,
            received,
        },
    )
}

fn reservation_from_row(
    (order_uid, status, product_ids, quantities, created_at, updated_at, now): ReservationRow,
) -> Result<(Reservation, OffsetDateTime), StockError> {
    let status = Status::parse(&status).ok_or_else(|| {
        StockError::internal(format!(
            "reservation {order_uid}: unknown status {status:?}"
        ))
    })?;
    if product_ids.len() != quantities.len() {
        return Err(StockError::internal(format!(
            "reservation {order_uid}: items and quantities differ in length"
        )));
    }
    let items = product_ids
        .into_iter()
        .zip(quantities)
        .map(|(product_id, quantity)| Item {
            product_id,
            quantity,
        })
        .collect();
    Ok((
        Reservation {
            order_uid,
            status,
            items,
            created_at,
            updated_at,
        },
        now,
    ))
}

/// Locked reservations by uid, and the transaction's `now()` (if any row came back).
fn reservations_from_rows(
    rows: Vec<ReservationRow>,
) -> Result<(BTreeMap<String, Reservation>, Option<OffsetDateTime>), StockError> {
    let mut now = None;
    let mut reservations = BTreeMap::new();
    for row in rows {
        let (r, at) = reservation_from_row(row)?;
        now = Some(at);
        reservations.insert(r.order_uid.clone(), r);
    }
    Ok((reservations, now))
}

pub(super) async fn lock_levels(
    conn: &mut PgConnection,
    ids: &[i32],
) -> Result<BTreeMap<i32, Levels>, StockError> {
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let rows = sqlx::query_as::<_, LevelsRow>(LOCK_LEVELS)
        .bind(ids)
        .fetch_all(conn)
        .await
        .map_err(db)?;
    Ok(rows.into_iter().map(levels_from_row).collect())
}

pub(super) async fn lock_reservation(
    conn: &mut PgConnection,
    order_uid: &str,
) -> Result<Option<(Reservation, OffsetDateTime)>, StockError> {
    let row = sqlx::query_as::<_, ReservationRow>(LOCK_RESERVATION)
        .bind(order_uid)
        .fetch_optional(conn)
        .await
        .map_err(db)?;
    row.map(reservation_from_row).transpose()
}

/// Writes back the stock rows and reservations an operation changed.
pub(super) async fn write_back(conn: &mut PgConnection, w: &Working) -> Result<(), StockError> {
    let rows = w.changed_rows()?;
    if !rows.is_empty() {
        let column = |f: fn(&Levels) -> i64| rows.iter().map(|(_, l)| f(l)).collect::<Vec<_>>();
        sqlx::query(WRITE_LEVELS)
            .bind(rows.iter().map(|(id, _)| *id).collect::<Vec<i32>>())
            .bind(column(|l| l.on_hand))
            .bind(column(|l| l.reserved))
            .bind(column(|l| l.sold))
            .bind(column(|l| l.oversold))
            .bind(column(|l| l.received))
            .execute(&mut *conn)
            .await
            .map_err(db)?;
    }
    let reservations = w.changed_reservations();
    if !reservations.is_empty() {
        sqlx::query(WRITE_RESERVATIONS)
            .bind(
                reservations
                    .iter()
                    .map(|r| r.order_uid.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(
                reservations
                    .iter()
                    .map(|r| r.status.as_str().to_string())
                    .collect::<Vec<_>>(),
            )
            .bind(
                reservations
                    .iter()
                    .map(|r| r.updated_at)
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *conn)
            .await
            .map_err(db)?;
    }
    Ok(())
}

/// Commits after success; rolls back at once after a failure, so the row locks are let go
/// before the answer leaves (not whenever the pool gets round to it).
pub(super) async fn finish<T>(
    tx: Transaction<'_, Postgres>,
    result: Result<T, StockError>,
) -> Result<T, StockError> {
    match result {
        Ok(value) => {
            tx.commit().await.map_err(db)?;
            Ok(value)
        }
        Err(err) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::debug!(error = %rollback, "rollback after a failed stock operation");
            }
            Err(err)
        }
    }
}

pub(super) fn by_uid(
    reservations: impl IntoIterator<Item = Reservation>,
) -> BTreeMap<String, Reservation> {
    reservations
        .into_iter()
        .map(|r| (r.order_uid.clone(), r))
        .collect()
}

/// Held → confirmed for the held ones among `order_uids`; the rest is left as it is.
async fn confirm_in(conn: &mut PgConnection, order_uids: &[String]) -> Result<u64, StockError> {
    let locked: Vec<(String, String)> = sqlx::query_as(LOCK_FOR_CONFIRM)
        .bind(order_uids)
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
    let held: Vec<String> = locked
        .into_iter()
        .filter(|(_, status)| status == Status::Held.as_str())
        .map(|(uid, _)| uid)
        .collect();
    if held.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query(CONFIRM)
        .bind(&held)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    Ok(done.rows_affected())
}

async fn release_in(conn: &mut PgConnection, order_uid: &str) -> Result<Reservation, StockError> {
    let (existing, now) = lock_reservation(conn, order_uid)
        .await?
        .ok_or_else(|| StockError::ReservationNotFound(order_uid.to_string()))?;
    match stock::plan_release(&existing)? {
        ReleasePlan::Current(reservation) => Ok(reservation),
        ReleasePlan::Release => {
            let ids: Vec<i32> = existing.items.iter().map(|i| i.product_id).collect();
            let rows = lock_levels(conn, &ids).await?;
            let mut released = existing.clone();
            let mut w = Working::new(by_uid([existing]), rows);
            stock::unhold(&mut w.rows, &released.items)?;
            released.status = Status::Released;
            released.updated_at = now;
            w.reservations
                .insert(order_uid.to_string(), released.clone());
            write_back(conn, &w).await?;
            Ok(released)
        }
    }
}

async fn adjust_in(
    conn: &mut PgConnection,
    product_id: i32,
    delta: i64,
) -> Result<Levels, StockError> {
    let rows = lock_levels(conn, &[product_id]).await?;
    let mut w = Working::new(BTreeMap::new(), rows);
    let levels = w
        .rows
        .get_mut(&product_id)
        .ok_or_else(|| StockError::ProductsNotFound(vec![product_id]))?;
    stock::adjust(levels, product_id, delta)?;
    let levels = *levels;
    write_back(conn, &w).await?;
    Ok(levels)
}

async fn expire_in(
    conn: &mut PgConnection,
    ttl: Duration,
    limit: usize,
) -> Result<u64, StockError> {
    let rows = sqlx::query_as::<_, ReservationRow>(LOCK_EXPIRED)
        .bind(ttl.as_secs_f64())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
    let (due, now) = reservations_from_rows(rows)?;
    let Some(now) = now else {
        return Ok(0);
    };
    let rows = lock_levels(conn, &stock::product_ids(due.values())).await?;
    let mut w = Working::new(due, rows);
    let released = stock::expire(&mut w, now)?;
    write_back(conn, &w).await?;
    Ok(released)
}

async fn apply_events_in(
    conn: &mut PgConnection,
    events: &[OrderEvent],
) -> Result<EventTally, StockError> {
    // A uid no reservation can have is unknown without asking (PostgreSQL would refuse a NUL).
    let mut uids: Vec<&str> = events
        .iter()
        .map(|e| e.order_uid.as_str())
        .filter(|uid| stock::could_exist(uid))
        .collect();
    uids.sort_unstable();
    uids.dedup();
    let rows = sqlx::query_as::<_, ReservationRow>(LOCK_RESERVATIONS)
        .bind(&uids)
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
    let (reservations, now) = reservations_from_rows(rows)?;
    let levels = lock_levels(conn, &stock::product_ids(reservations.values())).await?;
    let mut w = Working::new(reservations, levels);
    // Without any known reservation nothing is written, so the time does not matter.
    let tally = stock::apply_events(&mut w, events, now.unwrap_or_else(stock::now))?;
    write_back(conn, &w).await?;
    Ok(tally)
}

impl PgCatalog {
    /// Runs one stock operation within the store timeout: a database that is away or silent
    /// is a fast [`StockError::Store`] (503), never a hang.
    async fn within<T>(
        &self,
        operation: &'static str,
        op: impl Future<Output = Result<T, StockError>>,
    ) -> Result<T, StockError> {
        self.observed
            .observe(operation, within(self.timeout, op))
            .await
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StockError> {
        self.pool.begin().await.map_err(db)
    }
}

#[async_trait::async_trait]
impl StockStore for PgCatalog {
    async fn levels(&self, product_id: i32) -> Result<Option<Levels>, StockError> {
        self.within("levels", async {
            let row = sqlx::query_as::<_, LevelsRow>(READ_LEVELS)
                .bind(product_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
            Ok(row.map(|row| levels_from_row(row).1))
        })
        .await
    }

    async fn adjust(&self, product_id: i32, delta: i64) -> Result<Levels, StockError> {
        self.within("adjust", async {
            let mut tx = self.begin().await?;
            let result = adjust_in(&mut tx, product_id, delta).await;
            finish(tx, result).await
        })
        .await
    }

    async fn reserve(&self, order_uid: &str, items: &[Item]) -> Result<Reserved, StockError> {
        // Batched with the reservations arriving meanwhile (`postgres_reserve.rs`).
        self.within("reserve", self.reserver.reserve(order_uid, items))
            .await
    }

    async fn release(&self, order_uid: &str) -> Result<Reservation, StockError> {
        self.within("release", async {
            let mut tx = self.begin().await?;
            let result = release_in(&mut tx, order_uid).await;
            finish(tx, result).await
        })
        .await
    }

    async fn confirm(&self, order_uids: &[String]) -> Result<u64, StockError> {
        if order_uids.is_empty() {
            return Ok(0);
        }
        self.within("confirm", async {
            let mut tx = self.begin().await?;
            let result = confirm_in(&mut tx, order_uids).await;
            finish(tx, result).await
        })
        .await
    }

    async fn reservation(&self, order_uid: &str) -> Result<Option<Reservation>, StockError> {
        self.within("reservation", async {
            let row = sqlx::query_as::<_, ReservationRow>(READ_RESERVATION)
                .bind(order_uid)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
            Ok(row.map(reservation_from_row).transpose()?.map(|(r, _)| r))
        })
        .await
    }

    async fn expire_held(&self, ttl: Duration, limit: usize) -> Result<u64, StockError> {
        self.within("expire_held", async {
            let mut tx = self.begin().await?;
            let result = expire_in(&mut tx, ttl, limit).await;
            finish(tx, result).await
        })
        .await
    }

    async fn apply_events(&self, events: &[OrderEvent]) -> Result<EventTally, StockError> {
        if events.is_empty() {
            return Ok(EventTally::default());
        }
        self.within("apply_events", async {
            let mut tx = self.begin().await?;
            let result = apply_events_in(&mut tx, events).await;
            finish(tx, result).await
        })
        .await
    }
}
