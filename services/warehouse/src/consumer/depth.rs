//! The queues' depth as the warehouse sees it: every few seconds a passive declare of the order
//! and cancel queues reports their ready messages into `warehouse_queue_messages{queue}`, so the
//! backlog shows on the warehouse's own `/metrics` (no broker metrics endpoint needed).

use common::metrics::{FloatGauge, Metrics};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the depth is asked for.
pub(super) const DEPTH_INTERVAL: Duration = Duration::from_secs(5);

/// One gauge per queue watched.
pub(crate) struct QueueDepth {
    queues: Vec<(String, FloatGauge)>,
}

impl QueueDepth {
    pub(crate) fn new(queues: &[&str], metrics: &Metrics) -> Self {
        let queues = queues
            .iter()
            .map(|queue| {
                let gauge = metrics.float_gauge(
                    "warehouse_queue_messages",
                    "Messages ready in the queue, as the warehouse last saw it (every 5 s).",
                    &[("queue", queue)],
                );
                (queue.to_string(), gauge)
            })
            .collect();
        Self { queues }
    }

    /// Polls until the session ends. A failed declare (the queue deleted under us closes the
    /// channel) is retried on a new channel at the next tick; the gauge keeps its last value.
    pub(super) async fn poll(&self, connection: &Connection, session: CancellationToken) {
        let mut channel: Option<Channel> = None;
        loop {
            if channel.as_ref().is_none_or(|c| !c.status().connected()) {
                channel = connection.create_channel().await.ok();
            }
            if let Some(open) = &channel {
                for (queue, gauge) in &self.queues {
                    let declared = open
                        .queue_declare(
                            queue.as_str().into(),
                            QueueDeclareOptions {
                                passive: true,
                                ..QueueDeclareOptions::default()
                            },
                            FieldTable::default(),
                        )
                        .await;
                    match declared {
                        Ok(queue) => gauge.set(f64::from(queue.message_count())),
                        Err(_) => break,
                    }
                }
            }
            tokio::select! {
                () = session.cancelled() => break,
                () = tokio::time::sleep(DEPTH_INTERVAL) => {}
            }
        }
        if let Some(open) = channel {
            let _ = open.close(200, "session over".into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::options::{BasicPublishOptions, QueueDeleteOptions};
    use lapin::{BasicProperties, ConnectionProperties};

    /// Against the real broker: three messages waiting in a queue show as 3 on the gauge.
    #[tokio::test]
    async fn the_gauge_shows_the_messages_waiting_in_the_queue() {
        let url = std::env::var("AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string());
        let connection = Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("RabbitMQ at AMQP_URL");
        let queue = format!("depth-test-{}", uuid::Uuid::new_v4());
        let channel = connection.create_channel().await.expect("a channel");
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare");
        for _ in 0..3 {
            channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    b"{}",
                    BasicProperties::default(),
                )
                .await
                .expect("publish")
                .await
                .expect("the broker's confirm");
        }
        let metrics = Metrics::new();
        let depth = QueueDepth::new(&[&queue], &metrics);
        let session = CancellationToken::new();
        let stop = session.clone();
        // The first poll happens at once; the session ends before the second.
        let polled = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            stop.cancel();
        });
        depth.poll(&connection, session).await;
        let _ = polled.await;
        assert_eq!(depth.queues[0].1.get(), 3.0);
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}
