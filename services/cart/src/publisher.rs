//! Publishing orders under publisher confirms from a pool of confirm-mode channels.
//!
//! - The connection comes from a pool of one, to the first node of `AMQP_URL`'s list that
//!   answers; it is replaced (on whichever node answers then) when it dies.
//! - Channels come from a deadpool pool of `CHANNEL_POOL_SIZE` confirm-mode channels made on that
//!   connection. A checkout borrows one, publishes, awaits the broker's confirm and returns it.
//! - A channel is borrowed only to send; confirms are awaited after it is back in the pool, so
//!   each channel pipelines many orders. `MAX_PENDING_CONFIRMS` bounds the orders awaiting a
//!   confirm; a checkout waits at most `CHANNEL_WAIT_MS` for a channel or a slot (backpressure: a
//!   503 instead of an unbounded queue of checkouts).
//! - A channel that failed is thrown away instead of returned, and the pool's recycle check drops
//!   closed ones, so the pool heals by itself after the broker or the connection comes back.

use crate::configuration::Settings;
use common::messaging::{self, AmqpConnectError, Broker, CancelMessage, OrderMessage, Topology};
use common::metrics::{Counter, LatencyHistogram, Metrics};
use common::telemetry;
use deadpool::managed::{self, Object, PoolError, RecycleError, RecycleResult, TimeoutType};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use lapin::Confirmation;
use lapin::{Channel, Connection, ConnectionProperties};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("no publishing channel became free within {0:?}")]
    Busy(Duration),
    #[error("the broker is unreachable: {0}")]
    Unreachable(String),
    #[error("the broker did not confirm within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("the broker refused the order (nack)")]
    Nacked,
    #[error("the broker could not route the order to {0} (returned)")]
    Returned(String),
    #[error("publishing failed: {0}")]
    Channel(String),
}

/// Makes the pooled connection: to the first node of `AMQP_URL`'s list that answers.
pub struct ConnectionManager {
    broker: Broker,
    name: String,
    per_node: Duration,
}

impl managed::Manager for ConnectionManager {
    type Type = Connection;
    type Error = AmqpConnectError;

    async fn create(&self) -> Result<Connection, AmqpConnectError> {
        let properties =
            ConnectionProperties::default().with_connection_name(self.name.as_str().into());
        messaging::connect(&self.broker, properties, self.per_node).await
    }

    async fn recycle(
        &self,
        connection: &mut Connection,
        _: &managed::Metrics,
    ) -> RecycleResult<AmqpConnectError> {
        if connection.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("connection is closed"))
        }
    }
}

/// Makes confirm-mode channels on the pooled connection.
pub struct ChannelManager {
    connections: managed::Pool<ConnectionManager>,
    topology: Topology,
}

impl managed::Manager for ChannelManager {
    type Type = Channel;
    type Error = lapin::Error;

    async fn create(&self) -> Result<Channel, lapin::Error> {
        let connection = self.connections.get().await.map_err(|err| {
            lapin::Error::from(lapin::ErrorKind::IOError(Arc::new(std::io::Error::other(
                err.to_string(),
            ))))
        })?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // Declaring is idempotent and cheap; doing it per new channel means a broker that lost
        // its definitions (a fresh node) gets them back before the first publish.
        self.topology.declare(&channel).await?;
        Ok(channel)
    }

    async fn recycle(
        &self,
        channel: &mut Channel,
        _: &managed::Metrics,
    ) -> RecycleResult<lapin::Error> {
        if channel.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("channel is closed"))
        }
    }
}

type ChannelPool = managed::Pool<ChannelManager>;

#[derive(Clone)]
pub struct OrderPublisher {
    channels: ChannelPool,
    queue: Arc<str>,
    cancel_queue: Arc<str>,
    wait: Duration,
    confirm_timeout: Duration,
    in_flight: Arc<Semaphore>,
    published: Counter,
    failed: Counter,
    /// `amqp_publish_confirm_seconds{destination}`: from the publish to the broker's answer.
    confirm_order: LatencyHistogram,
    confirm_cancel: LatencyHistogram,
}

impl PublishError {
    /// The message certainly did not reach a queue: nothing was sent (no channel, no slot), or
    /// the broker said so (nack, returned as unroutable). Otherwise its fate is unknown: it may
    /// be in the queue although no confirm arrived.
    pub fn certainly_not_enqueued(&self) -> bool {
        matches!(
            self,
            Self::Busy(_) | Self::Unreachable(_) | Self::Nacked | Self::Returned(_)
        )
    }
}

