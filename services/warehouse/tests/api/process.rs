//! The real binary as a child process: SIGKILL mid-batch, SIGTERM, bad configuration.

use crate::helpers::{
    applied_in_database, expected_totals, order, queue_depth, unique_queue, wait_for, Broker,
    ChildApp, Message, QueueGuard,
};
use common::messaging::OrderMessage;
use common::testing::TestDatabase;
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

/// Waits for a child to exit after a signal; its exit status.
async fn wait_exit(app: &mut ChildApp, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = app.child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "the process did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn with_postgresql_a_killed_warehouse_and_its_restart_apply_every_order_exactly_once() {
    const ORDERS: usize = 8_000;
    let db = TestDatabase::create().await;
    let env = [("DATABASE_URL", db.url.as_str())];
    let queue = unique_queue();
    let _guard = QueueGuard::new(&queue);
    let broker = Broker::connect(&format!("publisher-{queue}")).await;
    broker.declare(&queue).await;

    // Distinct orders, every fifth one published again (a cart retry), poison sprinkled in.
    let orders: Vec<OrderMessage> = (0..ORDERS)
        .map(|i| order(&[(i as i32 % 50 + 1, i as i32 % 3 + 1)]))
        .collect();
    let mut messages: Vec<Message> = orders.iter().map(Message::from).collect();
    messages.extend(orders.iter().step_by(5).map(Message::from));
    for (i, poison) in [&b"not json"[..], b"", br#"{"order_uid":"x"}"#, b"[]", b"{"]
        .into_iter()
        .enumerate()
    {
        messages.insert(i * 1500 + 7, Message::raw(poison));
    }
    broker.publish(&queue, &messages).await;

    // SIGKILL the first instance while it is committing batches.
    let mut first = ChildApp::start_with(&queue, &format!("wh-pg-a-{queue}"), &env);
    let mut settled = 0;
    first
        .wait_line(Duration::from_secs(30), |line| {
            settled += usize::from(settled_uid(line).is_some());
            (settled >= 500).then_some(())
        })
        .expect("the first instance consumes");
    first.signal("KILL");
    let _ = first.child.wait();
    let applied_before_restart = applied_in_database(&db.url).await;
    assert!(
        applied_before_restart > 0 && (applied_before_restart as usize) < ORDERS,
        "killed mid-stream ({applied_before_restart} of {ORDERS} applied)"
    );

    // The restarted instance drains the rest: the totals are exactly the distinct orders.
    let mut second = ChildApp::start_with(&queue, &format!("wh-pg-b-{queue}"), &env);
    let http = reqwest::Client::new();
    wait_for(
        "the queue to be drained",
        Duration::from_secs(60),
        || async {
            second.stats(&http).await?;
            (queue_depth(&queue).await == (0, 0)).then_some(())
        },
    )
    .await;
    let stats = second.stats(&http).await.expect("stats");
    assert_eq!(stats.orders_processed, ORDERS as u64);
    assert_eq!(stats.products, expected_totals(&orders));
    assert_eq!(applied_in_database(&db.url).await, ORDERS as i64);
    assert_eq!(broker.message_count(&format!("{queue}.dlq")).await, 5);
    eprintln!(
        "applied before the kill {applied_before_restart}; the restart saw {} duplicates",
        stats.duplicates
    );

    // SIGTERM: exit 0, and the report prints the durable totals.
    second.signal("TERM");
    let status = wait_exit(&mut second, Duration::from_secs(20)).await;
    assert!(status.success(), "exit status {status:?}");
    second.drain_output(Duration::from_secs(5));
    let output = second.output.join("\n");
    assert!(
        output.contains(&format!("total orders processed: {ORDERS}")),
        "{output}"
    );

    // A fresh process on the same database serves the same totals before consuming anything.
    let third = ChildApp::start_with(&queue, &format!("wh-pg-c-{queue}"), &env);
    let restarted = third.stats(&http).await.expect("stats");
    assert_eq!(restarted.orders_processed, ORDERS as u64);
    assert_eq!(restarted.products, stats.products);
    assert_eq!(restarted.duplicates + restarted.rejected, 0);
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

#[test]
fn an_invalid_fulfilment_delay_stops_the_binary_naming_the_variable() {
    for value in ["soon", "-1", "600001"] {
        let output = Command::new(env!("CARGO_BIN_EXE_warehouse"))
            .env("FULFILMENT_DELAY_MS", value)
            .env("PORT", "0")
            .output()
            .expect("run the binary");
        assert_eq!(output.status.code(), Some(1), "FULFILMENT_DELAY_MS={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("FULFILMENT_DELAY_MS"), "{stderr}");
    }
}

/// `--help` lists what the service reads (it runs the same reading code on the defaults), and
/// every variable it lists is documented in a README, so neither can drift from the code.
#[test]
fn help_lists_the_variables_and_the_readmes_document_each() {
    let listed = common::config::check_help(
        env!("CARGO_BIN_EXE_warehouse"),
        &[
            include_str!("../../README.md"),
            include_str!("../../../../README.md"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for name in [
        "PORT",
        "WAREHOUSE_CHANNELS",
        "WAREHOUSE_PREFETCH",
        "UNSAFE_ACK_ON_RECEIPT",
        "DATABASE_URL",
    ] {
        assert!(listed.iter().any(|l| l == name), "{name} not in {listed:?}");
    }
}
