//! The ledger on PostgreSQL (schema `warehouse`, migrations in `services/warehouse/migrations`).
//!
//! A batch is ONE statement, hence one transaction and one round trip: insert one outcome row
//! per uid of the batch (its first entry's: `fulfilled` for an order, `cancelled` for a cancel)
//! with `ON CONFLICT DO NOTHING RETURNING` (the returned uids are the ones this batch decided,
//! the rest already had an outcome), add the fulfilled winners' quantities to the product totals,
//! and add the winners to the lane's fulfilled and cancelled counts. Either all of it commits or
//! none of it does, so a crash can never leave an outcome recorded without its effect or the
//! reverse.
//!
//! Racing appliers (two writers, two warehouses, an order and its cancel on two channels): a uid
//! being inserted by another open transaction makes the insert wait for it, then skip it if it
//! committed. The unique index is the one arbiter, so a uid gets exactly one outcome. Rows are
//! locked in one global order (uids sorted, then product ids sorted, then the lane's count row),
//! so two batches can wait for each other but never deadlock.
//!
//! Only a batch with uids it did not decide pays a second statement: reading back their
//! recorded outcomes. It runs after the commit, in a snapshot of its own, so it also sees the
//! rows of the concurrent transactions the insert waited for (which the insert's own snapshot
//! cannot); recorded rows never change, so reading them later is as good as reading them inside.

use super::{quantities, ApplyError, Entry, LedgerStore, Outcome, Recorded, Totals};
use common::messaging::{CancelReason, OrderMessage, OrderOutcome};
use common::metrics::Metrics;
use common::store::postgres::{self as pg, PgPool};
use common::store::{StoreKind, StoreMetrics, StoreUnavailable};
use std::collections::hash_map::Entry as MapEntry;
use std::collections::HashMap;
use std::time::Duration;

/// The service's embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The whole batch. The main query reads `won` first, so every uid is inserted (in sorted order)
/// before the two other data-modifying parts run, which PostgreSQL does after the main query,
/// in the order written. Only orders have items, so a cancel that wins adds no quantity.
const APPLY_BATCH: &str = r#"
WITH won AS (
    INSERT INTO applied_orders (order_uid, outcome, reason, order_id, order_body)
    SELECT u.order_uid, u.outcome, u.reason, u.order_id, u.order_body
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int4[], $5::text[])
        AS u (order_uid, outcome, reason, order_id, order_body)
    ORDER BY u.order_uid COLLATE "C"
    ON CONFLICT (order_uid) DO NOTHING
    RETURNING order_uid, outcome
), sums AS (
    SELECT i.product_id, SUM(i.quantity)::bigint AS quantity
    FROM UNNEST($6::text[], $7::int4[], $8::int8[]) AS i (order_uid, product_id, quantity)
    JOIN won USING (order_uid)
    GROUP BY i.product_id
), products AS (
    INSERT INTO product_totals AS t (lane, product_id, quantity)
    SELECT $9::smallint, product_id, quantity FROM sums ORDER BY product_id
    ON CONFLICT (product_id, lane) DO UPDATE SET quantity = t.quantity + EXCLUDED.quantity
), counted AS (
    INSERT INTO order_counts AS c (lane, orders_processed, orders_cancelled)
    SELECT $9::smallint,
           COUNT(*) FILTER (WHERE outcome = 'fulfilled'),
           COUNT(*) FILTER (WHERE outcome = 'cancelled')
    FROM won HAVING COUNT(*) > 0
    ON CONFLICT (lane) DO UPDATE SET
        orders_processed = c.orders_processed + EXCLUDED.orders_processed,
        orders_cancelled = c.orders_cancelled + EXCLUDED.orders_cancelled
)
SELECT order_uid FROM won
"#;

/// The recorded outcomes of the uids a batch did not decide.
const RECORDED: &str = r#"
SELECT order_uid, outcome, reason, order_body FROM applied_orders WHERE order_uid = ANY($1::text[])
"#;

/// The order counts (rows without a product id) and every product's total, summed over the
/// lanes, in one statement so all come from the same snapshot.
const TOTALS: &str = r#"
SELECT 'fulfilled' AS kind, NULL::integer AS product_id,
       COALESCE(SUM(orders_processed), 0)::bigint AS total
FROM order_counts
UNION ALL
SELECT 'cancelled', NULL, COALESCE(SUM(orders_cancelled), 0)::bigint FROM order_counts
UNION ALL
SELECT 'product', product_id, SUM(quantity)::bigint FROM product_totals GROUP BY product_id
"#;

/// The longest one batch statement may take before the store counts as unavailable.
const BATCH_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PgLedger {
    pool: PgPool,
    observed: StoreMetrics,
}

