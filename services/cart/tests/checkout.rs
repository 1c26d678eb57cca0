//! Checkout against the real authorizer and the real RabbitMQ: what reaches the queue, and what
//! does not, under declines, races and broker faults.

mod support;

use common::messaging::CancelReason;
use futures::future::join_all;
use lapin::types::AMQPValue;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use support::{dead_port, error_body, spawn_app, spawn_app_with, FaultyProxy, Mode, Options, CARD};

async fn order_id(resp: reqwest::Response) -> i64 {
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("json");
    body["order_id"].as_i64().expect("order_id")
}

#[tokio::test]
async fn a_confirmed_checkout_leaves_exactly_one_well_formed_persistent_message() {
    let app = spawn_app().await;
    let cart = app.filled_cart().await;
    let resp = app
        .client
        .post(format!("{}/shopping-carts/{cart}/checkout", app.base))
        .header("x-request-id", "req-checkout-1")
        .json(&json!({"credit_card_number": CARD}))
        .send()
        .await
        .expect("request");
    let order_id = order_id(resp).await;

    let messages = app.drain().await;
    assert_eq!(messages.len(), 1);
    let (order, props) = &messages[0];
    assert_eq!(i64::from(order.order_id), order_id);
    assert_eq!(i64::from(order.shopping_cart_id), cart);
    assert_eq!(order.customer_id, 42);
    let items: Vec<(i32, i32)> = order
        .items
        .iter()
        .map(|i| (i.product_id, i.quantity))
        .collect();
    assert_eq!(items, vec![(1, 2), (3, 1)]);
    assert_eq!(props.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        props.content_type().as_ref().map(|c| c.as_str()),
        Some("application/json")
    );
    assert_eq!(
        props.message_id().as_ref().map(|m| m.as_str()),
        Some(order.order_uid.as_str())
    );
    let headers = props.headers().clone().expect("headers");
    let request_id = headers.inner().get("x-request-id").cloned();
    assert!(
        matches!(request_id, Some(AMQPValue::LongString(ref s)) if s.to_string() == "req-checkout-1"),
        "{request_id:?}"
    );

    let view = app.view(cart).await;
    assert_eq!(view["status"], "checked_out");
    assert_eq!(view["order_id"], order_id);

    // The cart is closed now. A checkout retried by a client that lost the answer learns the
    // order it placed, and nothing is published again.
    let resp = app.checkout(cart, CARD).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["order_id"], order_id);
    assert_eq!(body["status"], "placed");
    let resp = app.add_item(cart, 1, 1).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(app.drain().await.is_empty());
    app.delete_queues().await;
}

#[tokio::test]
async fn bad_card_empty_cart_and_unknown_cart_publish_nothing() {
    let app = spawn_app().await;
    let cart = app.filled_cart().await;
    for bad in ["1234567890123456", "1234-5678-9012-345", ""] {
        let resp = app.checkout(cart, bad).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(error_body(resp).await["error"], "INVALID_CARD_NUMBER");
    }
    let resp = app
        .post(
            &format!("/shopping-carts/{cart}/checkout"),
            json!({"card": CARD}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let empty = app.create_cart().await;
    let resp = app.checkout(empty, CARD).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_body(resp).await["error"], "CART_EMPTY");
    let resp = app.checkout(4242, CARD).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_body(resp).await["error"], "CART_NOT_FOUND");
    assert!(app.drain().await.is_empty());
    app.delete_queues().await;
}

#[tokio::test]
async fn a_declined_card_is_402_publishes_nothing_and_leaves_the_cart_open() {
    let app = spawn_app_with(Options {
        decline_rate: 1.0,
        ..Options::default()
    })
    .await;
    let cart = app.filled_cart().await;
    for _ in 0..3 {
        let resp = app.checkout(cart, CARD).await;
        assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
        assert_eq!(error_body(resp).await["error"], "PAYMENT_DECLINED");
    }
    let view = app.view(cart).await;
    assert_eq!(view["status"], "open");
    // Still open: items can be added for another attempt.
    let resp = app.add_item(cart, 2, 1).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(app.drain().await.is_empty());
    app.delete_queues().await;
}

#[tokio::test]
async fn concurrent_checkouts_of_one_cart_make_one_order() {
    let app = spawn_app().await;
    let cart = app.filled_cart().await;
    let responses = join_all((0..12).map(|_| app.checkout(cart, CARD))).await;
    support::assert_one_checkout_won(responses).await;
    assert_eq!(app.drain().await.len(), 1);
    app.delete_queues().await;
}

#[tokio::test]
async fn authorizer_down_is_a_fast_503_and_the_cart_stays_open() {
    let port = dead_port().await;
    let app = spawn_app_with(Options {
        cca_url: Some(format!("http://127.0.0.1:{port}")),
        ..Options::default()
    })
    .await;
    let cart = app.filled_cart().await;
    let started = Instant::now();
    let resp = app.checkout(cart, CARD).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        error_body(resp).await["error"],
        "PAYMENT_SERVICE_UNAVAILABLE"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let view = app.view(cart).await;
    assert_eq!(view["status"], "open");
    assert!(app.drain().await.is_empty());
    app.delete_queues().await;
}

