//! The gateway's settings, all from environment variables (see the README for the table).

use common::config::{ConfigError, Env, ServiceConfig};
use http::uri::Authority;
use std::time::Duration;

/// One upstream target: `http://host:port`, kept both as written (for `/gateway/targets`) and as
/// the authority the proxy puts into the upstream URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUrl {
    pub url: String,
    pub authority: Authority,
}

impl TargetUrl {
    /// Parses `http://host[:port][/]`. No path (the ALB forwards the request's own path), no TLS.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let rest = raw
            .strip_prefix("http://")
            .ok_or_else(|| format!("{raw:?}: expected http://host:port (no TLS to targets)"))?;
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return Err(format!("{raw:?}: expected http://host:port without a path"));
        }
        let authority: Authority = rest
            .parse()
            .map_err(|e| format!("{raw:?}: not a valid host:port ({e})"))?;
        Ok(Self {
            url: format!("http://{authority}"),
            authority,
        })
    }
}

/// A comma-separated list of target URLs; at least one.
pub fn parse_targets(v: &str) -> Result<Vec<TargetUrl>, String> {
    let targets = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(TargetUrl::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if targets.is_empty() {
        return Err("expected at least one http://host:port".to_string());
    }
    Ok(targets)
}

fn targets(
    env: &mut Env,
    name: &'static str,
    default: &str,
    help: &'static str,
) -> Result<Vec<TargetUrl>, ConfigError> {
    let fallback =
        parse_targets(default).map_err(|reason| ConfigError::new(name, default, reason))?;
    env.parse_with(name, fallback, default, help, parse_targets)
}

fn f64_in(
    env: &mut Env,
    name: &'static str,
    default: f64,
    (min, max): (f64, f64),
    help: &'static str,
) -> Result<f64, ConfigError> {
    let v: f64 = env.var(name, default, help)?;
    if !(min..=max).contains(&v) {
        return Err(ConfigError::new(
            name,
            v.to_string(),
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(v)
}

/// Active health checks, as on an ALB target group.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    /// `HEALTH_PATH` (default `/health`).
    pub path: String,
    /// `HEALTH_INTERVAL_MS` (default 2000).
    pub interval: Duration,
    /// `HEALTH_TIMEOUT_MS` (default 1000).
    pub timeout: Duration,
    /// `HEALTHY_THRESHOLD`: consecutive passes that bring an unhealthy target back (default 2).
    pub healthy_threshold: u32,
    /// `UNHEALTHY_THRESHOLD`: consecutive failures that take a healthy target out (default 2).
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            path: "/health".to_string(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        }
    }
}

impl HealthCheckConfig {
    fn read(env: &mut Env) -> Result<Self, ConfigError> {
        let d = Self::default();
        let health = Self {
            path: env.string("HEALTH_PATH", &d.path, "the path health checks ask for"),
            interval: env.positive_millis(
                "HEALTH_INTERVAL_MS",
                d.interval,
                "time between two health checks of a target",
            )?,
            timeout: env.positive_millis(
                "HEALTH_TIMEOUT_MS",
                d.timeout,
                "a health check not answered in this time failed",
            )?,
            healthy_threshold: env.positive(
                "HEALTHY_THRESHOLD",
                d.healthy_threshold,
                "consecutive passes that bring an unhealthy target back",
            )?,
            unhealthy_threshold: env.positive(
                "UNHEALTHY_THRESHOLD",
                d.unhealthy_threshold,
                "consecutive failures that take a healthy target out",
            )?,
        };
        if !health.path.starts_with('/') {
            return Err(ConfigError::new(
                "HEALTH_PATH",
                health.path,
                "must start with /",
            ));
        }
        Ok(health)
    }
}

/// Automatic target weights (the ALB's "weighted random with anomaly mitigation").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AtwConfig {
    /// `ATW_ENABLED` (default true). Off: plain weighted random with all weights 1.0.
    pub enabled: bool,
    /// `ATW_TICK_MS`: how often weights are re-evaluated, and the width of one window bucket
    /// (default 1000).
    pub tick: Duration,
    /// `ATW_WINDOW_TICKS`: how many buckets the sliding window holds (default 30, i.e. 30 s).
    pub window_ticks: usize,
    /// `ATW_MIN_REQUESTS`: fewer responses than this in a target's window → no verdict (default 20).
    pub min_requests: u64,
    /// `ATW_MARGIN`: the error rate must exceed the peers' median by at least this much (default 0.05).
    pub margin: f64,
    /// `ATW_RATIO`: … and be at least this many times the peers' median (default 2.0).
    pub ratio: f64,
    /// `ATW_STEP_DOWN`: factor applied to an anomalous target's weight each tick (default 0.5).
    pub step_down: f64,
    /// `ATW_FLOOR`: the lowest weight (never 0: the target is never deregistered) (default 0.02).
    pub floor: f64,
    /// `ATW_RECOVERY`: factor applied to a non-anomalous target's reduced weight each tick, capped
    /// at 1.0 (default 1.5).
    pub recovery: f64,
}

impl Default for AtwConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tick: Duration::from_secs(1),
            window_ticks: 30,
            min_requests: 20,
            margin: 0.05,
            ratio: 2.0,
            step_down: 0.5,
            floor: 0.02,
            recovery: 1.5,
        }
    }
}

