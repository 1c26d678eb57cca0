//! Spawning product services over real HTTP on ephemeral ports, on either store.

use common::store::postgres::PgConfig;
use common::testing::TestDatabase;
use product_service::{configuration::Settings, Application};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::future::Future;
use std::time::{Duration, Instant};

/// Runs each listed `async fn(Backend)` of the invoking module once on the memory store and once
/// on PostgreSQL (`Backend` must be in scope there).
macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $( #[tokio::test] async fn $test() { super::$test(super::Backend::Memory).await; } )*
        }
        mod postgres {
            $( #[tokio::test] async fn $test() { super::$test(super::Backend::Postgres).await; } )*
        }
    };
}
pub(crate) use on_both_stores;

/// The store a behavioural test runs against.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Memory,
    Postgres,
}

pub struct TestApp {
    pub base: String,
    pub client: Client,
    /// The test's own database when the app runs on PostgreSQL.
    pub db: Option<TestDatabase>,
    _shutdown: common::shutdown::CancellationToken,
}

/// The catalog's schema in a test database.
pub const SCHEMA: &str = "catalog";

pub async fn spawn_app_with(settings: Settings) -> TestApp {
    run_built(Application::build(settings).await.expect("build app"))
}

/// Serves an application that is already built.
pub fn run_built(app: Application) -> TestApp {
    let base = format!("http://127.0.0.1:{}", app.port());
    let shutdown = common::shutdown::CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move { app.run_until_stopped(token).await });
    TestApp {
        base,
        client: Client::new(),
        db: None,
        _shutdown: shutdown.child_token(),
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Settings::for_tests()).await
}

/// An app on `backend` seeded with `seed` products; on PostgreSQL, on a fresh database.
pub async fn spawn_on(backend: Backend, seed: u32) -> TestApp {
    let mut settings = Settings::for_tests();
    settings.seed_products = seed;
    match backend {
        Backend::Memory => spawn_app_with(settings).await,
        Backend::Postgres => {
            let db = TestDatabase::create().await;
            let mut app = spawn_app_with(settings.with_store(db.config(SCHEMA))).await;
            app.db = Some(db);
            app
        }
    }
}

/// How long a stock test's PostgreSQL transactions may wait (for a row lock under contention,
/// on a loaded machine) before the service answers 503: longer than the 1 s of the store-down
/// tests, so a test of 200 concurrent reservations measures the locking, not the machine.
pub const STOCK_STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// An app on `backend` with these settings; on PostgreSQL, on a fresh database with
/// [`STOCK_STORE_TIMEOUT`].
pub async fn spawn_with(backend: Backend, settings: Settings) -> TestApp {
    match backend {
        Backend::Memory => spawn_app_with(settings).await,
        Backend::Postgres => {
            let db = TestDatabase::create().await;
            let mut config = db.config(SCHEMA);
            config.timeout = STOCK_STORE_TIMEOUT;
            let mut app = spawn_app_with(settings.with_store(config)).await;
            app.db = Some(db);
            app
        }
    }
}

/// Another instance on an existing database.
pub async fn spawn_instance(store: PgConfig, seed: u32, instance: &str) -> TestApp {
    let mut settings = Settings::for_tests().with_store(store);
    settings.seed_products = seed;
    settings.service.instance_id = instance.to_string();
    spawn_app_with(settings).await
}

pub fn product() -> Value {
    json!({"sku": "ABC123XYZ0", "manufacturer": "Acme Corporation", "category_id": 456, "weight": 1250, "some_other_id": 789})
}

