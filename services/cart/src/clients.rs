//! The cart's two synchronous dependencies: the product catalog and the card authorizer.
//!
//! Both calls have a per-attempt timeout and a bounded, jittered retry on connection errors and
//! 5xx only. A 4xx is an answer, never retried: retrying a 402 would be asking the bank again
//! until it says yes.

use crate::configuration::Settings;
use common::http::REQUEST_ID;
use common::ErrorBody;
use dashmap::DashSet;
use rand::Rng;
use reqwest::StatusCode;
use std::sync::Arc;
use std::time::Duration;

/// First retry waits up to this long; each further one doubles it.
const RETRY_BASE: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{service} unavailable: {reason}")]
pub struct Unavailable {
    pub service: &'static str,
    pub reason: String,
}

/// Full jitter: a random wait in `[0, base·2^attempt)`, so retries from many checkouts do not
/// arrive at a recovering dependency in lockstep.
fn backoff(attempt: u32) -> Duration {
    let cap = RETRY_BASE.saturating_mul(1 << attempt.min(6));
    let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(rand::rng().random_range(0..cap_ms))
}

/// Sends the request built by `make` up to `1 + retries` times; returns the first response that is
/// not a 5xx, or the last failure.
async fn send_with_retry(
    service: &'static str,
    retries: u32,
    make: impl Fn() -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, Unavailable> {
    let mut attempt = 0;
    loop {
        let failure = match make().send().await {
            Ok(resp) if !resp.status().is_server_error() => return Ok(resp),
            Ok(resp) => format!("answered {}", resp.status()),
            Err(err) if err.is_timeout() => {
                // A timed-out call may still be running; do not pile more onto a slow service.
                return Err(Unavailable {
                    service,
                    reason: "timed out".to_string(),
                });
            }
            Err(err) => format!("connection failed: {}", root_cause(&err)),
        };
        if attempt >= retries {
            return Err(Unavailable {
                service,
                reason: failure,
            });
        }
        tracing::debug!(service, attempt, %failure, "retrying");
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    }
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Asks the product service whether products exist, remembering the ones that do: products are
/// never deleted, so a positive answer is good for ever, while a negative one is not cached
/// (the product may be created a moment later).
#[derive(Clone)]
pub struct ProductCatalog {
    http: reqwest::Client,
    base: Arc<str>,
    timeout: Duration,
    known: Arc<DashSet<i32>>,
}

impl ProductCatalog {
    pub fn new(http: reqwest::Client, settings: &Settings) -> Self {
        Self {
            http,
            base: settings.product_url.as_str().into(),
            timeout: settings.product_timeout,
            known: Arc::new(DashSet::new()),
        }
    }

    pub async fn exists(&self, product_id: i32, request_id: &str) -> Result<bool, Unavailable> {
        if self.known.contains(&product_id) {
            return Ok(true);
        }
        let url = format!("{}/products/{product_id}", self.base);
        let resp = send_with_retry("product service", 2, || {
            self.http
                .get(&url)
                .timeout(self.timeout)
                .header(REQUEST_ID, request_id)
        })
        .await?;
        match resp.status() {
            StatusCode::OK => {
                self.known.insert(product_id);
                Ok(true)
            }
            StatusCode::NOT_FOUND => Ok(false),
            other => Err(Unavailable {
                service: "product service",
                reason: format!("unexpected status {other}"),
            }),
        }
    }
}

/// The authorizer's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Approved,
    /// 402, with the authorizer's error body to pass through.
    Declined(ErrorBody),
    /// 400: the authorizer disagrees with our format check. Passed through as a 400.
    Rejected(ErrorBody),
}

#[derive(Clone)]
pub struct Authorizer {
    http: reqwest::Client,
    /// Parsed once: reqwest would otherwise parse (and IDNA-check) the string on every call.
    url: reqwest::Url,
    timeout: Duration,
    retries: u32,
}

impl Authorizer {
    pub fn new(http: reqwest::Client, settings: &Settings) -> Result<Self, String> {
        Ok(Self {
            http,
            url: format!("{}/credit-card-authorizer/authorize", settings.cca_url)
                .parse()
                .map_err(|e| format!("CCA_URL: {e}"))?,
            timeout: settings.cca_timeout,
            retries: settings.cca_retries,
        })
    }

    pub async fn authorize(
        &self,
        card_number: &str,
        request_id: &str,
    ) -> Result<Verdict, Unavailable> {
        let body = serde_json::json!({ "credit_card_number": card_number });
        let resp = send_with_retry("card authorizer", self.retries, || {
            self.http
                .post(self.url.clone())
                .timeout(self.timeout)
                .header(REQUEST_ID, request_id)
                .json(&body)
        })
        .await?;
        let status = resp.status();
        match status {
            s if s.is_success() => Ok(Verdict::Approved),
            StatusCode::PAYMENT_REQUIRED => Ok(Verdict::Declined(
                error_body(resp, "PAYMENT_DECLINED").await,
            )),
            StatusCode::BAD_REQUEST => Ok(Verdict::Rejected(
                error_body(resp, "INVALID_CARD_NUMBER").await,
            )),
            other => Err(Unavailable {
                service: "card authorizer",
                reason: format!("unexpected status {other}"),
            }),
        }
    }
}

/// The dependency's error body, or a stand-in if it sent something else.
async fn error_body(resp: reqwest::Response, fallback: &str) -> ErrorBody {
    match resp.json::<ErrorBody>().await {
        Ok(body) => body,
        Err(_) => ErrorBody {
            error: fallback.to_string(),
            message: "the card authorizer refused the card".to_string(),
            details: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_is_bounded_and_grows() {
        for attempt in 0..10 {
            let cap = Duration::from_millis(50 * (1 << attempt.min(6)));
            assert!(backoff(attempt) < cap);
        }
    }
}
