//! Spawning product services over real HTTP on ephemeral ports, on either store.

use common::store::postgres::PgConfig;
use common::testing::TestDatabase;
use product_service::{configuration::Settings, Application};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

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