impl AtwConfig {
    fn read(env: &mut Env) -> Result<Self, ConfigError> {
        let d = Self::default();
        Ok(Self {
            enabled: env.flag(
                "ATW_ENABLED",
                d.enabled,
                "automatic target weights; off: plain weighted random, all weights 1",
            )?,
            tick: env.positive_millis(
                "ATW_TICK_MS",
                d.tick,
                "how often weights are re-evaluated (one window bucket)",
            )?,
            window_ticks: env.positive(
                "ATW_WINDOW_TICKS",
                d.window_ticks,
                "buckets in the sliding window of answers",
            )?,
            min_requests: env.var(
                "ATW_MIN_REQUESTS",
                d.min_requests,
                "fewer answers than this in a target's window: no verdict",
            )?,
            margin: f64_in(
                env,
                "ATW_MARGIN",
                d.margin,
                (0.0, 1.0),
                "an anomalous error rate exceeds the peers' median by at least this",
            )?,
            ratio: f64_in(
                env,
                "ATW_RATIO",
                d.ratio,
                (1.0, 1000.0),
                "... and is at least this many times the peers' median",
            )?,
            step_down: f64_in(
                env,
                "ATW_STEP_DOWN",
                d.step_down,
                (0.01, 0.99),
                "factor on an anomalous target's weight each tick",
            )?,
            floor: f64_in(
                env,
                "ATW_FLOOR",
                d.floor,
                (0.001, 1.0),
                "the lowest weight (never 0: a target is never deregistered)",
            )?,
            recovery: f64_in(
                env,
                "ATW_RECOVERY",
                d.recovery,
                (1.01, 100.0),
                "factor on a recovering target's reduced weight each tick, up to 1",
            )?,
        })
    }
}

/// The gateway's port, as the ALB's listener.
pub const DEFAULT_PORT: u16 = 8080;

/// Far above what the services behind the gateway serve at once, far below the 1M file descriptors
/// a container gets: a flood of idle connections cannot exhaust the process.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub service: ServiceConfig,
    /// `PRODUCT_TARGETS` (default `http://127.0.0.1:8081`): the `/product*` target group.
    pub product_targets: Vec<TargetUrl>,
    /// `CART_TARGETS` (default `http://127.0.0.1:8082`): the `/shopping-cart*`, `/orders*` and
    /// `/customers*` target group.
    pub cart_targets: Vec<TargetUrl>,
    /// `CCA_TARGETS` (default `http://127.0.0.1:8083`): `/credit-card-authorizer*`, only routed
    /// when `EXPOSE_CCA=true`.
    pub cca_targets: Vec<TargetUrl>,
    /// `EXPOSE_CCA` (default false): the authorizer is internal, as behind the ALB.
    pub expose_cca: bool,
    /// `UPSTREAM_TIMEOUT_MS` (default 10000): time to the upstream's response head, else 504.
    pub upstream_timeout: Duration,
    /// `CONNECT_TIMEOUT_MS` (default 1000): TCP connect to a target, else 502.
    pub connect_timeout: Duration,
    /// `HEADER_TIMEOUT_MS` (default 30000): from a request head's first byte to its last, else
    /// 408 and the connection closes, so a client trickling a head cannot hold a connection.
    pub header_timeout: Duration,
    /// `MAX_CONNECTIONS` (default 10000): client connections served at once; at the cap the
    /// gateway stops accepting (new clients wait in the listen backlog) until one closes.
    pub max_connections: usize,
    pub health: HealthCheckConfig,
    pub atw: AtwConfig,
}

