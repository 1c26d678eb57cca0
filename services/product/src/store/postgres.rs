//! The catalog on PostgreSQL (schema `catalog`, migrations in `services/product/migrations`),
//! shared by every instance.
//!
//! Ids come from the table's identity sequence, so they are unique across instances and never
//! wrap. Found products are cached (bounded, see [`JsonCache`]); a miss always asks the database,
//! so a product created through one instance is readable through every other at once. Every
//! request-path query is bounded by `STORE_TIMEOUT_MS`: a database that is away turns into a fast
//! [`CatalogError::Unavailable`], and the lazy pool reconnects by itself when it is back.

use super::cache::JsonCache;
use super::postgres_reserve::ReserveBatcher;
use super::{CatalogError, CatalogStore};
use crate::catalog::{NewProduct, Product, SEED_MAKERS};
use bytes::Bytes;
use common::metrics::Metrics;
use common::store::postgres::{self as pg, PgConfig, PgPool, PgSetupError};
use common::store::{StoreKind, StoreMetrics};
use sqlx::migrate::Migrator;
use std::future::Future;
use std::time::Duration;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// A fresh id can collide with a seeded id while another instance's seed is moving the sequence
/// past it (see [`SEED_MOVE_SEQUENCE`]); the next id cannot, so a couple of attempts suffice.
const CREATE_ATTEMPTS: usize = 3;

type Row = (i32, String, String, i32, i32, i32);

const SELECT_PRODUCT: &str = "SELECT product_id, sku, manufacturer, category_id, weight, \
     some_other_id FROM products WHERE product_id = $1";

/// The product and its stock row in one statement: a product is never seen without its stock.
const INSERT_PRODUCT: &str = "WITH p AS (INSERT INTO products (sku, manufacturer, category_id, \
     weight, some_other_id) VALUES ($1, $2, $3, $4, $5) RETURNING product_id), \
     s AS (INSERT INTO stock (product_id, on_hand, received) SELECT product_id, $6, $6 FROM p) \
     SELECT product_id FROM p";

const LIST_PRODUCTS: &str = "SELECT product_id, sku, manufacturer, category_id, weight, \
     some_other_id FROM products WHERE product_id > $1 ORDER BY product_id LIMIT $2";

/// Serialises seeding per schema, so instances starting together do not each insert N rows.
const SEED_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.seed'))";

const SEED_PRESENT: &str = "SELECT count(*) FROM products WHERE product_id BETWEEN 1 AND $1";

/// The same products as [`crate::catalog::seed_product`], computed in SQL, each with `$3` units of
/// stock. A product that already has one of these ids (seeded before, or created earlier) is kept
/// as it is, stock included.
const SEED_INSERT: &str = "WITH p AS (INSERT INTO products \
     (product_id, sku, manufacturer, category_id, weight, some_other_id) \
     SELECT i, 'SKU' || lpad((i % 10000000)::text, 7, '0'), \
            ($2::text[])[i % cardinality($2::text[]) + 1], \
            i % 50 + 1, (i::bigint * 37 % 5000)::integer, i % 1000 + 1 \
     FROM generate_series(1, $1::integer) AS i \
     ON CONFLICT (product_id) DO NOTHING RETURNING product_id) \
     INSERT INTO stock (product_id, on_hand, received) SELECT product_id, $3, $3 FROM p";

/// Moves the id sequence past the seeded ids, forward only: moving it back could hand out an id a
/// running instance has just taken.
const SEED_MOVE_SEQUENCE: &str = "SELECT setval('product_ids', $1) FROM product_ids \
     WHERE CASE WHEN is_called THEN last_value ELSE last_value - 1 END < $1";

pub struct PgCatalog {
    pub(super) pool: PgPool,
    cache: JsonCache,
    pub(super) timeout: Duration,
    pub(super) reserver: ReserveBatcher,
    /// `store_operation_seconds{store="postgres"}` and a span per request-path query.
    pub(super) observed: StoreMetrics,
}

impl PgCatalog {
    /// Connects, creates the schema and applies the migrations (waiting up to
    /// `STORE_STARTUP_TIMEOUT_MS` for the database).
    /// Reservation batches report to `metrics`.
    pub async fn connect(
        config: &PgConfig,
        cache_capacity: usize,
        metrics: &Metrics,
    ) -> Result<Self, PgSetupError> {
        let pool = pg::connect(config, &MIGRATOR).await?;
        Ok(Self {
            reserver: ReserveBatcher::start(pool.clone(), config.timeout, metrics),
            pool,
            cache: JsonCache::new(cache_capacity),
            timeout: config.timeout,
            observed: StoreMetrics::new(metrics, "postgres"),
        })
    }

