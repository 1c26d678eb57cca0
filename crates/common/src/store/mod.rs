//! The stores behind the services' state, and what they share.
//!
//! - [`postgres`] (feature `postgres`): the catalog and the warehouse's ledger.
//! - [`redis`] (feature `redis`): carts and checkout state.
//!
//! A service that has no store URL configured keeps its state in memory (the embedded default for
//! a quick start and for unit tests) and says so at start; see [`StoreKind`].

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;

use crate::metrics::{LatencyHistogram, Metrics};
use crate::telemetry;
use crate::ApiError;
use dashmap::DashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `STORE_TIMEOUT_MS`, shared by the Redis and the PostgreSQL settings: one service may use both.
#[cfg(any(feature = "postgres", feature = "redis"))]
fn store_timeout(env: &mut crate::config::Env) -> Result<Duration, crate::config::ConfigError> {
    env.millis(
        "STORE_TIMEOUT_MS",
        Duration::from_secs(2),
        "the longest a request waits for the store before a 503",
    )
}

/// Where a service keeps its state, for the start-up log line and `/ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Postgres,
    Redis,
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Memory => "memory (state is lost on restart and not shared between instances)",
            Self::Postgres => "postgresql",
            Self::Redis => "redis",
        })
    }
}

/// A store call that failed because the store is unreachable or too slow. Every service maps it
/// to the same fast 503, so a client sees one error code for "the state behind this is down".
#[derive(Debug, Clone, thiserror::Error)]
#[error("{store} is unavailable: {reason}")]
pub struct StoreUnavailable {
    pub store: &'static str,
    pub reason: String,
}

impl StoreUnavailable {
    pub fn new(store: &'static str, reason: impl fmt::Display) -> Self {
        Self {
            store,
            reason: reason.to_string(),
        }
    }
}

impl From<StoreUnavailable> for ApiError {
    fn from(err: StoreUnavailable) -> Self {
        ApiError::unavailable("STORE_UNAVAILABLE", err.to_string())
            .with_details("the request changed nothing that was not saved; retry it")
    }
}

/// Runs `attempt` until it succeeds, `deadline` has passed, or it fails in a way `transient`
/// says waiting cannot fix, backing off between tries and logging each failure. Start-up uses it
/// so that a service launched together with its database (a compose file, a laptop boot) waits
/// for it instead of failing on the first try, while a real mistake (say, a migration that
/// differs from the one applied) stops the service at once with its own message.
pub async fn retry_until<T, E, F, Fut>(
    what: &str,
    deadline: Duration,
    transient: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<T, E>
where
    E: fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) if transient(&err) && started.elapsed() + backoff < deadline => {
                tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "{what} not ready yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(err) => return Err(err),
        }
    }
}

/// `store_operation_seconds`: a Redis command takes a fraction of a millisecond, a ledger batch
/// a few milliseconds, a store in trouble up to `STORE_TIMEOUT_MS` (2 s by default).
pub const STORE_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Times a store's operations into `store_operation_seconds{store,operation}` and, when traces
/// are exported, makes a span of each. The default observes nothing (a store built without
/// metrics, as in most tests).
#[derive(Clone, Default)]
pub struct StoreMetrics(Option<Arc<StoreSeries>>);

struct StoreSeries {
    metrics: Metrics,
    store: &'static str,
    /// One histogram per operation, registered on its first use.
    operations: DashMap<&'static str, LatencyHistogram>,
}

impl StoreMetrics {
    /// `store`: the label, `postgres` or `redis`.
    pub fn new(metrics: &Metrics, store: &'static str) -> Self {
        Self(Some(Arc::new(StoreSeries {
            metrics: metrics.clone(),
            store,
            operations: DashMap::new(),
        })))
    }

    /// Runs `call` as `operation`: timed (failures too: a slow failure is what an operator
    /// looks for) and, when traces are exported, in a span marked failed on an error.
    pub async fn observe<T, E>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let Some(series) = &self.0 else {
            return call.await;
        };
        let mut span = telemetry::store_span(series.store, operation);
        let started = Instant::now();
        // Not entered while the call runs (nothing inside makes spans); it ends when dropped.
        let result = call.await;
        series.histogram(operation).observe(started.elapsed());
        if result.is_err() {
            span.record_error();
        }
        result
    }
}

impl StoreSeries {
    fn histogram(&self, operation: &'static str) -> LatencyHistogram {
        if let Some(histogram) = self.operations.get(operation) {
            return histogram.clone();
        }
        self.operations
            .entry(operation)
            .or_insert_with(|| {
                self.metrics.histogram(
                    "store_operation_seconds",
                    "Store calls by store and operation, failures and timeouts included.",
                    &STORE_BUCKETS,
                    &[("store", self.store), ("operation", operation)],
                )
            })
            .clone()
    }
}
