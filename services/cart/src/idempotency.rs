//! `Idempotency-Key` for the cart's two non-idempotent POSTs (`POST /shopping-cart`,
//! `POST /shopping-carts/{id}/checkout`): a client that retries with the same key after a lost
//! answer gets the first answer again instead of a second cart or a confusing error.
//!
//! - No header: the request runs as it always did.
//! - A key must be 1..=255 visible ASCII characters (`!`..=`~`), and there must be one; else
//!   400 `INVALID_IDEMPOTENCY_KEY` and nothing runs.
//! - A key is scoped by method and path (`POST:/shopping-carts/7/checkout`) and stored with the
//!   SHA-256 of the request body. The first request with a key claims it (atomically) for a
//!   lease, runs, and its answer (status, content type, body) is kept for `IDEMPOTENCY_TTL_MS`.
//! - The same key and body later: the stored answer byte for byte, plus
//!   `idempotent-replayed: true`. A different body: 422 `IDEMPOTENCY_KEY_REUSED`. While the
//!   first is still running: 409 `IDEMPOTENCY_KEY_IN_USE`.
//! - Answers that say "try again" are not kept: 5xx, 408, 409 and 429. Their claim is dropped so
//!   a retry with the same key runs again. So is an answer too large to keep (over
//!   [`MAX_STORED_BODY`]), which passes through untouched. Everything else (2xx, other 4xx) is.
//! - A claim whose request never finished (the process died) lapses after the lease, so the
//!   key is not blocked for ever. The request runs in its own task, so a client hanging up does
//!   not abandon its claim half-way.
//! - The keys live where the carts do: in memory ([`memory`]), or in Redis ([`redis`]) under
//!   `<REDIS_KEY_PREFIX>idem:<credential>:<route>:<key>`, shared by every instance. A store
//!   that cannot be reached is the cart store's 503 `STORE_UNAVAILABLE`, and nothing runs.

pub mod memory;
pub mod redis;

use crate::configuration::Settings;
use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use common::auth::Principal;
use common::metrics::{Counter, Metrics};
use common::store::redis::RedisSetupError;
use common::store::StoreUnavailable;
use common::{telemetry, ApiError};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

pub use memory::MemoryIdempotencyStore;
pub use redis::RedisIdempotencyStore;

pub const HEADER: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on an answer that is a stored one, replayed.
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
pub const MAX_KEY_LEN: usize = 255;
/// The largest answer body kept; a larger one passes through and is not kept.
pub const MAX_STORED_BODY: usize = 64 * 1024;
/// The shortest a claim lasts before a request that never finished lets go of its key.
pub const MIN_LEASE: Duration = Duration::from_secs(60);

/// SHA-256 of a request body.
pub type Fingerprint = [u8; 32];

/// An answer as kept for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The body of the request that produced it.
    pub fingerprint: Fingerprint,
    pub status: u16,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

/// Proof that a request holds a key; hand it back to `complete` or `release`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken {
    /// Random per claim: a request whose claim lapsed and was taken over cannot touch the new one.
    pub id: u64,
    pub fingerprint: Fingerprint,
}

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This request holds the key now: run it.
    Claimed(ClaimToken),
    /// Another request with this key is still running.
    InFlight { fingerprint: Fingerprint },
    /// A request with this key finished: its answer.
    Done(StoredResponse),
}

