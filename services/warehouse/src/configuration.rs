//! The warehouse's settings, all from environment variables with defaults: `warehouse --help`
//! lists them (it runs [`Settings::read`] itself, so the list cannot drift from the code).

use crate::batch::BatchSettings;
use common::config::{ConfigError, Env, ServiceConfig};
use common::messaging::{self, Broker, QueueType, Topology};
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
    pub broker: Broker,
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
            broker: Broker::default(),
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
    pub fn read(env: &mut Env) -> Result<Self, ConfigError> {
        let service = ServiceConfig::read(env, "warehouse", DEFAULT_PORT)?;
        let broker = Broker::read(env)?;
        let topology = Topology::read(env)?;
        let channels = env.positive(
            "WAREHOUSE_CHANNELS",
            DEFAULT_CHANNELS,
            "consumer channels on the one broker connection",
        )?;
        let prefetch = env.positive(
            "WAREHOUSE_PREFETCH",
            DEFAULT_PREFETCH,
            "unacked deliveries per channel",
        )?;
        let (reconnect_min, reconnect_max) = messaging::reconnect_backoff(env)?;
        let writers = env.positive(
            "WAREHOUSE_WRITERS",
            DEFAULT_WRITERS,
            "batch writers: ledger transactions at once (at most 64)",
        )?;
        if writers > MAX_WRITERS {
            return Err(ConfigError::new(
                "WAREHOUSE_WRITERS",
                writers.to_string(),
                "must be at most 64",
            ));
        }
        let batch_max = env.positive(
            "WAREHOUSE_BATCH_MAX",
            DEFAULT_BATCH_MAX,
            "most deliveries applied in one ledger transaction",
        )?;
        let fulfilment_delay = env.millis(
            "FULFILMENT_DELAY_MS",
            Duration::ZERO,
            "how long an order is held after it arrives before it is fulfilled (a window to \
             cancel it in demos and tests), at most 600000",
        )?;
        if fulfilment_delay > MAX_FULFILMENT_DELAY {
            return Err(ConfigError::new(
                "FULFILMENT_DELAY_MS",
                fulfilment_delay.as_millis().to_string(),
                "must be at most 600000 (held orders stay unacked, and the broker ends a consumer whose deliveries stay unacked too long)",
            ));
        }
        let unsafe_ack_on_receipt = env.flag(
            "UNSAFE_ACK_ON_RECEIPT",
            false,
            "DELIBERATELY BROKEN, for the fault campaign only: ack each delivery on arrival, \
             before the ledger has it, so a crash loses orders",
        )?;
        let store = PgConfig::read(env, "warehouse")?;
        let consumer = ConsumerSettings {
            broker,
            topology,
            channels,
            prefetch,
            connection_name: service.instance_id.clone(),
            reconnect_min,
            reconnect_max,
            batch: BatchSettings {
                writers,
                batch_max: usize::from(batch_max),
            },
            fulfilment_delay,
            unsafe_ack_on_receipt,
        };
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
