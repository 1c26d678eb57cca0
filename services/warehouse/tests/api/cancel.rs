//! Cancellations and outcome events under the running service, against the real broker, on
//! each ledger store (in memory, and on a fresh PostgreSQL database).

use crate::helpers::{
    cancel, cancel_queue, expected_totals, order, outcomes_in_database, queue_depth,
    settings_on_postgres, spawn_app_with, unique_queue, wait_for, Broker, EventListener, Message,
    QueueGuard, TestApp,
};
use common::messaging::{
    CancelMessage, CancelReason, OrderMessage, OrderOutcome, QueueType, Topology, DEFAULT_AMQP_URL,
};
use common::testing::TestDatabase;
use lapin::options::ExchangeDeleteOptions;
use lapin::{Connection, ConnectionProperties};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use warehouse::configuration::Settings;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Memory,
    Postgres,
}

/// A test's own queues (deleted at the end), a publisher, and a database when on PostgreSQL.
struct Rig {
    queue: String,
    broker: Broker,
    db: Option<TestDatabase>,
    _guard: QueueGuard,
}

impl Rig {
    async fn new(store: Store) -> Self {
        let queue = unique_queue();
        let guard = QueueGuard::new(&queue);
        let broker = Broker::connect(&format!("publisher-{queue}")).await;
        broker.declare(&queue).await;
        let db = match store {
            Store::Memory => None,
            Store::Postgres => Some(TestDatabase::create().await),
        };
        Self {
            queue,
            broker,
            db,
            _guard: guard,
        }
    }

    fn settings(&self) -> Settings {
        match &self.db {
            Some(db) => settings_on_postgres(&self.queue, &db.url),
            None => Settings::for_tests(&self.queue),
        }
    }

    /// Settings with a connection name of their own (for a second instance).
    fn settings_named(&self, name: &str) -> Settings {
        let mut settings = self.settings();
        settings.consumer.connection_name = format!("warehouse-{name}-{}", self.queue);
        settings
    }

    async fn orders(&self, orders: &[OrderMessage]) {
        let messages: Vec<Message> = orders.iter().map(Message::from).collect();
        self.broker.publish(&self.queue, &messages).await;
    }

    async fn cancels(&self, cancels: &[CancelMessage]) {
        let messages: Vec<Message> = cancels.iter().map(Message::from).collect();
        self.broker
            .publish(&cancel_queue(&self.queue), &messages)
            .await;
    }

    /// Waits until neither queue holds a message, ready or unacked.
    async fn drained(&self) {
        let cancels = cancel_queue(&self.queue);
        wait_for("both queues drained", Duration::from_secs(30), || async {
            let drained =
                queue_depth(&self.queue).await == (0, 0) && queue_depth(&cancels).await == (0, 0);
            drained.then_some(())
        })
        .await;
    }
}

/// Instantiates a test body `async fn(Store)` once per store.
macro_rules! for_both_stores {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            #[tokio::test]
            async fn memory() {
                super::$body(super::Store::Memory).await;
            }

            #[tokio::test]
            async fn postgres() {
                super::$body(super::Store::Postgres).await;
            }
        }
    )*};
}

for_both_stores!(
    the_first_of_an_order_and_its_cancel_wins_and_every_delivery_is_announced,
    orders_and_cancels_published_at_once_get_exactly_one_outcome_each,
    a_held_order_is_cancelled_while_placed_without_holding_anything_else,
);

/// Waits until `uid` has `n` events; returns them.
async fn events_of(
    listener: &EventListener,
    uid: &str,
    n: usize,
) -> Vec<common::messaging::OrderEvent> {
    wait_for(
        &format!("{n} events for {uid}"),
        Duration::from_secs(20),
        || async {
            let events = listener.of(uid);
            (events.len() >= n).then_some(events)
        },
    )
    .await
}

