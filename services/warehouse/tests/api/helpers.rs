//! Test helpers: the real app against the real broker, each test on its own queue.

use common::messaging::{
    CancelMessage, CancelReason, OrderEvent, OrderEvents, OrderItem, OrderMessage, QueueType,
    Topology, DEFAULT_AMQP_URL,
};
use common::store::postgres::PgConfig;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use sqlx::{Connection as _, PgConnection};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use warehouse::configuration::Settings;
use warehouse::consumer::ConsumerState;
use warehouse::ledger::{Ledger, Stats};
use warehouse::{Application, FinalTotals};

use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A queue name no other test (or service) uses.
pub fn unique_queue() -> String {
    format!("test_wh_{}", uuid::Uuid::new_v4().simple())
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn order(items: &[(i32, i32)]) -> OrderMessage {
    OrderMessage {
        order_uid: OrderMessage::new_uid(),
        order_id: 1,
        shopping_cart_id: 2,
        customer_id: 3,
        items: items
            .iter()
            .map(|&(product_id, quantity)| OrderItem {
                product_id,
                quantity,
            })
            .collect(),
        created_at: time::OffsetDateTime::now_utc(),
    }
}

/// A cancel for `order` (reason: the customer's).
pub fn cancel(order: &OrderMessage) -> CancelMessage {
    CancelMessage {
        order_uid: order.order_uid.clone(),
        order_id: order.order_id,
        reason: CancelReason::Customer,
        requested_at: time::OffsetDateTime::now_utc(),
    }
}

/// The cancel queue of a test's order queue.
pub fn cancel_queue(queue: &str) -> String {
    Topology::new(queue, QueueType::Classic).cancel_queue
}

/// A raw message for the queue: a body and its properties.
pub struct Message {
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

impl From<&OrderMessage> for Message {
    fn from(order: &OrderMessage) -> Self {
        Self {
            body: order.to_json(),
            properties: order.properties("test"),
        }
    }
}

impl From<&CancelMessage> for Message {
    fn from(cancel: &CancelMessage) -> Self {
        Self {
            body: cancel.to_json(),
            properties: cancel.properties("test"),
        }
    }
}

impl Message {
    pub fn raw(body: &[u8]) -> Self {
        Self {
            body: body.to_vec(),
            properties: BasicProperties::default().with_delivery_mode(2),
        }
    }
}

/// The test's own connection to the broker, with a confirming publisher channel.
pub struct Broker {
    connection: Connection,
    publisher: Channel,
}

impl Broker {
    pub async fn connect(name: &str) -> Self {
        let connection = Connection::connect(
            DEFAULT_AMQP_URL,
            ConnectionProperties::default().with_connection_name(name.into()),
        )
        .await
        .expect("the broker at 127.0.0.1:5672 is reachable");
        let publisher = connection.create_channel().await.expect("channel");
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        Self {
            connection,
            publisher,
        }
    }

    /// Declares the queue, its DLX and DLQ, the cancel queue and the events exchange with its
    /// queues, exactly as the warehouse does.
    pub async fn declare(&self, queue: &str) {
        Topology::new(queue, QueueType::Classic)
            .declare(&self.publisher)
            .await
            .expect("declare the topology");
    }

    /// Publishes everything pipelined, then waits until the broker has confirmed all of it.
    pub async fn publish(&self, queue: &str, messages: &[Message]) {
        let mut confirms = Vec::with_capacity(messages.len());
        for message in messages {
            let confirm = self
                .publisher
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &message.body,
                    message.properties.clone(),
                )
                .await
                .expect("publish");
            confirms.push(confirm);
        }
        for confirm in futures::future::join_all(confirms).await {
            let confirmation = confirm.expect("confirmation");
            assert!(confirmation.is_ack(), "the broker nacked a publish");
        }
    }

    /// Ready messages in a queue (not counting unacked ones).
    pub async fn message_count(&self, queue: &str) -> u32 {
        // A passive declare of a missing queue closes the channel: use a throwaway one.
        let channel = self.connection.create_channel().await.expect("channel");
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the queue exists");
        let _ = channel.close(200, "done".into()).await;
        declared.message_count()
    }
}

/// Deletes a test's queue, DLQ and DLX when dropped, even if the test panicked.
pub struct QueueGuard {
    pub queue: String,
}

impl QueueGuard {
    pub fn new(queue: &str) -> Self {
        Self {
            queue: queue.to_string(),
        }
    }
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        let topology = Topology::new(&self.queue, QueueType::Classic);
        // Drop may run inside a runtime: do the async clean-up on a thread of its own.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(connection) =
                    Connection::connect(DEFAULT_AMQP_URL, ConnectionProperties::default()).await
                else {
                    return;
                };
                if let Ok(channel) = connection.create_channel().await {
                    for queue in topology.queues() {
                        let _ = channel
                            .queue_delete(queue.into(), QueueDeleteOptions::default())
                            .await;
                    }
                    for exchange in [&topology.dead_letter_exchange, &topology.events_exchange] {
                        let _ = channel
                            .exchange_delete(
                                exchange.as_str().into(),
                                ExchangeDeleteOptions::default(),
                            )
                            .await;
                    }
                }
                let _ = connection.close(200, "cleanup".into()).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// The app, running in this process against the real broker.
pub struct TestApp {
    pub address: String,
    pub ledger: Arc<Ledger>,
    pub state: Arc<ConsumerState>,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    handle: JoinHandle<std::io::Result<FinalTotals>>,
}

pub async fn spawn_app(queue: &str) -> TestApp {
    spawn_app_with(Settings::for_tests(queue)).await
}

pub async fn spawn_app_with(settings: Settings) -> TestApp {
    let _ = common::telemetry::init("warehouse-tests", &settings.service);
    let app = Application::build(settings).await.expect("the app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let ledger = app.ledger();
    let state = app.consumer_state();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        address,
        ledger,
        state,
        http: reqwest::Client::new(),
        shutdown,
        handle,
    }
}

impl TestApp {
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("the app answers")
    }

    pub async fn stats(&self) -> Stats {
        self.get("/stats").await.json().await.expect("stats JSON")
    }

    pub async fn wait_until_consuming(&self) {
        let state = Arc::clone(&self.state);
        wait_for("the consumer to be ready", Duration::from_secs(20), || {
            let ready = state.readiness().is_ok();
            async move { ready.then_some(()) }
        })
        .await;
    }

    /// Graceful stop, as on SIGTERM; returns the final totals.
    pub async fn stop(self) -> Stats {
        self.shutdown.cancel();
        self.handle
            .await
            .expect("the app task")
            .expect("the app stopped cleanly")
            .expect("the final totals are readable")
    }
}

/// The real `warehouse` binary as a child process, with its stdout (JSON logs) read by a thread.
pub struct ChildApp {
    pub child: Child,
    pub address: String,
    lines: mpsc::Receiver<String>,
    /// Every stdout line read so far.
    pub output: Vec<String>,
}

impl ChildApp {
    /// Starts the binary on `queue` with debug logs for the warehouse (one line per settled order).
    pub fn start(queue: &str, instance: &str) -> Self {
        Self::start_with(queue, instance, &[])
    }

    /// Like [`ChildApp::start`], with extra environment variables (e.g. `DATABASE_URL`).
    pub fn start_with(queue: &str, instance: &str, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_warehouse"))
            // A DATABASE_URL of the developer's shell must not leak into a memory-store test.
            .env_remove("DATABASE_URL")
            .envs(env.iter().copied())
            .env("ORDER_QUEUE", queue)
            .env("PORT", "0")
            .env("INSTANCE_ID", instance)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info,warehouse=debug")
            .env("AMQP_URL", DEFAULT_AMQP_URL)
            // These tests are about the queue, not the credentials (see secrets.rs for those).
            .env("AUTH_MODE", "off")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the warehouse binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut app = Self {
            child,
            address: String::new(),
            lines,
            output: Vec::new(),
        };
        let port = app
            .wait_line(Duration::from_secs(20), |line| {
                let json = serde_json::from_str::<serde_json::Value>(line).ok()?;
                (json["message"] == "warehouse listening").then(|| json["port"].as_u64())?
            })
            .expect("the binary logs its port");
        app.address = format!("http://127.0.0.1:{port}");
        app
    }

    /// Reads lines until `matches` returns `Some` or the deadline passes (or stdout closes).
    pub fn wait_line<T>(
        &mut self,
        timeout: Duration,
        mut matches: impl FnMut(&str) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            let found = matches(&line);
            self.output.push(line);
            if found.is_some() {
                return found;
            }
        }
    }

    /// Everything left on stdout, until the process closes it.
    pub fn drain_output(&mut self, timeout: Duration) {
        let _ = self.wait_line(timeout, |_| None::<()>);
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    pub async fn stats(&self, http: &reqwest::Client) -> Option<Stats> {
        http.get(format!("{}/stats", self.address))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }
}

impl Drop for ChildApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Force-closes, from the broker side, every connection whose name contains `name`.
/// Returns how many were closed.
pub async fn close_connections_named(name: &str) -> usize {
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        let listed = Command::new("rabbitmqctl")
            .args(["-q", "list_connections", "pid", "client_properties"])
            .output()
            .expect("run rabbitmqctl");
        assert!(
            listed.status.success(),
            "rabbitmqctl list_connections failed"
        );
        let text = String::from_utf8_lossy(&listed.stdout);
        let pids: Vec<String> = text
            .lines()
            .filter(|line| line.contains(&format!("\"{name}\"")))
            .filter_map(|line| line.split_whitespace().next().map(str::to_string))
            .collect();
        for pid in &pids {
            let closed = Command::new("rabbitmqctl")
                .args(["-q", "close_connection", pid, "test: forced close"])
                .status()
                .expect("run rabbitmqctl");
            assert!(
                closed.success(),
                "rabbitmqctl close_connection {pid} failed"
            );
        }
        pids.len()
    })
    .await
    .expect("rabbitmqctl task")
}

