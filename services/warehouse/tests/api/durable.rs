//! The ledger on PostgreSQL under the running service: two warehouses sharing it, and the
//! database going away (through a fault proxy) while orders flow.

use crate::helpers::{
    applied_in_database, expected_totals, order, queue_depth, settings_on_postgres, spawn_app_with,
    unique_queue, wait_for, Broker, Message, QueueGuard,
};
use common::messaging::OrderMessage;
use common::testing::{FaultyProxy, Mode, TestDatabase};
use std::time::Duration;

#[tokio::test]
async fn two_warehouses_on_one_queue_and_one_database_apply_every_order_once() {
    let db = TestDatabase::create().await;
    let queue = unique_queue();
    let _guard = QueueGuard::new(&queue);
    let broker = Broker::connect(&format!("publisher-{queue}")).await;
    broker.declare(&queue).await;

    let mut a = settings_on_postgres(&queue, &db.url);
    a.consumer.connection_name = format!("warehouse-a-{queue}");
    let mut b = settings_on_postgres(&queue, &db.url);
    b.consumer.connection_name = format!("warehouse-b-{queue}");
    let a = spawn_app_with(a).await;
    let b = spawn_app_with(b).await;
    a.wait_until_consuming().await;
    b.wait_until_consuming().await;

    // Every third order is published twice in a row: the broker hands the two copies to
    // different consumers (20 of them over two processes), so they race.
    let orders: Vec<OrderMessage> = (0..3000)
        .map(|i| order(&[(i % 20 + 1, i % 4 + 1), ((i * 3) % 20 + 1, 1)]))
        .collect();
    let mut messages = Vec::new();
    for (i, o) in orders.iter().enumerate() {
        messages.push(Message::from(o));
        if i % 3 == 0 {
            messages.push(Message::from(o));
        }
    }
    let copies = (messages.len() - orders.len()) as u64;
    broker.publish(&queue, &messages).await;

    wait_for(
        "every delivery settled",
        Duration::from_secs(60),
        || async {
            let settled = a.ledger.applied_here()
                + a.ledger.duplicates()
                + b.ledger.applied_here()
                + b.ledger.duplicates();
            (settled >= messages.len() as u64).then_some(())
        },
    )
    .await;
    wait_for("the queue to be empty", Duration::from_secs(20), || async {
        (broker.message_count(&queue).await == 0).then_some(())
    })
    .await;
    let (applied_a, applied_b) = (a.ledger.applied_here(), b.ledger.applied_here());
    let duplicates = a.ledger.duplicates() + b.ledger.duplicates();
    let stats_a = a.stop().await;
    let stats_b = b.stop().await;
    eprintln!("a applied {applied_a}, b applied {applied_b}, duplicates {duplicates}");

    // Exactly once in total, whoever applied it; both instances read the same durable totals.
    assert_eq!(applied_a + applied_b, orders.len() as u64);
    assert!(applied_a > 0 && applied_b > 0, "both instances took part");
    assert_eq!(duplicates, copies);
    assert_eq!(stats_a.orders_processed, orders.len() as u64);
    assert_eq!(stats_a.products, expected_totals(&orders));
    assert_eq!(stats_b.products, stats_a.products);
    assert_eq!(applied_in_database(&db.url).await, orders.len() as i64);
}

/// `/ready`'s status and body.
async fn ready(app: &crate::helpers::TestApp) -> (u16, String) {
    let response = app.get("/ready").await;
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test]
async fn with_the_store_down_nothing_is_acked_or_dead_lettered_and_all_resumes_when_it_is_back() {
    let db = TestDatabase::create().await;
    let proxy = FaultyProxy::start("127.0.0.1:5432").await;
    let queue = unique_queue();
    let _guard = QueueGuard::new(&queue);
    let broker = Broker::connect(&format!("publisher-{queue}")).await;
    broker.declare(&queue).await;
    let app = spawn_app_with(settings_on_postgres(&queue, &proxy.url_for(&db.url))).await;
    app.wait_until_consuming().await;
    assert_eq!(ready(&app).await.0, 200);

    let before: Vec<OrderMessage> = (0..300).map(|i| order(&[(i % 10 + 1, 1)])).collect();
    broker
        .publish(
            &queue,
            &before.iter().map(Message::from).collect::<Vec<_>>(),
        )
        .await;
    wait_for(
        "the first orders applied",
        Duration::from_secs(30),
        || async { (app.stats().await.orders_processed == 300).then_some(()) },
    )
    .await;

    // PostgreSQL goes away under the running service.
    proxy.set(Mode::Cut);
    let (_, body) = wait_for("/ready to turn 503", Duration::from_secs(10), || async {
        let (status, body) = ready(&app).await;
        (status == 503).then_some((status, body))
    })
    .await;
    assert!(body.contains("postgresql"), "{body}");
    let stats = app.get("/stats").await;
    assert_eq!(stats.status(), 503);
    let error: serde_json::Value = stats.json().await.expect("json error body");
    assert_eq!(error["error"], "STORE_UNAVAILABLE", "{error}");

    let failures = app.state.store_failures();
    // Orders (and poison) keep arriving meanwhile. The poison comes first: once the held orders
    // use up every channel's prefetch, the broker delivers nothing more until the store is back.
    let during: Vec<OrderMessage> = (0..400).map(|i| order(&[(i % 10 + 1, 2)])).collect();
    let mut messages: Vec<Message> = [&b"not json"[..], b"{}", b"[1,2]"]
        .into_iter()
        .map(Message::raw)
        .collect();
    messages.extend(during.iter().map(Message::from));
    broker.publish(&queue, &messages).await;
    let dlq = format!("{queue}.dlq");
    // Poison is dead-lettered by the channels, whatever the store's state.
    wait_for("the poison in the DLQ", Duration::from_secs(10), || async {
        (broker.message_count(&dlq).await == 3).then_some(())
    })
    .await;
    wait_for("a failed commit", Duration::from_secs(10), || async {
        (app.state.store_failures() > failures).then_some(())
    })
    .await;
    // Long enough for several retries (and for acks, were any sent, to reach the broker).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Nothing of it was applied, and the broker still holds every order: none acked, none
    // dead-lettered, none dropped.
    assert_eq!(applied_in_database(&db.url).await, 300);
    let (ready_msgs, unacked) = queue_depth(&queue).await;
    assert_eq!(
        ready_msgs + unacked,
        400,
        "ready {ready_msgs}, unacked {unacked}"
    );
    assert!(
        unacked <= 100,
        "at most channels x prefetch are held: {unacked}"
    );
    assert_eq!(broker.message_count(&dlq).await, 3);
    assert_eq!(app.state.consuming(), 10, "the broker session was kept");

    // The store comes back: everything drains by itself.
    proxy.set(Mode::Pass);
    let stats = wait_for("every order applied", Duration::from_secs(30), || async {
        let stats = app.stats().await;
        (stats.orders_processed == 700).then_some(stats)
    })
    .await;
    wait_for("the queue to be empty", Duration::from_secs(20), || async {
        (broker.message_count(&queue).await == 0).then_some(())
    })
    .await;
    wait_for("/ready to turn 200", Duration::from_secs(10), || async {
        (ready(&app).await.0 == 200).then_some(())
    })
    .await;
    let all: Vec<OrderMessage> = before.into_iter().chain(during).collect();
    assert_eq!(stats.products, expected_totals(&all));
    assert_eq!(stats.rejected, 3);
    assert_eq!(broker.message_count(&dlq).await, 3);
    assert_eq!(applied_in_database(&db.url).await, 700);
    let final_stats = app.stop().await;
    assert_eq!(final_stats.orders_processed, 700);
}
