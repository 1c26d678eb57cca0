use common::config::{ConfigError, Env, ServiceConfig};
use common::messaging::{Broker, Topology};
use common::secret::Secret;
use common::store::postgres::PgConfig;
use common::store::redis::RedisConfig;
use hyper::header::HeaderValue;
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
    /// `SERVICE_API_KEY`: the cart's own `X-API-Key` (role `service`) on its calls to the
    /// product service and the card authorizer; unset sends none (their `AUTH_MODE=off`).
    pub service_api_key: Option<Secret<String>>,
    /// `AMQP_URL`.
    pub broker: Broker,
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
    pub fn read(env: &mut Env) -> Result<Self, ConfigError> {
        let service = ServiceConfig::read(env, "cart", crate::DEFAULT_PORT)?;
        let calls = Calls::read(env)?;
        let broker = Broker::read(env)?;
        let topology = Topology::read(env)?;
        let publishing = Publishing::read(env)?;
        let store = RedisConfig::read(env)?;
        let idempotency_ttl = env.positive_millis(
            "IDEMPOTENCY_TTL_MS",
            Duration::from_secs(24 * 3600),
            "how long the answer to a request with an Idempotency-Key is kept for replay",
        )?;
        let cart_ttl = env.positive(
            "CART_TTL_SECONDS",
            604_800u64,
            "a cart untouched this long is forgotten (a checked-out one: this long after)",
        )?;
        let orders_db = PgConfig::read(env, "orders")?;
        let reserve_stock = env.flag(
            "RESERVE_STOCK",
            true,
            "reserve the cart's items before the card is authorized (off only to measure it)",
        )?;
        let pending_order_timeout = env.positive_millis(
            "PENDING_ORDER_TIMEOUT_MS",
            Duration::from_secs(30),
            "an order whose publish's fate was unknown and that the warehouse has not \
             reported after this long is withdrawn",
        )?;
        if orders_db.is_some() && store.is_none() {
            return Err(ConfigError::new(
                "DATABASE_URL",
                "(set)",
                "orders in PostgreSQL need carts in Redis (set REDIS_URL): order ids come from \
                 the cart store's counter, and an in-memory counter restarts at 1",
            ));
        }
        Self {
            service,
            product_url: calls.product_url,
            cca_url: calls.cca_url,
            service_api_key: calls.service_api_key,
            broker,
            topology,
            channel_pool_size: publishing.channel_pool_size,
            channel_wait: publishing.channel_wait,
            max_pending_confirms: publishing.max_pending_confirms,
            confirm_timeout: publishing.confirm_timeout,
            connect_timeout: publishing.connect_timeout,
            cca_timeout: calls.cca_timeout,
            cca_retries: calls.cca_retries,
            product_timeout: calls.product_timeout,
            store,
            idempotency_ttl,
            cart_ttl: Duration::from_secs(cart_ttl),
            checkout_lease: Duration::ZERO,
            orders_db,
            reserve_stock,
            pending_order_timeout,
        }
        .with_lease(env)
    }

    /// `CHECKOUT_LEASE_MS`, whose default and lower bound follow from the other timeouts.
    fn with_lease(mut self, env: &mut Env) -> Result<Self, ConfigError> {
        let worst_case = self.checkout_worst_case();
        self.checkout_lease = env.millis(
            "CHECKOUT_LEASE_MS",
            worst_case + LEASE_MARGIN,
            "how long a checkout holds its cart before another may take it over (default: \
             the longest one checkout can take with these timeouts, plus 5 s)",
        )?;
        // A shorter hold could be taken over from a checkout that is still running.
        if self.checkout_lease <= worst_case {
            return Err(ConfigError::new(
                "CHECKOUT_LEASE_MS",
                self.checkout_lease.as_millis().to_string(),
                format!(
                    "must exceed the longest a checkout can take with these timeouts ({} ms)",
                    worst_case.as_millis()
                ),
            ));
        }
        Ok(self)
    }

    /// The longest a new broker connection can take: every node of the list given
    /// `AMQP_CONNECT_TIMEOUT_MS` in turn.
    pub fn connect_timeout_all_nodes(&self) -> Duration {
        let nodes = self.broker.nodes().max(1);
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

/// The HTTP calls a checkout makes: where to, and how patiently.
struct Calls {
    product_url: String,
    cca_url: String,
    service_api_key: Option<Secret<String>>,
    cca_timeout: Duration,
    cca_retries: u32,
    product_timeout: Duration,
}

impl Calls {
    fn read(env: &mut Env) -> Result<Self, ConfigError> {
        let product_url = env.base_url(
            "PRODUCT_URL",
            "http://127.0.0.1:8081",
            "the product service (products checked, stock reserved)",
        )?;
        let cca_url = env.base_url("CCA_URL", "http://127.0.0.1:8083", "the card authorizer")?;
        let service_api_key = env.secret_with(
            "SERVICE_API_KEY",
            None,
            "",
            "the cart's X-API-Key (a service key) on its calls to the product service and the card authorizer",
            |v| match HeaderValue::from_str(v) {
                Ok(_) => Ok(Some(v.to_string())),
                Err(_) => Err("not a valid header value".to_string()),
            },
            |_| "[redacted]".to_string(),
        )?;
        let service_api_key = service_api_key.expose().clone().map(Secret::new);
        let cca_timeout = env.millis(
            "CCA_TIMEOUT_MS",
            Duration::from_secs(2),
            "one card authorizer attempt",
        )?;
        let cca_retries = env.var(
            "CCA_RETRIES",
            2u32,
            "extra attempts on connection errors and 5xx, never on 400/402 (at most 10)",
        )?;
        if cca_retries > 10 {
            return Err(ConfigError::new(
                "CCA_RETRIES",
                cca_retries.to_string(),
                "at most 10",
            ));
        }
        let product_timeout = env.millis(
            "PRODUCT_TIMEOUT_MS",
            Duration::from_secs(2),
            "one product service attempt",
        )?;
        Ok(Self {
            product_url,
            cca_url,
            service_api_key,
            cca_timeout,
            cca_retries,
            product_timeout,
        })
    }
}

/// How orders are published: the channel pool, its backpressure and the broker's patience.
struct Publishing {
    channel_pool_size: usize,
    channel_wait: Duration,
    max_pending_confirms: usize,
    confirm_timeout: Duration,
    connect_timeout: Duration,
}

impl Publishing {
    fn read(env: &mut Env) -> Result<Self, ConfigError> {
        Ok(Self {
            channel_pool_size: env.positive(
                "CHANNEL_POOL_SIZE",
                20usize,
                "confirm-mode channels kept open for publishing",
            )?,
            channel_wait: env.millis(
                "CHANNEL_WAIT_MS",
                Duration::from_millis(1000),
                "how long a checkout waits for a free channel or confirm slot before a 503",
            )?,
            max_pending_confirms: env.positive(
                "MAX_PENDING_CONFIRMS",
                1000usize,
                "orders published and awaiting the broker's confirm, at most",
            )?,
            confirm_timeout: env.millis(
                "CONFIRM_TIMEOUT_MS",
                Duration::from_secs(5),
                "how long a checkout waits for the broker's confirm (then: 202 pending)",
            )?,
            connect_timeout: env.millis(
                "AMQP_CONNECT_TIMEOUT_MS",
                Duration::from_secs(3),
                "connecting to one broker node, before the next of AMQP_URL's list is tried",
            )?,
        })
    }
}
