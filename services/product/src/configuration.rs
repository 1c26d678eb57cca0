use common::config::{self, ConfigError, ServiceConfig};

/// Upper bound for `SEED_PRODUCTS`: a typo must not eat the machine's memory.
const MAX_SEED: u32 = 5_000_000;

#[derive(Debug, Clone)]
pub struct Settings {
    pub service: ServiceConfig,
    /// `FAILURE_RATE`: share of catalog requests answered 503 on purpose (0 = a good instance).
    pub failure_rate: f64,
    /// `SEED_PRODUCTS`: demo products with ids 1..=N created at start.
    pub seed_products: u32,
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
        })
    }

    pub fn for_tests() -> Self {
        Self {
            service: ServiceConfig::for_tests("product-test"),
            failure_rate: 0.0,
            seed_products: 0,
        }
    }
}