async fn the_first_of_an_order_and_its_cancel_wins_and_every_delivery_is_announced(store: Store) {
    let rig = Rig::new(store).await;
    let listener = EventListener::bind(&rig.queue).await;
    let app = spawn_app_with(rig.settings()).await;
    app.wait_until_consuming().await;
    let a = order(&[(1, 2)]);
    let b = order(&[(2, 3)]);

    // a: the cancel first. It wins; the order, arriving later, is refused.
    rig.cancels(&[cancel(&a)]).await;
    events_of(&listener, &a.order_uid, 1).await;
    rig.orders(std::slice::from_ref(&a)).await;
    events_of(&listener, &a.order_uid, 2).await;
    // b: the order first. It is fulfilled; the cancel, arriving later, loses.
    rig.orders(std::slice::from_ref(&b)).await;
    events_of(&listener, &b.order_uid, 1).await;
    rig.cancels(&[cancel(&b)]).await;
    events_of(&listener, &b.order_uid, 2).await;
    // A redelivery of each of the four: the recorded outcome is announced again.
    rig.orders(&[a.clone(), b.clone()]).await;
    rig.cancels(&[cancel(&a), cancel(&b)]).await;
    let a_events = events_of(&listener, &a.order_uid, 4).await;
    let b_events = events_of(&listener, &b.order_uid, 4).await;
    rig.drained().await;

    for event in &a_events {
        assert_eq!(event.outcome, OrderOutcome::Cancelled, "{event:?}");
        assert_eq!(event.reason, Some(CancelReason::Customer), "{event:?}");
        assert_eq!(event.order_id, a.order_id);
    }
    // The events of a's order deliveries carry the order the cancel stopped.
    assert_eq!(
        a_events
            .iter()
            .filter(|e| e.order.as_ref() == Some(&a))
            .count(),
        2,
        "{a_events:?}"
    );
    for event in &b_events {
        assert_eq!(event.outcome, OrderOutcome::Fulfilled, "{event:?}");
        assert_eq!(event.reason, None);
        // Every fulfilment carries the order, the lost cancels' events too (from the store).
        assert_eq!(event.order.as_ref(), Some(&b), "{event:?}");
    }

    // The listener can see the events before the warehouse has counted their confirm.
    let stats = wait_for("8 events counted", Duration::from_secs(10), || async {
        let stats = app.stats().await;
        (stats.events_published >= 8).then_some(stats)
    })
    .await;
    assert_eq!(stats.orders_processed, 1);
    assert_eq!(stats.orders_cancelled, 1);
    assert_eq!(stats.products, BTreeMap::from([(2, 3)]), "a added nothing");
    assert_eq!(stats.duplicates, 1);
    assert_eq!(stats.orders_refused, 2);
    assert_eq!(stats.cancels_lost, 2);
    assert_eq!(stats.duplicate_cancels, 1);
    assert_eq!(stats.events_published, 8);
    assert_eq!(stats.event_publish_failures, 0);
    assert_eq!(
        app.ledger
            .store()
            .outcome(&a.order_uid)
            .await
            .expect("read"),
        Some(OrderOutcome::Cancelled)
    );
    assert_eq!(listener.events().len(), 8, "one event per delivery");
    assert!(listener.messages().iter().all(|m| !m.events.is_empty()));

    // A cancel that is not one is dead-lettered and counted, like a bad order.
    let mut zero_id = cancel(&a);
    zero_id.order_id = 0;
    let mut blank = cancel(&a);
    blank.order_uid = " ".into();
    let poison = [
        Message::raw(b"not json"),
        Message::from(&zero_id),
        Message::from(&blank),
    ];
    rig.broker.publish(&cancel_queue(&rig.queue), &poison).await;
    let dlq = format!("{}.dlq", rig.queue);
    wait_for("the poison in the DLQ", Duration::from_secs(10), || async {
        (rig.broker.message_count(&dlq).await == 3).then_some(())
    })
    .await;
    assert_eq!(app.stats().await.rejected, 3);
    let metrics = app.get("/metrics").await.text().await.expect("text");
    for line in [
        "warehouse_orders_cancelled_total 1",
        "warehouse_cancels_lost_total 2",
        "warehouse_orders_refused_cancelled_total 2",
        "warehouse_events_published_total 8",
        "warehouse_rejected_messages_total 3",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    let report = app.stop().await.to_string();
    assert!(report.contains("orders cancelled:       1"), "{report}");
    listener.close().await;
}

async fn orders_and_cancels_published_at_once_get_exactly_one_outcome_each(store: Store) {
    const UIDS: usize = 400;
    let rig = Rig::new(store).await;
    let listener = EventListener::bind(&rig.queue).await;
    // With PostgreSQL two warehouses share the queues and the database: the race is between
    // processes too. (Two in-memory warehouses would keep separate books.)
    let mut apps: Vec<TestApp> = vec![spawn_app_with(rig.settings_named("a")).await];
    if store == Store::Postgres {
        apps.push(spawn_app_with(rig.settings_named("b")).await);
    }
    for app in &apps {
        app.wait_until_consuming().await;
    }

    let orders: Vec<OrderMessage> = (0..UIDS)
        .map(|i| order(&[(i as i32 % 13 + 1, i as i32 % 5 + 1)]))
        .collect();
    let cancels: Vec<CancelMessage> = orders.iter().map(cancel).collect();
    // Both at the same moment, from two connections, in slices that alternate which of an
    // order and its cancel goes out first.
    let second = Broker::connect(&format!("publisher2-{}", rig.queue)).await;
    for (i, (orders, cancels)) in orders.chunks(50).zip(cancels.chunks(50)).enumerate() {
        let order_messages: Vec<Message> = orders.iter().map(Message::from).collect();
        let cancel_messages: Vec<Message> = cancels.iter().map(Message::from).collect();
        let cancel_queue = cancel_queue(&rig.queue);
        let publish_orders = rig.broker.publish(&rig.queue, &order_messages);
        let publish_cancels = second.publish(&cancel_queue, &cancel_messages);
        if i % 2 == 0 {
            tokio::join!(publish_orders, publish_cancels);
        } else {
            tokio::join!(publish_cancels, publish_orders);
        }
    }
    wait_for(
        "every delivery settled",
        Duration::from_secs(60),
        || async {
            let settled: u64 = apps.iter().map(|app| app.ledger.settled_here()).sum();
            (settled >= 2 * UIDS as u64).then_some(())
        },
    )
    .await;
    rig.drained().await;

    // Exactly one outcome per uid, from the store.
    let recorded: HashMap<String, OrderOutcome> = match &rig.db {
        Some(db) => {
            let rows = outcomes_in_database(&db.url).await;
            assert_eq!(rows.len(), UIDS, "one row per uid");
            rows.into_iter()
                .map(|(uid, outcome)| {
                    let outcome = match outcome.as_str() {
                        "fulfilled" => OrderOutcome::Fulfilled,
                        "cancelled" => OrderOutcome::Cancelled,
                        other => panic!("unknown outcome {other}"),
                    };
                    (uid, outcome)
                })
                .collect()
        }
        None => {
            let mut recorded = HashMap::new();
            for o in &orders {
                let outcome = apps[0]
                    .ledger
                    .store()
                    .outcome(&o.order_uid)
                    .await
                    .expect("read")
                    .expect("every uid has an outcome");
                recorded.insert(o.order_uid.clone(), outcome);
            }
            recorded
        }
    };
    let fulfilled: Vec<OrderMessage> = orders
        .iter()
        .filter(|o| recorded[&o.order_uid] == OrderOutcome::Fulfilled)
        .cloned()
        .collect();
    let (won, lost) = (fulfilled.len() as u64, (UIDS - fulfilled.len()) as u64);
    eprintln!("{won} fulfilled, {lost} cancelled");

    // The totals are exactly the fulfilled orders'.
    let stats = apps[0].stats().await;
    assert_eq!(stats.orders_processed, won);
    assert_eq!(stats.orders_cancelled, lost);
    assert_eq!(stats.products, expected_totals(&fulfilled));
    let sum = |count: fn(&TestApp) -> u64| apps.iter().map(count).sum::<u64>();
    assert_eq!(sum(|a| a.ledger.applied_here()), won);
    assert_eq!(sum(|a| a.ledger.cancelled_here()), lost);
    assert_eq!(sum(|a| a.ledger.refused()), lost);
    assert_eq!(sum(|a| a.ledger.cancels_lost()), won);
    assert_eq!(
        sum(|a| a.ledger.duplicates() + a.ledger.duplicate_cancels()),
        0
    );

    // Two events per uid (its order's and its cancel's), both stating the recorded outcome.
    let events = listener.wait_for(2 * UIDS, Duration::from_secs(20)).await;
    assert_eq!(events.len(), 2 * UIDS);
    let mut per_uid: HashMap<&str, Vec<&common::messaging::OrderEvent>> = HashMap::new();
    for event in &events {
        per_uid.entry(&event.order_uid).or_default().push(event);
    }
    for o in &orders {
        let mine = &per_uid[o.order_uid.as_str()];
        assert_eq!(mine.len(), 2);
        for event in mine {
            assert_eq!(event.outcome, recorded[&o.order_uid], "{event:?}");
            if event.outcome == OrderOutcome::Fulfilled {
                assert_eq!(event.order.as_ref(), Some(o));
            }
        }
    }
    // One events message per batch, not per order.
    let batches: u64 = apps.iter().map(|app| app.state.batches()).sum();
    assert!(listener.messages().len() as u64 <= batches);
    for app in apps {
        app.stop().await;
    }
    listener.close().await;
}

async fn a_held_order_is_cancelled_while_placed_without_holding_anything_else(store: Store) {
    const DELAY: Duration = Duration::from_secs(2);
    let rig = Rig::new(store).await;
    let listener = EventListener::bind(&rig.queue).await;
    let mut settings = rig.settings();
    settings.consumer.fulfilment_delay = DELAY;
    let app = spawn_app_with(settings).await;
    app.wait_until_consuming().await;

    let held = order(&[(50, 1)]);
    let others: Vec<OrderMessage> = (0..150).map(|i| order(&[(i % 7 + 1, 1)])).collect();
    let started = Instant::now();
    let mut all = vec![held.clone()];
    all.extend(others.iter().cloned());
    rig.orders(&all).await;
    // The cancel is published after the order and reaches the warehouse while every order
    // channel's prefetch is taken by held orders: it is decided at once and wins.
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.cancels(&[cancel(&held)]).await;
    let (decided, applied) = wait_for("the cancel decided", Duration::from_secs(10), || async {
        let applied = app.ledger.applied_here();
        let elapsed = started.elapsed();
        let outcome = app.ledger.store().outcome(&held.order_uid).await.ok()?;
        (outcome == Some(OrderOutcome::Cancelled)).then_some((elapsed, applied))
    })
    .await;
    assert!(
        decided < DELAY,
        "the cancel waited for the held orders ({decided:?})"
    );
    assert_eq!(applied, 0, "nothing applied before its delay");

    wait_for("the orders fulfilled", Duration::from_secs(30), || async {
        (app.stats().await.orders_processed == others.len() as u64).then_some(())
    })
    .await;
    let elapsed = started.elapsed();
    // Held concurrently: the 151 orders take two rounds of the 100-delivery unacked window,
    // not one delay each.
    assert!(elapsed >= DELAY, "fulfilled before the delay: {elapsed:?}");
    assert!(elapsed < DELAY * 2 + Duration::from_secs(10), "{elapsed:?}");
    wait_for(
        "the held order refused",
        Duration::from_secs(10),
        || async { (app.ledger.refused() == 1).then_some(()) },
    )
    .await;
    let stats = app.stats().await;
    assert_eq!(stats.orders_cancelled, 1);
    assert_eq!(
        stats.products,
        expected_totals(&others),
        "the held order added nothing"
    );
    let events = events_of(&listener, &held.order_uid, 2).await;
    assert!(events.iter().all(|e| e.outcome == OrderOutcome::Cancelled));
    assert!(events.iter().any(|e| e.order.as_ref() == Some(&held)));
    rig.drained().await;
    app.stop().await;
    listener.close().await;
}

#[tokio::test]
async fn the_postgresql_ledger_keeps_outcomes_for_a_new_warehouse() {
    let rig = Rig::new(Store::Postgres).await;
    let listener = EventListener::bind(&rig.queue).await;
    let a = order(&[(1, 4)]);
    let b = order(&[(2, 5)]);

    let first = spawn_app_with(rig.settings_named("a")).await;
    first.wait_until_consuming().await;
    rig.cancels(&[cancel(&a)]).await;
    rig.orders(std::slice::from_ref(&b)).await;
    events_of(&listener, &a.order_uid, 1).await;
    events_of(&listener, &b.order_uid, 1).await;
    first.stop().await;

    // A new process on the same database: the outcomes are there before it consumes anything,
    // and decide what comes next.
    let second = spawn_app_with(rig.settings_named("b")).await;
    let stats = second.stats().await;
    assert_eq!(stats.orders_processed, 1);
    assert_eq!(stats.orders_cancelled, 1);
    assert_eq!(stats.products, BTreeMap::from([(2, 5)]));
    second.wait_until_consuming().await;
    rig.orders(&[a.clone(), b.clone()]).await;
    rig.cancels(&[cancel(&a), cancel(&b)]).await;
    let a_events = events_of(&listener, &a.order_uid, 3).await;
    let b_events = events_of(&listener, &b.order_uid, 3).await;
    rig.drained().await;
    assert!(a_events
        .iter()
        .all(|e| e.outcome == OrderOutcome::Cancelled));
    assert!(a_events
        .iter()
        .all(|e| e.reason == Some(CancelReason::Customer)));
    // The lost cancel's event carries the order, read from the database by a process that
    // never saw it.
    assert!(b_events
        .iter()
        .all(|e| e.outcome == OrderOutcome::Fulfilled && e.order.as_ref() == Some(&b)));
    assert_eq!(
        second.ledger.applied_here() + second.ledger.cancelled_here(),
        0
    );
    assert_eq!(second.ledger.refused(), 1);
    assert_eq!(second.ledger.cancels_lost(), 1);
    assert_eq!(second.ledger.duplicates(), 1);
    assert_eq!(second.ledger.duplicate_cancels(), 1);
    let stats = second.stop().await;
    assert_eq!(stats.orders_processed, 1);
    assert_eq!(stats.orders_cancelled, 1);
    assert_eq!(stats.products, BTreeMap::from([(2, 5)]));
    let db = rig.db.as_ref().expect("a database");
    let rows = outcomes_in_database(&db.url).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[&a.order_uid], "cancelled");
    assert_eq!(rows[&b.order_uid], "fulfilled");
    listener.close().await;
}

