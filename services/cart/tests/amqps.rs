//! The cart over `amqps://`, against a real RabbitMQ TLS listener with a throwaway CA
//! (`scripts/rabbitmq-tls.sh`): a checkout is confirmed by the TLS node when `AMQP_CA_FILE`
//! trusts its CA; with an unrelated CA the node is refused, checkouts fail fast with 503 and
//! `/ready` says why.

mod support;

use common::messaging::{self, Broker, QueueType, Topology};
use common::testing::TlsBroker;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::ConnectionProperties;
use reqwest::StatusCode;
use std::time::{Duration, Instant};
use support::{error_body, spawn_app_with, Options, CARD};

/// The order queue's depth on the TLS node, through a connection of the test's own.
async fn depth_and_cleanup(broker: &Broker, queue: &str) -> u32 {
    let connection = messaging::connect(
        broker,
        ConnectionProperties::default(),
        Duration::from_secs(5),
    )
    .await
    .expect("the test connects over amqps");
    let channel = connection.create_channel().await.expect("channel");
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let depth = channel
        .queue_declare(queue.into(), passive, Default::default())
        .await
        .expect("the order queue exists on the TLS node")
        .message_count();
    for name in Topology::new(queue, QueueType::Classic).queues() {
        let _ = channel
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "done".into()).await;
    depth
}

#[tokio::test]
async fn a_checkout_is_confirmed_over_amqps_when_the_cart_trusts_the_brokers_ca() {
    let tls = TlsBroker::start();
    let broker = Broker::parse(&tls.url)
        .expect("a valid amqps URL")
        .with_ca_pem(tls.ca_pem.as_str());
    let app = spawn_app_with(Options {
        broker: Some(broker.clone()),
        reserve_stock: false,
        ..Options::default()
    })
    .await;
    let resp = app.checkout(app.filled_cart().await, CARD).await;
    assert_eq!(resp.status(), StatusCode::OK, "{:?}", resp.text().await);
    assert_eq!(app.get("/ready").await.status(), StatusCode::OK);
    assert_eq!(depth_and_cleanup(&broker, &app.queue).await, 1);
}

#[tokio::test]
async fn with_an_unrelated_ca_the_broker_is_refused_and_checkouts_fail_fast() {
    let tls = TlsBroker::start();
    let broker = Broker::parse(&tls.url)
        .expect("a valid amqps URL")
        .with_ca_pem(tls.wrong_ca_pem.as_str());
    let app = spawn_app_with(Options {
        broker: Some(broker),
        reserve_stock: false,
        ..Options::default()
    })
    .await;
    let cart = app.filled_cart().await;
    let started = Instant::now();
    let resp = app.checkout(cart, CARD).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let body = error_body(resp).await.to_string();
    assert!(!body.contains("guest:guest"), "the password leaked: {body}");

    let resp = app.get("/ready").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let why = error_body(resp).await.to_string();
    assert!(
        why.contains("certificate") || why.contains("UnknownIssuer"),
        "/ready names the refused certificate: {why}"
    );
    assert!(!why.contains("guest:guest"), "the password leaked: {why}");
}