impl GatewayConfig {
    pub fn read(env: &mut Env) -> Result<Self, ConfigError> {
        let service = ServiceConfig::read(env, "gateway", DEFAULT_PORT)?;
        let product_targets = targets(
            env,
            "PRODUCT_TARGETS",
            "http://127.0.0.1:8081",
            "the /product* target group: comma-separated http://host:port",
        )?;
        let cart_targets = targets(
            env,
            "CART_TARGETS",
            "http://127.0.0.1:8082",
            "the /shopping-cart*, /orders* and /customers* target group",
        )?;
        let cca_targets = targets(
            env,
            "CCA_TARGETS",
            "http://127.0.0.1:8083",
            "the /credit-card-authorizer* target group (routed only with EXPOSE_CCA)",
        )?;
        let expose_cca = env.flag(
            "EXPOSE_CCA",
            false,
            "route the card authorizer (internal by default, as behind the ALB)",
        )?;
        let upstream_timeout = env.positive_millis(
            "UPSTREAM_TIMEOUT_MS",
            Duration::from_secs(10),
            "time to the upstream's response head, else 504",
        )?;
        let connect_timeout = env.positive_millis(
            "CONNECT_TIMEOUT_MS",
            Duration::from_secs(1),
            "TCP connect to a target, else 502",
        )?;
        let header_timeout = env.positive_millis(
            "HEADER_TIMEOUT_MS",
            Duration::from_secs(30),
            "from a request head's first byte to its last, else 408",
        )?;
        let max_connections = env.positive(
            "MAX_CONNECTIONS",
            DEFAULT_MAX_CONNECTIONS,
            "client connections served at once; at the cap new ones wait in the listen backlog",
        )?;
        Ok(Self {
            service,
            product_targets,
            cart_targets,
            cca_targets,
            expose_cca,
            upstream_timeout,
            connect_timeout,
            header_timeout,
            max_connections,
            health: HealthCheckConfig::read(env)?,
            atw: AtwConfig::read(env)?,
        })
    }

    /// A configuration for tests: ephemeral port, the given targets, fast health checks.
    pub fn for_tests(product: &[String], cart: &[String], cca: &[String]) -> Result<Self, String> {
        let list = |urls: &[String]| parse_targets(&urls.join(","));
        Ok(Self {
            service: ServiceConfig::for_tests("gateway-test"),
            product_targets: list(product)?,
            cart_targets: list(cart)?,
            cca_targets: list(cca)?,
            expose_cca: false,
            upstream_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_millis(500),
            header_timeout: Duration::from_secs(30),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            health: HealthCheckConfig {
                interval: Duration::from_millis(100),
                timeout: Duration::from_millis(500),
                ..HealthCheckConfig::default()
            },
            atw: AtwConfig::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls_are_checked_and_normalised() {
        let t = TargetUrl::parse("http://product-1:8081/").expect("valid");
        assert_eq!(t.url, "http://product-1:8081");
        assert_eq!(t.authority.as_str(), "product-1:8081");
        assert!(TargetUrl::parse("https://x:1").is_err());
        assert!(TargetUrl::parse("http://x:1/api").is_err());
        assert!(TargetUrl::parse("x:1").is_err());
        assert!(TargetUrl::parse("http://").is_err());
    }

    #[test]
    fn target_lists_split_on_commas() {
        let ts = parse_targets("http://a:1, http://b:2,,").expect("valid");
        assert_eq!(ts.len(), 2);
        assert_eq!(ts[1].url, "http://b:2");
        assert!(parse_targets(" , ").is_err());
        assert!(parse_targets("http://a:1,ftp://b").is_err());
    }
}
