//! The order message and the queue topology, defined once for the cart (publisher) and the
//! warehouse (consumer) so the two can never disagree about names, arguments or shape.

use crate::config::{self, ConfigError, Env};
use crate::secret::Secret;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const ORDER_QUEUE: &str = "order_queue";

/// The largest AMQP frame the services negotiate, unless `AMQP_URL` sets `frame_max` itself.
///
/// lapin keeps a send and a receive buffer of 32 frames per connection and zero-fills them, so
/// at RabbitMQ's default of 128 KiB per frame every connection costs 8 MiB of resident memory
/// (half of the cart's idle footprint). An order is a few hundred bytes and travels in one frame
/// of this size; a larger message is split into several body frames, as AMQP intends.
pub const FRAME_MAX: u32 = 16 * 1024;

/// The broker as a service reaches it: `AMQP_URL`'s nodes, held as a [`Secret`] since their
/// URLs carry passwords (printed only masked), and `AMQP_CA_FILE`'s certificate authorities,
/// trusted for `amqps://` besides the system's own (a private CA, or a test's throwaway one).
#[derive(Clone)]
pub struct Broker {
    urls: Secret<String>,
    ca_pem: Option<Arc<str>>,
}

impl Broker {
    /// `AMQP_URL`: one broker URL, or several separated by commas (the nodes of a cluster, tried
    /// in turn by [`connect`]), each checked to be an `amqp://` or `amqps://` URL, with
    /// [`FRAME_MAX`] added to each (the default too); `AMQP_CA_FILE`: read and checked at start.
    pub fn read(env: &mut Env) -> Result<Self, ConfigError> {
        let urls = env.secret_with(
            "AMQP_URL",
            with_frame_max(DEFAULT_AMQP_URL),
            DEFAULT_AMQP_URL,
            "the broker: an amqp:// or amqps:// URL, or a comma-separated list of a cluster's nodes",
            parse_amqp_urls,
            redact_amqp_urls,
        )?;
        let ca_pem = env.parse_with(
            "AMQP_CA_FILE",
            None,
            "",
            "a PEM file of certificate authorities to trust for amqps://, besides the system's",
            |path| read_ca_file(path).map(Some),
        )?;
        Ok(Self {
            urls,
            ca_pem: ca_pem.map(Arc::from),
        })
    }

    /// A node list as `AMQP_URL` takes it, for tests and benchmarks.
    pub fn parse(list: &str) -> Result<Self, String> {
        Ok(Self {
            urls: Secret::new(parse_amqp_urls(list)?),
            ca_pem: None,
        })
    }

    /// The same nodes, trusting the certificate authorities in `pem` for `amqps://`.
    pub fn with_ca_pem(mut self, pem: impl Into<Arc<str>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// The nodes' URLs, passwords included: for connecting, never for printing.
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        amqp_urls(self.urls.expose())
    }

    pub fn nodes(&self) -> usize {
        self.urls().count()
    }

    /// The node list with every password masked, for logs.
    pub fn redacted(&self) -> String {
        redact_amqp_urls(self.urls.expose())
    }
}

impl Default for Broker {
    fn default() -> Self {
        Self {
            urls: Secret::new(with_frame_max(DEFAULT_AMQP_URL)),
            ca_pem: None,
        }
    }
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("urls", &self.redacted())
            .field("extra_ca", &self.ca_pem.is_some())
            .finish()
    }
}

/// The contents of `AMQP_CA_FILE`, checked to hold at least one PEM certificate.
fn read_ca_file(path: &str) -> Result<String, String> {
    let pem = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("{path} holds no PEM certificate"));
    }
    Ok(pem)
}

/// `RECONNECT_MIN_MS` and `RECONNECT_MAX_MS`: the bounds of a consumer's reconnect backoff.
pub fn reconnect_backoff(env: &mut Env) -> Result<(Duration, Duration), ConfigError> {
    let min = env.positive_millis(
        "RECONNECT_MIN_MS",
        Duration::from_millis(200),
        "a consumer's first wait before reconnecting to the broker",
    )?;
    let max = env.millis(
        "RECONNECT_MAX_MS",
        Duration::from_secs(10),
        "its longest wait (the wait doubles up to it)",
    )?;
    if max < min {
        return Err(ConfigError::new(
            "RECONNECT_MAX_MS",
            max.as_millis().to_string(),
            "must not be below RECONNECT_MIN_MS",
        ));
    }
    Ok((min, max))
}

