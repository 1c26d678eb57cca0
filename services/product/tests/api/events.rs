//! The warehouse's outcome events, published to the real broker on a topology of the test's own
//! (`Topology::new` with a unique queue name), consumed by the real service on either store.

use crate::support::{
    error_body, on_both_stores, spawn_app_with, spawn_with, wait_for, Backend, Levels, TestApp,
    SCHEMA,
};
use common::messaging::{
    self, CancelReason, OrderEvent, OrderEvents, OrderOutcome, QueueType, Topology,
    DEFAULT_AMQP_URL,
};
use common::testing::{FaultyProxy, Mode, TestDatabase};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use product_service::configuration::{EventSettings, Settings};
use reqwest::StatusCode;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

on_both_stores!(
    fulfilments_sell_and_cancellations_release,
    redeliveries_and_unknown_orders_change_nothing,
    a_fulfilment_after_the_timeout_sells_what_is_on_hand_and_counts_the_oversell,
    malformed_messages_are_dead_lettered_and_the_rest_still_applies,
    concurrent_reservations_and_events_keep_the_books_balanced,
    the_service_runs_without_the_broker_and_catches_up_when_it_is_back,
);

/// How long an event may take to be applied (it is milliseconds; the margin is for a loaded
/// machine).
const APPLIED: Duration = Duration::from_secs(15);

/// The test's own topology on the real broker, with a confirming publisher channel; deleted
/// when dropped, even after a panic.
struct TestBroker {
    topology: Topology,
    _connection: Connection,
    channel: Channel,
}

impl TestBroker {
    async fn new() -> Self {
        let queue = format!("test_product_{}", uuid::Uuid::new_v4().simple());
        let topology = Topology::new(&queue, QueueType::Classic);
        let connection = Connection::connect(DEFAULT_AMQP_URL, ConnectionProperties::default())
            .await
            .expect("tests need RabbitMQ at 127.0.0.1:5672");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        // Declared before the service starts, so nothing published is dropped meanwhile.
        topology
            .declare(&channel)
            .await
            .expect("declare the topology");
        Self {
            topology,
            _connection: connection,
            channel,
        }
    }

    /// The service's consumer settings for this topology.
    fn settings(&self) -> EventSettings {
        EventSettings::local(&self.topology.queue)
    }

    /// Publishes a raw body to the events exchange, as the warehouse does, and waits for the
    /// broker's confirm.
    async fn publish_raw(&self, body: &[u8]) {
        let confirm = self
            .channel
            .basic_publish(
                self.topology.events_exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
        assert!(confirm.await.expect("confirm").is_ack(), "nacked");
    }

    async fn publish(&self, events: Vec<OrderEvent>) {
        self.publish_raw(&OrderEvents { events }.to_json()).await;
    }

    /// Ready messages in one of the topology's queues.
    async fn ready(&self, queue: &str) -> u32 {
        let channel = self._connection.create_channel().await.expect("channel");
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

impl Drop for TestBroker {
    fn drop(&mut self) {
        let topology = self.topology.clone();
        // Drop may run inside a runtime: clean up on a thread of its own.
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
                let Ok(channel) = connection.create_channel().await else {
                    return;
                };
                for queue in topology.queues() {
                    let _ = channel
                        .queue_delete(queue.into(), QueueDeleteOptions::default())
                        .await;
                }
                for exchange in [&topology.events_exchange, &topology.dead_letter_exchange] {
                    let _ = channel
                        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                }
                let _ = connection.close(200, "cleaned up".into()).await;
            });
        });
        let _ = cleanup.join();
    }
}

fn event(order_uid: &str, outcome: OrderOutcome) -> OrderEvent {
    OrderEvent {
        order_uid: order_uid.to_string(),
        order_id: 1,
        outcome,
        reason: (outcome == OrderOutcome::Cancelled).then_some(CancelReason::Customer),
        order: None,
    }
}

fn fulfilled(order_uid: &str) -> OrderEvent {
    event(order_uid, OrderOutcome::Fulfilled)
}

fn cancelled(order_uid: &str) -> OrderEvent {
    event(order_uid, OrderOutcome::Cancelled)
}

