//! Changing a cart's items over real HTTP: `PATCH` and `DELETE
//! /shopping-carts/{id}/items/{product_id}`, their every answer, against both stores (Redis: a
//! prefix of its own per test). A cart held by a checkout or frozen is set up through the running
//! app's own store, since no HTTP request leaves a cart in that state for long.

mod support;

use common::testing::TestRedis;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{error_body, spawn_app_with, Options, TestApp, CARD};

#[derive(Debug, Clone, Copy)]
enum Kind {
    Memory,
    Redis,
}

async fn app(kind: Kind) -> (TestApp, Option<TestRedis>) {
    match kind {
        Kind::Memory => (spawn_app_with(Options::default()).await, None),
        Kind::Redis => {
            let redis = TestRedis::create().await;
            let app = spawn_app_with(Options {
                store: Some(redis.config()),
                ..Options::default()
            })
            .await;
            (app, Some(redis))
        }
    }
}

async fn patch(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.client
        .patch(format!("{}{path}", app.base))
        .json(&body)
        .send()
        .await
        .expect("request")
}

async fn delete(app: &TestApp, path: &str) -> reqwest::Response {
    app.client
        .delete(format!("{}{path}", app.base))
        .send()
        .await
        .expect("request")
}

async fn set(app: &TestApp, cart: i64, product: i64, quantity: i64) -> reqwest::Response {
    patch(
        app,
        &format!("/shopping-carts/{cart}/items/{product}"),
        json!({ "quantity": quantity }),
    )
    .await
}

async fn remove(app: &TestApp, cart: i64, product: i64) -> reqwest::Response {
    delete(app, &format!("/shopping-carts/{cart}/items/{product}")).await
}

/// Asserts the status and the error code, and returns the body.
async fn refused(resp: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(resp.status(), status);
    let body = error_body(resp).await;
    assert_eq!(body["error"], code, "{body}");
    body
}

fn items(view: &Value) -> Vec<(i64, i64)> {
    view["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["product_id"].as_i64().expect("product_id"),
                i["quantity"].as_i64().expect("quantity"),
            )
        })
        .collect()
}

async fn set_and_remove_change_what_the_cart_shows(kind: Kind) {
    let (app, _redis) = app(kind).await;
    let cart = app.filled_cart().await; // (1, 2), (3, 1)
    let resp = set(&app, cart, 1, 7).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(items(&app.view(cart).await), vec![(1, 7), (3, 1)]);
    let resp = set(&app, cart, 3, i32::MAX.into()).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = remove(&app, cart, 1).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let view = app.view(cart).await;
    assert_eq!(items(&view), vec![(3, i64::from(i32::MAX))]);
    assert_eq!(view["status"], "open");
    // Removed items are gone, not zero: a second removal or a set is 404.
    refused(
        remove(&app, cart, 1).await,
        StatusCode::NOT_FOUND,
        "ITEM_NOT_FOUND",
    )
    .await;
    refused(
        set(&app, cart, 1, 1).await,
        StatusCode::NOT_FOUND,
        "ITEM_NOT_FOUND",
    )
    .await;
    // A product never added, even one the catalog does not have, is simply not in the cart.
    refused(
        set(&app, cart, 5, 1).await,
        StatusCode::NOT_FOUND,
        "ITEM_NOT_FOUND",
    )
    .await;
    refused(
        remove(&app, cart, 99).await,
        StatusCode::NOT_FOUND,
        "ITEM_NOT_FOUND",
    )
    .await;
    // Emptied: the checkout says so.
    let resp = remove(&app, cart, 3).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(items(&app.view(cart).await), vec![]);
    refused(
        app.checkout(cart, CARD).await,
        StatusCode::BAD_REQUEST,
        "CART_EMPTY",
    )
    .await;
    // The checkout takes what the cart shows after the changes.
    let resp = app.add_item(cart, 2, 3).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = set(&app, cart, 2, 4).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.checkout(cart, CARD).await.status(), StatusCode::OK);
    let messages = app.drain().await;
    assert_eq!(messages.len(), 1);
    let order: Vec<(i32, i32)> = messages[0]
        .0
        .items
        .iter()
        .map(|i| (i.product_id, i.quantity))
        .collect();
    assert_eq!(order, vec![(2, 4)]);
    app.delete_queues().await;
}

