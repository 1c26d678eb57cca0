//! Reservations on PostgreSQL, in batches: the reservations that arrive while earlier ones are
//! in the database are taken together in one transaction.
//!
//! Why: a reservation alone is five statements and a commit (begin, insert, lock the stock rows,
//! write them back, commit). Measured under a checkout load on 2 cores, PostgreSQL spent about
//! half a millisecond of CPU on each, most of it per statement rather than per row, and the
//! checkout with a reservation reached only 0.4 of the checkout without. A batch costs those
//! statements once for all its reservations.
//!
//! What does not change: each reservation is still all or nothing (one that is short or names
//! an unknown product takes nothing and its row is deleted before the commit), idempotent per
//! uid, and answered exactly as alone. The lock order is the single path's (reservation rows,
//! then stock rows by product id), so batches and every other stock transaction never deadlock
//! on each other. Anything unusual goes to the single path, which is correct on its own:
//!
//! - a uid that already has a reservation (a retry; a second request for a uid in the same
//!   batch): after the batch, alone;
//! - a batch that fails with a database error (a deadlock with a racing insert of the same uid,
//!   a lost connection): every reservation of it again, alone. A batch whose commit did land
//!   before the error is then found by uid and answered as the retry it is.
//!
//! At low load a batch is one reservation and nothing waits: a request goes to the database as
//! soon as the batch slot ([`IN_FLIGHT`]) is free; only while it is busy do requests queue, and
//! the next batch takes all of them (up to [`MAX_BATCH`]).

use super::postgres_stock::{
    by_uid, db, finish, lock_levels, lock_reservation, timed_out, within, write_back,
};
use super::Reserved;
use crate::stock::{self, Item, ReservePlan, StockError, Working};
use common::metrics::{Counter, Metrics};
use sqlx::{PgConnection, PgPool};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Batches in the database at once. One: the fewer batches, the larger each (measured under
/// the reservation benchmark: 4 at once made batches of about 3 reservations and the checkout
/// 0.61 of the one without; 2, 0.64; 1, batches of about 8 and 0.75). A batch only ever waits
/// for transactions that are short and never wait on a batch (an event, a release, a sweep),
/// and every batch is bounded by `STORE_TIMEOUT_MS`.
const IN_FLIGHT: usize = 1;
/// Reservations in one batch at most.
const MAX_BATCH: usize = 64;

/// New reservations in uid order, each one's items as PostgreSQL array literals; the uids that
/// were already there are not returned.
const INSERT_HELD: &str = "INSERT INTO reservations (order_uid, status, product_ids, quantities) \
     SELECT r.order_uid, 'held', r.product_ids::integer[], r.quantities::integer[] \
     FROM unnest($1::text[], $2::text[], $3::text[]) AS r(order_uid, product_ids, quantities) \
     ORDER BY r.order_uid \
     ON CONFLICT (order_uid) DO NOTHING RETURNING order_uid, created_at";

/// The rows of the reservations that could not be held: they never existed for anyone else.
const DELETE_UNHELD: &str = "DELETE FROM reservations WHERE order_uid = ANY($1)";

/// A new reservation, held, at the transaction's `now()`; nothing if the uid exists (then the
/// caller locks and reads it). A concurrent insert of the same uid waits here for the first.
const INSERT_RESERVATION: &str = "INSERT INTO reservations (order_uid, status, product_ids, \
     quantities) VALUES ($1, 'held', $2, $3) ON CONFLICT (order_uid) DO NOTHING \
     RETURNING created_at";

type Answer = Result<Reserved, StockError>;

struct Request {
    order_uid: String,
    items: Vec<Item>,
    reply: oneshot::Sender<Answer>,
}

/// What a batch did with one of its requests.
enum Decided {
    /// Answered in the batch (held, or refused: short, unknown product).
    Answer(Answer),
    /// The uid already had a reservation: run it alone after the batch.
    Alone,
}

#[derive(Clone)]
struct BatchMetrics {
    batches: Counter,
    batched: Counter,
    alone: Counter,
}

/// The handle the store keeps; the collecting task ends when it is dropped.
pub(super) struct ReserveBatcher {
    requests: mpsc::UnboundedSender<Request>,
}

impl ReserveBatcher {
    pub(super) fn start(pool: PgPool, timeout: Duration, metrics: &Metrics) -> Self {
        let metrics = BatchMetrics {
            batches: metrics.counter(
                "product_reservation_batches_total",
                "Transactions that held reservations together (a batch may be one reservation).",
            ),
            batched: metrics.counter(
                "product_reservations_batched_total",
                "Reservations decided in a batch.",
            ),
            alone: metrics.counter(
                "product_reservations_alone_total",
                "Reservations run in a transaction of their own (a retried uid, a failed batch).",
            ),
        };
        let (requests, queue) = mpsc::unbounded_channel();
        tokio::spawn(collect(queue, pool, timeout, metrics));
        Self { requests }
    }

    /// Reserves `items` (validated and normalised) under `order_uid`, in the next batch.
    pub(super) async fn reserve(&self, order_uid: &str, items: &[Item]) -> Answer {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            order_uid: order_uid.to_string(),
            items: items.to_vec(),
            reply,
        };
        if self.requests.send(request).is_err() {
            return Err(StockError::internal("the reservation batcher has stopped"));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(StockError::internal("a reservation batch was dropped")))
    }
}