/// A comma-separated list of AMQP URLs, each with [`FRAME_MAX`] added; spaces around the commas
/// are allowed, empty entries are not.
pub fn parse_amqp_urls(list: &str) -> Result<String, String> {
    let urls: Result<Vec<String>, String> = list
        .split(',')
        .map(|url| match url.trim() {
            "" => Err("an empty entry in the list of AMQP URLs".to_string()),
            url => config::parse_amqp_url(url).map(|url| with_frame_max(&url)),
        })
        .collect();
    Ok(urls?.join(","))
}

/// The URLs of a list from [`parse_amqp_urls`].
pub fn amqp_urls(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|url| !url.is_empty())
}

/// A list of AMQP URLs with every password masked, for logs.
pub fn redact_amqp_urls(list: &str) -> String {
    amqp_urls(list)
        .map(redact_url)
        .collect::<Vec<_>>()
        .join(",")
}

/// No node of the list accepted a connection; says why for each, passwords masked.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot connect to the broker: {0}")]
pub struct AmqpConnectError(String);

/// How long a connection attempt to one broker node may take, for the consumers: a node cut off
/// from the network would otherwise hang for the operating system's TCP timeout before the next
/// node is tried. (The cart's publisher has its own, `AMQP_CONNECT_TIMEOUT_MS`, since a checkout
/// waits on it.)
pub const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which node of the list [`connect`] tries first: the last one that accepted a connection.
/// Starts at the process id's turn, so the instances of a service spread over a cluster's nodes.
static PREFERRED_NODE: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(usize::MAX);

/// Connects to the first node of `broker` that answers, starting with the one that answered
/// last, giving each `per_node` to accept. A node that is down refuses at once; one that is cut
/// off from the network never answers, which is why each gets its own bound rather than sharing
/// one. An `amqps://` node must present a certificate the system or `AMQP_CA_FILE` trusts.
pub async fn connect(
    broker: &Broker,
    properties: lapin::ConnectionProperties,
    per_node: Duration,
) -> Result<lapin::Connection, AmqpConnectError> {
    use std::sync::atomic::Ordering;
    let urls: Vec<&str> = broker.urls().collect();
    if urls.is_empty() {
        return Err(AmqpConnectError("no AMQP URL configured".to_string()));
    }
    let preferred = match PREFERRED_NODE.load(Ordering::Relaxed) {
        usize::MAX => std::process::id() as usize,
        node => node,
    };
    let mut failures = Vec::with_capacity(urls.len());
    for turn in 0..urls.len() {
        let node = (preferred + turn) % urls.len();
        let url = urls[node];
        let attempt = connect_node(url, properties.clone(), broker.ca_pem.as_deref());
        match tokio::time::timeout(per_node, attempt).await {
            Ok(Ok(connection)) => {
                PREFERRED_NODE.store(node, Ordering::Relaxed);
                if turn > 0 {
                    tracing::info!(node = %redact_url(url), "connected to another broker node");
                }
                return Ok(connection);
            }
            Ok(Err(e)) => failures.push(format!("{}: {e}", redact_url(url))),
            Err(_) => failures.push(format!(
                "{}: no answer within {per_node:?}",
                redact_url(url)
            )),
        }
    }
    Err(AmqpConnectError(failures.join("; ")))
}

async fn connect_node(
    url: &str,
    properties: lapin::ConnectionProperties,
    ca_pem: Option<&str>,
) -> lapin::Result<lapin::Connection> {
    let tls = lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain: ca_pem.map(str::to_string),
    };
    let runtime = lapin::runtime::default_runtime()?;
    lapin::Connection::connect_with_config(url, properties, tls, runtime).await
}

