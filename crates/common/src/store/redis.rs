//! Redis for the cart service's carts and checkout state.
//!
//! One multiplexed connection per instance through redis-rs's `ConnectionManager`: it connects
//! lazily (the service starts while Redis is down and says so on `/ready`), reconnects by itself
//! after a failure, and bounds each command by `STORE_TIMEOUT_MS`, so a Redis that goes away
//! turns requests into a fast 503.

use super::store_timeout;
use super::StoreUnavailable;
use crate::config::{redact_url, ConfigError, Env};
use crate::secret::Secret;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::fmt;
use std::time::Duration;

pub use redis::aio::ConnectionManager as RedisConnection;

#[derive(Clone)]
pub struct RedisConfig {
    /// `REDIS_URL`, e.g. `redis://127.0.0.1:6379/0`.
    pub url: Secret<String>,
    /// `REDIS_KEY_PREFIX` (default `shop:`): every key this service writes starts with it, so
    /// several stacks (or tests) can share one Redis.
    pub key_prefix: String,
    /// `STORE_TIMEOUT_MS` (default 2000): connect and response timeout of each command.
    pub timeout: Duration,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisConfig {
    /// The URL with its password masked, for logs.
    pub fn redacted_url(&self) -> String {
        redact_url(self.url.expose())
    }

    /// `None` when `REDIS_URL` is unset: the service keeps its state in memory. The other
    /// variables are read (and checked) either way, so `--help` lists them.
    pub fn read(env: &mut Env) -> Result<Option<Self>, ConfigError> {
        let url = env.optional_url(
            "REDIS_URL",
            &["redis", "rediss"],
            "Redis for the carts (redis:// or rediss://); unset: in memory, lost on restart",
        )?;
        let key_prefix = env.string(
            "REDIS_KEY_PREFIX",
            "shop:",
            "every Redis key this service writes starts with it",
        );
        let timeout = store_timeout(env)?;
        Ok(url.map(|url| Self {
            url: Secret::new(url),
            key_prefix,
            timeout,
        }))
    }

    pub fn for_tests(url: &str, key_prefix: &str) -> Self {
        Self {
            url: Secret::new(url.to_string()),
            key_prefix: key_prefix.to_string(),
            timeout: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("REDIS_URL is not a usable Redis URL ({url}): {reason}")]
pub struct RedisSetupError {
    pub url: String,
    pub reason: String,
}

/// A connection manager that connects on first use and reconnects after failures.
pub fn connect(config: &RedisConfig) -> Result<ConnectionManager, RedisSetupError> {
    let client =
        redis::Client::open(config.url.expose().as_str()).map_err(|e| RedisSetupError {
            url: config.redacted_url(),
            reason: e.to_string(),
        })?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.timeout))
        .set_response_timeout(Some(config.timeout))
        // Reconnect attempts happen in the background; a request never waits for more than one.
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    ConnectionManager::new_lazy_with_config(client, manager_config).map_err(|e| RedisSetupError {
        url: config.redacted_url(),
        reason: e.to_string(),
    })
}

/// The readiness check.
pub async fn ping(connection: &ConnectionManager) -> Result<(), String> {
    let mut connection = connection.clone();
    redis::cmd("PING")
        .query_async::<String>(&mut connection)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Maps a failed command to "the store is unavailable".
pub fn unavailable(err: redis::RedisError) -> StoreUnavailable {
    StoreUnavailable::new("Redis", err)
}