    /// The pool, for `/ready` and for whatever else lives in this schema.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs one request-path query within the store timeout. The pool's acquire timeout covers a
    /// database that refuses connections; this also covers one that accepted and went silent.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        query: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        let bounded = async {
            tokio::time::timeout(self.timeout, query)
                .await
                .unwrap_or_else(|_| {
                    Err(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {:?}", self.timeout),
                    )))
                })
        };
        self.observed.observe(operation, bounded).await
    }

    async fn fetch(&self, id: i32) -> Result<Option<Product>, CatalogError> {
        let row = sqlx::query_as::<_, Row>(SELECT_PRODUCT)
            .bind(id)
            .fetch_optional(&self.pool);
        let row = self.bounded("fetch", row).await.map_err(classify)?;
        Ok(row.map(product_from_row))
    }

    async fn insert(&self, new: &NewProduct, stock: i64) -> Result<i32, sqlx::Error> {
        let insert = sqlx::query_scalar::<_, i32>(INSERT_PRODUCT)
            .bind(&new.sku)
            .bind(&new.manufacturer)
            .bind(new.category_id)
            .bind(new.weight)
            .bind(new.some_other_id)
            .bind(stock)
            .fetch_one(&self.pool);
        self.bounded("insert", insert).await
    }
}

fn product_from_row(
    (product_id, sku, manufacturer, category_id, weight, some_other_id): Row,
) -> Product {
    Product {
        product_id,
        sku,
        manufacturer,
        category_id,
        weight,
        some_other_id,
    }
}

#[async_trait::async_trait]
impl CatalogStore for PgCatalog {
    fn kind(&self) -> StoreKind {
        StoreKind::Postgres
    }

    fn cached(&self, id: i32) -> Option<Bytes> {
        self.cache.get(id)
    }

    async fn get_json(&self, id: i32) -> Result<Option<Bytes>, CatalogError> {
        if let Some(json) = self.cache.get(id) {
            return Ok(Some(json));
        }
        // Absent is not cached: another instance may create this id at any moment.
        let Some(product) = self.fetch(id).await? else {
            return Ok(None);
        };
        let json = product.to_json();
        self.cache.insert(id, json.clone());
        Ok(Some(json))
    }

    async fn get(&self, id: i32) -> Result<Option<Product>, CatalogError> {
        self.fetch(id).await
    }

    async fn create(&self, new: NewProduct, stock: i64) -> Result<i32, CatalogError> {
        let mut attempt = 1;
        let id = loop {
            match self.insert(&new, stock).await {
                Ok(id) => break id,
                Err(err) if is_unique_violation(&err) && attempt < CREATE_ATTEMPTS => {
                    attempt += 1;
                }
                Err(err) => return Err(classify(err)),
            }
        };
        let product = Product::new(id, new);
        self.cache.insert(id, product.to_json());
        Ok(id)
    }

    /// One transaction under a per-schema advisory lock: the instances that start together take
    /// turns, and all but the first find the products present and insert nothing.
    async fn seed(&self, n: u32, stock: i64) -> Result<(), CatalogError> {
        if n == 0 {
            return Ok(());
        }
        let n = i32::try_from(n)
            .map_err(|_| CatalogError::Internal(format!("cannot seed {n} products")))?;
        let mut tx = self.pool.begin().await.map_err(classify)?;
        sqlx::query(SEED_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        let present: i64 = sqlx::query_scalar(SEED_PRESENT)
            .bind(n)
            .fetch_one(&mut *tx)
            .await
            .map_err(classify)?;
        if present < i64::from(n) {
            sqlx::query(SEED_INSERT)
                .bind(n)
                .bind(SEED_MAKERS.as_slice())
                .bind(stock)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
        }
        sqlx::query(SEED_MOVE_SEQUENCE)
            .bind(i64::from(n))
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)
    }

    async fn count(&self) -> Result<u64, CatalogError> {
        let count =
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM products").fetch_one(&self.pool);
        let count = self.bounded("count", count).await.map_err(classify)?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    async fn list(&self, after: i32, limit: u32) -> Result<Vec<Product>, CatalogError> {
        let rows = sqlx::query_as::<_, Row>(LIST_PRODUCTS)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool);
        let rows = self.bounded("list", rows).await.map_err(classify)?;
        Ok(rows.into_iter().map(product_from_row).collect())
    }
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// An outage (no connection, too slow, the server shutting down or overloaded) is a 503 the
/// client may retry; the end of the id range is [`CatalogError::Full`]; anything else is a bug.
pub(super) fn classify(err: sqlx::Error) -> CatalogError {
    let outage = match &err {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            if code == "2200H" {
                // sequence_generator_limit_exceeded: the identity reached 2147483647.
                return CatalogError::Full;
            }
            // Connection exceptions, insufficient resources, operator intervention (shutdown),
            // and transaction rollbacks (serialisation, deadlock), by SQLSTATE class.
            ["08", "53", "57", "40"]
                .iter()
                .any(|class| code.starts_with(class))
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    };
    if outage {
        CatalogError::Unavailable(pg::unavailable(err))
    } else {
        tracing::error!(error = %err, "unexpected catalog store error");
        CatalogError::Internal(err.to_string())
    }
}
