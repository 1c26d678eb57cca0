//! The real binary as a child process: SIGKILL mid-batch, SIGTERM, bad configuration.

use crate::helpers::{order, unique_queue, wait_for, Broker, ChildApp, Message, QueueGuard};
use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

/// The uid of an order the child logged as settled (applied or duplicate) before acking it.
fn settled_uid(line: &str) -> Option<String> {
    let json: serde_json::Value = serde_json::from_str(line).ok()?;
    if json["message"] != "order settled" {
        return None;
    }
    json["order_uid"].as_str().map(str::to_string)
}

#[tokio::test]
async fn a_killed_consumer_loses_nothing_its_successor_applies_the_unacked_rest() {
    // Many more than are consumed before the kill, so a slow test machine still kills mid-batch.
    const ORDERS: usize = 15_000;
    // WAREHOUSE_CHANNELS x WAREHOUSE_PREFETCH: the most the broker can have handed out unacked.
    const UNACKED_WINDOW: usize = 10 * 10;
    let queue = unique_queue();
    let _guard = QueueGuard::new(&queue);
    let broker = Broker::connect(&format!("publisher-{queue}")).await;
    broker.declare(&queue).await;

    // Order i is the only one with product i+1 (quantity 1), so the successor's /stats says
    // exactly which orders it applied.
    let orders: Vec<_> = (0..ORDERS).map(|i| order(&[(i as i32 + 1, 1)])).collect();
    let product_of: HashMap<String, i32> = orders
        .iter()
        .map(|o| (o.order_uid.clone(), o.items[0].product_id))
        .collect();
    let messages: Vec<Message> = orders.iter().map(Message::from).collect();
    broker.publish(&queue, &messages).await;

    // The first instance logs every order it applies *before* acking it. Kill -9 it after 300.
    let mut first = ChildApp::start(&queue, &format!("wh-a-{queue}"));
    let mut applied_by_first: BTreeSet<i32> = BTreeSet::new();
    let mut seen = 0;
    first
        .wait_line(Duration::from_secs(30), |line| {
            let uid = settled_uid(line)?;
            applied_by_first.insert(product_of[&uid]);
            seen += 1;
            (seen >= 300).then_some(())
        })
        .expect("the first instance consumes");
    first.signal("KILL");
    let _ = first.child.wait();
    // Whatever it logged up to its death: every ack it sent was preceded by its log line.
    let mut rest = Vec::new();
    first.drain_output(Duration::from_secs(5));
    for line in &first.output {
        if let Some(uid) = settled_uid(line) {
            rest.push(product_of[&uid]);
        }
    }
    applied_by_first.extend(rest);
    assert!(
        applied_by_first.len() < ORDERS,
        "killed mid-batch (applied {} of {ORDERS})",
        applied_by_first.len()
    );

    // The successor drains the queue.
    let mut second = ChildApp::start(&queue, &format!("wh-b-{queue}"));
    let http = reqwest::Client::new();
    let first_set = applied_by_first.clone();
    let stats = wait_for(
        "every order applied by one of the two instances",
        Duration::from_secs(40),
        || async {
            let stats = second.stats(&http).await?;
            let covered = (1..=ORDERS as i32)
                .all(|p| first_set.contains(&p) || stats.products.contains_key(&p));
            covered.then_some(stats)
        },
    )
    .await;
    wait_for("the queue to be empty", Duration::from_secs(20), || async {
        (broker.message_count(&queue).await == 0).then_some(())
    })
    .await;

    // Nothing lost: the two instances together applied every order (checked above). The overlap
    // is what the first had applied but not acked: redelivered to the successor, which (as a
    // fresh process with in-memory dedupe) applies it again. It is bounded by the unacked window.
    let applied_by_second: BTreeSet<i32> = stats.products.keys().copied().collect();
    assert!(
        stats.products.values().all(|&q| q == 1),
        "the successor applied nothing twice"
    );
    assert_eq!(stats.orders_processed as usize, applied_by_second.len());
    let overlap = applied_by_first.intersection(&applied_by_second).count();
    eprintln!(
        "first applied {} (acked or not), successor applied {}, redelivered after being applied: {overlap}",
        applied_by_first.len(),
        applied_by_second.len()
    );
    assert!(
        overlap <= UNACKED_WINDOW,
        "{overlap} orders were redelivered, more than the unacked window"
    );
    assert_eq!(
        applied_by_first.len() + applied_by_second.len() - overlap,
        ORDERS
    );
    assert_eq!(broker.message_count(&format!("{queue}.dlq")).await, 0);

    // SIGTERM: exit 0 with the final report on stdout.
    second.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the successor did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status:?}");
    second.drain_output(Duration::from_secs(5));
    let output = second.output.join("\n");
    assert!(
        output.contains(&format!(
            "total orders processed: {}",
            stats.orders_processed
        )),
        "{output}"
    );
    let first_product = applied_by_second
        .iter()
        .next()
        .expect("the successor applied some");
    assert!(
        output.contains(&format!("product {first_product}: 1")),
        "report lists products"
    );
}

#[test]
fn an_invalid_setting_stops_the_binary_naming_the_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_warehouse"))
        .env("WAREHOUSE_CHANNELS", "0")
        .env("PORT", "0")
        .output()
        .expect("run the binary");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("WAREHOUSE_CHANNELS"), "{stderr}");
}
