//! What every service of the shop shares, and nothing more.
//!
//! - [`config`]: environment variables with defaults and start-up validation; [`secret`]: a
//!   value that never prints (passwords, URLs with one inside).
//! - [`telemetry`]: tracing as text or JSON lines.
//! - [`error`] and [`extract`]: the contract's `{error, message, details?}` body for every failure,
//!   including malformed JSON and bad path ids, which axum would otherwise answer in plain text.
//! - [`http`] and [`edge`]: the layers every service wears (request id, `x-served-by`, metrics, body limit),
//!   `/health`, `/ready` and `/metrics`, and a server that drains gracefully on SIGTERM.
//! - [`messaging`] (feature `amqp`): the order message and the queue topology, declared identically
//!   by the cart and the warehouse.
//! - [`auth`]: API keys and JWTs at every service's edge, roles (admin, service, customer), 401
//!   and 403; [`ratelimit`]: a token bucket per credential or address (429 with `Retry-After`).
//! - [`store`]: PostgreSQL (feature `postgres`) and Redis (feature `redis`) connections with
//!   start-up migrations, readiness pings and the one "store unavailable" 503.
//! - `testing` (feature `test-support`): a database and a Redis key prefix per test, and a TCP
//!   proxy that cuts a dependency away under a running service.

pub mod auth;
pub mod card;
pub mod config;
pub mod edge;
pub mod error;
pub mod extract;
pub mod healthcheck;
pub mod http;
pub mod metrics;
pub mod ratelimit;
pub mod secret;
pub mod shutdown;
pub mod store;
pub mod telemetry;
#[cfg(feature = "test-support")]
pub mod testing;

#[cfg(feature = "amqp")]
pub mod messaging;

pub use error::{ApiError, ErrorBody};
pub use extract::{ApiJson, PathId, RequestId};