impl TestApp {
    pub async fn post_product(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}/product", self.base))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// Creates `product()` and returns its id.
    pub async fn create(&self) -> i64 {
        let resp = self.post_product(&product()).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        let body: Value = resp.json().await.expect("json");
        body["product_id"].as_i64().expect("id")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// Creates `product()` with `stock` units on hand; its id.
    pub async fn create_with_stock(&self, stock: i64) -> i64 {
        let mut body = product();
        body["quantity_on_hand"] = json!(stock);
        let resp = self.post_product(&body).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        let body: Value = resp.json().await.expect("json");
        body["product_id"].as_i64().expect("id")
    }

    /// `POST /internal/reservations` with `(product_id, quantity)` items.
    pub async fn reserve(&self, order_uid: &str, items: &[(i64, i64)]) -> reqwest::Response {
        let items: Vec<Value> = items
            .iter()
            .map(|&(product_id, quantity)| json!({"product_id": product_id, "quantity": quantity}))
            .collect();
        self.post_json(
            "/internal/reservations",
            &json!({"order_uid": order_uid, "items": items}),
        )
        .await
    }

    pub async fn release(&self, order_uid: &str) -> reqwest::Response {
        self.client
            .post(format!(
                "{}/internal/reservations/{order_uid}/release",
                self.base
            ))
            .send()
            .await
            .expect("request")
    }

    /// `POST /internal/reservations/confirm`; the number confirmed.
    pub async fn confirm(&self, order_uids: &[&str]) -> u64 {
        let resp = self
            .post_json(
                "/internal/reservations/confirm",
                &json!({ "order_uids": order_uids }),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.expect("json");
        body["confirmed"].as_u64().expect("confirmed")
    }

    /// `GET /internal/reservations/{uid}`, or `None` on 404.
    pub async fn reservation(&self, order_uid: &str) -> Option<Value> {
        let resp = self
            .get(&format!("/internal/reservations/{order_uid}"))
            .await;
        match resp.status() {
            StatusCode::OK => Some(resp.json().await.expect("json")),
            StatusCode::NOT_FOUND => {
                assert_eq!(error_body(resp).await["error"], "RESERVATION_NOT_FOUND");
                None
            }
            other => panic!("GET reservation {order_uid}: {other}"),
        }
    }

    /// The reservation's status (it must exist).
    pub async fn status_of(&self, order_uid: &str) -> String {
        let r = self
            .reservation(order_uid)
            .await
            .expect("reservation exists");
        r["status"].as_str().expect("status").to_string()
    }

    /// `GET /internal/products/{id}/stock` (it must exist).
    pub async fn levels(&self, id: i64) -> Levels {
        let resp = self.get(&format!("/internal/products/{id}/stock")).await;
        assert_eq!(resp.status(), StatusCode::OK, "stock of {id}");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["product_id"], id);
        let field = |name: &str| {
            body[name]
                .as_i64()
                .unwrap_or_else(|| panic!("{name}: {body}"))
        };
        Levels {
            on_hand: field("quantity_on_hand"),
            reserved: field("reserved"),
            sold: field("sold"),
            oversold: field("oversold"),
        }
    }

    /// `POST /internal/products/{id}/stock`.
    pub async fn adjust(&self, id: i64, delta: i64) -> reqwest::Response {
        self.post_json(
            &format!("/internal/products/{id}/stock"),
            &json!({ "delta": delta }),
        )
        .await
    }

    /// A counter or gauge from `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.get("/metrics").await.text().await.expect("text");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The product's JSON, or `None` on 404.
    pub async fn product(&self, id: i64) -> Option<Value> {
        let resp = self.get(&format!("/products/{id}")).await;
        match resp.status() {
            StatusCode::OK => Some(resp.json().await.expect("json")),
            StatusCode::NOT_FOUND => None,
            other => panic!("GET /products/{id}: {other}"),
        }
    }
}

/// A product's stock as the internal API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    pub on_hand: i64,
    pub reserved: i64,
    pub sold: i64,
    pub oversold: i64,
}

impl Levels {
    pub fn new(on_hand: i64, reserved: i64, sold: i64, oversold: i64) -> Self {
        Self {
            on_hand,
            reserved,
            sold,
            oversold,
        }
    }

    /// What the invariant says these add up to: the initial stock plus every adjustment.
    pub fn total(&self) -> i64 {
        self.on_hand + self.reserved + self.sold
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Every error response carries the contract's body.
pub async fn error_body(resp: reqwest::Response) -> Value {
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "error responses are JSON"
    );
    let body: Value = resp.json().await.expect("json error body");
    assert!(body["error"].is_string(), "{body}");
    assert!(body["message"].is_string(), "{body}");
    body
}

/// Runs SQL against a test database's catalog directly, beside the service.
pub async fn db_scalar(db: &TestDatabase, sql: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(&mut conn)
        .await
        .expect("query")
}

/// `n` concurrent creates through `app`; their ids.
pub async fn concurrent_creates(app: &TestApp, n: usize) -> Vec<i64> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let client = app.client.clone();
        let url = format!("{}/product", app.base);
        tasks.push(tokio::spawn(async move {
            let resp = client
                .post(url)
                .json(&product())
                .send()
                .await
                .expect("request");
            assert_eq!(resp.status(), StatusCode::CREATED);
            let body: Value = resp.json().await.expect("json");
            body["product_id"].as_i64().expect("id")
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.expect("task"));
    }
    ids
}
