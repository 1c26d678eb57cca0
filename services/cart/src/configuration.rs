use common::config::{self, ConfigError, ServiceConfig};
use common::messaging::{self, Topology};
use std::time::Duration;

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
        Ok(Self {
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
        })
    }
}
