//! What an operator reads on the cart's /metrics after a checkout: the publish's confirm
//! latency per destination queue, and no checkout left counted in flight.

mod support;

use support::*;

fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn a_checkout_is_timed_to_its_confirm_and_leaves_nothing_in_flight() {
    let app = spawn_app().await;
    let cart = app.filled_cart().await;
    let response = app.checkout_until_ok(cart).await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let metrics = app.get("/metrics").await.text().await.expect("text");
    let count = format!(
        "amqp_publish_confirm_seconds_count{{destination=\"{}\"}}",
        app.queue
    );
    assert_eq!(value(&metrics, &count), Some(1.0), "{metrics}");
    let fast = format!(
        "amqp_publish_confirm_seconds_bucket{{destination=\"{}\",le=\"5\"}}",
        app.queue
    );
    assert_eq!(value(&metrics, &fast), Some(1.0), "{metrics}");
    let cancels = format!(
        "amqp_publish_confirm_seconds_count{{destination=\"{}.cancel\"}}",
        app.queue
    );
    assert_eq!(value(&metrics, &cancels), Some(0.0), "{metrics}");
    assert_eq!(
        value(&metrics, "checkouts_in_flight"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        metrics
            .matches("# TYPE amqp_publish_confirm_seconds histogram")
            .count(),
        1
    );
}

/// With its stores in Redis and PostgreSQL, the cart times each store call by store and
/// operation: a checkout is one `begin_checkout` and one `complete_checkout` in Redis and one
/// `record` of the order in PostgreSQL.
#[tokio::test]
async fn store_calls_are_timed_by_store_and_operation() {
    let (db, redis) = (
        common::testing::TestDatabase::create().await,
        common::testing::TestRedis::create().await,
    );
    let app = spawn_app_with(Options {
        store: Some(redis.config()),
        orders_db: Some(db.config("orders")),
        ..Options::default()
    })
    .await;
    let cart = app.filled_cart().await;
    let response = app.checkout_until_ok(cart).await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let metrics = app.get("/metrics").await.text().await.expect("text");
    let count = |store: &str, operation: &str| {
        value(
            &metrics,
            &format!(
                "store_operation_seconds_count{{store=\"{store}\",operation=\"{operation}\"}}"
            ),
        )
    };
    assert_eq!(count("redis", "create"), Some(1.0), "{metrics}");
    assert_eq!(count("redis", "complete_checkout"), Some(1.0), "{metrics}");
    assert!(count("redis", "begin_checkout") >= Some(1.0), "{metrics}");
    assert!(count("postgres", "record") >= Some(1.0), "{metrics}");
    assert_eq!(
        metrics
            .matches("# TYPE store_operation_seconds histogram")
            .count(),
        1,
        "{metrics}"
    );
}