/// An app on `backend` consuming `broker`'s events; returned once it consumes.
async fn spawn_consuming(backend: Backend, broker: &TestBroker, mut settings: Settings) -> TestApp {
    settings.events = Some(broker.settings());
    let app = spawn_with(backend, settings).await;
    wait_until_consuming(&app).await;
    app
}

async fn wait_until_consuming(app: &TestApp) {
    wait_for("the events consumer", APPLIED, || async {
        (app.metric("product_stock_events_connected").await == 1).then_some(())
    })
    .await;
}

async fn wait_for_status(app: &TestApp, order_uid: &str, status: &str) {
    wait_for(&format!("{order_uid} to be {status}"), APPLIED, || async {
        (app.status_of(order_uid).await == status).then_some(())
    })
    .await;
}

/// Waits until the service has applied and acked `n` messages in all.
async fn wait_for_messages(app: &TestApp, n: u64) {
    wait_for(&format!("{n} messages applied"), APPLIED, || async {
        (app.metric("product_stock_events_messages_total").await >= n).then_some(())
    })
    .await;
    assert_eq!(
        app.metric("product_stock_events_messages_total").await,
        n,
        "no more than that"
    );
}

async fn fulfilments_sell_and_cancellations_release(backend: Backend) {
    let broker = TestBroker::new().await;
    let app = spawn_consuming(backend, &broker, Settings::for_tests()).await;
    let a = app.create_with_stock(10).await;
    for (uid, q) in [("sold", 2), ("cancelled", 3), ("confirmed-sold", 1)] {
        assert_eq!(
            app.reserve(uid, &[(a, q)]).await.status(),
            StatusCode::CREATED
        );
    }
    assert_eq!(app.confirm(&["confirmed-sold"]).await, 1);
    assert_eq!(app.levels(a).await, Levels::new(4, 6, 0, 0));

    broker
        .publish(vec![
            fulfilled("sold"),
            cancelled("cancelled"),
            fulfilled("confirmed-sold"),
        ])
        .await;
    wait_for_messages(&app, 1).await;
    assert_eq!(app.status_of("sold").await, "committed");
    assert_eq!(app.status_of("cancelled").await, "released");
    assert_eq!(app.status_of("confirmed-sold").await, "committed");
    assert_eq!(app.levels(a).await, Levels::new(7, 0, 3, 0));
    assert_eq!(app.metric("product_reservations_committed_total").await, 2);
    assert_eq!(app.metric("product_reservations_cancelled_total").await, 1);

    // A sold reservation cannot be released, and a retried reserve answers it as it is.
    let resp = app.release("sold").await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert_eq!(error_body(resp).await["error"], "RESERVATION_COMMITTED");
    let resp = app.reserve("sold", &[(a, 2)]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.json::<serde_json::Value>().await.expect("json")["status"],
        "committed"
    );
    assert_eq!(app.confirm(&["sold"]).await, 0);
    assert_eq!(app.levels(a).await, Levels::new(7, 0, 3, 0));
}

async fn redeliveries_and_unknown_orders_change_nothing(backend: Backend) {
    let broker = TestBroker::new().await;
    let app = spawn_consuming(backend, &broker, Settings::for_tests()).await;
    let a = app.create_with_stock(10).await;
    assert_eq!(
        app.reserve("r", &[(a, 2)]).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        app.reserve("s", &[(a, 1)]).await.status(),
        StatusCode::CREATED
    );

    // The same outcome, delivered twice (the warehouse announces again on redelivery), and in
    // one message twice.
    broker.publish(vec![fulfilled("r"), cancelled("s")]).await;
    broker
        .publish(vec![fulfilled("r"), cancelled("s"), cancelled("s")])
        .await;
    // Orders checked out without reservations (one with a uid no reservation can have).
    broker
        .publish(vec![
            fulfilled("no-such-order"),
            cancelled("nor-this"),
            fulfilled("nul\u{0}uid"),
        ])
        .await;
    // A cancel for a sold reservation: it stays sold.
    broker.publish(vec![cancelled("r")]).await;
    wait_for_messages(&app, 4).await;

    assert_eq!(app.status_of("r").await, "committed");
    assert_eq!(app.status_of("s").await, "released");
    assert_eq!(app.levels(a).await, Levels::new(8, 0, 2, 0), "applied once");
    assert_eq!(app.metric("product_reservations_committed_total").await, 1);
    assert_eq!(app.metric("product_reservations_cancelled_total").await, 1);
    assert_eq!(app.metric("product_stock_events_unchanged_total").await, 3);
    assert_eq!(
        app.metric("product_stock_events_unknown_order_total").await,
        3
    );
    assert_eq!(
        app.metric("product_stock_events_cancelled_after_commit_total")
            .await,
        1
    );
    assert_eq!(app.reservation("no-such-order").await, None);
    // Everything was acked.
    assert_eq!(broker.ready(&broker.topology.stock_events_queue).await, 0);
    assert_eq!(broker.ready(&broker.topology.dead_letter_queue).await, 0);
}

