//! Orders in PostgreSQL (schema `orders`, migrations in `services/cart/migrations`): shared by
//! every cart instance and kept across restarts.
//!
//! Every transition is one statement guarded by the status it leaves, so concurrent writers
//! (the checkout, a cancel, the events consumer, another instance's settler) never move an
//! order backwards: a final status is only ever written over a status that is not final.

use super::{parse_reason, reason_str, Order, OrderStatus, OrderStore, OrderStoreError};
use crate::carts::{line_items, LineItem};
use common::messaging::{CancelReason, OrderEvent, OrderItem, OrderMessage};
use common::metrics::Metrics;
use common::store::postgres::{self as pg, PgPool};
use common::store::{StoreKind, StoreMetrics, StoreUnavailable};
use sqlx::Row;
use time::OffsetDateTime;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const COLUMNS: &str = "order_id, order_uid, shopping_cart_id, customer_id, items::text AS items, \
                       status, cancel_reason, created_at, updated_at";

/// Records orders the store never saw (their writer died after the publish) with the outcome,
/// then moves every order that is not final to its outcome. Two statements, one transaction.
const RECORD_UNKNOWN: &str = r#"
INSERT INTO orders (order_id, order_uid, shopping_cart_id, customer_id, items, status,
                    cancel_reason, created_at)
SELECT * FROM UNNEST($1::int4[], $2::text[], $3::int4[], $4::int4[], $5::text[]::jsonb[],
                     $6::text[], $7::text[], $8::timestamptz[])
ON CONFLICT DO NOTHING
"#;

const APPLY_OUTCOMES: &str = r#"
UPDATE orders AS o
SET status = e.status,
    cancel_reason = COALESCE(e.reason, o.cancel_reason),
    updated_at = now()
FROM UNNEST($1::text[], $2::text[], $3::text[]) AS e (order_uid, status, reason)
WHERE o.order_uid = e.order_uid AND o.status NOT IN ('fulfilled', 'cancelled')
"#;

pub struct PgOrderStore {
    pool: PgPool,
    observed: StoreMetrics,
}