/// `url` with `frame_max=`[`FRAME_MAX`] in its query, unless it already asks for a frame size.
pub fn with_frame_max(url: &str) -> String {
    match url.split_once('?') {
        Some((_, query))
            if query
                .split('&')
                .any(|pair| pair.split('=').next() == Some("frame_max")) =>
        {
            url.to_string()
        }
        Some(_) => format!("{url}&frame_max={FRAME_MAX}"),
        None => format!("{url}?frame_max={FRAME_MAX}"),
    }
}

/// Hides the password of an AMQP URL for logs (the same redaction as every store URL).
pub use crate::config::redact_url;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// A single-node durable queue: fastest, fine for one broker.
    Classic,
    /// Raft-replicated: what a multi-node broker (or Amazon MQ cluster) should use.
    Quorum,
}

impl FromStr for QueueType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "classic" => Ok(Self::Classic),
            "quorum" => Ok(Self::Quorum),
            _ => Err("expected classic or quorum".to_string()),
        }
    }
}

impl std::fmt::Display for QueueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl QueueType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        }
    }
}

/// The durable order queue, its dead-letter exchange and its dead-letter queue; the queue of
/// cancellations; and the fanout exchange on which the warehouse announces each order's outcome,
/// with one queue per service that reacts to outcomes.
///
/// A message the warehouse rejects (not a valid order) is dead-lettered to `<queue>.dlq` instead of
/// being dropped or redelivered for ever. Every name derives from the order queue's, so a test's
/// own queue brings its own cancellations and events.
///
/// Cancellations have their own queue so a cancel is never stuck behind orders the warehouse is
/// holding (`FULFILMENT_DELAY_MS`): it reaches the warehouse as soon as it is published, and the
/// warehouse's ledger decides which of the order and its cancel came first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    /// `<queue>.cancel`: cancellations, from the cart to the warehouse.
    pub cancel_queue: String,
    /// `<queue>.events` (fanout): outcome events, from the warehouse to whoever listens.
    pub events_exchange: String,
    /// `<queue>.events.orders`: the cart's copy of the events (order status).
    pub order_events_queue: String,
    /// `<queue>.events.stock`: the product service's copy of the events (reservations).
    pub stock_events_queue: String,
    pub queue_type: QueueType,
}

impl Topology {
    pub fn new(queue: &str, queue_type: QueueType) -> Self {
        Self {
            queue: queue.to_string(),
            dead_letter_exchange: format!("{queue}.dlx"),
            dead_letter_queue: format!("{queue}.dlq"),
            cancel_queue: format!("{queue}.cancel"),
            events_exchange: format!("{queue}.events"),
            order_events_queue: format!("{queue}.events.orders"),
            stock_events_queue: format!("{queue}.events.stock"),
            queue_type,
        }
    }

    /// Every queue of the topology (for tests that clean up after themselves).
    pub fn queues(&self) -> [&str; 5] {
        [
            &self.queue,
            &self.dead_letter_queue,
            &self.cancel_queue,
            &self.order_events_queue,
            &self.stock_events_queue,
        ]
    }

    /// `ORDER_QUEUE` (default `order_queue`) and `QUEUE_TYPE` (classic|quorum, default classic).
    pub fn read(env: &mut Env) -> Result<Self, ConfigError> {
        let queue = env.string(
            "ORDER_QUEUE",
            ORDER_QUEUE,
            "the order queue; the others are named after it (<queue>.dlq, .cancel, .events)",
        );
        let queue_type = env.var(
            "QUEUE_TYPE",
            QueueType::Classic,
            "classic (one broker) or quorum (a cluster: replicated queues)",
        )?;
        Ok(Self::new(&queue, queue_type))
    }

