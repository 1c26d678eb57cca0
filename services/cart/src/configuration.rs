use common::config::{self, ConfigError, ServiceConfig};
use common::messaging::{self, Topology};
use common::store::postgres::PgConfig;
use common::store::redis::RedisConfig;
use std::time::Duration;

/// Time left over, beyond a checkout's worst case, before its hold on a cart may be taken over.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Settings {
    pub service: ServiceConfig,
    /// `PRODUCT_URL`: where to check that a product exists.
    pub product_url: String,
    /// `CCA_URL`: the card authorizer.
    pub cca_url: String,
    /// `AMQP_URL`.
    pub amqp_url: String,
    /// `ORDER_QUEUE`, `QUEUE_TYPE`.
    pub topology: Topology,
    /// `CHANNEL_POOL_SIZE`: confirm-mode channels kept open for publishing (default 20).
    pub channel_pool_size: usize,
    /// `CHANNEL_WAIT_MS`: how long a checkout waits for a free channel before a 503 (backpressure).
    pub channel_wait: Duration,
    /// `MAX_PENDING_CONFIRMS`: orders published and awaiting the broker's confirm, at most
    /// (default 1000).
    pub max_pending_confirms: usize,
    /// `CONFIRM_TIMEOUT_MS`: how long to wait for the broker's ack (default 5 s).
    pub confirm_timeout: Duration,
    /// `AMQP_CONNECT_TIMEOUT_MS`.
    pub connect_timeout: Duration,
    /// `CCA_TIMEOUT_MS`: per attempt.
    pub cca_timeout: Duration,
    /// `CCA_RETRIES`: extra attempts on connection errors and 5xx (never on 400/402).
    pub cca_retries: u32,
    /// `PRODUCT_TIMEOUT_MS`: per attempt.
    pub product_timeout: Duration,
    /// `REDIS_URL`, `REDIS_KEY_PREFIX`, `STORE_TIMEOUT_MS`: carts in Redis; `None` (no
    /// `REDIS_URL`) keeps them in memory.
    pub store: Option<RedisConfig>,
    /// `IDEMPOTENCY_TTL_MS` (default 24 h): how long the answer to a request with an
    /// `Idempotency-Key` is kept for replay.
    pub idempotency_ttl: Duration,
    /// `CART_TTL_SECONDS` (default 7 days): a cart untouched this long is forgotten; a
    /// checked-out cart stays readable this long after its checkout.
    pub cart_ttl: Duration,
    /// `CHECKOUT_LEASE_MS`: how long a checkout holds its cart before another checkout may take
    /// it over (a process that died mid-checkout). Default: the worst case of one checkout
    /// ([`Settings::checkout_worst_case`]) plus 5 s.
    pub checkout_lease: Duration,
    /// `DATABASE_URL` (+ `DATABASE_SCHEMA`, default `orders`): orders in PostgreSQL; `None`
    /// keeps them in memory. Needs `REDIS_URL`: order ids come from the cart store's counter,
    /// and only Redis's counter is shared by every instance and survives a restart.
    pub orders_db: Option<PgConfig>,
    /// `RESERVE_STOCK` (default true): reserve the cart's items at the product service before
    /// the card is authorized. Off only to measure what reserving costs.
    pub reserve_stock: bool,
    /// `PENDING_ORDER_TIMEOUT_MS` (default 30 s): an order whose publish's fate was unknown and
    /// that the warehouse has not reported after this long is withdrawn (a cancel is published).
    pub pending_order_timeout: Duration,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let channel_pool_size = config::positive("CHANNEL_POOL_SIZE", 20usize)?;
        let cca_retries = config::var("CCA_RETRIES", 2u32)?;
        if cca_retries > 10 {
            return Err(ConfigError::new(
                "CCA_RETRIES",
                cca_retries.to_string(),
                "at most 10",
            ));
        }
        let mut settings = Self {
            service: ServiceConfig::from_env("cart", crate::DEFAULT_PORT)?,
            product_url: config::base_url("PRODUCT_URL", "http://127.0.0.1:8081")?,
            cca_url: config::base_url("CCA_URL", "http://127.0.0.1:8083")?,
            amqp_url: messaging::amqp_url_from_env()?,
            topology: Topology::from_env()?,
            channel_pool_size,
            channel_wait: config::millis("CHANNEL_WAIT_MS", Duration::from_millis(1000))?,
            max_pending_confirms: config::positive("MAX_PENDING_CONFIRMS", 1000usize)?,
            confirm_timeout: config::millis("CONFIRM_TIMEOUT_MS", Duration::from_secs(5))?,
            connect_timeout: config::millis("AMQP_CONNECT_TIMEOUT_MS", Duration::from_secs(3))?,
            cca_timeout: config::millis("CCA_TIMEOUT_MS", Duration::from_secs(2))?,
            cca_retries,
            product_timeout: config::millis("PRODUCT_TIMEOUT_MS", Duration::from_secs(2))?,
            store: RedisConfig::from_env()?,
            idempotency_ttl: idempotency_ttl()?,
            cart_ttl: Duration::from_secs(config::positive("CART_TTL_SECONDS", 604_800u64)?),
            checkout_lease: Duration::ZERO,
            orders_db: PgConfig::from_env("orders")?,
            reserve_stock: config::flag("RESERVE_STOCK", true)?,
            pending_order_timeout: config::millis(
                "PENDING_ORDER_TIMEOUT_MS",
                Duration::from_secs(30),
            )?,
        };
        if settings.orders_db.is_some() && settings.store.is_none() {
            return Err(ConfigError::new(
                "DATABASE_URL",
                "(set)",
                "orders in PostgreSQL need carts in Redis (set REDIS_URL): order ids come from \
                 the cart store's counter, and an in-memory counter restarts at 1",
            ));
        }
        if settings.pending_order_timeout.is_zero() {
            return Err(ConfigError::new(
                "PENDING_ORDER_TIMEOUT_MS",
                "0",
                "must be at least 1",
            ));
        }
        let worst_case = settings.checkout_worst_case();
        settings.checkout_lease = config::millis("CHECKOUT_LEASE_MS", worst_case + LEASE_MARGIN)?;
        // A shorter hold could be taken over from a checkout that is still running.
        if settings.checkout_lease <= worst_case {
            return Err(ConfigError::new(
                "CHECKOUT_LEASE_MS",
                settings.checkout_lease.as_millis().to_string(),
                format!(
                    "must exceed the longest a checkout can take with these timeouts ({} ms)",
                    worst_case.as_millis()
                ),
            ));
        }
        Ok(settings)
    }

    /// The longest a new broker connection can take: every node of the list given
    /// `AMQP_CONNECT_TIMEOUT_MS` in turn.
    pub fn connect_timeout_all_nodes(&self) -> Duration {
        let nodes = messaging::amqp_urls(&self.amqp_url).count().max(1);
        self.connect_timeout * u32::try_from(nodes).unwrap_or(u32::MAX)
    }

    /// The longest one checkout can take from taking the cart to its last word: every
    /// authorizer attempt timing out with the longest backoffs between them, then waiting for a
    /// confirm slot, a channel (made on a new connection) and the broker's confirm.
    pub fn checkout_worst_case(&self) -> Duration {
        let attempts = self.cca_retries + 1;
        let backoffs: Duration = (0..self.cca_retries).map(crate::clients::backoff_cap).sum();
        let authorize = self.cca_timeout * attempts + backoffs;
        let channel =
            self.channel_wait * 2 + self.connect_timeout_all_nodes() + Duration::from_secs(1);
        authorize + channel + self.confirm_timeout
    }

    /// The lifetimes the cart store applies.
    pub fn lifetimes(&self) -> crate::carts::Lifetimes {
        crate::carts::Lifetimes {
            cart_ttl: self.cart_ttl,
            checkout_lease: self.checkout_lease,
        }
    }
}

/// `IDEMPOTENCY_TTL_MS`: at least 1 ms (0 would keep nothing and make every key useless).
fn idempotency_ttl() -> Result<Duration, ConfigError> {
    let ttl = config::millis("IDEMPOTENCY_TTL_MS", Duration::from_secs(24 * 3600))?;
    if ttl.is_zero() {
        return Err(ConfigError::new(
            "IDEMPOTENCY_TTL_MS",
            "0",
            "must be at least 1",
        ));
    }
    Ok(ttl)
}
