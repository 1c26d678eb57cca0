//! Carts in the real Redis under the running service: two cart instances sharing them, Redis
//! going away and coming back, and carts expiring.

mod support;

use cart_service::carts::Lifetimes;
use cart_service::store::{CartStore, RedisCartStore};
use common::shutdown::CancellationToken;
use common::testing::{TestDatabase, TestRedis};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use support::{
    error_body, spawn_app_with, spawn_authorizer, spawn_second, FaultyProxy, Mode, Options,
    TestApp, CARD,
};

fn with_redis(redis: &TestRedis) -> Options {
    Options {
        store: Some(redis.config()),
        ..Options::default()
    }
}

/// Two cart instances sharing one Redis prefix, product service, authorizer and queue.
async fn pair(redis: &TestRedis) -> (TestApp, TestApp) {
    let a = spawn_app_with(with_redis(redis)).await;
    let b = spawn_second(&a, with_redis(redis)).await;
    (a, b)
}

async fn order_id(resp: reqwest::Response) -> i64 {
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("json");
    body["order_id"].as_i64().expect("order_id")
}

async fn error_code(resp: reqwest::Response) -> String {
    error_body(resp).await["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_cart_made_on_one_instance_is_filled_and_checked_out_through_the_other() {
    let redis = TestRedis::create().await;
    let (a, b) = pair(&redis).await;
    let cart = a.create_cart().await;
    assert_eq!(cart, 1);
    // Ids come from one shared counter, not one per process.
    assert_eq!(b.create_cart().await, 2);
    for (product_id, quantity) in [(1, 2), (3, 1), (1, 1)] {
        let resp = b.add_item(cart, product_id, quantity).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    }
    assert_eq!(
        a.view(cart).await,
        json!({"shopping_cart_id": cart, "customer_id": 42, "status": "open",
               "items": [{"product_id": 1, "quantity": 3}, {"product_id": 3, "quantity": 1}],
               "order_id": null})
    );
    let placed = order_id(b.checkout(cart, CARD).await).await;
    assert_eq!(placed, 1);
    let view = a.view(cart).await;
    assert_eq!(
        (&view["status"], &view["order_id"]),
        (&json!("checked_out"), &json!(1))
    );
    // A retry through the other instance learns the order instead of an error.
    assert_eq!(order_id(a.checkout(cart, CARD).await).await, placed);
    let messages = a.drain().await;
    assert_eq!(messages.len(), 1);
    assert_eq!(i64::from(messages[0].0.order_id), placed);
    assert_eq!(messages[0].0.items.len(), 2);
    a.delete_queues().await;
}

#[tokio::test]
async fn a_checkout_on_one_instance_excludes_a_checkout_on_the_other() {
    let redis = TestRedis::create().await;
    let deps = CancellationToken::new();
    let _stop = deps.clone().drop_guard();
    let cca = spawn_authorizer(&deps, 0.0).await;
    let cca_proxy = FaultyProxy::start(cca.trim_start_matches("http://")).await;
    let a = spawn_app_with(Options {
        cca_url: Some(cca_proxy.url_for(&cca)),
        ..with_redis(&redis)
    })
    .await;
    let b = spawn_second(&a, with_redis(&redis)).await;

    // A holds the cart while its authorization hangs; B's checkout of it is refused meanwhile.
    let cart = a.filled_cart().await;
    cca_proxy.set(Mode::Stall);
    let (first, second) = tokio::join!(a.checkout(cart, CARD), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let resp = b.checkout(cart, CARD).await;
        cca_proxy.set(Mode::Pass);
        resp
    });
    let first_order = order_id(first).await;
    assert_eq!(second.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(second).await, "CHECKOUT_IN_PROGRESS");

    // A free-for-all through both instances: one order.
    let cart = b.filled_cart().await;
    let checkouts = (0..12).map(|i| if i % 2 == 0 { &a } else { &b }.checkout(cart, CARD));
    support::assert_one_checkout_won(join_all(checkouts).await).await;
    let orders: HashSet<i32> = a.drain().await.iter().map(|(o, _)| o.order_id).collect();
    assert_eq!(orders.len(), 2);
    assert!(orders.contains(&(first_order as i32)));
    a.delete_queues().await;
}