/// Settings for `queue` with the ledger on `database_url` (schema `warehouse`).
pub fn settings_on_postgres(queue: &str, database_url: &str) -> Settings {
    let mut settings = Settings::for_tests(queue);
    settings.store = Some(PgConfig::for_tests(database_url, "warehouse"));
    settings
}

/// Orders fulfilled in the ledger's database, read directly (not through the service or a
/// proxy).
pub async fn applied_in_database(database_url: &str) -> i64 {
    let mut connection = PgConnection::connect(database_url)
        .await
        .expect("connect to the test database");
    let count = sqlx::query_scalar(
        "SELECT count(*) FROM warehouse.applied_orders WHERE outcome = 'fulfilled'",
    )
    .fetch_one(&mut connection)
    .await
    .expect("count the applied orders");
    let _ = connection.close().await;
    count
}

/// Every recorded outcome row in the ledger's database: uid → outcome (one row per uid, by the
/// primary key).
pub async fn outcomes_in_database(database_url: &str) -> HashMap<String, String> {
    let mut connection = PgConnection::connect(database_url)
        .await
        .expect("connect to the test database");
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT order_uid, outcome FROM warehouse.applied_orders")
            .fetch_all(&mut connection)
            .await
            .expect("read the outcomes");
    let _ = connection.close().await;
    rows.into_iter().collect()
}

