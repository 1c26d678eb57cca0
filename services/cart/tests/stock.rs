//! Checkout and stock: the cart reserves at the real product service before the card, and never
//! sells what is not there.

mod support;

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{error_body, spawn_app, spawn_app_with, Options, TestApp, CARD};

/// A new product with `stock` units, straight at the product service.
async fn product_with_stock(app: &TestApp, stock: i64) -> i64 {
    let resp = app
        .client
        .post(format!("{}/product", app.product_url))
        .json(
            &json!({"sku": "LIMITED-1", "manufacturer": "Acme", "category_id": 1,
                      "weight": 10, "some_other_id": 1, "quantity_on_hand": stock}),
        )
        .send()
        .await
        .expect("create product");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: Value = resp.json().await.expect("json");
    body["product_id"].as_i64().expect("product_id")
}

/// `{quantity_on_hand, reserved, sold, ...}` from the product service's internal API.
async fn stock_of(app: &TestApp, product_id: i64) -> Value {
    app.client
        .get(format!(
            "{}/internal/products/{product_id}/stock",
            app.product_url
        ))
        .send()
        .await
        .expect("stock")
        .json()
        .await
        .expect("json")
}

async fn cart_with(app: &TestApp, product_id: i64, quantity: i64) -> i64 {
    let cart = app.create_cart().await;
    let resp = app.add_item(cart, product_id, quantity).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    cart
}

#[tokio::test]
async fn two_hundred_concurrent_checkouts_of_fifty_units_sell_exactly_fifty() {
    let app = spawn_app().await;
    let product = product_with_stock(&app, 50).await;
    let carts = join_all((0..200).map(|_| cart_with(&app, product, 1))).await;
    let answers = join_all(carts.iter().map(|&cart| app.checkout(cart, CARD))).await;
    let mut placed = 0;
    let mut refused = 0;
    for resp in answers {
        match resp.status() {
            StatusCode::OK => placed += 1,
            StatusCode::CONFLICT => {
                let body = error_body(resp).await;
                assert_eq!(body["error"], "OUT_OF_STOCK", "{body}");
                assert!(
                    body["details"]
                        .as_str()
                        .is_some_and(|d| d.contains(&format!("product_id={product}"))),
                    "{body}"
                );
                refused += 1;
            }
            other => panic!("unexpected {other}: {:?}", resp.text().await),
        }
    }
    assert_eq!((placed, refused), (50, 150));
    let stock = stock_of(&app, product).await;
    assert_eq!(
        (&stock["quantity_on_hand"], &stock["reserved"]),
        (&json!(0), &json!(50)),
        "{stock}"
    );
    // Exactly the placed orders reached the queue: nothing was published for a refused one.
    assert_eq!(app.drain().await.len(), 50);
    app.delete_queues().await;
}

#[tokio::test]
async fn an_out_of_stock_cart_stays_open_and_checks_out_once_restocked() {
    let app = spawn_app().await;
    let product = product_with_stock(&app, 1).await;
    let cart = cart_with(&app, product, 2).await;
    let resp = app.checkout(cart, CARD).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert_eq!(error_body(resp).await["error"], "OUT_OF_STOCK");
    assert_eq!(app.view(cart).await["status"], "open");
    assert!(app.drain().await.is_empty());
    // Nothing is held for the refused checkout.
    assert_eq!(stock_of(&app, product).await["quantity_on_hand"], 1);

    let resp = app
        .client
        .post(format!(
            "{}/internal/products/{product}/stock",
            app.product_url
        ))
        .json(&json!({"delta": 1}))
        .send()
        .await
        .expect("restock");
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app.checkout(cart, CARD).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let stock = stock_of(&app, product).await;
    assert_eq!(
        (&stock["quantity_on_hand"], &stock["reserved"]),
        (&json!(0), &json!(2)),
        "{stock}"
    );
    assert_eq!(app.drain().await.len(), 1);
    app.delete_queues().await;
}

#[tokio::test]
async fn a_declined_card_returns_the_reservation_and_a_later_checkout_takes_it_again() {
    let app = spawn_app_with(Options {
        decline_rate: 1.0,
        ..Options::default()
    })
    .await;
    let product = product_with_stock(&app, 3).await;
    let cart = cart_with(&app, product, 3).await;
    for _ in 0..2 {
        let resp = app.checkout(cart, CARD).await;
        assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
        let stock = stock_of(&app, product).await;
        assert_eq!(
            (&stock["quantity_on_hand"], &stock["reserved"]),
            (&json!(3), &json!(0)),
            "{stock}"
        );
    }
    assert_eq!(app.view(cart).await["status"], "open");
    assert!(app.drain().await.is_empty());
    app.delete_queues().await;
}

#[tokio::test]
async fn a_placed_order_confirms_its_reservation() {
    let app = spawn_app().await;
    let product = product_with_stock(&app, 5).await;
    let cart = cart_with(&app, product, 2).await;
    let resp = app.checkout(cart, CARD).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let order_id = resp.json::<Value>().await.expect("json")["order_id"].clone();
    let order: Value = app
        .get(&format!("/orders/{order_id}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(order["status"], "placed");
    let uid = order["order_uid"].as_str().expect("uid").to_string();
    // Confirms are batched in the background: give them a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let reservation: Value = app
            .client
            .get(format!("{}/internal/reservations/{uid}", app.product_url))
            .send()
            .await
            .expect("reservation")
            .json()
            .await
            .expect("json");
        if reservation["status"] == "confirmed" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never confirmed: {reservation}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    app.delete_queues().await;
}

#[tokio::test]
async fn without_reservations_checkout_leaves_stock_alone() {
    let app = spawn_app_with(Options {
        reserve_stock: false,
        ..Options::default()
    })
    .await;
    let product = product_with_stock(&app, 1).await;
    let cart = cart_with(&app, product, 5).await;
    assert_eq!(app.checkout(cart, CARD).await.status(), StatusCode::OK);
    assert_eq!(stock_of(&app, product).await["quantity_on_hand"], 1);
    app.delete_queues().await;
}

#[tokio::test]
async fn a_cart_changed_after_a_failed_checkout_reserves_its_new_items() {
    let app = spawn_app().await;
    let product = product_with_stock(&app, 10).await;
    let cart = cart_with(&app, product, 2).await;
    // Warm the publisher, then take its queue away: the next publish is returned unroutable,
    // a certain failure, so the checkout releases its reservation and reopens the cart.
    let warm = cart_with(&app, product, 1).await;
    assert_eq!(app.checkout(warm, CARD).await.status(), StatusCode::OK);
    app.delete_queues().await;
    let resp = app.checkout(cart, CARD).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let stock = stock_of(&app, product).await;
    assert_eq!(
        (&stock["quantity_on_hand"], &stock["reserved"]),
        (&json!(9), &json!(1)),
        "{stock}"
    );
    app.declare_queues().await;

    // The customer changes the cart; the retry reserves what the cart holds now (the same
    // order uid, other items).
    assert_eq!(
        app.add_item(cart, product, 3).await.status(),
        StatusCode::NO_CONTENT
    );
    let resp = app.checkout(cart, CARD).await;
    assert_eq!(resp.status(), StatusCode::OK, "{:?}", resp.text().await);
    let stock = stock_of(&app, product).await;
    assert_eq!(
        (&stock["quantity_on_hand"], &stock["reserved"]),
        (&json!(4), &json!(6)),
        "{stock}"
    );
    app.delete_queues().await;
}
