//! The product service over real HTTP on ephemeral ports.
//!
//! - this file: the HTTP plumbing, which does not depend on the store (memory store);
//! - [`behaviour`]: the catalog's behaviour, run once per store (memory and PostgreSQL);
//! - [`instances`]: several instances on one database (visibility, ids, start-up races);
//! - [`store_down`]: PostgreSQL cut away under a running service, and back;
//! - [`stock`]: stock, pages and reservations, run once per store (concurrency and timeout
//!   included);
//! - [`events`]: the warehouse's outcome events through the real broker, once per store.

mod behaviour;
mod events;
mod instances;
mod stock;
mod store_down;
mod support;

use product_service::configuration::Settings;
use reqwest::StatusCode;
use serde_json::json;
use support::{error_body, product, spawn_app, spawn_app_with};

#[tokio::test]
async fn malformed_json_wrong_content_type_and_oversize_bodies() {
    let app = spawn_app().await;
    let url = format!("{}/product", app.base);
    let resp = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"sku\": ")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_body(resp).await["error"], "MALFORMED_JSON");

    let resp = app
        .client
        .post(&url)
        .header("content-type", "text/plain")
        .body(product().to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_body(resp).await["error"], "INVALID_CONTENT_TYPE");

    let resp = app.client.post(&url).send().await.expect("request");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let mut huge = product();
    huge["manufacturer"] = json!("m".repeat(200 * 1024));
    let resp = app.post_product(&huge).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_body(resp).await["error"], "PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn unknown_routes_and_methods_get_the_error_body() {
    let app = spawn_app().await;
    let resp = app.get("/nope").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_body(resp).await["error"], "NOT_FOUND");
    let resp = app
        .client
        .delete(format!("{}/products/1", app.base))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_body(resp).await["error"], "METHOD_NOT_ALLOWED");
}

#[tokio::test]
async fn failure_rate_answers_that_share_with_503_and_health_stays_green() {
    let mut settings = Settings::for_tests();
    settings.failure_rate = 0.5;
    settings.seed_products = 10;
    let app = spawn_app_with(settings).await;
    let total = 1000;
    let mut unavailable = 0;
    for i in 0..total {
        let resp = app.get(&format!("/products/{}", i % 10 + 1)).await;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                unavailable += 1;
                error_body(resp).await;
            }
            other => panic!("unexpected {other}"),
        }
    }
    // Binomial(1000, 0.5): sd ≈ 15.8, so ±100 is beyond six standard deviations.
    assert!(
        (400..=600).contains(&unavailable),
        "{unavailable} of {total}"
    );
    for _ in 0..100 {
        assert_eq!(app.get("/health").await.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn a_good_instance_never_fails() {
    let mut settings = Settings::for_tests();
    settings.seed_products = 1;
    let app = spawn_app_with(settings).await;
    for _ in 0..200 {
        assert_eq!(app.get("/products/1").await.status(), StatusCode::OK);
    }
}

/// A bad value of a stock variable stops the binary at start, naming the variable (the same
/// rule as every other variable: a typo must not silently become the default).
#[tokio::test]
async fn invalid_stock_settings_stop_the_start_naming_the_variable() {
    let cases = [
        ("SEED_STOCK", "-1"),
        ("SEED_STOCK", "lots"),
        ("SEED_STOCK", "1000000000001"),
        ("RESERVATION_TTL_MS", "0"),
        ("RESERVATION_TTL_MS", "10m"),
        ("RECONNECT_MIN_MS", "0"),
        ("AMQP_URL", "http://127.0.0.1:5672"),
    ];
    for (name, value) in cases {
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_product-service"))
            .env_clear()
            .env("PORT", "0")
            .env(name, value)
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(std::time::Duration::from_secs(20), run)
            .await
            .unwrap_or_else(|_| panic!("{name}={value}: the service started instead of refusing"))
            .expect("run the binary");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}={value}: {stderr}");
        assert!(stderr.contains(name), "{name}={value}: {stderr}");
    }
}

/// `--help` lists what the service reads (it runs the same reading code on the defaults), and
/// every variable it lists is documented in a README, so neither can drift from the code.
#[test]
fn help_lists_the_variables_and_the_readmes_document_each() {
    let listed = common::config::check_help(
        env!("CARGO_BIN_EXE_product-service"),
        &[
            include_str!("../../README.md"),
            include_str!("../../../../README.md"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for name in [
        "PORT",
        "FAILURE_RATE",
        "SEED_PRODUCTS",
        "DATABASE_SCHEMA",
        "RECONNECT_MAX_MS",
    ] {
        assert!(listed.iter().any(|l| l == name), "{name} not in {listed:?}");
    }
}
