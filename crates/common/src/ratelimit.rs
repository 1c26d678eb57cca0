//! Rate limits at each service's edge: a token bucket per client, `RATE_LIMIT_RPS` requests a
//! second on average with bursts of `RATE_LIMIT_BURST`. Over the limit a request is answered 429
//! with `Retry-After` and the error body, and counted on `/metrics` (`rate_limited_total`).
//! `/health`, `/ready` and `/metrics` are never limited: health checks and scrapes come from a
//! few addresses, often.
//!
//! A client is its credential (see [`crate::auth`], which calls [`RateLimiter::take`] once it
//! knows who the request is), or its address when it has none. Behind proxies (the gateway, the ALB) every request comes from the
//! proxy's address, so with `TRUSTED_PROXY_HOPS=N` the client is the address the first trusted
//! proxy saw: the N-th entry of `X-Forwarded-For` counted from the right (each proxy appends the
//! address it was reached from). Entries further left are whatever the client sent, and are
//! never used: a client cannot pick its own bucket.

use crate::config::{ConfigError, Env};
use crate::error::ApiError;
use crate::metrics::{Counter, Metrics};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use http::StatusCode;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// How many clients' buckets are kept before the full (idle) ones are swept.
const SWEEP_AT: usize = 10_000;

/// `RATE_LIMIT_RPS`, `RATE_LIMIT_BURST`, `TRUSTED_PROXY_HOPS`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    /// Requests a second per client on average; 0 turns the limit off.
    pub rps: f64,
    /// The most requests a client may make at once after a quiet spell.
    pub burst: f64,
    /// Proxies in front of the service whose `X-Forwarded-For` entries are trusted.
    pub trusted_hops: usize,
}

impl RateLimitConfig {
    pub fn read(env: &mut Env) -> Result<Self, ConfigError> {
        let rps: f64 = env.parse_with(
            "RATE_LIMIT_RPS",
            0.0,
            "0",
            "requests a second per client (credential or address); 0: no limit",
            |v| match v.parse::<f64>() {
                Ok(n) if n.is_finite() && n >= 0.0 => Ok(n),
                _ => Err("expected a number of requests a second, 0 or more".to_string()),
            },
        )?;
        let burst: u32 = env.var(
            "RATE_LIMIT_BURST",
            0,
            "the most requests a client may make at once (0: twice RATE_LIMIT_RPS)",
        )?;
        let trusted_hops = env.var(
            "TRUSTED_PROXY_HOPS",
            0usize,
            "proxies in front of this service (gateway, ALB) whose X-Forwarded-For is trusted",
        )?;
        let burst = if burst == 0 {
            (rps * 2.0).max(1.0)
        } else {
            f64::from(burst)
        };
        Ok(Self {
            rps,
            burst,
            trusted_hops,
        })
    }

    /// No limit.
    pub fn off() -> Self {
        Self {
            rps: 0.0,
            burst: 1.0,
            trusted_hops: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.rps > 0.0
    }
}

/// Whom a bucket belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Client {
    /// A credential, by its principal's name (`key:1a2b3c4d`, `jwt:<subject>`).
    Credential(Arc<str>),
    /// A request without a (valid) credential, by the client's address.
    Address(IpAddr),
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The buckets of every client, shared by the service's requests.
#[derive(Clone)]
pub struct RateLimiter(Arc<Inner>);

struct Inner {
    config: RateLimitConfig,
    buckets: DashMap<Client, Bucket>,
    limited: Counter,
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig, metrics: &Metrics) -> Self {
        let limited = metrics.counter(
            "rate_limited_total",
            "Requests answered 429: the client was over its rate limit.",
        );
        Self(Arc::new(Inner {
            config,
            buckets: DashMap::new(),
            limited,
        }))
    }

