//! The rate limit as a client meets it: a real server (the common layers over a one-route app)
//! on a real socket. Over the limit: 429, `Retry-After` and the error body, counted on /metrics;
//! other clients (told apart by the trusted proxy's `X-Forwarded-For` entry) unaffected;
//! `/health` never limited.

use axum::routing::get;
use axum::Router;
use common::config::ServiceConfig;
use common::http::{with_common_layers, Readiness};
use common::metrics::Metrics;
use common::ratelimit::RateLimitConfig;
use common::shutdown::{serve, CancellationToken};
use reqwest::StatusCode;
use std::time::Duration;

async fn spawn(limit: RateLimitConfig) -> String {
    let mut config = ServiceConfig::for_tests("limited-1");
    config.rate_limit = limit;
    let metrics = Metrics::new();
    let app = Router::new().route("/products/{id}", get(|| async { "a product" }));
    let app = with_common_layers(app, &config, &metrics, Readiness::new());
    let listener = common::http::bind(0).await.expect("bind");
    let address = format!(
        "http://127.0.0.1:{}",
        listener.local_addr().expect("addr").port()
    );
    tokio::spawn(serve(
        listener,
        app,
        CancellationToken::new(),
        Duration::from_secs(1),
    ));
    address
}

/// A client behind the trusted proxy: the entry the proxy appended names it.
async fn get_as(http: &reqwest::Client, url: &str, client: &str) -> reqwest::Response {
    http.get(url)
        .header("x-forwarded-for", format!("6.6.6.6, {client}"))
        .send()
        .await
        .expect("the server answers")
}

#[tokio::test]
async fn a_client_over_its_limit_gets_429_with_retry_after_and_others_do_not() {
    let base = spawn(RateLimitConfig {
        rps: 0.5,
        burst: 3.0,
        trusted_hops: 1,
    })
    .await;
    let http = reqwest::Client::new();
    let url = format!("{base}/products/1");
    for _ in 0..3 {
        assert_eq!(
            get_as(&http, &url, "203.0.113.1").await.status(),
            StatusCode::OK
        );
    }
    let refused = get_as(&http, &url, "203.0.113.1").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("whole seconds");
    assert_eq!(retry_after, 2, "one token comes back in 2 s at 0.5/s");
    let body: serde_json::Value = refused.json().await.expect("the error body");
    assert_eq!(body["error"], "RATE_LIMITED");
    assert!(body["message"]
        .as_str()
        .is_some_and(|m| m.contains("retry after 2 s")));

    // The forged left-hand entry is ignored: a new one there does not buy a new bucket.
    let forged = http
        .get(&url)
        .header("x-forwarded-for", "1.2.3.4, 203.0.113.1")
        .send()
        .await
        .expect("answers");
    assert_eq!(forged.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another client, and the health check, go through.
    assert_eq!(
        get_as(&http, &url, "203.0.113.2").await.status(),
        StatusCode::OK
    );
    for _ in 0..10 {
        let health = http
            .get(format!("{base}/health"))
            .send()
            .await
            .expect("answers");
        assert_eq!(health.status(), StatusCode::OK);
    }
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("answers")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("rate_limited_total 2"), "{metrics}");
}

#[tokio::test]
async fn without_a_limit_nothing_is_refused() {
    let base = spawn(RateLimitConfig::off()).await;
    let http = reqwest::Client::new();
    for _ in 0..50 {
        let resp = get_as(&http, &format!("{base}/products/1"), "203.0.113.1").await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
}
