//! Spawns the real cart with the real product service and card authorizer on ephemeral ports,
//! publishing to the real RabbitMQ on a queue of its own, plus a TCP proxy in front of the broker
//! that can stall or cut the connection. With `Options::store`, the carts live in the real Redis;
//! [`spawn_second`] starts another cart instance sharing everything with a first one.
#![allow(dead_code, unused_imports)]

use cart_service::{configuration::Settings, Application};
use common::auth::AuthConfig;
use common::config::ServiceConfig;
use common::messaging::{
    Broker, CancelMessage, OrderMessage, QueueType, Topology, DEFAULT_AMQP_URL,
};
use common::secret::Secret;
use common::shutdown::CancellationToken;
use common::store::postgres::PgConfig;
use common::store::redis::RedisConfig;
use lapin::options::{BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub const CARD: &str = "4111-1111-1111-1111";

pub struct TestApp {
    pub base: String,
    pub client: Client,
    pub queue: String,
    pub instance_id: String,
    pub broker: Connection,
    pub product_url: String,
    pub cca_url: String,
    /// The running app's state: its stores, to set a cart up in a state HTTP cannot reach.
    pub state: std::sync::Arc<cart_service::AppState>,
    shutdown: CancellationToken,
}

pub struct Options {
    pub decline_rate: f64,
    pub cca_url: Option<String>,
    pub product_url: Option<String>,
    pub broker: Option<Broker>,
    pub confirm_timeout: Duration,
    /// Publish to this queue instead of a fresh one.
    pub queue: Option<String>,
    /// Carts in Redis instead of memory.
    pub store: Option<RedisConfig>,
    /// How long answers to requests with an `Idempotency-Key` are kept.
    pub idempotency_ttl: Duration,
    pub cart_ttl: Duration,
    pub checkout_lease: Duration,
    /// Orders in this PostgreSQL database instead of memory (needs `store`).
    pub orders_db: Option<PgConfig>,
    pub reserve_stock: bool,
    pub pending_order_timeout: Duration,
    /// Credentials on the cart, the product service and the authorizer ([`demo_auth`]); `None`:
    /// `AUTH_MODE=off`.
    pub auth: Option<AuthConfig>,
    /// The cart's `SERVICE_API_KEY` (with `auth`, [`SERVICE_KEY`] unless set otherwise).
    pub service_api_key: Option<String>,
}

pub const ADMIN_KEY: &str = "test-admin-key";
pub const SERVICE_KEY: &str = "test-service-key";
/// Customer 7's key; [`CUSTOMER_8_KEY`] is customer 8's.
pub const CUSTOMER_7_KEY: &str = "test-customer-7-key";
pub const CUSTOMER_8_KEY: &str = "test-customer-8-key";

/// Every service asks for a credential: these four keys.
pub fn demo_auth() -> AuthConfig {
    AuthConfig::with_keys(&[
        (ADMIN_KEY, "admin"),
        (SERVICE_KEY, "service"),
        (CUSTOMER_7_KEY, "customer:7"),
        (CUSTOMER_8_KEY, "customer:8"),
    ])
}

impl Default for Options {
    fn default() -> Self {
        Self {
            decline_rate: 0.0,
            cca_url: None,
            product_url: None,
            broker: None,
            confirm_timeout: Duration::from_secs(5),
            queue: None,
            store: None,
            idempotency_ttl: Duration::from_secs(3600),
            cart_ttl: Duration::from_secs(3600),
            checkout_lease: Duration::from_secs(30),
            orders_db: None,
            reserve_stock: true,
            pending_order_timeout: Duration::from_secs(30),
            auth: None,
            service_api_key: None,
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

/// The product service (ids 1..=10) on an ephemeral port, until `shutdown`.
pub async fn spawn_product(shutdown: &CancellationToken) -> String {
    spawn_product_with(shutdown, AuthConfig::off()).await
}

async fn spawn_product_with(shutdown: &CancellationToken, auth: AuthConfig) -> String {
    let mut product = product_service::configuration::Settings::for_tests();
    product.seed_products = 10;
    product.service.auth = auth;
    let product = product_service::Application::build(product)
        .await
        .expect("product");
    let url = format!("http://127.0.0.1:{}", product.port());
    tokio::spawn(product.run_until_stopped(shutdown.clone()));
    url
}

/// The card authorizer on an ephemeral port, until `shutdown`.
pub async fn spawn_authorizer(shutdown: &CancellationToken, decline_rate: f64) -> String {
    spawn_authorizer_with(shutdown, decline_rate, AuthConfig::off()).await
}

async fn spawn_authorizer_with(
    shutdown: &CancellationToken,
    decline_rate: f64,
    auth: AuthConfig,
) -> String {
    let mut cca = credit_card_authorizer::configuration::Settings::for_tests();
    cca.decline_rate = decline_rate;
    cca.service.auth = auth;
    let cca = credit_card_authorizer::Application::build(cca)
        .await
        .expect("cca");
    let url = format!("http://127.0.0.1:{}", cca.port());
    tokio::spawn(cca.run_until_stopped(shutdown.clone()));
    url
}

/// A second cart instance sharing `first`'s product service, authorizer and queue, and the
/// store in `options` (give it the first one's Redis to share the carts).
pub async fn spawn_second(first: &TestApp, options: Options) -> TestApp {
    spawn_app_with(Options {
        product_url: Some(options.product_url.unwrap_or(first.product_url.clone())),
        cca_url: Some(options.cca_url.unwrap_or(first.cca_url.clone())),
        queue: Some(first.queue.clone()),
        ..options
    })
    .await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    let shutdown = CancellationToken::new();
    let auth = options.auth.clone().unwrap_or_else(AuthConfig::off);
    let product_url = match options.product_url {
        Some(url) => url,
        None => spawn_product_with(&shutdown, auth.clone()).await,
    };
    let cca_url = match options.cca_url {
        Some(url) => url,
        None => spawn_authorizer_with(&shutdown, options.decline_rate, auth.clone()).await,
    };
    let queue = options
        .queue
        .unwrap_or_else(|| format!("test_cart_{}", uuid::Uuid::new_v4().simple()));
    let instance_id = format!("cart-{}", uuid::Uuid::new_v4().simple());
    let mut service = ServiceConfig::for_tests(&instance_id);
    service.auth = auth;
    let settings = Settings {
        service,
        service_api_key: options.service_api_key.map(Secret::new),
        product_url: product_url.clone(),
        cca_url: cca_url.clone(),
        broker: options.broker.unwrap_or_default(),
        topology: Topology::new(&queue, QueueType::Classic),
        channel_pool_size: 4,
        channel_wait: Duration::from_secs(1),
        max_pending_confirms: 100,
        confirm_timeout: options.confirm_timeout,
        connect_timeout: Duration::from_secs(2),
        cca_timeout: Duration::from_secs(2),
        cca_retries: 2,
        product_timeout: Duration::from_secs(2),
        store: options.store,
        idempotency_ttl: options.idempotency_ttl,
        cart_ttl: options.cart_ttl,
        checkout_lease: options.checkout_lease,
        orders_db: options.orders_db,
        reserve_stock: options.reserve_stock,
        pending_order_timeout: options.pending_order_timeout,
    };
    let app = Application::build(settings).await.expect("cart");
    let base = format!("http://127.0.0.1:{}", app.port());
    let state = std::sync::Arc::clone(&app.state);
    tokio::spawn(app.run_until_stopped(shutdown.clone()));

    let broker = Connection::connect(DEFAULT_AMQP_URL, ConnectionProperties::default())
        .await
        .expect("the tests need RabbitMQ at 127.0.0.1:5672 (scripts/test.sh starts it)");
    let channel = broker.create_channel().await.expect("channel");
    Topology::new(&queue, QueueType::Classic)
        .declare(&channel)
        .await
        .expect("declare");
    TestApp {
        base,
        client: Client::new(),
        queue,
        instance_id,
        broker,
        product_url,
        cca_url,
        state,
        shutdown,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestApp {
    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request")
    }

    /// Polls `GET /ready` until it answers `status` (then returns that response), or panics after
    /// `within`: a dependency cut or restored reaches the service's readiness a moment later.
    pub async fn ready_becomes(&self, status: StatusCode, within: Duration) -> reqwest::Response {
        let deadline = std::time::Instant::now() + within;
        loop {
            let resp = self.get("/ready").await;
            if resp.status() == status {
                return resp;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "/ready did not become {status} within {within:?} (last: {})",
                resp.status()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn create_cart(&self) -> i64 {
        let resp = self
            .post("/shopping-cart", json!({"customer_id": 42}))
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        let body: Value = resp.json().await.expect("json");
        body["shopping_cart_id"].as_i64().expect("id")
    }

    /// A cart with two products in it.
    pub async fn filled_cart(&self) -> i64 {
        let id = self.create_cart().await;
        for (product_id, quantity) in [(1, 2), (3, 1)] {
            let resp = self.add_item(id, product_id, quantity).await;
            assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        }
        id
    }

    pub async fn add_item(
        &self,
        cart_id: i64,
        product_id: i64,
        quantity: i64,
    ) -> reqwest::Response {
        self.post(
            &format!("/shopping-carts/{cart_id}/addItem"),
            json!({"product_id": product_id, "quantity": quantity}),
        )
        .await
    }

    /// `GET /shopping-carts/{id}` as JSON.
    pub async fn view(&self, cart_id: i64) -> Value {
        self.get(&format!("/shopping-carts/{cart_id}"))
            .await
            .json()
            .await
            .expect("json")
    }

    /// Retries the checkout of `cart_id` until it answers 200 (at most 15 s; anything else fails
    /// the test), and returns the 200 response.
    pub async fn checkout_until_ok(&self, cart_id: i64) -> reqwest::Response {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let resp = self.checkout(cart_id, CARD).await;
            if resp.status() == StatusCode::OK {
                return resp;
            }
            assert!(Instant::now() < deadline, "no recovery: {}", resp.status());
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub async fn checkout(&self, cart_id: i64, card: &str) -> reqwest::Response {
        self.post(
            &format!("/shopping-carts/{cart_id}/checkout"),
            json!({"credit_card_number": card}),
        )
        .await
    }

    /// Takes every message now in the test queue.
    pub async fn drain(&self) -> Vec<(OrderMessage, BasicProperties)> {
        let channel = self.broker.create_channel().await.expect("channel");
        let mut messages = Vec::new();
        while let Some(msg) = channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions::default())
            .await
            .expect("basic_get")
        {
            let order = OrderMessage::from_json(&msg.delivery.data).expect("a valid order message");
            msg.delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
            messages.push((order, msg.delivery.properties.clone()));
        }
        messages
    }

    /// Takes every cancel now in the test's cancel queue.
    pub async fn drain_cancels(&self) -> Vec<CancelMessage> {
        let channel = self.broker.create_channel().await.expect("channel");
        let topology = Topology::new(&self.queue, QueueType::Classic);
        let mut cancels = Vec::new();
        while let Some(msg) = channel
            .basic_get(
                topology.cancel_queue.as_str().into(),
                BasicGetOptions::default(),
            )
            .await
            .expect("basic_get")
        {
            cancels.push(CancelMessage::from_json(&msg.delivery.data).expect("a valid cancel"));
            msg.delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
        }
        cancels
    }

    /// Declares the test's topology again (after `delete_queues`).
    pub async fn declare_queues(&self) {
        let channel = self.broker.create_channel().await.expect("channel");
        Topology::new(&self.queue, QueueType::Classic)
            .declare(&channel)
            .await
            .expect("declare");
    }

    pub async fn delete_queues(&self) {
        let channel = self.broker.create_channel().await.expect("channel");
        let topology = Topology::new(&self.queue, QueueType::Classic);
        for q in topology.queues() {
            let _ = channel
                .queue_delete(q.into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in [&topology.dead_letter_exchange, &topology.events_exchange] {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
}

/// Asserts the contract's error body and returns it.
pub async fn error_body(resp: reqwest::Response) -> Value {
    let body: Value = resp.json().await.expect("json error body");
    assert!(
        body["error"].is_string() && body["message"].is_string(),
        "{body}"
    );
    body
}

pub use common::testing::{dead_port, FaultyProxy, Mode};

/// Of concurrent checkouts of one cart, one placed the order: every 200 names that same order
/// (a checkout that finds the cart already checked out reports its order), every other answer
/// says the cart is being checked out (409). Returns the order id.
pub async fn assert_one_checkout_won(responses: Vec<reqwest::Response>) -> i64 {
    let mut statuses = Vec::new();
    let mut orders = std::collections::HashSet::new();
    for resp in responses {
        let status = resp.status();
        statuses.push(status);
        if status == StatusCode::OK {
            let body: Value = resp.json().await.expect("json");
            orders.insert(body["order_id"].as_i64().expect("order_id"));
        }
    }
    assert_eq!(orders.len(), 1, "{statuses:?} {orders:?}");
    assert!(
        statuses
            .iter()
            .all(|s| [StatusCode::OK, StatusCode::CONFLICT].contains(s)),
        "{statuses:?}"
    );
    orders.into_iter().next().unwrap_or_default()
}

/// The broker through `proxy`.
pub fn broker_via(proxy: &FaultyProxy) -> Broker {
    Broker::parse(&proxy.url_for(DEFAULT_AMQP_URL)).expect("a valid AMQP URL")
}
