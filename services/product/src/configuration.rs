use common::config::{ConfigError, Env, ServiceConfig};
use common::messaging::{self, Broker, QueueType, Topology};
use common::store::postgres::PgConfig;
use std::time::Duration;

/// Upper bound for `SEED_PRODUCTS`: a typo must not eat the machine's memory.
const MAX_SEED: u32 = 5_000_000;

/// Default for `CATALOG_CACHE_CAPACITY`: about 20 MB of rendered products.
const DEFAULT_CACHE_CAPACITY: usize = 100_000;

/// Default for `SEED_STOCK`: plenty for a load test, so the demo never runs dry by accident.
pub const DEFAULT_SEED_STOCK: i64 = 1_000_000;

/// Default for `RESERVATION_TTL_MS`: ten minutes, far above a checkout's worst case (the card
/// authorization and the publish are bounded by seconds) and short enough to return the stock of
/// a checkout that died half-way the same hour.
pub const DEFAULT_RESERVATION_TTL: Duration = Duration::from_secs(600);

/// Unacked event messages the consumer may hold. It applies them one at a time; the prefetch
/// only saves a round trip to the broker between them.
const EVENTS_PREFETCH: u16 = 16;

/// How the product service consumes the warehouse's outcome events.
#[derive(Debug, Clone)]
pub struct EventSettings {
    pub broker: Broker,
    /// Names only `stock_events_queue` is consumed; the rest is declared (idempotently) so the
    /// queue is bound to the events exchange whoever starts first.
    pub topology: Topology,
    pub prefetch: u16,
    /// The connection name the broker shows.
    pub connection_name: String,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl EventSettings {
    /// The local broker, the given order queue's topology, quick reconnects (tests).
    pub fn local(queue: &str) -> Self {
        Self {
            broker: Broker::default(),
            topology: Topology::new(queue, QueueType::Classic),
            prefetch: EVENTS_PREFETCH,
            connection_name: format!("product-{queue}"),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub service: ServiceConfig,
    /// `FAILURE_RATE`: share of catalog requests answered 503 on purpose (0 = a good instance).
    pub failure_rate: f64,
    /// `SEED_PRODUCTS`: demo products with ids 1..=N created at start.
    pub seed_products: u32,
    /// `SEED_STOCK`: the stock seeded products get, and products created without
    /// `quantity_on_hand`.
    pub seed_stock: i64,
    /// `RESERVATION_TTL_MS`: how long a reservation may stay `held` (not confirmed) before the
    /// sweeper gives its stock back.
    pub reservation_ttl: Duration,
    /// `DATABASE_URL` and friends: the catalog on PostgreSQL; `None` keeps it in memory.
    pub store: Option<PgConfig>,
    /// `CATALOG_CACHE_CAPACITY`: how many found products an instance keeps in front of
    /// PostgreSQL (0 = none). Unused by the memory store, which is all cache.
    pub cache_capacity: usize,
    /// `AMQP_URL`, `ORDER_QUEUE`, `QUEUE_TYPE`, `RECONNECT_MIN_MS`, `RECONNECT_MAX_MS`: the
    /// fulfilment events consumer. `None` runs without it (tests of the HTTP side).
    pub events: Option<EventSettings>,
}

impl Settings {
    pub fn read(env: &mut Env) -> Result<Self, ConfigError> {
        let service = ServiceConfig::read(env, "product", crate::DEFAULT_PORT)?;
        let failure_rate = env.rate(
            "FAILURE_RATE",
            0.0,
            "share of catalog requests answered 503 on purpose while /health stays green \
             (a bad instance, for the load balancer's anomaly mitigation); 0 = a good instance",
        )?;
        let seed_products = env.var(
            "SEED_PRODUCTS",
            0u32,
            "demo products with ids 1..=N created at start (at most 5000000)",
        )?;
        if seed_products > MAX_SEED {
            return Err(ConfigError::new(
                "SEED_PRODUCTS",
                seed_products.to_string(),
                format!("at most {MAX_SEED}"),
            ));
        }
        let seed_stock = env.var(
            "SEED_STOCK",
            DEFAULT_SEED_STOCK,
            "stock of seeded products, and of products created without quantity_on_hand",
        )?;
        crate::stock::check_initial_stock(seed_stock)
            .map_err(|reason| ConfigError::new("SEED_STOCK", seed_stock.to_string(), reason))?;
        let reservation_ttl = env.positive_millis(
            "RESERVATION_TTL_MS",
            DEFAULT_RESERVATION_TTL,
            "a reservation not confirmed this long gives its stock back",
        )?;
        let store = PgConfig::read(env, "catalog")?;
        let cache_capacity = env.var(
            "CATALOG_CACHE_CAPACITY",
            DEFAULT_CACHE_CAPACITY,
            "found products kept in front of PostgreSQL (0 = none)",
        )?;
        let broker = Broker::read(env)?;
        let topology = Topology::read(env)?;
        let (reconnect_min, reconnect_max) = messaging::reconnect_backoff(env)?;
        let events = EventSettings {
            broker,
            topology,
            prefetch: EVENTS_PREFETCH,
            connection_name: service.instance_id.clone(),
            reconnect_min,
            reconnect_max,
        };
        Ok(Self {
            service,
            failure_rate,
            seed_products,
            seed_stock,
            reservation_ttl,
            store,
            cache_capacity,
            events: Some(events),
        })
    }

    /// The in-memory catalog, an ephemeral port, nothing seeded, no events consumer.
    pub fn for_tests() -> Self {
        Self {
            service: ServiceConfig::for_tests("product-test"),
            failure_rate: 0.0,
            seed_products: 0,
            seed_stock: DEFAULT_SEED_STOCK,
            reservation_ttl: DEFAULT_RESERVATION_TTL,
            store: None,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            events: None,
        }
    }

    /// The same, with the catalog on PostgreSQL.
    pub fn with_store(mut self, store: PgConfig) -> Self {
        self.store = Some(store);
        self
    }
}