#[async_trait::async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Takes `key` for `lease` unless a live claim or a stored answer has it: one atomic step.
    async fn claim(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreUnavailable>;

    /// Replaces the claim with the answer, kept for `ttl`. `false` (nothing stored) if the
    /// token no longer holds the key: its lease lapsed and another request took it.
    async fn complete(
        &self,
        key: &str,
        token: &ClaimToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<bool, StoreUnavailable>;

    /// Drops the claim, if the token still holds it, so a retry runs again.
    async fn release(&self, key: &str, token: &ClaimToken) -> Result<bool, StoreUnavailable>;
}

/// The middleware's state: where keys live and for how long.
#[derive(Clone)]
pub struct Idempotency {
    store: Arc<dyn IdempotencyStore>,
    ttl: Duration,
    lease: Duration,
    /// `BODY_LIMIT_BYTES`: the request body is read here, before the handler's own extractor.
    body_limit: usize,
    replays: Counter,
}

impl Idempotency {
    pub fn new(
        store: Arc<dyn IdempotencyStore>,
        ttl: Duration,
        lease: Duration,
        body_limit: usize,
        metrics: &Metrics,
    ) -> Self {
        Self {
            store,
            ttl,
            lease,
            body_limit,
            replays: metrics.counter(
                "idempotent_replays_total",
                "Requests answered with the stored answer of an earlier one with the same Idempotency-Key.",
            ),
        }
    }

    /// Redis when the carts are in Redis (same URL, prefix and timeout; its own multiplexed
    /// connection), else memory, swept in the background. A claim lasts the longer of
    /// [`MIN_LEASE`] and twice the checkout's lease, which is longer than a checkout can take.
    pub fn from_settings(settings: &Settings, metrics: &Metrics) -> Result<Self, RedisSetupError> {
        let store: Arc<dyn IdempotencyStore> = match &settings.store {
            Some(config) => Arc::new(RedisIdempotencyStore::new(config)?),
            None => {
                let store = Arc::new(MemoryIdempotencyStore::default());
                store.spawn_sweeper();
                store
            }
        };
        Ok(Self::new(
            store,
            settings.idempotency_ttl,
            MIN_LEASE.max(settings.checkout_lease * 2),
            settings.service.body_limit,
            metrics,
        ))
    }
}

/// The key in `headers`: `None` without one, an error for a bad one (or several).
pub fn key_of(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut values = headers.get_all(&HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    let visible = bytes.iter().all(|b| (b'!'..=b'~').contains(b));
    if values.next().is_some() || bytes.is_empty() || bytes.len() > MAX_KEY_LEN || !visible {
        return Err(ApiError::bad_request(
            "INVALID_IDEMPOTENCY_KEY",
            format!(
                "Idempotency-Key must be one header of 1 to {MAX_KEY_LEN} visible ASCII characters"
            ),
        )
        .with_details("Idempotency-Key"));
    }
    // Visible ASCII is UTF-8.
    Ok(std::str::from_utf8(bytes).ok())
}

/// The middleware; apply it with `axum::middleware::from_fn_with_state` as a route layer.
pub async fn guard(State(idem): State<Idempotency>, req: Request, next: Next) -> Response {
    let key = match key_of(req.headers()) {
        Ok(None) => return next.run(req).await,
        Ok(Some(key)) => key,
        Err(err) => return err.into_response(),
    };
    // Per credential: another customer's request with the same key and path is not a retry of
    // this one, and must not be answered with this one's result.
    let who = req
        .extensions()
        .get::<Principal>()
        .map_or("open", |principal| &principal.name);
    let scope = format!("{who}:{}:{}:{key}", req.method(), req.uri().path());
    let (parts, body) = req.into_parts();
    let body = match read_body(body, idem.body_limit).await {
        Ok(body) => body,
        Err(err) => return err.into_response(),
    };
    let fingerprint: Fingerprint = Sha256::digest(&body).into();
    let token = match idem.store.claim(&scope, &fingerprint, idem.lease).await {
        Err(err) => return ApiError::from(err).into_response(),
        Ok(Claim::Claimed(token)) => token,
        Ok(Claim::Done(stored)) if stored.fingerprint == fingerprint => {
            idem.replays.inc();
            return replay(stored);
        }
        Ok(Claim::InFlight { fingerprint: other }) if other == fingerprint => {
            return ApiError::new(
                StatusCode::CONFLICT,
                "IDEMPOTENCY_KEY_IN_USE",
                "a request with this Idempotency-Key is still running",
            )
            .with_details("retry later with the same key to get its answer")
            .into_response();
        }
        // Running or done, but for another body.
        Ok(Claim::Done(_) | Claim::InFlight { .. }) => {
            return ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "IDEMPOTENCY_KEY_REUSED",
                "this Idempotency-Key was used for a request with a different body",
            )
            .with_details("use a new key for a different request")
            .into_response();
        }
    };
    let req = Request::from_parts(parts, Body::from(body));
    // Its own task: a client that hangs up does not leave the claim held until the lease ends.
    let run = tokio::spawn(telemetry::in_current_trace(run_and_record(
        idem.clone(),
        scope.clone(),
        token.clone(),
        req,
        next,
    )));
    match run.await {
        Ok(response) => response,
        Err(join_error) => {
            release(&idem, &scope, &token).await;
            ApiError::internal(format!("request failed: {join_error}")).into_response()
        }
    }
}

/// The request body, within the service's body limit (413 beyond it, like the JSON extractor).
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            "the request body is larger than this service accepts",
        )),
        Err(err) => Err(ApiError::bad_request(
            "INVALID_INPUT",
            "the request body could not be read",
        )
        .with_details(err.to_string())),
    }
}

