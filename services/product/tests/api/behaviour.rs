//! The catalog's behaviour, the same on both stores: every test here is an `async fn(Backend)`
//! that `on_both_stores!` runs once on the memory store and once on PostgreSQL.

use crate::support::{
    concurrent_creates, db_scalar, error_body, on_both_stores, product, spawn_on, Backend, SCHEMA,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

on_both_stores!(
    create_then_read_by_both_paths,
    unknown_product_is_404,
    invalid_ids_are_400,
    every_schema_violation_is_400_naming_the_field,
    seeded_catalog_has_ids_one_to_n,
    seeding_is_deterministic,
    concurrent_creates_get_distinct_ids,
    health_ready_headers_and_metrics,
);

async fn create_then_read_by_both_paths(backend: Backend) {
    let app = spawn_on(backend, 0).await;
    // Ids start at 1 on an empty catalog.
    let resp = app.post_product(&product()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created: Value = resp.json().await.expect("json");
    assert_eq!(created, json!({"product_id": 1}));

    // A product_id in the body is ignored: the server assigns ids.
    let mut with_id = product();
    with_id["product_id"] = json!(999);
    let created: Value = app.post_product(&with_id).await.json().await.expect("json");
    assert_eq!(created["product_id"], 2);
    assert_eq!(app.product(999).await, None);

    for path in ["/products/1", "/product/1"] {
        let resp = app.get(path).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body: Value = resp.json().await.expect("json");
        let mut expected = product();
        expected["product_id"] = json!(1);
        assert_eq!(body, expected);
    }
}

async fn unknown_product_is_404(backend: Backend) {
    let app = spawn_on(backend, 3).await;
    let resp = app.get("/products/42").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_body(resp).await["error"], "PRODUCT_NOT_FOUND");
}

async fn invalid_ids_are_400(backend: Backend) {
    let app = spawn_on(backend, 0).await;
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

async fn every_schema_violation_is_400_naming_the_field(backend: Backend) {
    let app = spawn_on(backend, 0).await;
    let cases = [
        ("sku", json!("")),
        ("sku", json!("x".repeat(101))),
        ("sku", json!("AB\u{0}C")),
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
    // Boundaries that are allowed, stored and read back as sent (100 and 200 *characters*).
    let mut edge = product();
    edge["sku"] = json!("é".repeat(100));
    edge["manufacturer"] = json!("m".repeat(200));
    edge["weight"] = json!(0);
    edge["category_id"] = json!(i32::MAX);
    let resp = app.post_product(&edge).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let id = resp.json::<Value>().await.expect("json")["product_id"].clone();
    edge["product_id"] = id.clone();
    let id = id.as_i64().expect("id");
    assert_eq!(app.product(id).await, Some(edge));

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

async fn seeded_catalog_has_ids_one_to_n(backend: Backend) {
    let app = spawn_on(backend, 50).await;
    assert_eq!(app.get("/products/1").await.status(), StatusCode::OK);
    assert_eq!(app.get("/products/50").await.status(), StatusCode::OK);
    assert_eq!(
        app.get("/products/51").await.status(),
        StatusCode::NOT_FOUND
    );
    // Created products come after the seeded ones.
    assert_eq!(app.create().await, 51);
}

/// Two catalogs seeded independently with the same N serve the same products.
async fn seeding_is_deterministic(backend: Backend) {
    let a = spawn_on(backend, 100).await;
    let b = spawn_on(backend, 100).await;
    for id in 1..=100 {
        let product = a.product(id).await.expect("seeded");
        assert_eq!(product["product_id"], id);
        assert_eq!(b.product(id).await, Some(product), "product {id}");
    }
    assert_eq!(a.product(101).await, None);
    assert_eq!(b.product(101).await, None);
}

async fn concurrent_creates_get_distinct_ids(backend: Backend) {
    let app = spawn_on(backend, 0).await;
    let mut ids = concurrent_creates(&app, 200).await;
    ids.sort_unstable();
    assert_eq!(ids, (1..=200).collect::<Vec<i64>>());
    if let Some(db) = &app.db {
        let stored = db_scalar(db, &format!("SELECT count(*) FROM {SCHEMA}.products")).await;
        assert_eq!(stored, 200);
    }
}

async fn health_ready_headers_and_metrics(backend: Backend) {
    let app = spawn_on(backend, 0).await;
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

/// The SQL seed computes the same products as the memory seed.
#[tokio::test]
async fn both_stores_seed_the_same_products() {
    let memory = spawn_on(Backend::Memory, 1200).await;
    let postgres = spawn_on(Backend::Postgres, 1200).await;
    for id in 1..=1200 {
        let expected = memory.product(id).await.expect("seeded in memory");
        assert_eq!(postgres.product(id).await, Some(expected), "product {id}");
    }
}

/// PostgreSQL's id sequence stops at the largest int32 instead of wrapping. (The memory store's
/// counter is tested the same way in its unit tests: 2^31 creates are out of reach here.)
#[tokio::test]
async fn a_full_id_range_refuses_instead_of_wrapping() {
    let app = spawn_on(Backend::Postgres, 2).await;
    let db = app.db.as_ref().expect("database");
    let moved = db_scalar(
        db,
        &format!("SELECT setval('{SCHEMA}.product_ids', 2147483646)"),
    )
    .await;
    assert_eq!(moved, 2147483646);
    assert_eq!(app.create().await, 2147483647);
    let resp = app.post_product(&product()).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(error_body(resp).await["message"]
        .as_str()
        .is_some_and(|m| m.contains("full")));
    // Nothing wrapped over the seeded ids.
    assert_eq!(app.product(1).await.expect("seeded")["sku"], "SKU0000001");
    assert_eq!(
        app.product(2147483647).await.expect("created")["sku"],
        "ABC123XYZ0"
    );
}