    fn queue_arguments(&self, dead_letter: bool) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString(LongString::from(self.queue_type.as_str())),
        );
        if dead_letter {
            args.insert(
                ShortString::from("x-dead-letter-exchange"),
                AMQPValue::LongString(LongString::from(self.dead_letter_exchange.as_str())),
            );
            args.insert(
                ShortString::from("x-dead-letter-routing-key"),
                AMQPValue::LongString(LongString::from(self.dead_letter_queue.as_str())),
            );
        }
        args
    }

    /// Declares everything, idempotently. A queue that already exists with other arguments (say,
    /// classic where quorum is asked for) fails with the broker's PRECONDITION_FAILED, which is
    /// the right outcome: silently using the wrong queue type would be worse.
    ///
    /// The event queues are declared by everyone, publishers included: an event published before
    /// its consumer first started is then kept, not dropped by an exchange with no queue bound.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.dead_letter_exchange.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                self.dead_letter_queue.as_str().into(),
                durable,
                self.queue_arguments(false),
            )
            .await?;
        channel
            .queue_bind(
                self.dead_letter_queue.as_str().into(),
                self.dead_letter_exchange.as_str().into(),
                self.dead_letter_queue.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for queue in [&self.queue, &self.cancel_queue] {
            channel
                .queue_declare(queue.as_str().into(), durable, self.queue_arguments(true))
                .await?;
        }
        channel
            .exchange_declare(
                self.events_exchange.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        for queue in [&self.order_events_queue, &self.stock_events_queue] {
            channel
                .queue_declare(queue.as_str().into(), durable, self.queue_arguments(true))
                .await?;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    self.events_exchange.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    pub product_id: i32,
    pub quantity: i32,
}

/// What the cart publishes for each approved checkout and the warehouse applies exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderMessage {
    /// Globally unique; also the AMQP `message_id`. The warehouse deduplicates on it.
    pub order_uid: String,
    /// The id the customer saw in the checkout response.
    pub order_id: i32,
    pub shopping_cart_id: i32,
    pub customer_id: i32,
    pub items: Vec<OrderItem>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl OrderMessage {
    /// A new order uid: random, so uids from several cart instances never collide.
    pub fn new_uid() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    /// The invariants a consumer relies on; a message that breaks one is poison.
    pub fn validate(&self) -> Result<(), String> {
        if self.order_uid.trim().is_empty() {
            return Err("order_uid is empty".to_string());
        }
        if self.order_id < 1 || self.shopping_cart_id < 1 || self.customer_id < 1 {
            return Err("order_id, shopping_cart_id and customer_id must be positive".to_string());
        }
        if self.items.is_empty() {
            return Err("the order has no items".to_string());
        }
        for item in &self.items {
            if item.product_id < 1 {
                return Err(format!("invalid product_id {}", item.product_id));
            }
            if item.quantity < 1 {
                return Err(format!(
                    "invalid quantity {} for product {}",
                    item.quantity, item.product_id
                ));
            }
        }
        Ok(())
    }

    /// Parses and validates a message body.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let order: Self = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        order.validate()?;
        Ok(order)
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Persistent, JSON, `message_id` = order uid, `x-request-id` carried for tracing.
    pub fn properties(&self, request_id: &str) -> BasicProperties {
        let mut headers = FieldTable::default();
        if !request_id.is_empty() {
            headers.insert(
                ShortString::from("x-request-id"),
                AMQPValue::LongString(LongString::from(request_id)),
            );
        }
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(self.order_uid.as_str()))
            .with_timestamp(self.created_at.unix_timestamp().max(0) as u64)
            .with_headers(headers)
    }
}

/// Why an order is being cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// `POST /orders/{id}/cancel`.
    Customer,
    /// The order's publish was never confirmed and it did not reach the warehouse in time: the
    /// cart withdraws it so its stock can be returned (unless the warehouse already has it).
    NotConfirmed,
}

/// A request to cancel an order, published by the cart to [`Topology::cancel_queue`]. The
/// warehouse records the first of an order and its cancel to arrive; the other one loses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelMessage {
    pub order_uid: String,
    pub order_id: i32,
    pub reason: CancelReason,
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
}

impl CancelMessage {
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let cancel: Self = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if cancel.order_uid.trim().is_empty() {
            return Err("order_uid is empty".to_string());
        }
        Ok(cancel)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Persistent, JSON, `message_id` = `cancel:<order uid>`.
    pub fn properties(&self, request_id: &str) -> BasicProperties {
        persistent_json(&format!("cancel:{}", self.order_uid), request_id)
    }
}

