//! The warehouse over `amqps://`, against a real RabbitMQ TLS listener with a throwaway CA
//! (`scripts/rabbitmq-tls.sh`): it connects and consumes when `AMQP_CA_FILE` trusts the node's
//! CA, and refuses the node when only an unrelated CA (or only the system's) is trusted.

use crate::helpers::{order, spawn_app_with, unique_queue, wait_for};
use common::messaging::{self, Broker, QueueType, Topology};
use common::testing::TlsBroker;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions};
use lapin::ConnectionProperties;
use std::time::Duration;
use warehouse::configuration::Settings;

fn settings_over(broker: Broker, queue: &str) -> Settings {
    let mut settings = Settings::for_tests(queue);
    settings.consumer.broker = broker;
    settings.consumer.reconnect_min = Duration::from_millis(50);
    settings.consumer.reconnect_max = Duration::from_millis(200);
    settings
}

#[tokio::test]
async fn the_warehouse_consumes_over_amqps_when_it_trusts_the_brokers_ca() {
    let tls = TlsBroker::start();
    let broker = Broker::parse(&tls.url)
        .expect("a valid amqps URL")
        .with_ca_pem(tls.ca_pem.as_str());
    let queue = unique_queue();
    let app = spawn_app_with(settings_over(broker.clone(), &queue)).await;
    app.wait_until_consuming().await;

    // An order published over TLS as well, under confirms, reaches the ledger.
    let connection = messaging::connect(
        &broker,
        ConnectionProperties::default().with_connection_name("amqps-test".into()),
        Duration::from_secs(5),
    )
    .await
    .expect("the test connects over amqps");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let placed = order(&[(7, 3)]);
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            &placed.to_json(),
            placed.properties("amqps-test"),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack());
    wait_for("the order to be applied", Duration::from_secs(20), || {
        let stats = app.stats();
        async move { (stats.await.orders_processed == 1).then_some(()) }
    })
    .await;
    let stats = app.stop().await;
    assert_eq!(stats.orders_processed, 1);

    let cleanup = connection.create_channel().await.expect("channel");
    for name in Topology::new(&queue, QueueType::Classic).queues() {
        let _ = cleanup
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn a_broker_whose_certificate_no_trusted_ca_signed_is_refused() {
    let tls = TlsBroker::start();
    for (trust, broker) in [
        (
            "an unrelated CA",
            Broker::parse(&tls.url)
                .expect("a valid amqps URL")
                .with_ca_pem(tls.wrong_ca_pem.as_str()),
        ),
        (
            "the system's CAs only",
            Broker::parse(&tls.url).expect("a valid amqps URL"),
        ),
    ] {
        let refused = messaging::connect(
            &broker,
            ConnectionProperties::default(),
            Duration::from_secs(5),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("trusting {trust}, the connection must be refused"));
        let reason = refused.to_string();
        assert!(
            reason.contains("certificate") || reason.contains("UnknownIssuer"),
            "trusting {trust}: {reason}"
        );
        assert!(
            !reason.contains("guest:guest"),
            "the password leaked: {reason}"
        );

        // The service itself stays unready and says why, and retries (recovery needs no restart).
        let queue = unique_queue();
        let app = spawn_app_with(settings_over(broker, &queue)).await;
        let why = wait_for(
            "the consumer to report the refused certificate",
            Duration::from_secs(20),
            || {
                let readiness = app.state.readiness();
                async move {
                    readiness
                        .err()
                        .filter(|e| e.contains("certificate") || e.contains("UnknownIssuer"))
                }
            },
        )
        .await;
        assert!(!why.contains("guest:guest"), "the password leaked: {why}");
        let response = app.get("/ready").await;
        assert_eq!(response.status(), 503, "trusting {trust}");
        app.stop().await;
    }
}
