use common::config::{ConfigError, Env, ServiceConfig};

#[derive(Debug, Clone)]
pub struct Settings {
    pub service: ServiceConfig,
    /// `DECLINE_RATE`: share of well-formed cards declined with 402 (default 0.10).
    pub decline_rate: f64,
}

impl Settings {
    pub fn read(env: &mut Env) -> Result<Self, ConfigError> {
        Ok(Self {
            service: ServiceConfig::read(env, "credit-card-authorizer", crate::DEFAULT_PORT)?,
            decline_rate: env.rate(
                "DECLINE_RATE",
                0.10,
                "share of well-formed cards declined with 402, between 0 and 1",
            )?,
        })
    }

    pub fn for_tests() -> Self {
        Self {
            service: ServiceConfig::for_tests("cca-test"),
            decline_rate: 0.10,
        }
    }
}
