//! PostgreSQL for the services that keep state there (the catalog, the warehouse's ledger).
//!
//! Each service owns one schema of the shared database (`catalog`, `warehouse`; `DATABASE_SCHEMA`
//! overrides it) and carries its migrations inside its binary. They are applied at start; two
//! instances starting at once are safe: the schema is created under a transaction-scoped advisory
//! lock, and sqlx's migrator holds its own advisory lock while it migrates.
//!
//! The pool connects lazily and bounds every wait for a connection by `STORE_TIMEOUT_MS`, so a
//! database that goes away turns requests into a fast 503 instead of a hang, and the pool heals
//! by itself when the database comes back.

use super::{retry_until, store_timeout, StoreUnavailable};
use crate::config::{redact_url, ConfigError, Env};
use crate::secret::Secret;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use sqlx::PgPool;

/// Where the database is and how patient to be with it.
#[derive(Clone)]
pub struct PgConfig {
    /// `DATABASE_URL`, e.g. `postgres://postgres@127.0.0.1:5432/shop`.
    pub url: Secret<String>,
    /// `DATABASE_SCHEMA`: the schema this service owns.
    pub schema: String,
    /// `DATABASE_MAX_CONNECTIONS` (default 10).
    pub max_connections: u32,
    /// `STORE_TIMEOUT_MS` (default 2000): the longest a request waits for the store.
    pub timeout: Duration,
    /// `STORE_STARTUP_TIMEOUT_MS` (default 30000): how long start-up waits for the database.
    pub startup_timeout: Duration,
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &self.redacted_url())
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl PgConfig {
    /// The URL with its password masked, for logs.
    pub fn redacted_url(&self) -> String {
        redact_url(self.url.expose())
    }

    /// `None` when `DATABASE_URL` is unset: the service keeps its state in memory. The other
    /// variables are read (and checked) either way, so `--help` lists them.
    pub fn read(env: &mut Env, default_schema: &str) -> Result<Option<Self>, ConfigError> {
        let url = env.optional_url(
            "DATABASE_URL",
            &["postgres", "postgresql"],
            "PostgreSQL (postgres://user:password@host:5432/db); unset: in memory, lost on restart",
        )?;
        let schema = env.parse_with(
            "DATABASE_SCHEMA",
            default_schema.to_string(),
            default_schema,
            "the schema this service owns in the database",
            parse_schema,
        )?;
        let max_connections = env.positive(
            "DATABASE_MAX_CONNECTIONS",
            10u32,
            "connections in this instance's pool",
        )?;
        let timeout = store_timeout(env)?;
        let startup_timeout = env.millis(
            "STORE_STARTUP_TIMEOUT_MS",
            Duration::from_secs(30),
            "how long the start waits for the database before giving up",
        )?;
        Ok(url.map(|url| Self {
            url: Secret::new(url),
            schema,
            max_connections,
            timeout,
            startup_timeout,
        }))
    }

    /// A configuration for tests: a short timeout so "store down" tests are quick.
    pub fn for_tests(url: &str, schema: &str) -> Self {
        Self {
            url: Secret::new(url.to_string()),
            schema: schema.to_string(),
            max_connections: 10,
            timeout: Duration::from_secs(1),
            startup_timeout: Duration::from_secs(10),
        }
    }
}

/// A schema name goes into `CREATE SCHEMA` and `search_path`: plain lower-case identifiers only.
fn parse_schema(v: &str) -> Result<String, String> {
    let valid = v.len() <= 63
        && v.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(v.to_string())
    } else {
        Err("expected a lower-case identifier: a-z, 0-9 and _, not starting with a digit".into())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PgSetupError {
    #[error("DATABASE_URL is not a usable PostgreSQL URL ({url}): {reason}")]
    Url { url: String, reason: String },
    #[error("DATABASE_SCHEMA: {0}")]
    Schema(String),
    #[error("the migrations of schema {schema} cannot be applied: {reason} (a migration that was already applied must never be edited: add a new one)")]
    Migration { schema: String, reason: String },
    #[error("PostgreSQL at {url} was not ready within {waited:?}: {reason}")]
    Unavailable {
        url: String,
        waited: Duration,
        reason: String,
    },
}

/// Connects, creates the service's schema and applies its migrations, waiting up to
/// `startup_timeout` for the database to come up.
pub async fn connect(config: &PgConfig, migrator: &Migrator) -> Result<PgPool, PgSetupError> {
    parse_schema(&config.schema).map_err(PgSetupError::Schema)?;
    let options = PgConnectOptions::from_str(config.url.expose())
        .map_err(|e| PgSetupError::Url {
            url: config.redacted_url(),
            reason: e.to_string(),
        })?
        // Every connection of this pool works in the service's own schema.
        .options([("search_path", config.schema.as_str())]);
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.timeout)
        .connect_lazy_with(options);
    retry_until(
        "PostgreSQL",
        config.startup_timeout,
        |failure: &Prepare| matches!(failure, Prepare::Unreachable(_)),
        || prepare(&pool, &config.schema, migrator),
    )
    .await
    .map_err(|failure| match failure {
        Prepare::Unreachable(reason) => PgSetupError::Unavailable {
            url: config.redacted_url(),
            waited: config.startup_timeout,
            reason,
        },
        Prepare::Migration(reason) => PgSetupError::Migration {
            schema: config.schema.clone(),
            reason,
        },
    })?;
    Ok(pool)
}

/// Why preparing the schema failed: worth waiting for, or not.
enum Prepare {
    /// The database could not be reached or refused the connection: it may be starting.
    Unreachable(String),
    /// The migrations themselves failed (one differs from the applied one, one is missing, its
    /// SQL fails): waiting cannot fix it.
    Migration(String),
}

impl fmt::Display for Prepare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable(reason) | Self::Migration(reason) => f.write_str(reason),
        }
    }
}

async fn prepare(pool: &PgPool, schema: &str, migrator: &Migrator) -> Result<(), Prepare> {
    let unreachable = |e: sqlx::Error| Prepare::Unreachable(e.to_string());
    let mut tx = pool.begin().await.map_err(unreachable)?;
    // `CREATE SCHEMA IF NOT EXISTS` is not safe against a concurrent twin (both see "absent",
    // one fails on the catalog's unique index); the lock makes the second wait, then see it.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('shop.create_schema'))")
        .execute(&mut *tx)
        .await
        .map_err(unreachable)?;
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
        .execute(&mut *tx)
        .await
        .map_err(unreachable)?;
    tx.commit().await.map_err(unreachable)?;
    migrator.run(pool).await.map_err(|e| match e {
        // Running a migration's SQL can fail on a lost connection too; anything else is about
        // the migrations themselves.
        sqlx::migrate::MigrateError::Execute(err) if is_connection_error(&err) => {
            Prepare::Unreachable(err.to_string())
        }
        other => Prepare::Migration(other.to_string()),
    })
}

fn is_connection_error(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Protocol(_)
    )
}

/// The readiness check: one round trip through the pool.
pub async fn ping(pool: &PgPool) -> Result<(), String> {
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Maps a failed query to "the store is unavailable". Use it for errors that mean the database
/// could not be reached or answered too slowly; a constraint violation is a bug or a conflict and
/// deserves its own handling.
pub fn unavailable(err: sqlx::Error) -> StoreUnavailable {
    StoreUnavailable::new("PostgreSQL", err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(parse_schema("catalog").is_ok());
        assert!(parse_schema("t_123").is_ok());
        assert!(parse_schema("Catalog").is_err());
        assert!(parse_schema("1x").is_err());
        assert!(parse_schema("x\"; DROP").is_err());
    }
}