/// What became of an order, as decided by the warehouse (once, for ever).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderOutcome {
    /// The warehouse applied the order: its reservation becomes a sale.
    Fulfilled,
    /// The cancel arrived first: the order will never be fulfilled, its reservation is released.
    Cancelled,
}

/// One order's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEvent {
    pub order_uid: String,
    pub order_id: i32,
    pub outcome: OrderOutcome,
    /// Why it was cancelled (for a cancellation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<CancelReason>,
    /// The order itself when the warehouse has it (always for a fulfilment), so a listener that
    /// never recorded it (its writer died after the publish) can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<OrderMessage>,
}

/// The outcomes of one warehouse batch, published on [`Topology::events_exchange`] under
/// confirms before the batch's deliveries are acked. At least once: a redelivered order or
/// cancel is announced again with the outcome first recorded, so every listener must apply an
/// event idempotently (and an older event never undoes a newer state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEvents {
    pub events: Vec<OrderEvent>,
}

impl OrderEvents {
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Persistent, JSON, a fresh `message_id`.
    pub fn properties(&self, request_id: &str) -> BasicProperties {
        persistent_json(&uuid::Uuid::new_v4().to_string(), request_id)
    }
}

/// `amqp_publish_confirm_seconds{destination}`: from a publish to the broker's confirm (ack or
/// nack). The cart's orders and cancels, the warehouse's outcome events.
pub fn confirm_latency(
    metrics: &crate::metrics::Metrics,
    destination: &str,
) -> crate::metrics::LatencyHistogram {
    metrics.histogram(
        "amqp_publish_confirm_seconds",
        "From a publish to the broker's confirm (ack or nack), by destination queue or exchange.",
        &crate::metrics::CONFIRM_BUCKETS,
        &[("destination", destination)],
    )
}

/// Adds a span's W3C trace context (`traceparent`, `tracestate`: `telemetry::trace_fields` or
/// `LeafSpan::trace_fields`) to a message's headers, so the consumer's span continues the
/// publisher's trace. Unchanged when there are none (no traces exported).
pub fn with_trace_context(
    properties: BasicProperties,
    fields: Vec<(&'static str, String)>,
) -> BasicProperties {
    if fields.is_empty() {
        return properties;
    }
    let mut headers = properties.headers().clone().unwrap_or_default();
    for (name, value) in fields {
        headers.insert(
            ShortString::from(name),
            AMQPValue::LongString(LongString::from(value)),
        );
    }
    properties.with_headers(headers)
}

/// The trace context a message carries (empty when it has none).
pub fn trace_context(properties: &BasicProperties) -> opentelemetry::Context {
    let Some(headers) = properties.headers() else {
        return opentelemetry::Context::new();
    };
    let text = |name: &str| match headers.inner().get(name) {
        Some(AMQPValue::LongString(value)) => std::str::from_utf8(value.as_bytes()).ok(),
        _ => None,
    };
    let fields = ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|name| text(name).map(|value| (name, value)));
    crate::telemetry::context_from_fields(fields)
}

