//! The order lifecycle end to end, every part real: the cart, the product service (stock,
//! reservations, and its consumer of the outcome events), the card authorizer, the warehouse
//! (orders and cancels, one outcome each, outcome events) and RabbitMQ; with `durable`, the
//! catalog and stock, the ledger and the orders in PostgreSQL and the carts in Redis.

mod support;

use common::shutdown::CancellationToken;
use common::testing::{TestDatabase, TestRedis};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::{spawn_app_with, spawn_authorizer, Options, TestApp, CARD};

struct Shop {
    cart: TestApp,
    warehouse_url: String,
    stop: CancellationToken,
    _stores: Option<(TestDatabase, TestRedis)>,
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn shop(durable: bool, fulfilment_delay: Duration) -> Shop {
    let stop = CancellationToken::new();
    let queue = format!("test_lifecycle_{}", uuid::Uuid::new_v4().simple());
    let stores = if durable {
        Some((TestDatabase::create().await, TestRedis::create().await))
    } else {
        None
    };

    let mut product = product_service::configuration::Settings::for_tests();
    product.events = Some(product_service::configuration::EventSettings::local(&queue));
    if let Some((db, _)) = &stores {
        product = product.with_store(db.config("catalog"));
    }
    let product = product_service::Application::build(product)
        .await
        .expect("product");
    let product_url = format!("http://127.0.0.1:{}", product.port());
    tokio::spawn(product.run_until_stopped(stop.clone()));

    let mut warehouse = warehouse::configuration::Settings::for_tests(&queue);
    warehouse.consumer.fulfilment_delay = fulfilment_delay;
    if let Some((db, _)) = &stores {
        warehouse.store = Some(db.config("warehouse"));
    }
    let warehouse = warehouse::Application::build(warehouse)
        .await
        .expect("warehouse");
    let warehouse_url = format!("http://127.0.0.1:{}", warehouse.port());
    tokio::spawn(warehouse.run_until_stopped(stop.clone()));

    let cca_url = spawn_authorizer(&stop, 0.0).await;
    let cart = spawn_app_with(Options {
        product_url: Some(product_url),
        cca_url: Some(cca_url),
        queue: Some(queue),
        store: stores.as_ref().map(|(_, redis)| redis.config()),
        orders_db: stores.as_ref().map(|(db, _)| db.config("orders")),
        ..Options::default()
    })
    .await;
    Shop {
        cart,
        warehouse_url,
        stop,
        _stores: stores,
    }
}

impl Shop {
    async fn product_with_stock(&self, stock: i64) -> i64 {
        let resp = self
            .cart
            .client
            .post(format!("{}/product", self.cart.product_url))
            .json(
                &json!({"sku": "LIMITED-1", "manufacturer": "Acme", "category_id": 1,
                          "weight": 10, "some_other_id": 1, "quantity_on_hand": stock}),
            )
            .send()
            .await
            .expect("create product");
        assert_eq!(resp.status(), StatusCode::CREATED);
        resp.json::<Value>().await.expect("json")["product_id"]
            .as_i64()
            .expect("product_id")
    }

    async fn stock(&self, product_id: i64) -> (i64, i64, i64) {
        let stock: Value = self
            .cart
            .client
            .get(format!(
                "{}/internal/products/{product_id}/stock",
                self.cart.product_url
            ))
            .send()
            .await
            .expect("stock")
            .json()
            .await
            .expect("json");
        let n = |k: &str| stock[k].as_i64().unwrap_or(-1);
        (n("quantity_on_hand"), n("reserved"), n("sold"))
    }

    /// A one-product cart checked out; the answer.
    async fn buy(&self, product_id: i64, quantity: i64) -> reqwest::Response {
        let cart = self.cart.create_cart().await;
        let resp = self.cart.add_item(cart, product_id, quantity).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        self.cart.checkout(cart, CARD).await
    }

    async fn order(&self, order_id: i64) -> Value {
        self.cart
            .get(&format!("/orders/{order_id}"))
            .await
            .json()
            .await
            .expect("json")
    }

    async fn cancel(&self, order_id: i64) -> reqwest::Response {
        self.cart
            .post(&format!("/orders/{order_id}/cancel"), json!({}))
            .await
    }

