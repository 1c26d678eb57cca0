//! The cart's two synchronous dependencies: the product service (the catalog here, stock
//! reservations in [`stock`]) and the card authorizer.
//!
//! Both calls have a per-attempt timeout and a bounded, jittered retry on connection errors and
//! 5xx only. A 4xx is an answer, never retried: retrying a 402 would be asking the bank again
//! until it says yes.
//!
//! The client is hyper's pooled keep-alive client with prebuilt URIs, not reqwest: on the checkout
//! path reqwest's redirect, retry and URL layers (a `url::Url` parsed and IDNA-checked per call)
//! cost the cart more CPU than the authorizer call itself, and nothing here needs them.

use crate::configuration::Settings;
use bytes::Bytes;
use common::auth::X_API_KEY;
use common::http::REQUEST_ID;
use common::secret::Secret;
use common::telemetry;
use common::ErrorBody;
use dashmap::DashSet;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;

pub mod stock;

/// First retry waits up to this long; each further one doubles it.
const RETRY_BASE: Duration = Duration::from_millis(50);

/// The most of a dependency's answer the cart reads (its answers are a few hundred bytes).
const MAX_REPLY_BYTES: usize = 64 * 1024;

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{service} unavailable: {reason}")]
pub struct Unavailable {
    pub service: &'static str,
    pub reason: String,
}

/// Full jitter: a random wait in `[0, base·2^attempt)`, so retries from many checkouts do not
/// arrive at a recovering dependency in lockstep.
fn backoff(attempt: u32) -> Duration {
    let cap = backoff_cap(attempt);
    let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(rand::rng().random_range(0..cap_ms))
}

/// The longest wait before retry `attempt + 1`.
pub(crate) fn backoff_cap(attempt: u32) -> Duration {
    RETRY_BASE.saturating_mul(1 << attempt.min(6))
}

/// A dependency's complete answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

enum CallError {
    TimedOut,
    Failed(String),
}

/// Plain-HTTP keep-alive client shared by both dependencies.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
    /// `SERVICE_API_KEY` as a header value, marked sensitive (never logged by hyper).
    api_key: Option<HeaderValue>,
}