fn persistent_json(message_id: &str, request_id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    if !request_id.is_empty() {
        headers.insert(
            ShortString::from("x-request-id"),
            AMQPValue::LongString(LongString::from(request_id)),
        );
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(message_id))
        .with_timestamp(OffsetDateTime::now_utc().unix_timestamp().max(0) as u64)
        .with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_urls_is_checked_and_each_gets_the_frame_size() {
        let list = parse_amqp_urls("amqp://a:1@n1:5672/%2f, amqp://a:1@n2:5672/%2f?heartbeat=5")
            .expect("two valid URLs");
        assert_eq!(
            amqp_urls(&list).collect::<Vec<_>>(),
            [
                "amqp://a:1@n1:5672/%2f?frame_max=16384",
                "amqp://a:1@n2:5672/%2f?heartbeat=5&frame_max=16384"
            ]
        );
        assert_eq!(
            redact_amqp_urls(&list),
            "amqp://a:***@n1:5672/%2f?frame_max=16384,amqp://a:***@n2:5672/%2f?heartbeat=5&frame_max=16384"
        );
        assert!(parse_amqp_urls("amqp://n1,").is_err());
        assert!(parse_amqp_urls("amqp://n1,http://n2").is_err());
    }

    #[test]
    fn frame_max_is_added_unless_the_url_sets_one() {
        assert_eq!(
            with_frame_max("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:guest@127.0.0.1:5672/%2f?frame_max=16384"
        );
        assert_eq!(
            with_frame_max("amqps://u:p@mq.example:5671/%2f?heartbeat=30"),
            "amqps://u:p@mq.example:5671/%2f?heartbeat=30&frame_max=16384"
        );
        let own = "amqp://h/%2f?heartbeat=30&frame_max=131072";
        assert_eq!(with_frame_max(own), own);
        // A key that merely ends in frame_max is not the frame size.
        assert_eq!(
            with_frame_max("amqp://h/%2f?x_frame_max=1"),
            "amqp://h/%2f?x_frame_max=1&frame_max=16384"
        );
    }

    fn order() -> OrderMessage {
        OrderMessage {
            order_uid: OrderMessage::new_uid(),
            order_id: 7,
            shopping_cart_id: 3,
            customer_id: 9,
            items: vec![OrderItem {
                product_id: 1,
                quantity: 2,
            }],
            created_at: OffsetDateTime::now_utc(),
        }
    }

    #[test]
    fn round_trips_as_json_with_rfc3339_time() {
        let o = order();
        let json = o.to_json();
        let text = String::from_utf8_lossy(&json);
        assert!(text.contains("\"created_at\":\""), "{text}");
        assert_eq!(OrderMessage::from_json(&json), Ok(o));
    }

    #[test]
    fn rejects_poison() {
        assert!(OrderMessage::from_json(b"not json").is_err());
        assert!(OrderMessage::from_json(b"{\"order_uid\":\"x\"}").is_err());
        let mut o = order();
        o.items[0].quantity = 0;
        assert!(OrderMessage::from_json(&o.to_json()).is_err());
        let mut o = order();
        o.items.clear();
        assert!(o.validate().is_err());
    }

    #[test]
    fn topology_names_derive_from_the_queue() {
        let t = Topology::new("order_queue", QueueType::Classic);
        assert_eq!(t.dead_letter_queue, "order_queue.dlq");
        assert_eq!(t.dead_letter_exchange, "order_queue.dlx");
        assert_eq!(t.cancel_queue, "order_queue.cancel");
        assert_eq!(t.events_exchange, "order_queue.events");
        assert_eq!(t.queues().len(), 5);
    }

    #[test]
    fn events_round_trip() {
        let events = OrderEvents {
            events: vec![
                OrderEvent {
                    order_uid: "u1".into(),
                    order_id: 1,
                    outcome: OrderOutcome::Fulfilled,
                    reason: None,
                    order: Some(order()),
                },
                OrderEvent {
                    order_uid: "u2".into(),
                    order_id: 2,
                    outcome: OrderOutcome::Cancelled,
                    reason: Some(CancelReason::NotConfirmed),
                    order: None,
                },
            ],
        };
        let json = events.to_json();
        let text = String::from_utf8_lossy(&json);
        assert!(text.contains("\"outcome\":\"cancelled\""), "{text}");
        assert!(text.contains("\"reason\":\"not_confirmed\""), "{text}");
        assert_eq!(OrderEvents::from_json(&json), Ok(events));
        assert!(CancelMessage::from_json(b"{\"order_uid\":\" \",\"order_id\":1,\"reason\":\"customer\",\"requested_at\":\"2026-01-01T00:00:00Z\"}").is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("amqps://user:secret@b-1.mq.amazonaws.com:5671"),
            "amqps://user:***@b-1.mq.amazonaws.com:5671"
        );
        assert_eq!(redact_url("amqp://localhost"), "amqp://localhost");
    }
}
