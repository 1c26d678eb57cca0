//! Load tester for the e-commerce reference system.
//!
//! Scenarios (`checkout`, `flow`, `product`, `lifecycle`) run against a base URL (gateway or
//! ALB) with `--concurrency` workers, either as a closed model (each worker sends, awaits,
//! repeats) or an open model (`--rate`: fixed arrival rate, latency measured from the intended
//! send time).
//! The binary `loadtest` is a thin wrapper around [`run`] and [`output::write_all`].

pub mod audit;
pub mod http;
pub mod output;
pub mod reconcile;
pub mod report;
pub mod run;
pub mod stats;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, ValueEnum};

pub use report::Report;
pub use run::run;

/// Default number of iterations (the original Java tester: 200k checkouts).
pub const DEFAULT_REQUESTS: u64 = 200_000;

/// Which workload to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Untimed setup creates one cart with an item per request, then checkouts are timed.
    Checkout,
    /// Per iteration: create cart → add item → checkout (timed as a whole and per step).
    Flow,
    /// GET /products/{id} flood; tallies responses per `x-served-by` instance over time.
    Product,
    /// Per iteration: create cart → add 1–3 items → checkout (Idempotency-Key) → poll the
    /// order, cancel a share of orders and poll them until final → list the customer's orders.
    Lifecycle,
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scenario::Checkout => "checkout",
            Scenario::Flow => "flow",
            Scenario::Product => "product",
            Scenario::Lifecycle => "lifecycle",
        })
    }
}

/// Command line of the `loadtest` binary.
#[derive(Debug, Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Load tester for the e-commerce reference system",
    long_about = "Load tester for the e-commerce reference system.\n\n\
        Closed model by default (--concurrency workers, each sends and awaits); --rate R switches \
        to an open model with a fixed arrival rate where latency is measured from the intended \
        send time (coordinated-omission safe)."
)]
pub struct Cli {
    /// Scenario to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Base URL of the system under test (gateway or ALB), plain http.
    #[arg(
        long,
        env = "LOADTEST_BASE_URL",
        default_value = "http://localhost:8080"
    )]
    pub base_url: String,
    /// Iterations to run (checkout: carts prepared in setup and checked out). Default 200000;
    /// with --duration and no --requests, flow/product/lifecycle run until the time is up.
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,
    /// Concurrent workers = open connections = cap on outstanding requests.
    #[arg(long, short = 'c', default_value_t = 100)]
    pub concurrency: usize,
    /// Stop after this long (e.g. 30s, 2m, 500ms); combines with --requests (first one wins).
    #[arg(long, short = 'd', value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Open model: start this many iterations per second at fixed intervals.
    #[arg(long, short = 'r')]
    pub rate: Option<f64>,
    /// Load-generator threads (each runs its share of the workers); default: one per core.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Per-request timeout.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub timeout: Duration,
    /// Product ids 1..=N exist (seeded demo catalog); used for GETs and cart items.
    #[arg(long, default_value_t = 100)]
    pub products: u64,
    /// Credit card number sent on checkout.
    #[arg(long, default_value = "1234-5678-9012-3456")]
    pub card: String,
    /// Write summary.json, timeseries.csv and chart.png into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bar (it is also hidden when stdout is not a terminal).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Print the summary as JSON on stdout instead of the text report.
    #[arg(long)]
    pub json: bool,
    /// lifecycle: GET /orders/{id} this many times after a checkout that placed an order.
    #[arg(long, default_value_t = LifecycleConfig::DEFAULT.polls)]
    pub polls: u32,
    /// lifecycle: share of orders (0..=1, or 20%) cancelled right after their checkout, spread
    /// evenly over the iterations.
    #[arg(long, value_parser = parse_share, default_value_t = LifecycleConfig::DEFAULT.cancel_share)]
    pub cancel_share: f64,
    /// lifecycle: after a cancel, poll until the order is final, at most this many times.
    #[arg(long, default_value_t = LifecycleConfig::DEFAULT.final_polls)]
    pub final_polls: u32,
    /// lifecycle: pause before each poll (0 = none), e.g. 100ms.
    #[arg(long, value_parser = parse_pause, default_value = "100ms")]
    pub poll_interval: Duration,
    /// Write one JSON line per checkout that was sent (flow, lifecycle, checkout): t_ms,
    /// latency_us, cart, status, error, order_id, order_status. Input of chaos-reconcile.
    #[arg(long, value_name = "FILE")]
    pub audit: Option<PathBuf>,
    /// An extra header on every request, `Name: value` (repeatable): an `X-API-Key`, or an
    /// `X-Forwarded-For` that names this client to a service behind a trusted proxy.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// The `X-API-Key` sent with every request (the stack's demo keys are in
    /// `.stack/auth/`; `scripts/stack.sh up` prints them).
    #[arg(long, env = "LOADTEST_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// `Name: value` as a header.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected `Name: value`"))?;
    let (name, value) = (name.trim(), value.trim());
    hyper::header::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a header name"))?;
    hyper::header::HeaderValue::from_str(value)
        .map_err(|_| format!("{value:?} is not a header value"))?;
    Ok((name.to_string(), value.to_string()))
}

/// Settings of the `lifecycle` scenario (ignored by the others).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LifecycleConfig {
    /// Polls of `GET /orders/{id}` for an order that is not cancelled.
    pub polls: u32,
    /// Share of orders cancelled right after their checkout.
    pub cancel_share: f64,
    /// Bound on the polls after a cancel (stops earlier once the order is final).
    pub final_polls: u32,
    /// Pause before each poll: gives the warehouse time to decide, like a client's poll timer.
    #[serde(serialize_with = "serialize_ms")]
    pub poll_interval: Duration,
}