async fn bad_input_is_400_naming_the_field(kind: Kind) {
    let (app, _redis) = app(kind).await;
    let cart = app.filled_cart().await;
    let item = format!("/shopping-carts/{cart}/items/1");
    for bad in [json!({"quantity": 0}), json!({"quantity": -4})] {
        let body = refused(
            patch(&app, &item, bad.clone()).await,
            StatusCode::BAD_REQUEST,
            "INVALID_INPUT",
        )
        .await;
        assert_eq!(body["details"], "quantity", "{bad}");
    }
    for bad in [
        json!({}),
        json!({"quantity": "2"}),
        json!({"quantity": 2_147_483_648u64}),
        json!({"quantity": 1.5}),
    ] {
        let body = refused(
            patch(&app, &item, bad.clone()).await,
            StatusCode::BAD_REQUEST,
            "INVALID_INPUT",
        )
        .await;
        assert!(body.to_string().contains("quantity"), "{bad}: {body}");
    }
    let resp = app
        .client
        .patch(format!("{}{item}", app.base))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .expect("request");
    refused(resp, StatusCode::BAD_REQUEST, "MALFORMED_JSON").await;
    for (path, field) in [
        (
            "/shopping-carts/abc/items/1".to_string(),
            "shopping_cart_id",
        ),
        ("/shopping-carts/0/items/1".to_string(), "shopping_cart_id"),
        (
            "/shopping-carts/2147483648/items/1".to_string(),
            "shopping_cart_id",
        ),
        (format!("/shopping-carts/{cart}/items/x"), "product_id"),
        (format!("/shopping-carts/{cart}/items/-1"), "product_id"),
        (format!("/shopping-carts/{cart}/items/0"), "product_id"),
    ] {
        for resp in [
            patch(&app, &path, json!({"quantity": 1})).await,
            delete(&app, &path).await,
        ] {
            let body = refused(resp, StatusCode::BAD_REQUEST, "INVALID_ID").await;
            assert_eq!(body["details"], field, "{path}");
        }
    }
    // Nothing changed.
    assert_eq!(items(&app.view(cart).await), vec![(1, 2), (3, 1)]);
    app.delete_queues().await;
}

async fn unknown_held_frozen_and_checked_out_carts_are_refused_like_add_item(kind: Kind) {
    let (app, _redis) = app(kind).await;
    for resp in [set(&app, 999, 1, 1).await, remove(&app, 999, 1).await] {
        refused(resp, StatusCode::NOT_FOUND, "CART_NOT_FOUND").await;
    }
    let cart = app.filled_cart().await;
    let id = i32::try_from(cart).expect("id");
    // Held by a checkout (its authorization still running, say).
    let ticket = app.state.carts.begin_checkout(id).await.expect("begin");
    for resp in [
        set(&app, cart, 1, 5).await,
        remove(&app, cart, 1).await,
        app.add_item(cart, 1, 1).await,
    ] {
        refused(resp, StatusCode::CONFLICT, "CHECKOUT_IN_PROGRESS").await;
    }
    // Its publish failed with its fate unknown: the items are frozen.
    app.state
        .carts
        .abort_checkout(&ticket, true)
        .await
        .expect("abort");
    for resp in [
        set(&app, cart, 1, 5).await,
        remove(&app, cart, 3).await,
        app.add_item(cart, 1, 1).await,
    ] {
        refused(resp, StatusCode::CONFLICT, "ORDER_PENDING").await;
    }
    assert_eq!(items(&app.view(cart).await), vec![(1, 2), (3, 1)]);
    // Placed: closed, and the answer names the order.
    assert_eq!(app.checkout(cart, CARD).await.status(), StatusCode::OK);
    for resp in [
        set(&app, cart, 1, 5).await,
        remove(&app, cart, 1).await,
        app.add_item(cart, 1, 1).await,
    ] {
        let body = refused(resp, StatusCode::BAD_REQUEST, "CART_ALREADY_CHECKED_OUT").await;
        assert_eq!(
            body["details"],
            format!("order_id={}", ticket.order.order_id)
        );
    }
    app.delete_queues().await;
}

macro_rules! for_both_stores {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test]
            async fn $test() {
                super::$test(super::Kind::Memory).await
            })*
        }
        mod redis {
            $(#[tokio::test]
            async fn $test() {
                super::$test(super::Kind::Redis).await
            })*
        }
    };
}

for_both_stores!(
    set_and_remove_change_what_the_cart_shows,
    bad_input_is_400_naming_the_field,
    unknown_held_frozen_and_checked_out_carts_are_refused_like_add_item,
);