#[tokio::test]
async fn an_unconfirmed_order_on_one_instance_is_reported_pending_by_the_other() {
    let redis = TestRedis::create().await;
    let db = TestDatabase::create().await;
    let shared = || Options {
        orders_db: Some(db.config("orders")),
        ..with_redis(&redis)
    };
    let broker = FaultyProxy::start("127.0.0.1:5672").await;
    let a = spawn_app_with(Options {
        broker: Some(support::broker_via(&broker)),
        confirm_timeout: Duration::from_millis(700),
        ..shared()
    })
    .await;
    let b = spawn_second(&a, shared()).await;
    // Warm A's channels so the fault hits a publish, not the handshake.
    order_id(a.checkout(a.filled_cart().await, CARD).await).await;
    a.drain().await;

    let cart = a.filled_cart().await;
    // The publish reaches the broker but its confirm never comes back, then A loses the broker.
    broker.set(Mode::Stall);
    let resp = a.checkout(cart, CARD).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let pending: Value = resp.json().await.expect("json");
    assert_eq!(pending["status"], "pending");
    broker.set(Mode::Cut);
    // The cart is done on every instance; B reports the same order, still pending, from the
    // shared order store, and publishes nothing.
    let resp = b.checkout(cart, CARD).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let again: Value = resp.json().await.expect("json");
    assert_eq!(again["order_id"], pending["order_id"]);
    let order: Value = b
        .get(&format!("/orders/{}", pending["order_id"]))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(order["status"], "pending");
    let resp = b.add_item(cart, 5, 1).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "CART_ALREADY_CHECKED_OUT");
    // A's unconfirmed message is the only copy.
    let messages = a.drain().await;
    assert!(messages.len() <= 1, "{messages:?}");
    a.delete_queues().await;
}

#[tokio::test]
async fn a_checkout_whose_process_died_is_taken_over_after_its_lease() {
    let redis = TestRedis::create().await;
    let lease = Duration::from_millis(600);
    let app = spawn_app_with(Options {
        checkout_lease: lease,
        ..with_redis(&redis)
    })
    .await;
    let cart = app.filled_cart().await;
    // Another process takes the cart and dies before finishing.
    let dead = RedisCartStore::new(
        &redis.config(),
        Lifetimes {
            cart_ttl: Duration::from_secs(60),
            checkout_lease: lease,
        },
    )
    .expect("store");
    let ticket = dead
        .begin_checkout(i32::try_from(cart).expect("id"))
        .await
        .expect("begin");
    drop(dead);
    let resp = app.checkout(cart, CARD).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    // It may have published: its items stay frozen, and the retry places its very order.
    let resp = app.add_item(cart, 2, 1).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let placed = order_id(app.checkout(cart, CARD).await).await;
    assert_eq!(placed, i64::from(ticket.order.order_id));
    let messages = app.drain().await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].0, ticket.order);
    app.delete_queues().await;
}

/// Each request must fail with the store's 503 well inside the 1 s store timeout plus margin.
async fn assert_store_unavailable(resp: reqwest::Response, started: Instant, what: &str) {
    let elapsed = started.elapsed();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
    assert_eq!(error_code(resp).await, "STORE_UNAVAILABLE", "{what}");
    assert!(elapsed < Duration::from_millis(1500), "{what}: {elapsed:?}");
}

#[tokio::test]
async fn redis_down_is_a_fast_503_and_the_service_recovers_without_a_restart() {
    let redis = TestRedis::create().await;
    let proxy = FaultyProxy::start("127.0.0.1:6379").await;
    let mut config = redis.config();
    config.url = common::secret::Secret::new(proxy.url_for(&redis.url));
    let app = spawn_app_with(Options {
        store: Some(config),
        ..Options::default()
    })
    .await;
    let cart = app.filled_cart().await;
    assert_eq!(app.get("/ready").await.status(), StatusCode::OK);

    for mode in [Mode::Cut, Mode::Stall] {
        proxy.set(mode);
        let started = Instant::now();
        let resp = app.post("/shopping-cart", json!({"customer_id": 1})).await;
        assert_store_unavailable(resp, started, &format!("{mode:?} create")).await;
        let started = Instant::now();
        let resp = app.get(&format!("/shopping-carts/{cart}")).await;
        assert_store_unavailable(resp, started, &format!("{mode:?} view")).await;
        // A known product goes straight to the store; an unknown one asks whether the cart
        // exists first.
        for product in [1, 5] {
            let started = Instant::now();
            let resp = app.add_item(cart, product, 1).await;
            assert_store_unavailable(resp, started, &format!("{mode:?} add {product}")).await;
        }
        let resp = app.get("/ready").await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(error_body(resp).await.to_string().contains("redis"));
    }
    // A checkout while Redis is cut takes nothing (a stalled one might have taken the cart).
    proxy.set(Mode::Cut);
    let started = Instant::now();
    let resp = app.checkout(cart, CARD).await;
    assert_store_unavailable(resp, started, "checkout").await;

    proxy.set(Mode::Pass);
    app.ready_becomes(StatusCode::OK, Duration::from_secs(10))
        .await;
    app.create_cart().await;
    order_id(app.checkout(cart, CARD).await).await;
    assert_eq!(app.drain().await.len(), 1);
    app.delete_queues().await;
}

#[tokio::test]
async fn an_expired_cart_is_not_found() {
    let redis = TestRedis::create().await;
    let app = spawn_app_with(Options {
        cart_ttl: Duration::from_secs(1),
        ..with_redis(&redis)
    })
    .await;
    let cart = app.filled_cart().await;
    assert_eq!(app.view(cart).await["status"], "open");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let resp = app.get(&format!("/shopping-carts/{cart}")).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "CART_NOT_FOUND");
    let resp = app.add_item(cart, 1, 1).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = app.checkout(cart, CARD).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "CART_NOT_FOUND");
    app.delete_queues().await;
}
