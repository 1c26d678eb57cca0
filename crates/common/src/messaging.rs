//! The order message and the queue topology, defined once for the cart (publisher) and the
//! warehouse (consumer) so the two can never disagree about names, arguments or shape.

use crate::config::{self, ConfigError};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use serde::{Deserialize, Serialize};
use std::str::FromStr;
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

/// `AMQP_URL`, checked to be an `amqp://` or `amqps://` URL, with [`FRAME_MAX`] added.
pub fn amqp_url_from_env() -> Result<String, ConfigError> {
    config::parse_with(
        "AMQP_URL",
        config::raw("AMQP_URL").as_deref(),
        DEFAULT_AMQP_URL.to_string(),
        config::parse_amqp_url,
    )
    .map(|url| with_frame_max(&url))
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

impl QueueType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        }
    }
}

/// The durable order queue, its dead-letter exchange and its dead-letter queue.
///
/// A message the warehouse rejects (not a valid order) is dead-lettered to `<queue>.dlq` instead of
/// being dropped or redelivered for ever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub queue_type: QueueType,
}

impl Topology {
    pub fn new(queue: &str, queue_type: QueueType) -> Self {
        Self {
            queue: queue.to_string(),
            dead_letter_exchange: format!("{queue}.dlx"),
            dead_letter_queue: format!("{queue}.dlq"),
            queue_type,
        }
    }

    /// `ORDER_QUEUE` (default `order_queue`) and `QUEUE_TYPE` (classic|quorum, default classic).
    pub fn from_env() -> Result<Self, ConfigError> {
        let queue = config::string("ORDER_QUEUE", ORDER_QUEUE);
        let queue_type = config::var("QUEUE_TYPE", QueueType::Classic)?;
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
        channel
            .queue_declare(
                self.queue.as_str().into(),
                durable,
                self.queue_arguments(true),
            )
            .await?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
