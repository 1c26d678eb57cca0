//! PostgreSQL taken away under a running service (a proxy between them is cut or stalled), then
//! given back: requests that need it answer a fast 503 STORE_UNAVAILABLE, and the service heals
//! without a restart.

use crate::support::{error_body, spawn_instance, TestApp, SCHEMA};
use common::store::postgres::PgConfig;
use common::testing::{FaultyProxy, Mode, TestDatabase};
use reqwest::StatusCode;
use std::time::{Duration, Instant};

/// What a request may take while the store is away: the store timeout plus a margin.
fn budget(config: &PgConfig) -> Duration {
    config.timeout + Duration::from_millis(1500)
}

async fn app_behind_proxy() -> (TestApp, FaultyProxy, TestDatabase, Duration) {
    let db = TestDatabase::create().await;
    let proxy = FaultyProxy::start("127.0.0.1:5432").await;
    let config = PgConfig::for_tests(&proxy.url_for(&db.url), SCHEMA);
    assert_eq!(config.timeout, Duration::from_secs(1));
    let budget = budget(&config);
    let app = spawn_instance(config, 5, "product-behind-proxy").await;
    assert!(app.product(1).await.is_some(), "product 1 is now cached");
    assert_eq!(app.get("/ready").await.status(), StatusCode::OK);
    (app, proxy, db, budget)
}

/// Every request that needs the store answers 503 STORE_UNAVAILABLE within the budget.
async fn assert_fast_503s(app: &TestApp, budget: Duration) {
    for attempt in 0..3 {
        let started = Instant::now();
        let resp = app.get("/products/3").await;
        assert_eq!(
            resp.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "GET #{attempt}"
        );
        assert_eq!(error_body(resp).await["error"], "STORE_UNAVAILABLE");
        assert!(
            started.elapsed() < budget,
            "GET took {:?}",
            started.elapsed()
        );

        let started = Instant::now();
        let resp = app.post_product(&crate::support::product()).await;
        assert_eq!(
            resp.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "POST #{attempt}"
        );
        assert_eq!(error_body(resp).await["error"], "STORE_UNAVAILABLE");
        assert!(
            started.elapsed() < budget,
            "POST took {:?}",
            started.elapsed()
        );
    }
    let resp = app.get("/ready").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = error_body(resp).await;
    assert!(body.to_string().contains("postgresql"), "{body}");
    // A product already held still answers: products never change once created.
    assert!(app.product(1).await.is_some());
}

/// Once the store is back, the same service serves reads, creates and /ready again.
async fn assert_heals(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = app.get("/products/3").await.status();
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "did not heal");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = app.create().await;
    assert!(id > 5, "{id}");
    assert!(app.product(id).await.is_some());
    assert_eq!(app.get("/ready").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_cut_database_is_a_fast_503_and_the_service_heals_without_restart() {
    let (app, proxy, _db, budget) = app_behind_proxy().await;
    proxy.set(Mode::Cut);
    assert_fast_503s(&app, budget).await;
    proxy.set(Mode::Pass);
    assert_heals(&app).await;
}

/// A database that accepts and then goes silent must not hang requests either.
#[tokio::test]
async fn a_stalled_database_is_a_fast_503_and_the_service_heals_without_restart() {
    let (app, proxy, _db, budget) = app_behind_proxy().await;
    proxy.set(Mode::Stall);
    assert_fast_503s(&app, budget).await;
    proxy.set(Mode::Pass);
    assert_heals(&app).await;
}