impl PgLedger {
    /// The recorded outcomes of the uids a batch did not decide (decided before, elsewhere).
    async fn read_recorded(
        &self,
        undecided: &[&String],
    ) -> Result<HashMap<String, Row>, ApplyError> {
        let mut rows: HashMap<String, Row> = HashMap::new();
        if undecided.is_empty() {
            return Ok(rows);
        }
        let read: Vec<(String, String, Option<String>, Option<String>)> = self
            .bounded(
                "read_recorded",
                sqlx::query_as(RECORDED)
                    .bind(undecided)
                    .fetch_all(&self.pool),
            )
            .await?;
        for (uid, outcome, reason, body) in read {
            let Some(outcome) = parse_outcome(&outcome) else {
                return Err(ApplyError::Refused(format!(
                    "order {uid} has an unknown recorded outcome {outcome:?}"
                )));
            };
            let reason = reason.as_deref().and_then(parse_reason);
            rows.insert(
                uid,
                Row {
                    outcome,
                    reason,
                    body,
                },
            );
        }
        Ok(rows)
    }

    /// A ledger on a pool already migrated with [`MIGRATOR`] (see `common::store::postgres::connect`).
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            observed: StoreMetrics::default(),
        }
    }

    /// Times the batch statements into `store_operation_seconds{store="postgres"}`.
    pub fn observed(mut self, metrics: &Metrics) -> Self {
        self.observed = StoreMetrics::new(metrics, "postgres");
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs a query under [`BATCH_TIMEOUT`]. A database that stops answering without closing the
    /// connection would hold the writer until the kernel gives up on the socket. Giving up
    /// earlier is safe: if the batch did commit, the retry finds every uid recorded and only
    /// reads the outcomes back.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        query: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, ApplyError> {
        let bounded = async {
            match tokio::time::timeout(BATCH_TIMEOUT, query).await {
                Ok(result) => result.map_err(classify),
                Err(_) => Err(ApplyError::Unavailable(StoreUnavailable::new(
                    "PostgreSQL",
                    format!("no answer to a batch within {BATCH_TIMEOUT:?}"),
                ))),
            }
        };
        self.observed.observe(operation, bounded).await
    }
}

/// The batch as the statement's parameters: one candidate row per distinct uid (its first
/// entry), and the items of the candidate orders as three parallel arrays.
#[derive(Default)]
struct Params {
    uids: Vec<String>,
    outcomes: Vec<&'static str>,
    reasons: Vec<Option<&'static str>>,
    order_ids: Vec<i32>,
    bodies: Vec<Option<String>>,
    item_uids: Vec<String>,
    product_ids: Vec<i32>,
    quantities: Vec<i64>,
}

impl Params {
    /// The parameters, and the index of each uid's first entry.
    fn of<'a>(entries: &'a [Entry<'a>]) -> (Self, HashMap<&'a str, usize>) {
        let mut params = Self::default();
        let mut first = HashMap::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            match first.entry(entry.uid()) {
                MapEntry::Occupied(_) => continue,
                MapEntry::Vacant(vacant) => {
                    vacant.insert(index);
                }
            }
            params.uids.push(entry.uid().to_string());
            params.outcomes.push(outcome_name(entry.outcome()));
            params.reasons.push(entry.reason().map(reason_name));
            match entry {
                Entry::Order(order) => {
                    params.order_ids.push(order.order_id);
                    params.bodies.push(serde_json::to_string(order).ok());
                    for (product_id, quantity) in quantities(order) {
                        params.item_uids.push(order.order_uid.clone());
                        params.product_ids.push(product_id);
                        params
                            .quantities
                            .push(i64::try_from(quantity).unwrap_or(i64::MAX));
                    }
                }
                Entry::Cancel(cancel) => {
                    params.order_ids.push(cancel.order_id);
                    params.bodies.push(None);
                }
            }
        }
        (params, first)
    }
}

/// Only errors about the data itself are final: a data exception (SQLSTATE class 22), an
/// integrity violation (23) or a program limit such as an oversize index row (54). Anything else
/// (connection lost, pool timeout, deadlock, server shutting down, even a missing table) may pass
/// and is retried, so a good order is never dead-lettered because of the store's state.
fn classify(err: sqlx::Error) -> ApplyError {
    let refused = match &err {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| ["22", "23", "54"].iter().any(|c| code.starts_with(c))),
        _ => false,
    };
    if refused {
        ApplyError::Refused(err.to_string())
    } else {
        ApplyError::Unavailable(pg::unavailable(err))
    }
}

/// The outcome as the `outcome` column spells it.
fn outcome_name(outcome: OrderOutcome) -> &'static str {
    match outcome {
        OrderOutcome::Fulfilled => "fulfilled",
        OrderOutcome::Cancelled => "cancelled",
    }
}

