//! The ledger on PostgreSQL (schema `warehouse`, migrations in `services/warehouse/migrations`).
//!
//! A batch is ONE statement, hence one transaction and one round trip: insert the batch's uids
//! with `ON CONFLICT DO NOTHING RETURNING` (the returned uids are the newly applied orders, the
//! rest are duplicates), add the winners' quantities to the product totals, add their count to
//! the order count. Either all of it commits or none of it does, so a crash can never leave a
//! uid recorded without its effect or the reverse.
//!
//! Racing appliers (two writers, two warehouses): a uid being inserted by another open
//! transaction makes the insert wait for it, then skip it if it committed. Rows are locked in
//! one global order (uids sorted, then product ids sorted, then the lane's count row), so two
//! batches can wait for each other but never deadlock.

use super::{quantities, ApplyError, LedgerStore, Outcome, Totals};
use common::messaging::OrderMessage;
use common::store::postgres::{self as pg, PgPool};
use common::store::{StoreKind, StoreUnavailable};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// The service's embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The whole batch. The main query reads `won` first, so every uid is inserted (in sorted order)
/// before the two other data-modifying parts run, which PostgreSQL does after the main query,
/// in the order written.
const APPLY_BATCH: &str = r#"
WITH won AS (
    INSERT INTO applied_orders (order_uid)
    SELECT u FROM UNNEST($1::text[]) AS u ORDER BY u COLLATE "C"
    ON CONFLICT (order_uid) DO NOTHING
    RETURNING order_uid
), sums AS (
    SELECT i.product_id, SUM(i.quantity)::bigint AS quantity
    FROM UNNEST($2::text[], $3::int4[], $4::int8[]) AS i (order_uid, product_id, quantity)
    JOIN won USING (order_uid)
    GROUP BY i.product_id
), products AS (
    INSERT INTO product_totals AS t (lane, product_id, quantity)
    SELECT $5::smallint, product_id, quantity FROM sums ORDER BY product_id
    ON CONFLICT (product_id, lane) DO UPDATE SET quantity = t.quantity + EXCLUDED.quantity
), counted AS (
    INSERT INTO order_counts AS c (lane, orders_processed)
    SELECT $5::smallint, COUNT(*) FROM won HAVING COUNT(*) > 0
    ON CONFLICT (lane) DO UPDATE SET orders_processed = c.orders_processed + EXCLUDED.orders_processed
)
SELECT order_uid FROM won
"#;

/// The order count (the row with a NULL product id) and every product's total, summed over the
/// lanes, in one statement so both come from the same snapshot.
const TOTALS: &str = r#"
SELECT NULL::integer AS product_id, COALESCE(SUM(orders_processed), 0)::bigint AS total
FROM order_counts
UNION ALL
SELECT product_id, SUM(quantity)::bigint FROM product_totals GROUP BY product_id
"#;

/// The longest one batch statement may take before the store counts as unavailable.
const BATCH_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PgLedger {
    pool: PgPool,
}

impl PgLedger {
    /// A ledger on a pool already migrated with [`MIGRATOR`] (see `common::store::postgres::connect`).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// The batch as the statement's parameters: distinct uids, and the items of each uid's first
/// occurrence as three parallel arrays.
#[derive(Default)]
struct Params {
    uids: Vec<String>,
    item_uids: Vec<String>,
    product_ids: Vec<i32>,
    quantities: Vec<i64>,
}

impl Params {
    fn of(orders: &[&OrderMessage]) -> Self {
        let mut params = Self::default();
        let mut seen = HashSet::with_capacity(orders.len());
        for order in orders {
            if !seen.insert(order.order_uid.as_str()) {
                continue;
            }
            params.uids.push(order.order_uid.clone());
            for (product_id, quantity) in quantities(order) {
                params.item_uids.push(order.order_uid.clone());
                params.product_ids.push(product_id);
                params
                    .quantities
                    .push(i64::try_from(quantity).unwrap_or(i64::MAX));
            }
        }
        params
    }
}

#[async_trait::async_trait]
impl LedgerStore for PgLedger {
    fn kind(&self) -> StoreKind {
        StoreKind::Postgres
    }

    async fn apply_batch(
        &self,
        lane: u16,
        orders: &[&OrderMessage],
    ) -> Result<Vec<Outcome>, ApplyError> {
        if orders.is_empty() {
            return Ok(Vec::new());
        }
        let params = Params::of(orders);
        let apply = sqlx::query_scalar(APPLY_BATCH)
            .bind(&params.uids)
            .bind(&params.item_uids)
            .bind(&params.product_ids)
            .bind(&params.quantities)
            .bind(i16::try_from(lane).unwrap_or(i16::MAX))
            .fetch_all(&self.pool);
        // A database that stops answering without closing the connection would hold the writer
        // until the kernel gives up on the socket. Giving up earlier is safe: if the statement
        // did commit, the retry finds every uid applied and only acks.
        let won: Vec<String> = match tokio::time::timeout(BATCH_TIMEOUT, apply).await {
            Ok(result) => result.map_err(classify)?,
            Err(_) => {
                return Err(ApplyError::Unavailable(StoreUnavailable::new(
                    "PostgreSQL",
                    format!("no answer to a batch within {BATCH_TIMEOUT:?}"),
                )))
            }
        };
        let mut won: HashSet<String> = won.into_iter().collect();
        // The first occurrence of a winning uid is the applied one; any later copy a duplicate.
        Ok(orders
            .iter()
            .map(|order| {
                if won.remove(&order.order_uid) {
                    Outcome::Applied
                } else {
                    Outcome::Duplicate
                }
            })
            .collect())
    }

    async fn totals(&self) -> Result<Totals, StoreUnavailable> {
        let rows: Vec<(Option<i32>, i64)> = sqlx::query_as(TOTALS)
            .fetch_all(&self.pool)
            .await
            .map_err(pg::unavailable)?;
        let mut totals = Totals {
            orders_processed: 0,
            products: BTreeMap::new(),
        };
        for (product_id, total) in rows {
            let total = u64::try_from(total).unwrap_or(0);
            match product_id {
                None => totals.orders_processed = total,
                Some(id) => {
                    totals.products.insert(id, total);
                }
            }
        }
        Ok(totals)
    }

    async fn is_applied(&self, order_uid: &str) -> Result<bool, StoreUnavailable> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM applied_orders WHERE order_uid = $1)")
            .bind(order_uid)
            .fetch_one(&self.pool)
            .await
            .map_err(pg::unavailable)
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
