use crate::helpers::{
    close_connections_named, order, spawn_app, unique_queue, wait_for, Broker, Message, QueueGuard,
};
use common::messaging::OrderMessage;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Publishes small batches of new orders until told to stop; returns what it published.
fn publish_until_stopped(
    queue: &str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<OrderMessage>> {
    let queue = queue.to_string();
    tokio::spawn(async move {
        let broker = Broker::connect(&format!("publisher2-{queue}")).await;
        let mut published = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let batch: Vec<OrderMessage> = (i..i + 50)
                .map(|i| order(&[(i % 40 + 1, i % 3 + 1)]))
                .collect();
            i += 50;
            let messages: Vec<Message> = batch.iter().map(Message::from).collect();
            broker.publish(&queue, &messages).await;
            published.extend(batch);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        published
    })
}

#[tokio::test]
async fn totals_equal_distinct_orders_after_connections_are_force_closed_mid_stream() {
    let queue = unique_queue();
    let _guard = QueueGuard::new(&queue);
    let broker = Broker::connect(&format!("publisher-{queue}")).await;
    broker.declare(&queue).await;
    let app = spawn_app(&queue).await;
    app.wait_until_consuming().await;

    // Orders keep arriving before, during and after the broker cuts the warehouse's connection.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = publish_until_stopped(&queue, Arc::clone(&stop));
    wait_for("some orders consumed", Duration::from_secs(30), || async {
        (app.ledger.applied_here() >= 200).then_some(())
    })
    .await;
    let closed = close_connections_named(&format!("warehouse-{queue}")).await;
    assert_eq!(closed, 1, "exactly the warehouse's connection is closed");

    // It reconnects on its own (a second session) and keeps consuming what is still published.
    let state = app.state.clone();
    wait_for("a new session", Duration::from_secs(30), || {
        let sessions = state.sessions();
        async move { (sessions >= 2).then_some(()) }
    })
    .await;
    app.wait_until_consuming().await;
    let after_recovery = app.ledger.applied_here();
    wait_for(
        "orders consumed after the recovery",
        Duration::from_secs(30),
        || async { (app.ledger.applied_here() >= after_recovery + 300).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let orders = publisher.await.expect("publisher task");
    let distinct = orders.len() as u64;

    // And republished orders (the cart retrying after a lost confirm) are duplicates.
    let republished: Vec<Message> = orders.iter().take(500).map(Message::from).collect();
    broker.publish(&queue, &republished).await;

    let mut expected: BTreeMap<i32, u64> = BTreeMap::new();
    for o in &orders {
        for item in &o.items {
            *expected.entry(item.product_id).or_default() += item.quantity as u64;
        }
    }
    wait_for(
        "all distinct orders applied",
        Duration::from_secs(40),
        || async {
            let stats = app.stats().await;
            (stats.orders_processed >= distinct && stats.duplicates >= 500).then_some(())
        },
    )
    .await;
    wait_for("the queue to be empty", Duration::from_secs(20), || async {
        (broker.message_count(&queue).await == 0).then_some(())
    })
    .await;
    let stats = app.stop().await;
    eprintln!(
        "published {distinct} distinct orders; applied when the new session was up {after_recovery}; \
         duplicates at the end {}",
        stats.duplicates
    );
    assert_eq!(stats.orders_processed, distinct);
    assert_eq!(stats.products, expected);
    assert_eq!(stats.rejected, 0);
    // Redeliveries of what was in flight at the close are counted as duplicates, never applied;
    // at most the unacked window (10 channels x prefetch 10) can come back.
    assert!(stats.duplicates >= 500, "{stats:?}");
    assert!(stats.duplicates <= 500 + 100, "{stats:?}");
    assert!(after_recovery < distinct, "the close happened mid-stream");
    assert_eq!(broker.message_count(&format!("{queue}.dlq")).await, 0);
}