/// The expected quantity per product of `orders`.
pub fn expected_totals(orders: &[OrderMessage]) -> BTreeMap<i32, u64> {
    let mut expected: BTreeMap<i32, u64> = BTreeMap::new();
    for o in orders {
        for item in &o.items {
            *expected.entry(item.product_id).or_default() += item.quantity as u64;
        }
    }
    expected
}

/// `(ready, unacked)` messages of a queue, from the broker itself (`rabbitmqctl`).
pub async fn queue_depth(queue: &str) -> (u64, u64) {
    let queue = queue.to_string();
    tokio::task::spawn_blocking(move || {
        let listed = Command::new("rabbitmqctl")
            .args([
                "-q",
                "list_queues",
                "name",
                "messages_ready",
                "messages_unacknowledged",
            ])
            .output()
            .expect("run rabbitmqctl");
        assert!(listed.status.success(), "rabbitmqctl list_queues failed");
        let text = String::from_utf8_lossy(&listed.stdout);
        text.lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|fields| fields.first() == Some(&queue.as_str()))
            .map(|fields| {
                let number = |i: usize| fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
                (number(1), number(2))
            })
            .expect("the queue is listed")
    })
    .await
    .expect("rabbitmqctl task")
}

/// The outcome events a test receives: every events message from the test topology's fanout
/// exchange, read by a consumer of its own (auto-ack), kept in arrival order.
pub struct EventListener {
    connection: Connection,
    messages: Arc<std::sync::Mutex<Vec<Result<OrderEvents, String>>>>,
    task: JoinHandle<()>,
}