/// The timeout released a reservation before the warehouse fulfilled its order: the sale takes
/// what is on hand, and the shortfall is counted where it can be seen.
async fn a_fulfilment_after_the_timeout_sells_what_is_on_hand_and_counts_the_oversell(
    backend: Backend,
) {
    let broker = TestBroker::new().await;
    let mut settings = Settings::for_tests();
    settings.reservation_ttl = Duration::from_millis(300);
    let app = spawn_consuming(backend, &broker, settings).await;
    let a = app.create_with_stock(5).await;
    let b = app.create_with_stock(5).await;
    assert_eq!(
        app.reserve("late", &[(a, 3), (b, 1)]).await.status(),
        StatusCode::CREATED
    );
    wait_for_status(&app, "late", "released").await;
    assert_eq!(app.levels(a).await, Levels::new(5, 0, 0, 0));
    // Someone else's order took most of `a` meanwhile.
    assert_eq!(app.adjust(a, -4).await.status(), StatusCode::OK);

    broker.publish(vec![fulfilled("late")]).await;
    wait_for_status(&app, "late", "committed").await;
    assert_eq!(app.levels(a).await, Levels::new(0, 0, 1, 2));
    assert_eq!(app.levels(b).await, Levels::new(4, 0, 1, 0));
    assert_eq!(app.metric("product_stock_oversold_units_total").await, 2);
    assert_eq!(
        app.metric("product_reservations_sold_after_release_total")
            .await,
        1
    );
    // Redelivered: sold once, oversold once.
    broker.publish(vec![fulfilled("late")]).await;
    wait_for_messages(&app, 2).await;
    assert_eq!(app.levels(a).await, Levels::new(0, 0, 1, 2));
    assert_eq!(app.metric("product_stock_oversold_units_total").await, 2);
}