impl LifecycleConfig {
    pub const DEFAULT: LifecycleConfig = LifecycleConfig {
        polls: 2,
        cancel_share: 0.2,
        final_polls: 20,
        poll_interval: Duration::from_millis(100),
    };
    /// Upper bound on either poll count: a typo like 10000 would make one iteration hours long.
    pub const MAX_POLLS: u32 = 1000;
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig::DEFAULT
    }
}

fn serialize_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// Parse a share between 0 and 1 (`0.2`; also `20%`).
pub fn parse_share(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("invalid share {s:?} (a number between 0 and 1, e.g. 0.2, or 20%)"))?;
    if !v.is_finite() || !(0.0..=1.0).contains(&v) {
        return Err(format!("share {s:?} must be between 0 and 1"));
    }
    Ok(v)
}

/// Like [`parse_duration`], but `0` (no pause) is allowed.
pub fn parse_pause(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .parse::<f64>()
        .is_ok_and(|v| v == 0.0)
    {
        return Ok(Duration::ZERO);
    }
    parse_duration(t)
}

/// Parse `500ms`, `10s`, `2m`, `1h` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (examples: 500ms, 10s, 2m)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        u => {
            return Err(format!(
                "invalid duration unit {u:?} in {s:?} (use ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 * 7.0 {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Everything a run needs (library entry point; the CLI converts into this).
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub scenario: Scenario,
    pub base_url: String,
    pub requests: Option<u64>,
    pub concurrency: usize,
    pub duration: Option<Duration>,
    pub rate: Option<f64>,
    pub timeout: Duration,
    pub products: u64,
    pub card: String,
    pub quiet: bool,
    /// Load-generator threads (`None` = one per core, at most one per worker).
    pub threads: Option<usize>,
    /// `lifecycle` only.
    pub lifecycle: LifecycleConfig,
    /// `--audit`: the JSONL file of checkout attempts.
    pub audit: Option<PathBuf>,
    /// `--header`: extra headers on every request.
    pub headers: Vec<(String, String)>,
}

impl RunConfig {
    /// Defaults as on the command line, for `scenario` against `base_url`.
    pub fn new(scenario: Scenario, base_url: impl Into<String>) -> RunConfig {
        RunConfig {
            scenario,
            base_url: base_url.into(),
            requests: None,
            concurrency: 100,
            duration: None,
            rate: None,
            timeout: Duration::from_secs(30),
            products: 100,
            card: "1234-5678-9012-3456".into(),
            quiet: true,
            threads: None,
            lifecycle: LifecycleConfig::DEFAULT,
            audit: None,
            headers: Vec::new(),
        }
    }

    /// Number of iterations the run is bounded by (`u64::MAX` = only the duration bounds it).
    pub fn effective_requests(&self) -> u64 {
        match (self.requests, self.duration, self.scenario) {
            (Some(n), _, _) => n,
            (None, Some(_), Scenario::Flow | Scenario::Product | Scenario::Lifecycle) => u64::MAX,
            (None, _, _) => DEFAULT_REQUESTS,
        }
    }

    /// Number of load-generator threads to use.
    pub fn effective_threads(&self) -> usize {
        let n = self
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        n.clamp(1, self.concurrency.max(1))
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        if self.concurrency > 100_000 {
            bail!("--concurrency {} is unreasonably high", self.concurrency);
        }
        if let Some(r) = self.rate {
            if !r.is_finite() || r <= 0.0 {
                bail!("--rate must be a positive number of iterations per second");
            }
        }
        if self.requests == Some(0) {
            bail!("--requests must be at least 1");
        }
        if self.threads == Some(0) || self.threads.is_some_and(|t| t > 1024) {
            bail!("--threads must be between 1 and 1024");
        }
        if self.products == 0 {
            bail!("--products must be at least 1");
        }
        let l = &self.lifecycle;
        if !l.cancel_share.is_finite() || !(0.0..=1.0).contains(&l.cancel_share) {
            bail!("--cancel-share must be between 0 and 1");
        }
        if l.polls > LifecycleConfig::MAX_POLLS || l.final_polls > LifecycleConfig::MAX_POLLS {
            bail!(
                "--polls and --final-polls must be at most {}",
                LifecycleConfig::MAX_POLLS
            );
        }
        if l.poll_interval > Duration::from_secs(60) {
            bail!("--poll-interval must be at most 60s");
        }
        Ok(())
    }
}

impl From<&Cli> for RunConfig {
    fn from(c: &Cli) -> RunConfig {
        RunConfig {
            scenario: c.scenario,
            base_url: c.base_url.clone(),
            requests: c.requests,
            concurrency: c.concurrency,
            duration: c.duration,
            rate: c.rate,
            timeout: c.timeout,
            products: c.products,
            card: c.card.clone(),
            quiet: c.quiet || c.json,
            threads: c.threads,
            lifecycle: LifecycleConfig {
                polls: c.polls,
                cancel_share: c.cancel_share,
                final_polls: c.final_polls,
                poll_interval: c.poll_interval,
            },
            audit: c.audit.clone(),
            headers: c
                .headers
                .iter()
                .cloned()
                .chain(
                    c.api_key
                        .iter()
                        .map(|key| ("x-api-key".to_string(), key.clone())),
                )
                .collect(),
        }
    }
}