#[tokio::test]
async fn connections_closed_by_the_broker_are_replaced() {
    let app = spawn_app().await;
    let first = app.filled_cart().await;
    order_id(app.checkout(first, CARD).await).await;

    // Close the cart's connection from the broker's side, as an operator or a failover would.
    let closed = close_connections_named(&app.instance_id);
    assert!(closed >= 1, "the cart's connection was not found");

    // Later checkouts succeed without restarting the service. The first one may race the close
    // and get a 503 (the cart stays open); a retry of the same cart then succeeds.
    let mut confirmed = 0;
    for _ in 0..3 {
        let cart = app.filled_cart().await;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let resp = app.checkout(cart, CARD).await;
            if resp.status() == StatusCode::OK {
                confirmed += 1;
                break;
            }
            // 202: the close cut the confirm of a publish that may have got through.
            if resp.status() == StatusCode::ACCEPTED {
                break;
            }
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(attempts < 5, "checkouts did not recover");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(confirmed >= 2, "{confirmed}");
    let uids: HashSet<String> = app
        .drain()
        .await
        .into_iter()
        .map(|(o, _)| o.order_uid)
        .collect();
    assert!((1 + confirmed..=4).contains(&uids.len()), "{}", uids.len());
    app.delete_queues().await;
}

fn close_connections_named(fragment: &str) -> usize {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl");
    let listing = String::from_utf8_lossy(&out.stdout);
    let mut closed = 0;
    for line in listing.lines().filter(|l| l.contains(fragment)) {
        let Some(pid) = line.split_whitespace().next() else {
            continue;
        };
        let status = std::process::Command::new("rabbitmqctl")
            .args(["close_connection", pid, "closed by the cart test"])
            .status()
            .expect("rabbitmqctl");
        if status.success() {
            closed += 1;
        }
    }
    closed
}

#[tokio::test]
async fn broker_down_fails_fast_and_recovers_without_a_restart() {
    let proxy = FaultyProxy::start("127.0.0.1:5672").await;
    let app = spawn_app_with(Options {
        broker: Some(support::broker_via(&proxy)),
        ..Options::default()
    })
    .await;
    order_id(app.checkout(app.filled_cart().await, CARD).await).await;
    assert_eq!(app.get("/ready").await.status(), StatusCode::OK);

    proxy.set(Mode::Cut);
    // The cut reaches the cart's connection a moment later. A checkout in that moment may hand
    // its frames to a connection that is already dead; its fate is then unknown and it is
    // rightly answered 202 pending, not 503. So wait until the cart has seen the cut: from then
    // on a checkout must fail fast and certainly.
    let resp = app
        .ready_becomes(StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(5))
        .await;
    assert!(error_body(resp).await.to_string().contains("rabbitmq"));
    let cart = app.filled_cart().await;
    let started = Instant::now();
    let resp = app.checkout(cart, CARD).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_body(resp).await["error"], "ORDER_NOT_CONFIRMED");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    proxy.set(Mode::Pass);
    app.checkout_until_ok(cart).await;
    assert_eq!(app.get("/ready").await.status(), StatusCode::OK);
    let uids: HashSet<String> = app
        .drain()
        .await
        .into_iter()
        .map(|(o, _)| o.order_uid)
        .collect();
    assert_eq!(uids.len(), 2);
    app.delete_queues().await;
}

#[tokio::test]
async fn an_unconfirmed_publish_is_answered_pending_and_withdrawn_if_the_warehouse_never_reports_it(
) {
    let proxy = FaultyProxy::start("127.0.0.1:5672").await;
    let app = spawn_app_with(Options {
        broker: Some(support::broker_via(&proxy)),
        confirm_timeout: Duration::from_millis(700),
        pending_order_timeout: Duration::from_millis(1500),
        ..Options::default()
    })
    .await;
    // Warm the pool so the stall hits a publish, not the handshake.
    order_id(app.checkout(app.filled_cart().await, CARD).await).await;
    app.drain().await;

    let cart = app.filled_cart().await;
    proxy.set(Mode::Stall);
    let resp = app.checkout(cart, CARD).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["status"], "pending");
    let order_id = body["order_id"].as_i64().expect("order_id");
    let order: serde_json::Value = app
        .get(&format!("/orders/{order_id}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(order["status"], "pending");
    // The cart is done: a retry reports the same pending order instead of placing another.
    let resp = app.checkout(cart, CARD).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let again: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(again["order_id"], order_id);
    proxy.set(Mode::Pass);

    // No warehouse reports it here, so after the timeout the cart withdraws it: a confirmed
    // cancel for the same uid, and the order shows `cancelling` until the warehouse decides.
    let deadline = Instant::now() + Duration::from_secs(15);
    let order = loop {
        let order: serde_json::Value = app
            .get(&format!("/orders/{order_id}"))
            .await
            .json()
            .await
            .expect("json");
        if order["status"] == "cancelling" {
            break order;
        }
        assert!(Instant::now() < deadline, "never withdrawn: {order}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(order["cancel_reason"], "not_confirmed");
    let cancels = app.drain_cancels().await;
    assert!(
        cancels.iter().any(
            |c| c.order_uid == order["order_uid"].as_str().unwrap_or_default()
                && c.reason == CancelReason::NotConfirmed
        ),
        "{cancels:?}"
    );
    // The stalled publish reached the queue too: one uid, which the warehouse sees as the
    // loser of the race against its cancel (or the winner, if it came first).
    let messages = app.drain().await;
    assert!(messages
        .iter()
        .all(|(o, _)| i64::from(o.order_id) == order_id));
    app.delete_queues().await;
}

#[tokio::test]
async fn an_unroutable_order_is_not_confirmed() {
    let app = spawn_app().await;
    order_id(app.checkout(app.filled_cart().await, CARD).await).await;
    app.drain().await;
    // The queue disappears under the running service: the mandatory publish comes back.
    app.delete_queues().await;
    let cart = app.filled_cart().await;
    let resp = app.checkout(cart, CARD).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_body(resp).await["error"], "ORDER_NOT_CONFIRMED");
    let view = app.view(cart).await;
    assert_eq!(view["status"], "open");
    app.delete_queues().await;
}