impl OrderPublisher {
    pub fn new(settings: &Settings, metrics: &Metrics) -> Result<Self, Box<dyn std::error::Error>> {
        let connections = managed::Pool::builder(ConnectionManager {
            broker: settings.broker.clone(),
            name: format!("cart-service {}", settings.service.instance_id),
            per_node: settings.connect_timeout,
        })
        .max_size(1)
        .create_timeout(Some(settings.connect_timeout_all_nodes()))
        .recycle_timeout(Some(Duration::from_secs(1)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()?;
        let channels = managed::Pool::builder(ChannelManager {
            connections,
            topology: settings.topology.clone(),
        })
        .max_size(settings.channel_pool_size)
        .wait_timeout(Some(settings.channel_wait))
        .create_timeout(Some(settings.connect_timeout_all_nodes()))
        .recycle_timeout(Some(Duration::from_secs(1)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()?;
        Ok(Self {
            channels,
            queue: settings.topology.queue.as_str().into(),
            cancel_queue: settings.topology.cancel_queue.as_str().into(),
            wait: settings.channel_wait,
            confirm_timeout: settings.confirm_timeout,
            in_flight: Arc::new(Semaphore::new(settings.max_pending_confirms)),
            published: metrics.counter("orders_published_total", "Orders confirmed by the broker."),
            failed: metrics.counter(
                "orders_publish_failures_total",
                "Orders the broker did not confirm (unreachable, nack, return, timeout).",
            ),
            confirm_order: messaging::confirm_latency(metrics, &settings.topology.queue),
            confirm_cancel: messaging::confirm_latency(metrics, &settings.topology.cancel_queue),
        })
    }

    async fn channel(&self) -> Result<Object<ChannelManager>, PublishError> {
        self.channels.get().await.map_err(|err| match err {
            PoolError::Timeout(TimeoutType::Wait) => PublishError::Busy(self.wait),
            PoolError::Timeout(_) => PublishError::Unreachable("connecting timed out".to_string()),
            PoolError::Backend(err) => PublishError::Unreachable(err.to_string()),
            other => PublishError::Unreachable(other.to_string()),
        })
    }

    /// Publishes one order and waits for the broker's confirm. `Ok` means the broker has taken
    /// responsibility for the (persistent) message.
    pub async fn publish(
        &self,
        order: &OrderMessage,
        request_id: &str,
    ) -> Result<(), PublishError> {
        let result = self
            .publish_once(
                &self.queue,
                &self.confirm_order,
                order.to_json(),
                order.properties(request_id),
            )
            .await;
        match &result {
            Ok(()) => self.published.inc(),
            Err(_) => self.failed.inc(),
        }
        result
    }

    /// Publishes a cancel to the cancel queue, with the same guarantees as an order.
    pub async fn publish_cancel(
        &self,
        cancel: &CancelMessage,
        request_id: &str,
    ) -> Result<(), PublishError> {
        self.publish_once(
            &self.cancel_queue,
            &self.confirm_cancel,
            cancel.to_json(),
            cancel.properties(request_id),
        )
        .await
    }

    /// One publish and its confirm, in a producer span whose context the message carries.
    async fn publish_once(
        &self,
        queue: &str,
        confirm_latency: &LatencyHistogram,
        payload: Vec<u8>,
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let mut span = telemetry::producer_span(queue);
        let properties = messaging::with_trace_context(properties, span.trace_fields());
        // Not entered meanwhile (nothing inside makes spans); it ends when dropped, after the
        // confirm.
        let result = self
            .send_confirmed(queue, confirm_latency, payload, properties)
            .await;
        if result.is_err() {
            span.record_error();
        }
        result
    }

    async fn send_confirmed(
        &self,
        queue: &str,
        confirm_latency: &LatencyHistogram,
        payload: Vec<u8>,
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        // Bound the confirms outstanding at once: past that, callers wait (briefly) and then get
        // a 503 rather than piling unconfirmed orders onto a slow broker.
        let _in_flight = tokio::time::timeout(self.wait, self.in_flight.acquire())
            .await
            .map_err(|_| PublishError::Busy(self.wait))?
            .map_err(|_| PublishError::Unreachable("the publisher is closed".to_string()))?;
        let sent = Instant::now();
        let confirm = {
            // The channel is held only while the frames are handed to it, not while the broker
            // confirms: a confirm-mode channel pipelines, so one channel carries many orders in
            // flight and the pool size bounds concurrent *sends*, not throughput.
            let channel = self.channel().await?;
            match channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &payload,
                    properties,
                )
                .await
            {
                Ok(confirm) => confirm,
                Err(err) => {
                    // The channel is broken: keep it out of the pool.
                    drop(Object::take(channel));
                    return Err(PublishError::Channel(err.to_string()));
                }
            }
        };
        // A channel that fails from here on closes, and the pool's recycle check drops it; one
        // whose confirms stall stays, and its next publishes time out too until it recovers.
        let confirmation = match tokio::time::timeout(self.confirm_timeout, confirm).await {
            Ok(Ok(confirmation)) => confirmation,
            Ok(Err(err)) => return Err(PublishError::Channel(err.to_string())),
            Err(_) => return Err(PublishError::ConfirmTimeout(self.confirm_timeout)),
        };
        confirm_latency.observe(sent.elapsed());
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(PublishError::Returned(queue.to_string())),
            Confirmation::Nack(_) => Err(PublishError::Nacked),
            Confirmation::NotRequested => Err(PublishError::Channel(
                "the channel is not in confirm mode".to_string(),
            )),
        }
    }

    /// `/ready`: can we get a working channel right now?
    pub async fn check(&self) -> Result<(), String> {
        self.channel()
            .await
            .map(drop)
            .map_err(|err| err.to_string())
    }

    /// Closes the pooled channels on shutdown.
    pub async fn close(&self) {
        self.channels.close();
    }
}