impl HttpClient {
    pub fn new(connect_timeout: Duration, api_key: Option<&Secret<String>>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(50))
            .pool_max_idle_per_host(256)
            .build(connector);
        // Checked by the configuration: a key is a valid header value.
        let api_key = api_key
            .and_then(|key| HeaderValue::from_str(key.expose()).ok())
            .map(|mut value| {
                value.set_sensitive(true);
                value
            });
        Self { inner, api_key }
    }

    /// One attempt, in a client span whose context the request carries.
    async fn attempt(&self, service: &'static str, call: &Call<'_>) -> Result<Reply, CallError> {
        // Not entered while the call runs: nothing inside makes spans or logs, and entering it at
        // every poll of the exchange would cost more than the span itself. It ends when dropped.
        let mut span = telemetry::client_span(&call.method, service, call.uri.path());
        let result = self.send(call, &span).await;
        match &result {
            Ok(reply) => span.record_status(reply.status.as_u16()),
            Err(_) => span.record_error(),
        }
        result
    }

    /// The request, then the whole (bounded) body, within the call's timeout.
    async fn send(&self, call: &Call<'_>, span: &telemetry::LeafSpan) -> Result<Reply, CallError> {
        let mut request = Request::builder()
            .method(call.method.clone())
            .uri(call.uri.clone())
            .header(ACCEPT, APPLICATION_JSON);
        if let Ok(id) = HeaderValue::from_str(call.request_id) {
            request = request.header(REQUEST_ID, id);
        }
        if call.body.is_some() {
            request = request.header(CONTENT_TYPE, APPLICATION_JSON);
        }
        if let Some(key) = &self.api_key {
            request = request.header(X_API_KEY, key.clone());
        }
        let mut request = request
            .body(Full::new(call.body.cloned().unwrap_or_default()))
            .map_err(|e| CallError::Failed(e.to_string()))?;
        span.inject_http(request.headers_mut());
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| CallError::Failed(root_cause(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_REPLY_BYTES)
                .collect()
                .await
                .map_err(|e| CallError::Failed(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Reply { status, body })
        };
        tokio::time::timeout(call.timeout, exchange)
            .await
            .unwrap_or(Err(CallError::TimedOut))
    }

    /// Makes `call` up to `1 + retries` times; returns the first answer that is not a 5xx, or
    /// the last failure.
    pub(crate) async fn send_with_retry(
        &self,
        service: &'static str,
        retries: u32,
        call: Call<'_>,
    ) -> Result<Reply, Unavailable> {
        let mut attempt = 0;
        loop {
            let failure = match self.attempt(service, &call).await {
                // The dependency refused the cart's own credential: a misconfiguration, not the
                // customer's doing and not worth a retry.
                Ok(reply)
                    if reply.status == StatusCode::UNAUTHORIZED
                        || reply.status == StatusCode::FORBIDDEN =>
                {
                    return Err(Unavailable {
                        service,
                        reason: format!(
                            "it refused the cart's credential (SERVICE_API_KEY): answered {}",
                            reply.status
                        ),
                    });
                }
                Ok(reply) if !reply.status.is_server_error() => return Ok(reply),
                Ok(reply) => format!("answered {}", reply.status),
                Err(CallError::TimedOut) => {
                    // A timed-out call may still be running; do not pile more onto a slow service.
                    return Err(Unavailable {
                        service,
                        reason: "timed out".to_string(),
                    });
                }
                Err(CallError::Failed(reason)) => format!("connection failed: {reason}"),
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
}

/// One request to a dependency, as each attempt sends it.
pub(crate) struct Call<'a> {
    pub method: Method,
    pub uri: &'a Uri,
    pub body: Option<&'a Bytes>,
    pub request_id: &'a str,
    pub timeout: Duration,
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// `base` + `path` as a URI for the plain-HTTP client; `var` names the setting in the error.
pub(crate) fn endpoint(var: &str, base: &str, path: &str) -> Result<Uri, String> {
    if !base.starts_with("http://") {
        return Err(format!(
            "{var}: expected an http:// URL (services talk plain HTTP inside the network), got {base}"
        ));
    }
    format!("{base}{path}")
        .parse()
        .map_err(|e| format!("{var}: {e}"))
}

/// Asks the product service whether products exist, remembering the ones that do: products are
/// never deleted, so a positive answer is good for ever, while a negative one is not cached
/// (the product may be created a moment later).
#[derive(Clone)]
pub struct ProductCatalog {
    http: HttpClient,
    base: Arc<str>,
    timeout: Duration,
    known: Arc<DashSet<i32>>,
}

impl ProductCatalog {
    pub fn new(http: HttpClient, settings: &Settings) -> Result<Self, String> {
        // Checked once here so a bad PRODUCT_URL fails at start, not on the first add.
        endpoint("PRODUCT_URL", &settings.product_url, "/products/1")?;
        Ok(Self {
            http,
            base: settings.product_url.as_str().into(),
            timeout: settings.product_timeout,
            known: Arc::new(DashSet::new()),
        })
    }

    /// Known to exist without asking (a product once seen is never deleted).
    pub fn is_known(&self, product_id: i32) -> bool {
        self.known.contains(&product_id)
    }

    pub async fn exists(&self, product_id: i32, request_id: &str) -> Result<bool, Unavailable> {
        if self.is_known(product_id) {
            return Ok(true);
        }
        // The base was checked at start; only the id is new here.
        let uri: Uri = format!("{}/products/{product_id}", self.base)
            .parse()
            .map_err(|e| Unavailable {
                service: "product service",
                reason: format!("PRODUCT_URL: {e}"),
            })?;
        let call = Call {
            method: Method::GET,
            uri: &uri,
            body: None,
            request_id,
            timeout: self.timeout,
        };
        let reply = self
            .http
            .send_with_retry("product service", 2, call)
            .await?;
        match reply.status {
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
    http: HttpClient,
    /// Built once; a `Uri` clone is a reference-count bump.
    uri: Uri,
    timeout: Duration,
    retries: u32,
}

impl Authorizer {
    pub fn new(http: HttpClient, settings: &Settings) -> Result<Self, String> {
        Ok(Self {
            http,
            uri: endpoint(
                "CCA_URL",
                &settings.cca_url,
                "/credit-card-authorizer/authorize",
            )?,
            timeout: settings.cca_timeout,
            retries: settings.cca_retries,
        })
    }

    pub async fn authorize(
        &self,
        card_number: &str,
        request_id: &str,
    ) -> Result<Verdict, Unavailable> {
        let body = serde_json::to_vec(&serde_json::json!({ "credit_card_number": card_number }))
            .map(Bytes::from)
            .map_err(|e| Unavailable {
                service: "card authorizer",
                reason: e.to_string(),
            })?;
        let call = Call {
            method: Method::POST,
            uri: &self.uri,
            body: Some(&body),
            request_id,
            timeout: self.timeout,
        };
        let reply = self
            .http
            .send_with_retry("card authorizer", self.retries, call)
            .await?;
        match reply.status {
            s if s.is_success() => Ok(Verdict::Approved),
            StatusCode::PAYMENT_REQUIRED => {
                Ok(Verdict::Declined(error_body(&reply, "PAYMENT_DECLINED")))
            }
            StatusCode::BAD_REQUEST => {
                Ok(Verdict::Rejected(error_body(&reply, "INVALID_CARD_NUMBER")))
            }
            other => Err(Unavailable {
                service: "card authorizer",
                reason: format!("unexpected status {other}"),
            }),
        }
    }
}

/// The dependency's error body, or a stand-in if it sent something else.
fn error_body(reply: &Reply, fallback: &str) -> ErrorBody {
    match serde_json::from_slice::<ErrorBody>(&reply.body) {
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
    use super::{backoff, endpoint};
    use std::time::Duration;

    #[test]
    fn endpoints_are_plain_http_and_name_their_setting() {
        let uri = endpoint(
            "CCA_URL",
            "http://cca:8083",
            "/credit-card-authorizer/authorize",
        );
        assert_eq!(
            uri.map(|u| u.to_string()),
            Ok("http://cca:8083/credit-card-authorizer/authorize".to_string())
        );
        let err = endpoint("CCA_URL", "https://cca:8083", "/x").unwrap_err();
        assert!(err.starts_with("CCA_URL: expected an http:// URL"), "{err}");
    }

    #[test]
    fn backoff_is_bounded_and_grows() {
        for attempt in 0..10 {
            let cap = Duration::from_millis(50 * (1 << attempt.min(6)));
            assert!(backoff(attempt) < cap);
        }
    }
}
