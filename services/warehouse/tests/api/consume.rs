use crate::helpers::{
    order, spawn_app, spawn_app_with, unique_queue, wait_for, Broker, Message, QueueGuard,
};
use common::messaging;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use warehouse::configuration::Settings;

/// Poison: not JSON, not an order, or an order breaking an invariant.
fn poison() -> Vec<Message> {
    let mut zero_quantity = order(&[(1, 0)]);
    zero_quantity.order_uid = "poison-zero-qty".into();
    let mut no_items = order(&[]);
    no_items.order_uid = "poison-no-items".into();
    let mut bad_product = order(&[(-4, 2)]);
    bad_product.order_uid = "poison-bad-product".into();
    vec![
        Message::raw(b"not json at all"),
        Message::raw(b""),
        Message::raw(&[0xff, 0xfe, 0x00, 0x01]),
        Message::raw(br#"{"order_uid":"missing-fields"}"#),
        Message::from(&zero_quantity),
        Message::from(&no_items),
        Message::from(&bad_product),
    ]
}

#[tokio::test]
async fn applies_every_distinct_order_once_and_dead_letters_poison() {
    let queue = unique_queue();
    let _guard = QueueGuard::new(&queue);
    let broker = Broker::connect(&format!("publisher-{queue}")).await;
    broker.declare(&queue).await;

    // 1200 distinct orders over 25 products; 300 of them published a second time; 7 poison
    // messages mixed in. Half is queued before the warehouse starts, half while it consumes.
    let orders: Vec<_> = (0..1200)
        .map(|i| order(&[(i % 25 + 1, i % 5 + 1), ((i * 7) % 25 + 1, 1)]))
        .collect();
    let mut expected: BTreeMap<i32, u64> = BTreeMap::new();
    for o in &orders {
        for item in &o.items {
            *expected.entry(item.product_id).or_default() += item.quantity as u64;
        }
    }
    let mut messages: Vec<Message> = orders.iter().map(Message::from).collect();
    messages.extend(orders.iter().step_by(4).map(Message::from));
    let poison = poison();
    let poison_count = poison.len() as u64;
    for (i, p) in poison.into_iter().enumerate() {
        messages.insert(i * 200 + 17, p);
    }
    let (before, after) = messages.split_at(messages.len() / 2);
    broker.publish(&queue, before).await;

    let app = spawn_app(&queue).await;
    app.wait_until_consuming().await;
    assert_eq!(app.get("/ready").await.status(), 200);
    broker.publish(&queue, after).await;

    let stats = wait_for(
        "every message to be settled",
        Duration::from_secs(30),
        || async {
            let stats = app.stats().await;
            // A delivery is settled once its batch's events are confirmed (then it is acked):
            // the ledger counts it before that, so both counts are waited for.
            (stats.orders_processed + stats.duplicates + stats.rejected
                >= 1200 + 300 + poison_count
                && stats.events_published >= 1200 + 300)
                .then_some(stats)
        },
    )
    .await;
    assert_eq!(stats.orders_processed, 1200);
    assert_eq!(stats.duplicates, 300);
    assert_eq!(stats.rejected, poison_count);
    assert_eq!(stats.products, expected);
    let dlq = format!("{queue}.dlq");
    wait_for("the poison in the DLQ", Duration::from_secs(10), || async {
        (broker.message_count(&dlq).await == poison_count as u32).then_some(())
    })
    .await;
    assert_eq!(broker.message_count(&queue).await, 0);

    let json: serde_json::Value = app.get("/stats").await.json().await.expect("json");
    assert_eq!(json["orders_processed"], 1200);
    assert!(json["products"]["1"].is_u64(), "{json}");
    let metrics = app.get("/metrics").await.text().await.expect("text");
    assert!(
        metrics.contains("warehouse_orders_processed_total 1200"),
        "{metrics}"
    );
    assert!(
        metrics.contains("warehouse_rejected_messages_total 7"),
        "{metrics}"
    );
    // Every committed order delivery (duplicates too) was timed from its created_at; none of
    // them had been delivered before.
    assert!(
        metrics.contains("warehouse_order_lag_seconds_count 1500"),
        "{metrics}"
    );
    assert!(
        metrics.contains("warehouse_order_lag_seconds_bucket{le=\"+Inf\"} 1500"),
        "{metrics}"
    );
    assert!(
        metrics.contains("warehouse_redelivered_total 0"),
        "{metrics}"
    );

    let final_stats = app.stop().await;
    assert_eq!(final_stats, stats);
    let distinct: HashSet<_> = orders.iter().map(|o| o.order_uid.clone()).collect();
    assert_eq!(distinct.len(), 1200);
}

#[tokio::test]
async fn racing_channels_apply_a_republished_order_once() {
    // The same order published 200 times lands on all 10 channels at once.
    let queue = unique_queue();
    let _guard = QueueGuard::new(&queue);
    let broker = Broker::connect(&format!("publisher-{queue}")).await;
    broker.declare(&queue).await;
    let one = order(&[(3, 2)]);
    let copies: Vec<Message> = (0..200).map(|_| Message::from(&one)).collect();
    broker.publish(&queue, &copies).await;

    let app = spawn_app(&queue).await;
    let stats = wait_for("200 deliveries", Duration::from_secs(30), || async {
        let stats = app.stats().await;
        (stats.orders_processed + stats.duplicates >= 200).then_some(stats)
    })
    .await;
    assert_eq!(stats.orders_processed, 1);
    assert_eq!(stats.duplicates, 199);
    assert_eq!(stats.products, BTreeMap::from([(3, 2)]));
    app.stop().await;
}

#[tokio::test]
async fn is_alive_but_not_ready_without_a_broker() {
    let mut settings = Settings::for_tests(&unique_queue());
    // Nothing listens on port 1: the connection is refused and retried with backoff.
    settings.consumer.broker =
        messaging::Broker::parse("amqp://guest:guest@127.0.0.1:1/%2f").expect("a valid URL");
    settings.consumer.reconnect_min = Duration::from_millis(50);
    let app = spawn_app_with(settings).await;
    assert_eq!(app.get("/health").await.status(), 200);
    let body = wait_for(
        "a failed connection attempt",
        Duration::from_secs(10),
        || async {
            let response = app.get("/ready").await;
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            (status == 503 && body.contains("cannot connect")).then_some(body)
        },
    )
    .await;
    assert!(body.contains("rabbitmq"), "{body}");
    assert!(!body.contains("guest:guest"), "the password leaked: {body}");
    let stats = app.stop().await;
    assert_eq!(stats.orders_processed, 0);
}
