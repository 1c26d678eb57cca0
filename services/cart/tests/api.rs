//! Carts over real HTTP: creation, items, views and every documented error.

mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::{dead_port, error_body, spawn_app, spawn_app_with, Options};

#[tokio::test]
async fn create_cart_and_reject_bad_customers() {
    let app = spawn_app().await;
    let first = app.create_cart().await;
    let second = app.create_cart().await;
    assert_eq!((first, second), (1, 2));
    for bad in [
        json!({"customer_id": 0}),
        json!({"customer_id": -5}),
        json!({"customer_id": "7"}),
        json!({"customer_id": 3_000_000_000u64}),
        json!({}),
    ] {
        let resp = app.post("/shopping-cart", bad.clone()).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            error_body(resp).await.to_string().contains("customer_id"),
            "{bad}"
        );
    }
    let resp = app
        .client
        .post(format!("{}/shopping-cart", app.base))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_body(resp).await["error"], "MALFORMED_JSON");
    app.delete_queues().await;
}

#[tokio::test]
async fn add_items_accumulate_and_show_in_the_cart() {
    let app = spawn_app().await;
    let id = app.create_cart().await;
    for quantity in [2, 3] {
        let resp = app.add_item(id, 4, quantity).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    }
    let view = app.view(id).await;
    assert_eq!(
        view,
        json!({"shopping_cart_id": id, "customer_id": 42, "status": "open",
               "items": [{"product_id": 4, "quantity": 5}], "order_id": null})
    );
    let resp = app.add_item(id, 4, i32::MAX.into()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(error_body(resp).await.to_string().contains("quantity"));
    app.delete_queues().await;
}

#[tokio::test]
async fn add_item_errors() {
    let app = spawn_app().await;
    let id = app.create_cart().await;
    let add = |cart: i64, body: Value| {
        let app = &app;
        async move {
            app.post(&format!("/shopping-carts/{cart}/addItem"), body)
                .await
        }
    };
    let resp = add(999, json!({"product_id": 1, "quantity": 1})).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_body(resp).await["error"], "CART_NOT_FOUND");
    let resp = add(id, json!({"product_id": 11, "quantity": 1})).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_body(resp).await["error"], "PRODUCT_NOT_FOUND");
    for bad in [
        json!({"product_id": 1, "quantity": 0}),
        json!({"product_id": 1, "quantity": -1}),
        json!({"product_id": 0, "quantity": 1}),
        json!({"product_id": 1}),
        json!({"product_id": "1", "quantity": 1}),
    ] {
        let resp = add(id, bad.clone()).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
        error_body(resp).await;
    }
    for bad_id in ["abc", "0", "-3", "2147483648"] {
        let resp = app
            .post(
                &format!("/shopping-carts/{bad_id}/addItem"),
                json!({"product_id": 1, "quantity": 1}),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad_id}");
        assert_eq!(error_body(resp).await["error"], "INVALID_ID");
    }
    let resp = app.get("/shopping-carts/77").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    app.delete_queues().await;
}

#[tokio::test]
async fn product_service_down_is_a_fast_503() {
    let port = dead_port().await;
    let app = spawn_app_with(Options {
        product_url: Some(format!("http://127.0.0.1:{port}")),
        ..Options::default()
    })
    .await;
    let id = app.create_cart().await;
    let started = Instant::now();
    let resp = app.add_item(id, 1, 1).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        error_body(resp).await["error"],
        "PRODUCT_SERVICE_UNAVAILABLE"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    app.delete_queues().await;
}

/// `--help` lists what the service reads (it runs the same reading code on the defaults), and
/// every variable it lists is documented in a README, so neither can drift from the code.
#[test]
fn help_lists_the_variables_and_the_readmes_document_each() {
    let listed = common::config::check_help(
        env!("CARGO_BIN_EXE_cart-service"),
        &[
            include_str!("../README.md"),
            include_str!("../../../README.md"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for name in [
        "PORT",
        "RUST_LOG",
        "AMQP_URL",
        "QUEUE_TYPE",
        "REDIS_URL",
        "STORE_TIMEOUT_MS",
        "DATABASE_URL",
        "CHECKOUT_LEASE_MS",
    ] {
        assert!(listed.iter().any(|l| l == name), "{name} not in {listed:?}");
    }
}