impl EventListener {
    /// Binds a queue of the test's own (exclusive, deleted with the connection) to the events
    /// exchange of `queue`'s topology (declared first, so it exists), and listens on it.
    pub async fn bind(queue: &str) -> Self {
        let connection = Self::connect(queue).await;
        let channel = connection.create_channel().await.expect("channel");
        let topology = Topology::new(queue, QueueType::Classic);
        topology.declare(&channel).await.expect("declare");
        let own = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare the listener's queue");
        let name = own.name().to_string();
        channel
            .queue_bind(
                name.as_str().into(),
                topology.events_exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind to the events exchange");
        Self::consume(connection, channel, &name).await
    }

    /// Listens on an existing queue (e.g. the topology's own `order_events_queue`, which the
    /// warehouse binds again whenever it redeclares the exchange).
    pub async fn on_queue(queue: &str, events_queue: &str) -> Self {
        let connection = Self::connect(queue).await;
        let channel = connection.create_channel().await.expect("channel");
        Topology::new(queue, QueueType::Classic)
            .declare(&channel)
            .await
            .expect("declare");
        Self::consume(connection, channel, events_queue).await
    }

    async fn connect(queue: &str) -> Connection {
        Connection::connect(
            DEFAULT_AMQP_URL,
            ConnectionProperties::default().with_connection_name(format!("events-{queue}").into()),
        )
        .await
        .expect("the broker at 127.0.0.1:5672 is reachable")
    }

    async fn consume(connection: Connection, channel: Channel, queue: &str) -> Self {
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "test-events".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume the events");
        let messages = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&messages);
        let task = tokio::spawn(async move {
            let _channel = channel;
            while let Some(Ok(delivery)) = consumer.next().await {
                // A bad message is kept as an error: a panic here would only end this task.
                let received = OrderEvents::from_json(&delivery.data).and_then(|events| {
                    if delivery.properties.delivery_mode() == &Some(2) {
                        Ok(events)
                    } else {
                        Err("an events message that is not persistent".to_string())
                    }
                });
                sink.lock().expect("lock").push(received);
            }
        });
        Self {
            connection,
            messages,
            task,
        }
    }

    /// Every events message received so far (panics on one that was not a valid, persistent
    /// `OrderEvents`).
    pub fn messages(&self) -> Vec<OrderEvents> {
        self.messages
            .lock()
            .expect("lock")
            .iter()
            .map(|received| received.clone().expect("a valid events message"))
            .collect()
    }

    /// Every event received so far, in order.
    pub fn events(&self) -> Vec<OrderEvent> {
        self.messages()
            .into_iter()
            .flat_map(|message| message.events)
            .collect()
    }

    /// The events received for one uid.
    pub fn of(&self, order_uid: &str) -> Vec<OrderEvent> {
        self.events()
            .into_iter()
            .filter(|event| event.order_uid == order_uid)
            .collect()
    }

    /// Waits until at least `n` events have arrived; returns them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<OrderEvent> {
        wait_for(&format!("{n} events"), timeout, || {
            let events = self.events();
            async move { (events.len() >= n).then_some(events) }
        })
        .await
    }

    pub async fn close(self) {
        self.task.abort();
        let _ = self.connection.close(200, "done".into()).await;
    }
}
