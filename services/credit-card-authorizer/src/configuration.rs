use common::config::{self, ConfigError, ServiceConfig};

#[derive(Debug, Clone)]
pub struct Settings {
    pub service: ServiceConfig,
    /// `DECLINE_RATE`: share of well-formed cards declined with 402 (default 0.10).
    pub decline_rate: f64,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            service: ServiceConfig::from_env("credit-card-authorizer", crate::DEFAULT_PORT)?,
            decline_rate: config::rate("DECLINE_RATE", 0.10)?,
        })
    }

    pub fn for_tests() -> Self {
        Self {
            service: ServiceConfig::for_tests("cca-test"),
            decline_rate: 0.10,
        }
    }
}