#[tokio::test]
async fn deliveries_are_acked_only_after_their_events_are_confirmed() {
    let rig = Rig::new(Store::Memory).await;
    let topology = Topology::new(&rig.queue, QueueType::Classic);
    // The topology's own listener queue: the warehouse binds it again when it redeclares.
    let listener = EventListener::on_queue(&rig.queue, &topology.order_events_queue).await;
    let mut settings = rig.settings();
    settings.consumer.reconnect_min = Duration::from_millis(50);
    let app = spawn_app_with(settings).await;
    app.wait_until_consuming().await;

    // The events exchange disappears under the running warehouse: its next publish fails
    // (the broker closes the events channel), so that batch, committed to the ledger, must
    // not be acked. It is requeued, and its redelivery (a duplicate) announces it again once
    // the warehouse has rebuilt its session and redeclared the exchange.
    let admin = Connection::connect(DEFAULT_AMQP_URL, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = admin.create_channel().await.expect("channel");
    channel
        .exchange_delete(
            topology.events_exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await
        .expect("delete the events exchange");
    let _ = admin.close(200, "done".into()).await;

    let orders: Vec<OrderMessage> = (0..300).map(|i| order(&[(i % 11 + 1, 1)])).collect();
    rig.orders(&orders).await;
    wait_for(
        "an event for every order",
        Duration::from_secs(60),
        || async {
            let events = listener.events();
            let covered = orders.iter().all(|o| {
                events.iter().any(|e| {
                    e.order_uid == o.order_uid
                        && e.outcome == OrderOutcome::Fulfilled
                        && e.order.as_ref() == Some(o)
                })
            });
            covered.then_some(())
        },
    )
    .await;
    rig.drained().await;
    let stats = app.stats().await;
    eprintln!(
        "publish failures {}, sessions {}, duplicates {}",
        stats.event_publish_failures,
        app.state.sessions(),
        stats.duplicates
    );
    assert!(stats.event_publish_failures >= 1, "{stats:?}");
    assert!(app.state.sessions() >= 2, "the session was rebuilt");
    // The failed batch was applied once, then redelivered as duplicates.
    assert_eq!(stats.orders_processed, 300);
    assert_eq!(stats.products, expected_totals(&orders));
    assert!(stats.duplicates >= 1, "{stats:?}");
    assert_eq!(
        rig.broker
            .message_count(&format!("{}.dlq", rig.queue))
            .await,
        0
    );
    app.stop().await;
    listener.close().await;
}