/// Whether an answer is kept: not one that tells the client to try again later.
pub fn is_kept(status: StatusCode) -> bool {
    !(status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::CONFLICT
        || status == StatusCode::TOO_MANY_REQUESTS)
}

async fn run_and_record(
    idem: Idempotency,
    scope: String,
    token: ClaimToken,
    req: Request,
    next: Next,
) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    if !is_kept(status) {
        release(&idem, &scope, &token).await;
        return response;
    }
    let (parts, body) = response.into_parts();
    let fits = HttpBody::size_hint(&body)
        .upper()
        .is_some_and(|n| n <= MAX_STORED_BODY as u64);
    if !fits {
        release(&idem, &scope, &token).await;
        return Response::from_parts(parts, body);
    }
    let body = match Limited::new(body, MAX_STORED_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            release(&idem, &scope, &token).await;
            return ApiError::internal(format!("the answer could not be read: {err}"))
                .into_response();
        }
    };
    let stored = StoredResponse {
        fingerprint: token.fingerprint,
        status: status.as_u16(),
        content_type: parts.headers.get(CONTENT_TYPE).cloned(),
        body: body.clone(),
    };
    // The request did run: its answer goes out whatever the store says. Unsaved, a retry after
    // the lease runs the request again.
    match idem.store.complete(&scope, &token, &stored, idem.ttl).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(key = %scope, "idempotency claim lapsed before the request finished; its answer is not kept")
        }
        Err(err) => {
            tracing::warn!(key = %scope, error = %err, "idempotency: the answer could not be kept")
        }
    }
    Response::from_parts(parts, Body::from(body))
}

/// Drops a claim; if the store cannot be reached, the claim lapses after its lease.
async fn release(idem: &Idempotency, scope: &str, token: &ClaimToken) {
    if let Err(err) = idem.store.release(scope, token).await {
        tracing::warn!(key = %scope, error = %err, "idempotency: a claim could not be dropped; it lapses after its lease");
    }
}

fn replay(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(Body::from(stored.body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Some(content_type) = stored.content_type {
        headers.insert(CONTENT_TYPE, content_type);
    }
    headers.insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

/// Lower-case hex, for the Redis encoding.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

pub(crate) fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in text.chunks(2).enumerate() {
        if !pair.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let digits = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                HEADER,
                HeaderValue::from_bytes(value).expect("a header value"),
            );
        }
        headers
    }

    #[test]
    fn keys_are_one_header_of_1_to_255_visible_ascii_characters() {
        assert_eq!(key_of(&HeaderMap::new()).ok(), Some(None));
        let longest = "k".repeat(MAX_KEY_LEN);
        for good in ["a", "order-7:retry_1", "!~", longest.as_str()] {
            assert_eq!(
                key_of(&headers(&[good.as_bytes()])).ok(),
                Some(Some(good)),
                "{good}"
            );
        }
        let too_long = "k".repeat(MAX_KEY_LEN + 1);
        for bad in [
            &b""[..],
            b"a b",
            b"tab\there",
            "é".as_bytes(),
            too_long.as_bytes(),
        ] {
            let err = key_of(&headers(&[bad])).expect_err("refused");
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert_eq!(err.body.error, "INVALID_IDEMPOTENCY_KEY");
        }
        assert!(key_of(&headers(&[b"a", b"a"])).is_err());
    }

    #[test]
    fn retry_later_answers_are_not_kept() {
        for kept in [200, 201, 202, 204, 400, 402, 404, 413, 422] {
            assert!(
                is_kept(StatusCode::from_u16(kept).expect("status")),
                "{kept}"
            );
        }
        for not in [408, 409, 429, 500, 502, 503, 504] {
            assert!(
                !is_kept(StatusCode::from_u16(not).expect("status")),
                "{not}"
            );
        }
    }

    #[test]
    fn hex_round_trips() {
        let bytes: [u8; 4] = [0x00, 0x7f, 0xa5, 0xff];
        assert_eq!(hex(&bytes), "007fa5ff");
        assert_eq!(unhex::<4>(b"007fa5ff"), Some(bytes));
        assert_eq!(unhex::<4>(b"007fa5f"), None);
        assert_eq!(unhex::<4>(b"007fa5fg"), None);
    }
}
