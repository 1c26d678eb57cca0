use common::config::{self, ConfigError, ServiceConfig};
use common::store::postgres::PgConfig;

/// Upper bound for `SEED_PRODUCTS`: a typo must not eat the machine's memory.
const MAX_SEED: u32 = 5_000_000;

/// Default for `CATALOG_CACHE_CAPACITY`: about 20 MB of rendered products.
const DEFAULT_CACHE_CAPACITY: usize = 100_000;

#[derive(Debug, Clone)]
pub struct Settings {
    pub service: ServiceConfig,
    /// `FAILURE_RATE`: share of catalog requests answered 503 on purpose (0 = a good instance).
    pub failure_rate: f64,
    /// `SEED_PRODUCTS`: demo products with ids 1..=N created at start.
    pub seed_products: u32,
    /// `DATABASE_URL` and friends: the catalog on PostgreSQL; `None` keeps it in memory.
    pub store: Option<PgConfig>,
    /// `CATALOG_CACHE_CAPACITY`: how many found products an instance keeps in front of
    /// PostgreSQL (0 = none). Unused by the memory store, which is all cache.
    pub cache_capacity: usize,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let seed_products = config::var("SEED_PRODUCTS", 0u32)?;
        if seed_products > MAX_SEED {
            return Err(ConfigError::new(
                "SEED_PRODUCTS",
                seed_products.to_string(),
                format!("at most {MAX_SEED}"),
            ));
        }
        Ok(Self {
            service: ServiceConfig::from_env("product", crate::DEFAULT_PORT)?,
            failure_rate: config::rate("FAILURE_RATE", 0.0)?,
            seed_products,
            store: PgConfig::from_env("catalog")?,
            cache_capacity: config::var("CATALOG_CACHE_CAPACITY", DEFAULT_CACHE_CAPACITY)?,
        })
    }

    /// The in-memory catalog, an ephemeral port, nothing seeded.
    pub fn for_tests() -> Self {
        Self {
            service: ServiceConfig::for_tests("product-test"),
            failure_rate: 0.0,
            seed_products: 0,
            store: None,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
        }
    }

    /// The same, with the catalog on PostgreSQL.
    pub fn with_store(mut self, store: PgConfig) -> Self {
        self.store = Some(store);
        self
    }
}
