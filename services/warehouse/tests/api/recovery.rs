use crate::helpers::{
    close_connections_named, order, spawn_app, unique_queue, wait_for, Broker, Message, QueueGuard,
};
use std::collections::BTreeMap;
use std::time::Duration;
use warehouse::ledger::Stats;

#[tokio::test]
async fn totals_equal_distinct_orders_after_connections_are_force_closed_mid_stream() {
    let queue = unique_queue();
    let _guard = QueueGuard::new(&queue);
    let broker = Broker::connect(&format!("publisher-{queue}")).await;
    broker.declare(&queue).await;
    let app = spawn_app(&queue).await;
    app.wait_until_consuming().await;

    let orders: Vec<_> = (0..3000)
        .map(|i| order(&[(i % 40 + 1, i % 3 + 1)]))
        .collect();
    let mut expected: BTreeMap<i32, u64> = BTreeMap::new();
    for o in &orders {
        for item in &o.items {
            *expected.entry(item.product_id).or_default() += item.quantity as u64;
        }
    }
    let messages: Vec<Message> = orders.iter().map(Message::from).collect();
    let (first, second) = messages.split_at(2000);

    // Publish the first part in the background and cut the warehouse's connection while it is
    // consuming it.
    let publisher = tokio::spawn({
        let queue = queue.clone();
        let first: Vec<Message> = first
            .iter()
            .map(|m| Message {
                body: m.body.clone(),
                properties: m.properties.clone(),
            })
            .collect();
        async move {
            let broker = Broker::connect(&format!("publisher2-{queue}")).await;
            for chunk in first.chunks(100) {
                broker.publish(&queue, chunk).await;
            }
        }
    });
    wait_for("some orders consumed", Duration::from_secs(30), || async {
        (app.ledger.orders_processed() >= 200).then_some(())
    })
    .await;
    let closed = close_connections_named(&format!("warehouse-{queue}")).await;
    assert_eq!(closed, 1, "exactly the warehouse's connection is closed");
    let applied_at_close = app.ledger.orders_processed();

    // It reconnects on its own: a second session, consuming again.
    let state = app.state.clone();
    wait_for("a new session", Duration::from_secs(30), || {
        let sessions = state.sessions();
        async move { (sessions >= 2).then_some(()) }
    })
    .await;
    app.wait_until_consuming().await;
    publisher.await.expect("publisher task");

    // More orders after the recovery, and 500 of the first part republished.
    broker.publish(&queue, second).await;
    broker.publish(&queue, &first[..500]).await;

    let stats: Stats = wait_for(
        "all distinct orders applied",
        Duration::from_secs(40),
        || async {
            let stats = app.stats().await;
            (stats.orders_processed >= 3000 && stats.duplicates >= 500).then_some(stats)
        },
    )
    .await;
    assert!(applied_at_close < 3000, "the close happened mid-stream");
    // Let any straggling redelivery settle, then check nothing was applied twice.
    wait_for("the queue to be empty", Duration::from_secs(20), || async {
        (broker.message_count(&queue).await == 0).then_some(())
    })
    .await;
    let stats_after = app.stop().await;
    assert_eq!(stats.orders_processed, 3000);
    assert_eq!(stats_after.orders_processed, 3000);
    assert_eq!(stats_after.products, expected);
    assert_eq!(stats_after.rejected, 0);
    // Redeliveries of what was in flight at the close are counted as duplicates, never applied.
    assert!(stats_after.duplicates >= 500, "{stats_after:?}");
    assert!(
        stats_after.duplicates <= 500 + 100,
        "at most the unacked window is redelivered: {stats_after:?}"
    );
    assert_eq!(broker.message_count(&format!("{queue}.dlq")).await, 0);
}