/// Takes requests off the queue into batches while a slot is free; ends with the queue.
async fn collect(
    mut queue: mpsc::UnboundedReceiver<Request>,
    pool: PgPool,
    timeout: Duration,
    metrics: BatchMetrics,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        // Waiting for a slot is what lets a batch grow: requests queue up meanwhile.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let (pool, metrics) = (pool.clone(), metrics.clone());
        tokio::spawn(async move {
            run_batch(&pool, timeout, batch, &metrics).await;
            drop(slot);
        });
    }
}

async fn run_batch(pool: &PgPool, timeout: Duration, batch: Vec<Request>, metrics: &BatchMetrics) {
    metrics.batches.inc();
    let decided = match tokio::time::timeout(timeout, hold_together(pool, &batch)).await {
        Ok(Ok(decided)) => decided,
        Ok(Err(err)) => {
            tracing::debug!(error = %err, reservations = batch.len(), "a reservation batch failed; running each alone");
            batch.iter().map(|_| Decided::Alone).collect()
        }
        Err(_) => {
            // The database is slow or away: running each alone would only wait again.
            for request in batch {
                let _ = request.reply.send(Err(timed_out(timeout)));
            }
            return;
        }
    };
    let mut alone = Vec::new();
    for (request, decided) in batch.into_iter().zip(decided) {
        match decided {
            Decided::Answer(answer) => {
                metrics.batched.inc();
                // The caller may have given up (its own timeout); the held stock is then
                // released by its checkout's release or by the reservation timeout.
                let _ = request.reply.send(answer);
            }
            Decided::Alone => alone.push(request),
        }
    }
    for request in alone {
        metrics.alone.inc();
        let answer = within(
            timeout,
            reserve_alone(pool, &request.order_uid, &request.items),
        )
        .await;
        let _ = request.reply.send(answer);
    }
}

/// `{1,2,3}`: an integer array literal.
fn array_literal(values: impl Iterator<Item = i32>) -> String {
    let mut out = String::from("{");
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{v}");
    }
    out.push('}');
    out
}

/// Inserts a `held` reservation row for each fresh uid; returns those that were new (a uid
/// already reserved is left to the single path), with their creation times.
async fn insert_held(
    tx: &mut sqlx::PgConnection,
    fresh: &[&Request],
) -> Result<BTreeMap<String, OffsetDateTime>, StockError> {
    let uids: Vec<String> = fresh.iter().map(|r| r.order_uid.clone()).collect();
    let product_ids: Vec<String> = fresh
        .iter()
        .map(|r| array_literal(r.items.iter().map(|i| i.product_id)))
        .collect();
    let quantities: Vec<String> = fresh
        .iter()
        .map(|r| array_literal(r.items.iter().map(|i| i.quantity)))
        .collect();
    let inserted: Vec<(String, OffsetDateTime)> = sqlx::query_as(INSERT_HELD)
        .bind(uids)
        .bind(product_ids)
        .bind(quantities)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
    Ok(inserted.into_iter().collect())
}