    /// Waits (at most 20 s) until `check` holds for the order, and returns it.
    async fn order_when(&self, order_id: i64, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let order = self.order(order_id).await;
            if check(&order) {
                return order;
            }
            assert!(Instant::now() < deadline, "order never got there: {order}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the product's levels are `expected` (the outcome events are asynchronous).
    async fn stock_becomes(&self, product_id: i64, expected: (i64, i64, i64)) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = self.stock(product_id).await;
            if now == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "stock {now:?} never became {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn is_final(order: &Value) -> bool {
    order["status"] == "fulfilled" || order["status"] == "cancelled"
}

async fn order_id(resp: reqwest::Response) -> i64 {
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json::<Value>().await.expect("json")["order_id"]
        .as_i64()
        .expect("order_id")
}

async fn fifty_units_two_hundred_checkouts(durable: bool) {
    let shop = shop(durable, Duration::ZERO).await;
    let product = shop.product_with_stock(50).await;
    let answers = join_all((0..200).map(|_| shop.buy(product, 1))).await;
    let mut placed = Vec::new();
    let mut refused = 0;
    for resp in answers {
        match resp.status() {
            StatusCode::OK => placed.push(order_id(resp).await),
            StatusCode::CONFLICT => {
                let body: Value = resp.json().await.expect("json");
                assert_eq!(body["error"], "OUT_OF_STOCK", "{body}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {:?}", resp.text().await),
        }
    }
    assert_eq!((placed.len(), refused), (50, 150));
    // The warehouse fulfils all 50; the product service turns their reservations into sales.
    shop.stock_becomes(product, (0, 0, 50)).await;
    for id in placed {
        let order = shop.order_when(id, is_final).await;
        assert_eq!(order["status"], "fulfilled", "{order}");
    }
    let stats: Value = shop
        .cart
        .client
        .get(format!("{}/stats", shop.warehouse_url))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["orders_processed"], 50, "{stats}");
    shop.cart.delete_queues().await;
}

#[tokio::test]
async fn fifty_units_two_hundred_checkouts_fifty_sold_in_memory() {
    fifty_units_two_hundred_checkouts(false).await;
}

#[tokio::test]
async fn fifty_units_two_hundred_checkouts_fifty_sold_on_postgres_and_redis() {
    fifty_units_two_hundred_checkouts(true).await;
}

#[tokio::test]
async fn a_cancel_that_reaches_the_warehouse_first_wins_and_returns_the_stock() {
    let shop = shop(true, Duration::from_millis(1500)).await;
    let product = shop.product_with_stock(10).await;
    let id = order_id(shop.buy(product, 3).await).await;
    assert_eq!(shop.order(id).await["status"], "placed");
    assert_eq!(shop.stock(product).await, (7, 3, 0));

    let resp = shop.cancel(id).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["status"], "cancelling");
    assert_eq!(body["cancel_reason"], "customer");
    let order = shop.order_when(id, is_final).await;
    assert_eq!(order["status"], "cancelled", "{order}");
    shop.stock_becomes(product, (10, 0, 0)).await;
    // Cancelling again answers what it is; the held-back order was never fulfilled.
    assert_eq!(shop.cancel(id).await.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(shop.stock(product).await, (10, 0, 0));
    assert_eq!(shop.order(id).await["status"], "cancelled");
    shop.cart.delete_queues().await;
}

#[tokio::test]
async fn a_cancel_after_fulfilment_is_refused_and_the_sale_stands() {
    let shop = shop(false, Duration::ZERO).await;
    let product = shop.product_with_stock(5).await;
    let id = order_id(shop.buy(product, 2).await).await;
    shop.order_when(id, |o| o["status"] == "fulfilled").await;
    let resp = shop.cancel(id).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"], "ORDER_ALREADY_FULFILLED");
    shop.stock_becomes(product, (3, 0, 2)).await;
    let resp = shop.cancel(999_999).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    shop.cart.delete_queues().await;
}

#[tokio::test]
async fn cancels_racing_fulfilment_have_one_winner_each_and_stock_is_conserved() {
    // The warehouse holds each order 300 ms; order i is cancelled i×25 ms after its checkout
    // answered, so the early cancels arrive first and the late ones after the fulfilment, and
    // the ones in between race it. The margins are wide so a busy machine still sees both.
    let shop = shop(true, Duration::from_millis(300)).await;
    let initial = 1000;
    let product = shop.product_with_stock(initial).await;
    let shop = &shop;
    let flows = (0..40u64).map(|i| async move {
        let quantity = 1 + (i % 3) as i64;
        let id = order_id(shop.buy(product, quantity).await).await;
        tokio::time::sleep(Duration::from_millis(i * 25)).await;
        let resp = shop.cancel(id).await;
        let cancel = resp.status();
        let body: Value = resp.json().await.expect("json");
        // The answer agrees with itself: 202 is `cancelling`, 200 `cancelled`, 409 the
        // fulfilment that came first; never a stale `placed` read next to a lost update.
        match cancel {
            StatusCode::ACCEPTED => assert_eq!(body["status"], "cancelling", "{body}"),
            StatusCode::OK => assert_eq!(body["status"], "cancelled", "{body}"),
            StatusCode::CONFLICT => assert_eq!(body["error"], "ORDER_ALREADY_FULFILLED"),
            other => panic!("cancel answered {other}: {body}"),
        }
        let order = shop.order_when(id, is_final).await;
        if cancel == StatusCode::CONFLICT {
            assert_eq!(order["status"], "fulfilled");
        }
        (order["status"] == "fulfilled", quantity)
    });
    let outcomes = join_all(flows).await;
    let sold: i64 = outcomes.iter().filter(|(f, _)| *f).map(|(_, q)| q).sum();
    let fulfilled = outcomes.iter().filter(|(f, _)| *f).count();
    // Stock is returned exactly for the cancels that won, and sold exactly for the rest.
    shop.stock_becomes(product, (initial - sold, 0, sold)).await;
    let stats: Value = shop
        .cart
        .client
        .get(format!("{}/stats", shop.warehouse_url))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["orders_processed"], fulfilled, "{stats}");
    // Both kinds of outcome happened, or the test proved nothing about the race.
    assert!((1..40).contains(&fulfilled), "{fulfilled} of 40 fulfilled");
    shop.cart.delete_queues().await;
}

#[tokio::test]
async fn a_customers_orders_are_listed_newest_first_with_their_status() {
    let shop = shop(true, Duration::ZERO).await;
    let product = shop.product_with_stock(100).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(order_id(shop.buy(product, 1).await).await);
    }
    // create_cart uses customer 42.
    let page: Value = shop
        .cart
        .get("/customers/42/orders?limit=2")
        .await
        .json()
        .await
        .expect("json");
    let listed: Vec<i64> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|o| o["order_id"].as_i64())
        .collect();
    assert_eq!(listed, vec![ids[2], ids[1]]);
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let rest: Value = shop
        .cart
        .get(&format!("/customers/42/orders?limit=2&cursor={cursor}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(rest["items"][0]["order_id"], ids[0]);
    assert!(rest["next_cursor"].is_null(), "{rest}");
    let resp = shop.cart.get("/customers/42/orders?limit=0").await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    shop.cart.delete_queues().await;
}
