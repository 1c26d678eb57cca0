//! The warehouse's settings, all from environment variables with defaults.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `PORT` | 8084 | HTTP port (`/health`, `/ready`, `/stats`, `/metrics`) |
//! | `AMQP_URL` | `amqp://guest:guest@127.0.0.1:5672/%2f` | the broker |
//! | `ORDER_QUEUE` | `order_queue` | the queue to consume (DLQ `<queue>.dlq`, cancels `<queue>.cancel`, events `<queue>.events`) |
//! | `QUEUE_TYPE` | `classic` | `classic` or `quorum` |
//! | `WAREHOUSE_CHANNELS` | 10 | consumer channels on the one connection |
//! | `WAREHOUSE_PREFETCH` | 10 | unacked deliveries per channel |
//! | `RECONNECT_MIN_MS` / `RECONNECT_MAX_MS` | 200 / 10000 | reconnect backoff bounds |
//! | `WAREHOUSE_WRITERS` | 2 | batch writers (concurrent ledger transactions) |
//! | `WAREHOUSE_BATCH_MAX` | 100 | most deliveries per batch (one transaction) |
//! | `FULFILMENT_DELAY_MS` | 0 | how long an order is held after it arrives before it may be fulfilled (a window to cancel it in demos and tests), at most 600000 |
//! | `DATABASE_URL` | unset | PostgreSQL for the ledger; unset = in memory, lost on restart |
//! | `DATABASE_SCHEMA` | `warehouse` | the schema the ledger lives in |
//! | `UNSAFE_ACK_ON_RECEIPT` | `false` | **deliberately broken, for the fault campaign only**: ack each delivery when it arrives instead of after the ledger's commit, so a crash loses orders (`scripts/chaos.sh --broken` shows the reconciliation catching it) |
//!
//! plus the common `INSTANCE_ID`, `LOG_FORMAT`, `BODY_LIMIT_BYTES`, `SHUTDOWN_TIMEOUT_MS`, and
//! the database's `DATABASE_MAX_CONNECTIONS`, `STORE_TIMEOUT_MS`, `STORE_STARTUP_TIMEOUT_MS`.

use crate::batch::BatchSettings;
use common::config::{self, ConfigError, ServiceConfig};
use common::messaging::{self, QueueType, Topology};
use common::store::postgres::PgConfig;
use std::time::Duration;

pub const DEFAULT_PORT: u16 = 8084;
pub const DEFAULT_CHANNELS: u16 = 10;
pub const DEFAULT_PREFETCH: u16 = 10;
pub const DEFAULT_WRITERS: u16 = 2;
pub const DEFAULT_BATCH_MAX: u16 = 100;
/// More concurrent transactions than this only queue up for the pool's connections.
pub const MAX_WRITERS: u16 = 64;
/// The longest `FULFILMENT_DELAY_MS`: held orders stay unacked, and RabbitMQ ends a consumer
/// whose deliveries stay unacked past its `consumer_timeout` (30 minutes by default).
pub const MAX_FULFILMENT_DELAY: Duration = Duration::from_secs(600);

/// How the consumer talks to the broker.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub amqp_url: String,
    pub topology: Topology,
    /// Number of channels, each with its own consumer.
    pub channels: u16,
    /// `basic.qos` prefetch count of every channel.
    pub prefetch: u16,
    /// The connection name the broker shows (`connection_name` client property).
    pub connection_name: String,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How deliveries are batched into the ledger.
    pub batch: BatchSettings,
    /// How long an order delivery is held after it arrived before it may be applied (zero: not
    /// held). Cancels are never held.
    pub fulfilment_delay: Duration,
    /// Acks deliveries on arrival, before the ledger has them: loses orders in a crash. Exists
    /// only to show that the fault campaign's reconciliation catches a warehouse that does this.
    pub unsafe_ack_on_receipt: bool,
}

impl ConsumerSettings {
    /// Defaults for a queue on the local broker (tests and benchmarks).
    pub fn local(queue: &str) -> Self {
        Self {
            amqp_url: messaging::with_frame_max(messaging::DEFAULT_AMQP_URL),
            topology: Topology::new(queue, QueueType::Classic),
            channels: DEFAULT_CHANNELS,
            prefetch: DEFAULT_PREFETCH,
            connection_name: format!("warehouse-{queue}"),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(10),
            batch: BatchSettings {
                writers: DEFAULT_WRITERS,
                batch_max: usize::from(DEFAULT_BATCH_MAX),
            },
            fulfilment_delay: Duration::ZERO,
            unsafe_ack_on_receipt: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub service: ServiceConfig,
    pub consumer: ConsumerSettings,
    /// The ledger's PostgreSQL; `None` keeps it in memory.
    pub store: Option<PgConfig>,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let service = ServiceConfig::from_env("warehouse", DEFAULT_PORT)?;
        let reconnect_min = config::millis("RECONNECT_MIN_MS", Duration::from_millis(200))?;
        let reconnect_max = config::millis("RECONNECT_MAX_MS", Duration::from_secs(10))?;
        if reconnect_max < reconnect_min {
            return Err(ConfigError::new(
                "RECONNECT_MAX_MS",
                reconnect_max.as_millis().to_string(),
                "must not be below RECONNECT_MIN_MS",
            ));
        }
        let writers = config::positive("WAREHOUSE_WRITERS", DEFAULT_WRITERS)?;
        if writers > MAX_WRITERS {
            return Err(ConfigError::new(
                "WAREHOUSE_WRITERS",
                writers.to_string(),
                "must be at most 64",
            ));
        }
        let fulfilment_delay = config::millis("FULFILMENT_DELAY_MS", Duration::ZERO)?;
        if fulfilment_delay > MAX_FULFILMENT_DELAY {
            return Err(ConfigError::new(
                "FULFILMENT_DELAY_MS",
                fulfilment_delay.as_millis().to_string(),
                "must be at most 600000 (held orders stay unacked, and the broker ends a consumer whose deliveries stay unacked too long)",
            ));
        }
        let consumer = ConsumerSettings {
            amqp_url: messaging::amqp_url_from_env()?,
            topology: Topology::from_env()?,
            channels: config::positive("WAREHOUSE_CHANNELS", DEFAULT_CHANNELS)?,
            prefetch: config::positive("WAREHOUSE_PREFETCH", DEFAULT_PREFETCH)?,
            connection_name: service.instance_id.clone(),
            reconnect_min,
            reconnect_max,
            batch: BatchSettings {
                writers,
                batch_max: usize::from(config::positive("WAREHOUSE_BATCH_MAX", DEFAULT_BATCH_MAX)?),
            },
            fulfilment_delay,
            unsafe_ack_on_receipt: config::flag("UNSAFE_ACK_ON_RECEIPT", false)?,
        };
        let store = PgConfig::from_env("warehouse")?;
        Ok(Self {
            service,
            consumer,
            store,
        })
    }

    /// Ephemeral HTTP port, local broker, the given queue, the ledger in memory.
    pub fn for_tests(queue: &str) -> Self {
        let instance = format!("warehouse-{queue}");
        Self {
            service: ServiceConfig::for_tests(&instance),
            consumer: ConsumerSettings::local(queue),
            store: None,
        }
    }
}