/// One transaction for the whole batch. Err only for a database failure (then nothing of it
/// committed, or all of it did: see the module's note).
async fn hold_together(pool: &PgPool, batch: &[Request]) -> Result<Vec<Decided>, StockError> {
    // The first request for a uid is the batch's; a second one in the same batch is a retry.
    let mut seen = HashSet::new();
    let firsts: Vec<bool> = batch
        .iter()
        .map(|r| seen.insert(r.order_uid.as_str()))
        .collect();
    let fresh: Vec<&Request> = batch
        .iter()
        .zip(&firsts)
        .filter_map(|(r, &first)| first.then_some(r))
        .collect();

    let mut tx = pool.begin().await.map_err(db)?;
    let inserted = insert_held(&mut tx, &fresh).await?;

    let product_ids: Vec<i32> = {
        let mut ids: Vec<i32> = fresh
            .iter()
            .filter(|r| inserted.contains_key(&r.order_uid))
            .flat_map(|r| r.items.iter().map(|i| i.product_id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    let mut w = Working::new(BTreeMap::new(), lock_levels(&mut tx, &product_ids).await?);

    // In arrival order, like the single path would have served them.
    let mut unheld = Vec::new();
    let mut decided = Vec::with_capacity(batch.len());
    for (request, &first) in batch.iter().zip(&firsts) {
        let created_at = match inserted.get(&request.order_uid) {
            Some(at) if first => *at,
            _ => {
                decided.push(Decided::Alone);
                continue;
            }
        };
        match stock::hold(&mut w.rows, &request.items) {
            Ok(()) => decided.push(Decided::Answer(Ok(Reserved {
                reservation: stock::held(
                    None,
                    &request.order_uid,
                    request.items.clone(),
                    created_at,
                ),
                created: true,
            }))),
            Err(refused @ (StockError::OutOfStock(_) | StockError::ProductsNotFound(_))) => {
                unheld.push(request.order_uid.clone());
                decided.push(Decided::Answer(Err(refused)));
            }
            Err(other) => return Err(other),
        }
    }
    if !unheld.is_empty() {
        sqlx::query(DELETE_UNHELD)
            .bind(&unheld)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
    }
    write_back(&mut tx, &w).await?;
    tx.commit().await.map_err(db)?;
    Ok(decided)
}

/// The single path: one reservation, in the caller's transaction (also the whole story of a
/// retried uid: idempotent answer, mismatch, or a released one held again).
async fn reserve_in(
    conn: &mut PgConnection,
    order_uid: &str,
    items: &[Item],
) -> Result<Reserved, StockError> {
    let ids: Vec<i32> = items.iter().map(|i| i.product_id).collect();
    let quantities: Vec<i32> = items.iter().map(|i| i.quantity).collect();
    let inserted: Option<OffsetDateTime> = sqlx::query_scalar(INSERT_RESERVATION)
        .bind(order_uid)
        .bind(&ids)
        .bind(&quantities)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
    let (existing, now) = match inserted {
        Some(now) => (None, now),
        None => {
            // Reservations are never deleted: the row that conflicted is there.
            let (r, now) = lock_reservation(conn, order_uid)
                .await?
                .ok_or_else(|| StockError::internal(format!("reservation {order_uid} vanished")))?;
            (Some(r), now)
        }
    };
    match stock::plan_reserve(existing.as_ref(), items)? {
        ReservePlan::Current(reservation) => Ok(Reserved {
            reservation,
            created: false,
        }),
        ReservePlan::Hold => {
            let rows = lock_levels(conn, &ids).await?;
            let is_new = existing.is_none();
            let mut w = Working::new(by_uid(existing.clone()), rows);
            stock::hold(&mut w.rows, items)?;
            let reservation = stock::held(existing, order_uid, items.to_vec(), now);
            // A new one was inserted as it is; only a re-held one needs its row updated, items
            // included (it may be re-held with other items).
            if !is_new {
                w.reservations
                    .insert(order_uid.to_string(), reservation.clone());
                sqlx::query(
                    "UPDATE reservations SET product_ids = $2, quantities = $3 \
                     WHERE order_uid = $1",
                )
                .bind(order_uid)
                .bind(&ids)
                .bind(&quantities)
                .execute(&mut *conn)
                .await
                .map_err(db)?;
            }
            write_back(conn, &w).await?;
            Ok(Reserved {
                reservation,
                created: true,
            })
        }
    }
}

/// One reservation in a transaction of its own (not bounded here: the caller bounds it).
pub(super) async fn reserve_alone(
    pool: &PgPool,
    order_uid: &str,
    items: &[Item],
) -> Result<Reserved, StockError> {
    let mut tx = pool.begin().await.map_err(db)?;
    let result = reserve_in(&mut tx, order_uid, items).await;
    finish(tx, result).await
}

#[cfg(test)]
mod tests {
    use super::array_literal;

    #[test]
    fn array_literals_are_postgres_arrays() {
        assert_eq!(array_literal([1, -2, 30].into_iter()), "{1,-2,30}");
        assert_eq!(array_literal([7].into_iter()), "{7}");
    }
}