async fn malformed_messages_are_dead_lettered_and_the_rest_still_applies(backend: Backend) {
    let broker = TestBroker::new().await;
    let app = spawn_consuming(backend, &broker, Settings::for_tests()).await;
    let a = app.create_with_stock(3).await;
    assert_eq!(
        app.reserve("fine", &[(a, 1)]).await.status(),
        StatusCode::CREATED
    );
    broker.publish_raw(b"not json at all").await;
    broker
        .publish_raw(br#"{"events":[{"order_uid":5,"outcome":"fulfilled"}]}"#)
        .await;
    broker
        .publish_raw(br#"{"events":[{"order_uid":"fine","order_id":1,"outcome":"lost"}]}"#)
        .await;
    broker.publish(vec![fulfilled("fine")]).await;
    wait_for_status(&app, "fine", "committed").await;
    wait_for("three dead letters", APPLIED, || async {
        (broker.ready(&broker.topology.dead_letter_queue).await == 3).then_some(())
    })
    .await;
    assert_eq!(app.metric("product_stock_events_rejected_total").await, 3);
    assert_eq!(app.metric("product_stock_events_messages_total").await, 1);
    assert_eq!(app.levels(a).await, Levels::new(2, 0, 1, 0));
}

/// Reserves, releases, confirms, re-holds, adjustments and the warehouse's fulfilments and
/// cancellations race on a few products. Afterwards every product balances: on hand + reserved
/// + sold is the initial stock plus the adjustments, `reserved` is what the held and confirmed
///   reservations hold, and `sold + oversold` is what the sold ones hold.
async fn concurrent_reservations_and_events_keep_the_books_balanced(backend: Backend) {
    const INITIAL: i64 = 60;
    const ORDERS: i64 = 150;
    let broker = Arc::new(TestBroker::new().await);
    let app = Arc::new(spawn_consuming(backend, &broker, Settings::for_tests()).await);
    let mut products = Vec::new();
    for _ in 0..3 {
        products.push(app.create_with_stock(INITIAL).await);
    }
    let mut tasks = Vec::new();
    for i in 0..ORDERS {
        let (app, broker, products) = (Arc::clone(&app), Arc::clone(&broker), products.clone());
        tasks.push(tokio::spawn(async move {
            let uid = format!("mixed-{i}");
            let items = [
                (products[(i % 3) as usize], 1 + i % 2),
                (products[((i + 1) % 3) as usize], 1),
            ];
            app.reserve(&uid, &items).await;
            let mut published = 1;
            match i % 5 {
                0 => broker.publish(vec![fulfilled(&uid)]).await,
                1 => broker.publish(vec![cancelled(&uid)]).await,
                2 => {
                    // Released (as by the timeout), then fulfilled anyway.
                    app.release(&uid).await;
                    broker.publish(vec![fulfilled(&uid)]).await;
                }
                3 => {
                    app.confirm(&[&uid]).await;
                    broker.publish(vec![fulfilled(&uid), cancelled(&uid)]).await;
                    app.release(&uid).await;
                    broker.publish(vec![fulfilled(&uid)]).await;
                    published = 2;
                }
                _ => {
                    app.release(&uid).await;
                    app.reserve(&uid, &items).await;
                    broker.publish(vec![cancelled(&uid)]).await;
                }
            }
            (None, published)
        }));
    }
    for i in 0..30i64 {
        let (app, products) = (Arc::clone(&app), products.clone());
        tasks.push(tokio::spawn(async move {
            let id = products[(i % 3) as usize];
            let delta = if i % 2 == 0 { 3 } else { -2 };
            let applied = app.adjust(id, delta).await.status() == StatusCode::OK;
            (applied.then_some((id, delta)), 0)
        }));
    }
    let mut adjustments: HashMap<i64, i64> = HashMap::new();
    let mut published = 0;
    for task in tasks {
        let (adjusted, messages) = task.await.expect("task");
        published += messages;
        if let Some((id, delta)) = adjusted {
            *adjustments.entry(id).or_default() += delta;
        }
    }
    wait_for_messages(&app, published).await;

    let mut reserved: HashMap<i64, i64> = HashMap::new();
    let mut sold: HashMap<i64, i64> = HashMap::new();
    for i in 0..ORDERS {
        let Some(r) = app.reservation(&format!("mixed-{i}")).await else {
            continue;
        };
        let into = match r["status"].as_str() {
            Some("held" | "confirmed") => &mut reserved,
            Some("committed") => &mut sold,
            _ => continue,
        };
        for item in r["items"].as_array().expect("items") {
            *into
                .entry(item["product_id"].as_i64().expect("id"))
                .or_default() += item["quantity"].as_i64().expect("quantity");
        }
    }
    let mut total_sold = 0;
    for id in products {
        let levels = app.levels(id).await;
        let adjusted = adjustments.get(&id).copied().unwrap_or(0);
        assert_eq!(
            levels.total(),
            INITIAL + adjusted,
            "product {id}: {levels:?}"
        );
        assert_eq!(
            levels.reserved,
            reserved.get(&id).copied().unwrap_or(0),
            "product {id}: {levels:?}"
        );
        assert_eq!(
            levels.sold + levels.oversold,
            sold.get(&id).copied().unwrap_or(0),
            "product {id}: {levels:?}"
        );
        total_sold += levels.sold;
    }
    assert!(total_sold > 0, "the test sold something");
}

/// The broker is down when the service starts: it starts, serves (reservations included) and
/// says it is ready; the consumer connects when the broker is back, applies what waited in
/// the queue, and reconnects after losing the broker again.
async fn the_service_runs_without_the_broker_and_catches_up_when_it_is_back(backend: Backend) {
    let broker = TestBroker::new().await;
    let proxy = FaultyProxy::start("127.0.0.1:5672").await;
    proxy.set(Mode::Cut);
    let mut events = broker.settings();
    events.broker =
        messaging::Broker::parse(&proxy.url_for(DEFAULT_AMQP_URL)).expect("a valid URL");
    events.reconnect_max = Duration::from_millis(300);
    let mut settings = Settings::for_tests();
    settings.events = Some(events);
    let app = spawn_with(backend, settings).await;

    assert_eq!(app.get("/health").await.status(), StatusCode::OK);
    assert_eq!(
        app.get("/ready").await.status(),
        StatusCode::OK,
        "the broker is not part of /ready"
    );
    let a = app.create_with_stock(5).await;
    assert_eq!(
        app.reserve("waits", &[(a, 2)]).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(app.metric("product_stock_events_connected").await, 0);
    broker.publish(vec![fulfilled("waits")]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.status_of("waits").await, "held", "nothing consumed yet");

    proxy.set(Mode::Pass);
    wait_for_status(&app, "waits", "committed").await;
    assert_eq!(app.levels(a).await, Levels::new(3, 0, 2, 0));

    // Lost again, and back again.
    proxy.set(Mode::Cut);
    wait_for("the consumer to notice", APPLIED, || async {
        (app.metric("product_stock_events_connected").await == 0).then_some(())
    })
    .await;
    assert_eq!(
        app.reserve("later", &[(a, 1)]).await.status(),
        StatusCode::CREATED
    );
    broker.publish(vec![cancelled("later")]).await;
    proxy.set(Mode::Pass);
    wait_for_status(&app, "later", "released").await;
    assert!(app.metric("product_stock_events_sessions_total").await >= 2);
    assert_eq!(app.levels(a).await, Levels::new(3, 0, 2, 0));
}

/// The consumer and the sweeper stop with the service: the connection is closed (the broker
/// sees no consumer left), and `run_until_stopped` returns.
#[tokio::test]
async fn shutdown_stops_the_consumer_and_closes_its_connection() {
    let broker = TestBroker::new().await;
    let mut settings = Settings::for_tests();
    settings.events = Some(broker.settings());
    let app = product_service::Application::build(settings)
        .await
        .expect("build");
    let base = format!("http://127.0.0.1:{}", app.port());
    let shutdown = common::shutdown::CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let consumers = || async {
        let channel = broker._connection.create_channel().await.expect("channel");
        let declared = channel
            .queue_declare(
                broker.topology.stock_events_queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declared");
        let _ = channel.close(200, "done".into()).await;
        declared.consumer_count()
    };
    wait_for("the consumer", APPLIED, || async {
        (consumers().await == 1).then_some(())
    })
    .await;
    let health = reqwest::get(format!("{base}/health")).await.expect("up");
    assert_eq!(health.status(), StatusCode::OK);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("stopped in time")
        .expect("task")
        .expect("served");
    assert_eq!(consumers().await, 0, "the consumer's connection is closed");
}

/// PostgreSQL goes away while an event waits: the message is held (not acked, not
/// dead-lettered) and applied once the database is back.
#[tokio::test]
async fn an_event_waits_for_the_store_and_is_applied_when_it_is_back() {
    let broker = TestBroker::new().await;
    let db = TestDatabase::create().await;
    let proxy = FaultyProxy::start("127.0.0.1:5432").await;
    let config = common::store::postgres::PgConfig::for_tests(&proxy.url_for(&db.url), SCHEMA);
    let mut settings = Settings::for_tests().with_store(config);
    settings.events = Some(broker.settings());
    let app = spawn_app_with(settings).await;
    wait_until_consuming(&app).await;
    let a = app.create_with_stock(5).await;
    assert_eq!(
        app.reserve("patient", &[(a, 2)]).await.status(),
        StatusCode::CREATED
    );

    proxy.set(Mode::Cut);
    broker.publish(vec![fulfilled("patient")]).await;
    wait_for("a failed attempt", APPLIED, || async {
        (app.metric("product_stock_events_store_failures_total")
            .await
            >= 1)
            .then_some(())
    })
    .await;
    assert_eq!(broker.ready(&broker.topology.dead_letter_queue).await, 0);
    proxy.set(Mode::Pass);
    wait_for_status(&app, "patient", "committed").await;
    assert_eq!(app.levels(a).await, Levels::new(3, 0, 2, 0));
    assert_eq!(app.metric("product_stock_events_messages_total").await, 1);
}
