//! `messaging::connect` over a list of broker nodes, against the real broker: nodes that are down
//! or cut off are passed over, each within its own bound, and the error names every node.
#![cfg(all(feature = "amqp", feature = "test-support"))]

use common::messaging::{self, DEFAULT_AMQP_URL};
use common::testing::{dead_port, FaultyProxy, Mode};
use lapin::ConnectionProperties;
use std::time::{Duration, Instant};

fn broker_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_string())
}

#[tokio::test]
async fn connects_to_the_first_node_that_answers_and_names_every_node_that_did_not() {
    let real = broker_url();
    let down_port = dead_port().await;
    let down = format!("amqp://guest:guest@127.0.0.1:{down_port}/%2f");
    // Accepts TCP but never answers: a node behind a partition.
    let silent = FaultyProxy::start("127.0.0.1:5672").await;
    silent.set(Mode::Stall);
    let silent = silent.url_for(&real);
    let per_node = Duration::from_millis(500);

    let list = messaging::Broker::parse(&format!("{down},{silent},{real}")).expect("valid list");
    let started = Instant::now();
    let connection = messaging::connect(&list, ConnectionProperties::default(), per_node)
        .await
        .expect("the third node answers");
    assert!(connection.status().connected());
    // At most the silent node's bound was spent on the way (plus the connection itself).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    connection
        .close(200, "test done".into())
        .await
        .expect("close");

    let list = messaging::Broker::parse(&format!("{down},{silent}")).expect("valid list");
    let err = messaging::connect(&list, ConnectionProperties::default(), per_node)
        .await
        .expect_err("no node answers");
    let message = err.to_string();
    assert!(
        message.contains(&format!("127.0.0.1:{down_port}")),
        "{message}"
    );
    assert!(message.contains("no answer within 500ms"), "{message}");
    assert!(
        !message.contains("guest:guest"),
        "passwords are masked: {message}"
    );
}
