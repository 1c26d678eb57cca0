//! Idempotency keys in Redis, next to the carts and shared by every cart instance.
//!
//! One string per key, `<REDIS_KEY_PREFIX>idem:<credential>:<method>:<path>:<key>`, holding either
//! - a claim, `C<fingerprint hex><token hex>`, which expires with its lease (`PX`), or
//! - an answer, `D<fingerprint hex><status, 3 digits><0|1 content type present><content type>\n<body>`,
//!   which expires after `IDEMPOTENCY_TTL_MS` (a content type cannot contain a newline).
//!
//! Claiming is `SET NX PX` (and, when the key is taken, a `GET` of what holds it) in one script,
//! so exactly one of any number of concurrent requests on any instance claims a key. Completing
//! and releasing compare the claim first, also in one script each: a request whose lease lapsed
//! and was taken over cannot overwrite or drop the newer claim.

use super::{hex, unhex, Claim, ClaimToken, Fingerprint, IdempotencyStore, StoredResponse};
use axum::http::HeaderValue;
use bytes::Bytes;
use common::store::redis::{connect, unavailable, RedisConfig, RedisSetupError};
use common::store::StoreUnavailable;
use redis::aio::ConnectionManager;
use redis::{Script, Value};
use std::future::Future;
use std::time::Duration;

/// `SET NX PX`; if the key is taken, what holds it.
const CLAIM: &str = r"
-- KEYS[1] the key; ARGV[1] the claim; ARGV[2] its lease in ms
-- Returns 1 if claimed, else the key's value.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return redis.call('GET', KEYS[1])
";

/// The claim, if still held, becomes the answer.
const COMPLETE: &str = r"
-- KEYS[1] the key; ARGV[1] the claim; ARGV[2] the answer; ARGV[3] its TTL in ms
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// The claim, if still held, is dropped.
const RELEASE: &str = r"
-- KEYS[1] the key; ARGV[1] the claim
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
";

pub struct RedisIdempotencyStore {
    connection: ConnectionManager,
    /// `P idem:`
    prefix: String,
    timeout: Duration,
    claim: Script,
    complete: Script,
    release: Script,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn malformed(what: &str) -> StoreUnavailable {
    StoreUnavailable::new("Redis", format!("unexpected idempotency record ({what})"))
}

/// `C<fingerprint><token>`.
fn claim_value(token: &ClaimToken) -> String {
    format!("C{}{:016x}", hex(&token.fingerprint), token.id)
}

pub fn encode(response: &StoredResponse) -> Vec<u8> {
    let content_type = response.content_type.as_ref().map(HeaderValue::as_bytes);
    let mut out =
        Vec::with_capacity(72 + content_type.map_or(0, <[u8]>::len) + response.body.len());
    out.push(b'D');
    out.extend_from_slice(hex(&response.fingerprint).as_bytes());
    out.extend_from_slice(format!("{:03}", response.status.min(999)).as_bytes());
    out.push(if content_type.is_some() { b'1' } else { b'0' });
    out.extend_from_slice(content_type.unwrap_or_default());
    out.push(b'\n');
    out.extend_from_slice(&response.body);
    out
}

/// A key's value: a claim in flight or a kept answer.
pub fn decode(value: &[u8]) -> Option<Claim> {
    let (&kind, rest) = value.split_first()?;
    let fingerprint: Fingerprint = unhex(rest.get(..64)?)?;
    let rest = &rest[64..];
    match kind {
        b'C' => Some(Claim::InFlight { fingerprint }),
        b'D' => {
            let status: u16 = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
            let has_type = *rest.get(3)? == b'1';
            let rest = rest.get(4..)?;
            let newline = rest.iter().position(|&b| b == b'\n')?;
            let content_type = if has_type {
                Some(HeaderValue::from_bytes(&rest[..newline]).ok()?)
            } else {
                None
            };
            Some(Claim::Done(StoredResponse {
                fingerprint,
                status,
                content_type,
                body: Bytes::copy_from_slice(&rest[newline + 1..]),
            }))
        }
        _ => None,
    }
}

impl RedisIdempotencyStore {
    /// Same Redis, prefix and timeout as the cart store, on a lazy connection of its own.
    pub fn new(config: &RedisConfig) -> Result<Self, RedisSetupError> {
        Ok(Self {
            connection: connect(config)?,
            prefix: format!("{}idem:", config.key_prefix),
            timeout: config.timeout,
            claim: Script::new(CLAIM),
            complete: Script::new(COMPLETE),
            release: Script::new(RELEASE),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// One command within `STORE_TIMEOUT_MS`, reconnecting included.
    async fn bounded<T>(
        &self,
        command: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreUnavailable> {
        match tokio::time::timeout(self.timeout, command).await {
            Ok(result) => result.map_err(unavailable),
            Err(_) => Err(StoreUnavailable::new(
                "Redis",
                format!("no answer within {:?}", self.timeout),
            )),
        }
    }
}

#[async_trait::async_trait]
impl IdempotencyStore for RedisIdempotencyStore {
    async fn claim(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreUnavailable> {
        let token = ClaimToken {
            id: rand::random(),
            fingerprint: *fingerprint,
        };
        let reply: Value = self
            .bounded(
                self.claim
                    .key(self.key(key))
                    .arg(claim_value(&token))
                    .arg(millis(lease))
                    .invoke_async(&mut self.connection.clone()),
            )
            .await?;
        match reply {
            Value::Int(1) => Ok(Claim::Claimed(token)),
            Value::BulkString(value) => decode(&value).ok_or_else(|| malformed(key)),
            _ => Err(malformed(key)),
        }
    }

    async fn complete(
        &self,
        key: &str,
        token: &ClaimToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<bool, StoreUnavailable> {
        let done: i64 = self
            .bounded(
                self.complete
                    .key(self.key(key))
                    .arg(claim_value(token))
                    .arg(encode(response))
                    .arg(millis(ttl))
                    .invoke_async(&mut self.connection.clone()),
            )
            .await?;
        Ok(done == 1)
    }

    async fn release(&self, key: &str, token: &ClaimToken) -> Result<bool, StoreUnavailable> {
        let dropped: i64 = self
            .bounded(
                self.release
                    .key(self.key(key))
                    .arg(claim_value(token))
                    .invoke_async(&mut self.connection.clone()),
            )
            .await?;
        Ok(dropped == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_byte_for_byte() {
        for (content_type, body) in [
            (Some("application/json"), &b"{\"shopping_cart_id\":1}"[..]),
            (None, b""),
            (Some(""), b"\n\x00\xff line\nbreaks"),
        ] {
            let response = StoredResponse {
                fingerprint: [7; 32],
                status: 201,
                content_type: content_type.map(|t| HeaderValue::from_str(t).expect("value")),
                body: Bytes::copy_from_slice(body),
            };
            assert_eq!(decode(&encode(&response)), Some(Claim::Done(response)));
        }
    }

    #[test]
    fn a_claim_reads_as_in_flight_and_garbage_as_nothing() {
        let token = ClaimToken {
            id: 0xdead_beef,
            fingerprint: [0xab; 32],
        };
        assert_eq!(
            decode(claim_value(&token).as_bytes()),
            Some(Claim::InFlight {
                fingerprint: [0xab; 32]
            })
        );
        for garbage in [&b""[..], b"D", b"Xabc", b"D0000"] {
            assert_eq!(decode(garbage), None);
        }
    }
}