    /// Takes a token from `client`'s bucket; when none is left, how long until one is.
    pub fn take(&self, client: &Client, now: Instant) -> Result<(), Duration> {
        let RateLimitConfig { rps, burst, .. } = self.0.config;
        let mut bucket = match self.0.buckets.get_mut(client) {
            Some(bucket) => bucket,
            None => {
                // Only a new client can grow the map, so only then is its size worth counting
                // (`len` visits every shard).
                if self.0.buckets.len() >= SWEEP_AT {
                    self.sweep(now);
                }
                self.0.buckets.entry(client.clone()).or_insert(Bucket {
                    tokens: burst,
                    updated: now,
                })
            }
        };
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rps).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rps))
        }
    }

    /// Forgets the buckets that have filled up again: a new one starts full anyway.
    fn sweep(&self, now: Instant) {
        let RateLimitConfig { rps, burst, .. } = self.0.config;
        let refill = Duration::from_secs_f64(burst / rps);
        self.0
            .buckets
            .retain(|_, bucket| now.saturating_duration_since(bucket.updated) < refill);
    }

    /// How many proxies' `X-Forwarded-For` entries are trusted.
    pub fn trusted_hops(&self) -> usize {
        self.0.config.trusted_hops
    }

    /// The answer to a request over the limit.
    pub fn refuse(&self, wait: Duration) -> Response {
        self.0.limited.inc();
        let RateLimitConfig { rps, burst, .. } = self.0.config;
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            format!(
                "this client is over its limit of {rps} requests a second (bursts of {burst}); \
                 retry after {seconds} s"
            ),
        )
        .into_response();
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
        response
    }
}

/// The client a request counts against: see the module documentation.
pub fn client_address(
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    trusted_hops: usize,
) -> Option<IpAddr> {
    if trusted_hops == 0 {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    match entries.len().checked_sub(trusted_hops) {
        Some(index) => entries[index].parse().ok().or(peer),
        // Fewer entries than trusted proxies: the request skipped one; its own address counts.
        None => peer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rps: f64, burst: f64) -> RateLimiter {
        RateLimiter::new(
            RateLimitConfig {
                rps,
                burst,
                trusted_hops: 0,
            },
            &Metrics::new(),
        )
    }

    #[test]
    fn a_bucket_allows_its_burst_then_one_request_per_refill() {
        let limiter = limiter(2.0, 3.0);
        let client = Client::Address([10, 0, 0, 1].into());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.take(&client, t0), Ok(()));
        }
        let wait = limiter.take(&client, t0).expect_err("over the burst");
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        assert_eq!(
            limiter.take(&client, t0 + Duration::from_millis(500)),
            Ok(())
        );
        assert!(limiter
            .take(&client, t0 + Duration::from_millis(500))
            .is_err());
        // Another client has a bucket of its own.
        assert_eq!(
            limiter.take(&Client::Credential("key:0123abcd".into()), t0),
            Ok(())
        );
        // A long quiet spell refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(limiter.take(&client, later), Ok(()));
        }
        assert!(limiter.take(&client, later).is_err());
    }

    #[test]
    fn the_client_is_the_address_the_first_trusted_proxy_saw() {
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", "6.6.6.6, 203.0.113.7".parse().unwrap());
        headers.append("x-forwarded-for", "10.0.0.5".parse().unwrap());
        let peer = Some(IpAddr::from([10, 0, 0, 9]));
        // No trusted proxy: the peer; the header is the client's to forge.
        assert_eq!(client_address(&headers, peer, 0), peer);
        // Behind one proxy (the gateway): the address it appended.
        assert_eq!(
            client_address(&headers, peer, 1),
            Some([10, 0, 0, 5].into())
        );
        // Behind two (ALB, then gateway): the address the ALB saw.
        assert_eq!(
            client_address(&headers, peer, 2),
            Some([203, 0, 113, 7].into())
        );
        // Fewer entries than proxies: the request did not come through them all.
        assert_eq!(client_address(&headers, peer, 4), peer);
        assert_eq!(client_address(&HeaderMap::new(), peer, 1), peer);
    }

    #[test]
    fn the_burst_defaults_to_twice_the_rate_and_zero_turns_the_limit_off() {
        let read = |pairs: &[(&str, &str)]| {
            RateLimitConfig::read(&mut Env::from_pairs(pairs.iter().copied()))
        };
        let config = read(&[("RATE_LIMIT_RPS", "50")]).expect("valid");
        assert_eq!((config.rps, config.burst), (50.0, 100.0));
        assert!(config.enabled());
        assert!(!read(&[]).expect("valid").enabled());
        assert!(read(&[("RATE_LIMIT_RPS", "-1")]).is_err());
        assert!(read(&[("RATE_LIMIT_RPS", "NaN")]).is_err());
        let config = read(&[("RATE_LIMIT_RPS", "5"), ("RATE_LIMIT_BURST", "7")]).expect("valid");
        assert_eq!(config.burst, 7.0);
    }
}
