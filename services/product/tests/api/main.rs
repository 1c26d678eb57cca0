//! The product service over real HTTP on an ephemeral port.

use product_service::{configuration::Settings, Application};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

struct TestApp {
    base: String,
    client: Client,
    _shutdown: common::shutdown::CancellationToken,
}

async fn spawn_app_with(settings: Settings) -> TestApp {
    let app = Application::build(settings).await.expect("build app");
    let base = format!("http://127.0.0.1:{}", app.port());
    let shutdown = common::shutdown::CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move { app.run_until_stopped(token).await });
    TestApp {
        base,
        client: Client::new(),
        _shutdown: shutdown.child_token(),
    }
}

async fn spawn_app() -> TestApp {
    spawn_app_with(Settings::for_tests()).await
}

fn product() -> Value {
    json!({"sku": "ABC123XYZ0", "manufacturer": "Acme Corporation", "category_id": 456, "weight": 1250, "some_other_id": 789})
}

impl TestApp {
    async fn post_product(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}/product", self.base))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request")
    }
}

/// Every error response carries the contract's body.
async fn error_body(resp: reqwest::Response) -> Value {
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

#[tokio::test]
async fn create_then_read_by_both_paths() {
    let app = spawn_app().await;
    let resp = app.post_product(&product()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created: Value = resp.json().await.expect("json");
    assert_eq!(created, json!({"product_id": 1}));

    // A product_id in the body is ignored: the server assigns ids.
    let mut with_id = product();
    with_id["product_id"] = json!(999);
    let created: Value = app.post_product(&with_id).await.json().await.expect("json");
    assert_eq!(created["product_id"], 2);

    for path in ["/products/1", "/product/1"] {
        let resp = app.get(path).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let body: Value = resp.json().await.expect("json");
        let mut expected = product();
        expected["product_id"] = json!(1);
        assert_eq!(body, expected);
    }
}

#[tokio::test]
async fn unknown_product_is_404() {
    let app = spawn_app().await;
    let resp = app.get("/products/42").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_body(resp).await["error"], "PRODUCT_NOT_FOUND");
}

#[tokio::test]
async fn invalid_ids_are_400() {
    let app = spawn_app().await;
    for id in [
        "abc",
        "0",
        "-1",
        "2147483648",
        "99999999999999999999",
        "1.5",
    ] {
        for prefix in ["/products/", "/product/"] {
            let resp = app.get(&format!("{prefix}{id}")).await;
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{prefix}{id}");
            assert_eq!(error_body(resp).await["error"], "INVALID_ID");
        }
    }
    // The largest int32 is a valid id (absent here).
    assert_eq!(
        app.get("/products/2147483647").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn every_schema_violation_is_400_naming_the_field() {
    let app = spawn_app().await;
    let cases = [
        ("sku", json!("")),
        ("sku", json!("x".repeat(101))),
        ("manufacturer", json!("")),
        ("manufacturer", json!("m".repeat(201))),
        ("category_id", json!(0)),
        ("weight", json!(-1)),
        ("some_other_id", json!(0)),
        ("weight", json!(3_000_000_000u64)),
        ("category_id", json!("12")),
        ("sku", json!(12)),
    ];
    for (field, value) in cases {
        let mut body = product();
        body[field] = value.clone();
        let resp = app.post_product(&body).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{field}={value}");
        let err = error_body(resp).await;
        let text = err.to_string();
        assert!(text.contains(field), "{field}={value}: {text}");
    }
    // Boundaries that are allowed.
    let mut edge = product();
    edge["sku"] = json!("x".repeat(100));
    edge["manufacturer"] = json!("m".repeat(200));
    edge["weight"] = json!(0);
    edge["category_id"] = json!(i32::MAX);
    assert_eq!(app.post_product(&edge).await.status(), StatusCode::CREATED);

    for field in [
        "sku",
        "manufacturer",
        "category_id",
        "weight",
        "some_other_id",
    ] {
        let mut body = product();
        body.as_object_mut().expect("object").remove(field);
        let resp = app.post_product(&body).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "missing {field}");
        assert!(error_body(resp).await.to_string().contains(field));
    }
}

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
async fn health_ready_headers_and_metrics() {
    let app = spawn_app().await;
    let resp = app.get("/health").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-served-by"], "product-test");
    let generated = resp.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert_eq!(generated.len(), 36, "a uuid is generated: {generated}");
    assert_eq!(app.get("/ready").await.status(), StatusCode::OK);

    let resp = app
        .client
        .get(format!("{}/products/7", app.base))
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.headers()["x-request-id"], "trace-me-123");
    assert_eq!(resp.headers()["x-served-by"], "product-test");

    let metrics = app.get("/metrics").await.text().await.expect("text");
    assert!(
        metrics.contains(
            "http_requests_total{route=\"/products/{product_id}\",method=\"GET\",status=\"404\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn seeded_catalog_has_ids_one_to_n() {
    let mut settings = Settings::for_tests();
    settings.seed_products = 50;
    let app = spawn_app_with(settings).await;
    assert_eq!(app.get("/products/1").await.status(), StatusCode::OK);
    assert_eq!(app.get("/products/50").await.status(), StatusCode::OK);
    assert_eq!(
        app.get("/products/51").await.status(),
        StatusCode::NOT_FOUND
    );
    let created: Value = app
        .post_product(&product())
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(created["product_id"], 51);
}

#[tokio::test]
async fn concurrent_creates_get_distinct_ids() {
    let app = spawn_app().await;
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let client = app.client.clone();
        let url = format!("{}/product", app.base);
        tasks.push(tokio::spawn(async move {
            let resp = client
                .post(url)
                .json(&product())
                .send()
                .await
                .expect("request");
            let body: Value = resp.json().await.expect("json");
            body["product_id"].as_i64().expect("id")
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.expect("task"));
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=200).collect::<Vec<i64>>());
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
