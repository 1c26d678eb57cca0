//! Who may touch a cart and an order, with credentials on all three services: the real cart,
//! product service and card authorizer, each with `AUTH_MODE=on`, the cart calling the other two
//! with its service key, and a checkout published to the real RabbitMQ.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::*;

async fn call(
    app: &TestApp,
    key: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = app.client.request(method, format!("{}{path}", app.base));
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the cart answers");
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

fn with_auth() -> Options {
    Options {
        auth: Some(demo_auth()),
        service_api_key: Some(SERVICE_KEY.to_string()),
        ..Options::default()
    }
}

/// Customer 7's cart with one product in it, made with customer 7's key.
async fn customer_7_cart(app: &TestApp) -> i64 {
    let key = Some(CUSTOMER_7_KEY);
    let (status, body) = call(
        app,
        key,
        Method::POST,
        "/shopping-cart",
        Some(json!({"customer_id": 7})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let cart = body["shopping_cart_id"].as_i64().expect("an id");
    let (status, body) = call(
        app,
        key,
        Method::POST,
        &format!("/shopping-carts/{cart}/addItem"),
        Some(json!({"product_id": 1, "quantity": 2})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    cart
}

#[tokio::test]
async fn a_customer_checks_out_its_own_cart_through_services_that_all_ask_for_credentials() {
    let app = spawn_app_with(with_auth()).await;
    let cart = customer_7_cart(&app).await;
    // The product check, the stock reservation and the card authorization all carried the
    // cart's service key: without it the product service and the authorizer answer 401.
    let (status, body) = call(
        &app,
        Some(CUSTOMER_7_KEY),
        Method::POST,
        &format!("/shopping-carts/{cart}/checkout"),
        Some(json!({"credit_card_number": CARD})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let order = body["order_id"].as_i64().expect("an order id");
    let (status, body) = call(
        &app,
        Some(CUSTOMER_7_KEY),
        Method::GET,
        &format!("/orders/{order}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(
        &app,
        Some(CUSTOMER_7_KEY),
        Method::GET,
        "/customers/7/orders",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["items"][0]["order_id"].as_i64(), Some(order));
}

#[tokio::test]
async fn another_customers_key_may_not_touch_the_cart_or_its_order() {
    let app = spawn_app_with(with_auth()).await;
    let cart = customer_7_cart(&app).await;
    let bob = Some(CUSTOMER_8_KEY);
    let checkout = json!({"credit_card_number": CARD});
    for (method, path, body) in [
        (Method::GET, format!("/shopping-carts/{cart}"), None),
        (
            Method::POST,
            format!("/shopping-carts/{cart}/addItem"),
            Some(json!({"product_id": 1, "quantity": 1})),
        ),
        (
            Method::PATCH,
            format!("/shopping-carts/{cart}/items/1"),
            Some(json!({"quantity": 5})),
        ),
        (
            Method::DELETE,
            format!("/shopping-carts/{cart}/items/1"),
            None,
        ),
        (
            Method::POST,
            format!("/shopping-carts/{cart}/checkout"),
            Some(checkout.clone()),
        ),
        (
            Method::POST,
            "/shopping-cart".to_string(),
            Some(json!({"customer_id": 7})),
        ),
        (Method::GET, "/customers/7/orders".to_string(), None),
    ] {
        let (status, body) = call(&app, bob, method.clone(), &path, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        assert_eq!(body["error"], "FORBIDDEN", "{method} {path}: {body}");
    }
    // Nothing changed: the cart still holds its two units, and is still open.
    let (status, body) = call(
        &app,
        Some(CUSTOMER_7_KEY),
        Method::GET,
        &format!("/shopping-carts/{cart}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["items"][0]["quantity"], 2, "{body}");
    assert_eq!(body["status"], "open", "{body}");
    // An unknown cart is still a 404, not a 403: nothing to own.
    let (status, _) = call(&app, bob, Method::GET, "/shopping-carts/999999", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body) = call(
        &app,
        Some(CUSTOMER_7_KEY),
        Method::POST,
        &format!("/shopping-carts/{cart}/checkout"),
        Some(checkout),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let order = body["order_id"].as_i64().expect("an order id");
    for (method, path) in [
        (Method::GET, format!("/orders/{order}")),
        (Method::POST, format!("/orders/{order}/cancel")),
    ] {
        let (status, body) = call(&app, bob, method.clone(), &path, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
    }
    // The administrator may read any of it; nobody without a credential may.
    let (status, _) = call(
        &app,
        Some(ADMIN_KEY),
        Method::GET,
        &format!("/orders/{order}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call(&app, None, Method::GET, &format!("/orders/{order}"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test]
async fn without_its_service_key_the_cart_answers_a_clear_503_not_the_dependencys_401() {
    let app = spawn_app_with(Options {
        service_api_key: None,
        ..with_auth()
    })
    .await;
    let key = Some(CUSTOMER_7_KEY);
    let (status, body) = call(
        &app,
        key,
        Method::POST,
        "/shopping-cart",
        Some(json!({"customer_id": 7})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let cart = body["shopping_cart_id"].as_i64().expect("an id");
    // The product check is the first call that needs the product service.
    let (status, body) = call(
        &app,
        key,
        Method::POST,
        &format!("/shopping-carts/{cart}/addItem"),
        Some(json!({"product_id": 1, "quantity": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "PRODUCT_SERVICE_UNAVAILABLE", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("SERVICE_API_KEY")),
        "{body}"
    );
}