fn parse_outcome(name: &str) -> Option<OrderOutcome> {
    match name {
        "fulfilled" => Some(OrderOutcome::Fulfilled),
        "cancelled" => Some(OrderOutcome::Cancelled),
        _ => None,
    }
}

/// The reason as the `reason` column spells it: its wire name.
fn reason_name(reason: CancelReason) -> &'static str {
    match reason {
        CancelReason::Customer => "customer",
        CancelReason::NotConfirmed => "not_confirmed",
    }
}

fn parse_reason(name: &str) -> Option<CancelReason> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// A recorded row read back.
struct Row {
    outcome: OrderOutcome,
    reason: Option<CancelReason>,
    body: Option<String>,
}

#[async_trait::async_trait]
impl LedgerStore for PgLedger {
    fn kind(&self) -> StoreKind {
        StoreKind::Postgres
    }

    async fn apply_batch(
        &self,
        lane: u16,
        entries: &[Entry<'_>],
    ) -> Result<Vec<Recorded>, ApplyError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let (params, first) = Params::of(entries);
        let won: Vec<String> = self
            .bounded(
                "apply_batch",
                sqlx::query_scalar(APPLY_BATCH)
                    .bind(&params.uids)
                    .bind(&params.outcomes)
                    .bind(&params.reasons)
                    .bind(&params.order_ids)
                    .bind(&params.bodies)
                    .bind(&params.item_uids)
                    .bind(&params.product_ids)
                    .bind(&params.quantities)
                    .bind(i16::try_from(lane).unwrap_or(i16::MAX))
                    .fetch_all(&self.pool),
            )
            .await?;
        let won: std::collections::HashSet<String> = won.into_iter().collect();
        let undecided: Vec<&String> = params.uids.iter().filter(|u| !won.contains(*u)).collect();
        let rows = self.read_recorded(&undecided).await?;
        entries
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                let uid = entry.uid();
                if won.contains(uid) {
                    // Decided here, by the uid's first entry in this batch.
                    let decider = entries[first.get(uid).copied().unwrap_or(index)];
                    return Ok(Recorded {
                        outcome: Outcome::of(
                            entry.outcome(),
                            decider.outcome(),
                            first.get(uid) == Some(&index),
                        ),
                        reason: decider.reason(),
                        order: None,
                    });
                }
                let Some(row) = rows.get(uid) else {
                    // Only a row deleted since the insert conflicted with it (a retention job):
                    // a retry decides the uid afresh.
                    return Err(ApplyError::Unavailable(StoreUnavailable::new(
                        "PostgreSQL",
                        format!("the recorded outcome of order {uid} vanished; retrying"),
                    )));
                };
                let order = match entry {
                    Entry::Cancel(_) => row
                        .body
                        .as_deref()
                        .and_then(|body| OrderMessage::from_json(body.as_bytes()).ok()),
                    Entry::Order(_) => None,
                };
                Ok(Recorded {
                    outcome: Outcome::of(entry.outcome(), row.outcome, false),
                    reason: row.reason,
                    order,
                })
            })
            .collect()
    }

    async fn totals(&self) -> Result<Totals, StoreUnavailable> {
        let rows: Vec<(String, Option<i32>, i64)> = sqlx::query_as(TOTALS)
            .fetch_all(&self.pool)
            .await
            .map_err(pg::unavailable)?;
        let mut totals = Totals::default();
        for (kind, product_id, total) in rows {
            let total = u64::try_from(total).unwrap_or(0);
            match (kind.as_str(), product_id) {
                ("fulfilled", _) => totals.orders_processed = total,
                ("cancelled", _) => totals.orders_cancelled = total,
                (_, Some(id)) => {
                    totals.products.insert(id, total);
                }
                (_, None) => {}
            }
        }
        Ok(totals)
    }

    async fn outcome(&self, order_uid: &str) -> Result<Option<OrderOutcome>, StoreUnavailable> {
        let outcome: Option<String> =
            sqlx::query_scalar("SELECT outcome FROM applied_orders WHERE order_uid = $1")
                .bind(order_uid)
                .fetch_optional(&self.pool)
                .await
                .map_err(pg::unavailable)?;
        Ok(outcome.as_deref().and_then(parse_outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_column_name_that_parses_back() {
        for reason in [CancelReason::Customer, CancelReason::NotConfirmed] {
            assert_eq!(parse_reason(reason_name(reason)), Some(reason));
            // The column holds the wire name.
            assert_eq!(
                serde_json::to_value(reason).ok(),
                Some(serde_json::Value::String(reason_name(reason).to_string()))
            );
        }
        for outcome in [OrderOutcome::Fulfilled, OrderOutcome::Cancelled] {
            assert_eq!(parse_outcome(outcome_name(outcome)), Some(outcome));
        }
    }
}