impl PgOrderStore {
    /// A store on a pool already migrated with [`MIGRATOR`].
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            observed: StoreMetrics::default(),
        }
    }

    /// Times the request-path queries into `store_operation_seconds{store="postgres"}`.
    pub fn observed(mut self, metrics: &Metrics) -> Self {
        self.observed = StoreMetrics::new(metrics, "postgres");
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn unavailable(err: sqlx::Error) -> OrderStoreError {
    OrderStoreError::Unavailable(pg::unavailable(err))
}

fn corrupt(what: impl std::fmt::Display) -> OrderStoreError {
    OrderStoreError::Unavailable(StoreUnavailable::new(
        "postgresql",
        format!("unreadable order row: {what}"),
    ))
}

fn order_of(row: &sqlx::postgres::PgRow) -> Result<Order, OrderStoreError> {
    let items: String = row.try_get("items").map_err(corrupt)?;
    let status: String = row.try_get("status").map_err(corrupt)?;
    let reason: Option<String> = row.try_get("cancel_reason").map_err(corrupt)?;
    Ok(Order {
        order_id: row.try_get("order_id").map_err(corrupt)?,
        order_uid: row.try_get("order_uid").map_err(corrupt)?,
        shopping_cart_id: row.try_get("shopping_cart_id").map_err(corrupt)?,
        customer_id: row.try_get("customer_id").map_err(corrupt)?,
        items: serde_json::from_str::<Vec<LineItem>>(&items).map_err(corrupt)?,
        status: OrderStatus::parse(&status).ok_or_else(|| corrupt(&status))?,
        cancel_reason: reason.as_deref().and_then(parse_reason),
        created_at: row.try_get("created_at").map_err(corrupt)?,
        updated_at: row.try_get("updated_at").map_err(corrupt)?,
    })
}

/// A message's items as the order store keeps them: as the API shows them.
fn items_json(items: &[OrderItem]) -> String {
    serde_json::to_string(&line_items(items)).unwrap_or_else(|_| "[]".to_string())
}

#[async_trait::async_trait]
impl OrderStore for PgOrderStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Postgres
    }

    async fn record(
        &self,
        order: &OrderMessage,
        status: OrderStatus,
    ) -> Result<(), OrderStoreError> {
        // ON CONFLICT on the uid only: the same order again is a retry, or its outcome came
        // first (keep what is there); the same id with another uid is a clash and must not pass
        // silently.
        let result = self.observed.observe("record", sqlx::query(
            "INSERT INTO orders (order_id, order_uid, shopping_cart_id, customer_id, items, \
             status, created_at) VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7) \
             ON CONFLICT (order_uid) DO NOTHING",
        )
        .bind(order.order_id)
        .bind(&order.order_uid)
        .bind(order.shopping_cart_id)
        .bind(order.customer_id)
        .bind(items_json(&order.items))
        .bind(status.as_str())
        .bind(order.created_at)
        .execute(&self.pool))
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                Err(OrderStoreError::IdTaken {
                    order_id: order.order_id,
                })
            }
            Err(err) => Err(unavailable(err)),
        }
    }

    async fn get(&self, order_id: i32) -> Result<Option<Order>, OrderStoreError> {
        let row = self
            .observed
            .observe(
                "get",
                sqlx::query(&format!("SELECT {COLUMNS} FROM orders WHERE order_id = $1"))
                    .bind(order_id)
                    .fetch_optional(&self.pool),
            )
            .await
            .map_err(unavailable)?;
        row.as_ref().map(order_of).transpose()
    }

    async fn list_for_customer(
        &self,
        customer_id: i32,
        before: Option<i32>,
        limit: usize,
    ) -> Result<Vec<Order>, OrderStoreError> {
        let rows = self
            .observed
            .observe(
                "list_for_customer",
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM orders WHERE customer_id = $1 AND order_id < $2 \
             ORDER BY order_id DESC LIMIT $3"
                ))
                .bind(customer_id)
                .bind(before.unwrap_or(i32::MAX))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool),
            )
            .await
            .map_err(unavailable)?;
        rows.iter().map(order_of).collect()
    }

    async fn mark_cancelling(
        &self,
        order_uid: &str,
        reason: CancelReason,
    ) -> Result<Option<Order>, OrderStoreError> {
        // Two statements, not one: an UPDATE that waited for a concurrent outcome and then
        // found the row no longer eligible changes nothing, and a read in the same statement
        // would still see the row as it was when the statement began (`placed`). A separate
        // read sees the committed outcome.
        let moved = self
            .observed
            .observe(
                "mark_cancelling",
                sqlx::query(&format!(
            "UPDATE orders SET status = 'cancelling', cancel_reason = $2, updated_at = now() \
             WHERE order_uid = $1 AND status IN ('pending', 'placed') RETURNING {COLUMNS}"
        ))
                .bind(order_uid)
                .bind(reason_str(reason))
                .fetch_optional(&self.pool),
            )
            .await
            .map_err(unavailable)?;
        if let Some(row) = moved {
            return order_of(&row).map(Some);
        }
        let row = self
            .observed
            .observe(
                "mark_cancelling",
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM orders WHERE order_uid = $1"
                ))
                .bind(order_uid)
                .fetch_optional(&self.pool),
            )
            .await
            .map_err(unavailable)?;
        row.as_ref().map(order_of).transpose()
    }

    async fn apply_outcomes(&self, events: &[OrderEvent]) -> Result<(), OrderStoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut known = KnownOrders::default();
        let (mut uids, mut statuses, mut reasons) = (Vec::new(), Vec::new(), Vec::new());
        for event in events {
            let status = OrderStatus::of_outcome(event.outcome).as_str();
            let reason = event.reason.map(reason_str);
            uids.push(event.order_uid.as_str());
            statuses.push(status);
            reasons.push(reason);
            if let Some(order) = &event.order {
                known.push(order, status, reason);
            }
        }
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        if !known.ids.is_empty() {
            sqlx::query(RECORD_UNKNOWN)
                .bind(&known.ids)
                .bind(&known.uids)
                .bind(&known.carts)
                .bind(&known.customers)
                .bind(&known.items)
                .bind(&known.statuses)
                .bind(&known.reasons)
                .bind(&known.created)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        sqlx::query(APPLY_OUTCOMES)
            .bind(&uids)
            .bind(&statuses)
            .bind(&reasons)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn stale_pending(
        &self,
        created_before: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<Order>, OrderStoreError> {
        let rows = self
            .observed
            .observe(
                "stale_pending",
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM orders WHERE status = 'pending' AND created_at < $1 \
             ORDER BY created_at LIMIT $2"
                ))
                .bind(created_before)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool),
            )
            .await
            .map_err(unavailable)?;
        rows.iter().map(order_of).collect()
    }

    async fn check(&self) -> Result<(), String> {
        pg::ping(&self.pool).await
    }
}

/// The orders carried by a batch of events, as parallel arrays for `RECORD_UNKNOWN`.
#[derive(Default)]
struct KnownOrders {
    ids: Vec<i32>,
    uids: Vec<String>,
    carts: Vec<i32>,
    customers: Vec<i32>,
    items: Vec<String>,
    statuses: Vec<&'static str>,
    reasons: Vec<Option<&'static str>>,
    created: Vec<OffsetDateTime>,
}

impl KnownOrders {
    fn push(&mut self, order: &OrderMessage, status: &'static str, reason: Option<&'static str>) {
        self.ids.push(order.order_id);
        self.uids.push(order.order_uid.clone());
        self.carts.push(order.shopping_cart_id);
        self.customers.push(order.customer_id);
        self.items.push(items_json(&order.items));
        self.statuses.push(status);
        self.reasons.push(reason);
        self.created.push(order.created_at);
    }
}
