//! Bearer JWTs, RS256 or ES256, verified against a JWKS: `JWT_JWKS` (a file or an http(s) URL),
//! `JWT_ISSUER`, `JWT_AUDIENCE`, `JWT_LEEWAY_SECS`.
//!
//! The customer is the `customer_id` claim, else the subject; a `role` claim of `admin` makes
//! the token an administrator's. Expiry is required (with a small leeway for clock skew), issuer
//! and audience must match. No HS256: a shared secret would let every service that can check a
//! token also mint one, and would have to be copied into each of them.
//!
//! A JWKS from a URL is fetched at start and again every `JWKS_REFRESH` and, at most every
//! `JWKS_MIN_REFETCH`, when a token names a key id it does not hold (the issuer rotated its
//! keys). Until a first fetch succeeds, tokens are answered 503, not 401: the token may be fine.

use super::{AuthError, Principal, Role};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const JWKS_REFRESH: Duration = Duration::from_secs(300);
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(30);

/// Where the signing keys come from.
#[derive(Debug, Clone, PartialEq)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

impl JwksSource {
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.starts_with("https://") || value.starts_with("http://") {
            return Ok(Self::Url(value.to_string()));
        }
        if value.contains("://") {
            return Err("expected a file path or an http(s) URL".to_string());
        }
        Ok(Self::File(PathBuf::from(value)))
    }
}

/// `JWT_*`.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtConfig {
    pub jwks: JwksSource,
    pub issuer: String,
    pub audience: String,
    pub leeway: Duration,
}

/// The accepted keys, by key id.
#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, (DecodingKey, Algorithm)>,
    /// Without a `kid` a token can only mean the one key there is.
    only: Option<(DecodingKey, Algorithm)>,
    loaded: bool,
}

/// Verifies bearer tokens; cheap to clone.
#[derive(Clone)]
pub struct JwtVerifier(Arc<Inner>);

struct Inner {
    config: JwtConfig,
    keys: RwLock<Arc<KeySet>>,
    refetch: Notify,
    /// The checks a token passes, per algorithm: built once, not per request.
    rs256: Validation,
    es256: Validation,
}

/// Issuer, audience, expiry (with leeway), not-before, and the claims that must be there.
fn validation(algorithm: Algorithm, config: &JwtConfig) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[&config.issuer]);
    validation.set_audience(&[&config.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = config.leeway.as_secs();
    validation.validate_nbf = true;
    validation
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    customer_id: Option<serde_json::Value>,
    #[serde(default)]
    role: Option<String>,
}

impl JwtVerifier {
    /// A file is read now (an unreadable or empty one stops the start); a URL is fetched by
    /// [`JwtVerifier::keep_fresh`].
    pub fn new(config: JwtConfig) -> Result<Self, String> {
        super::ring_provider::install();
        let keys = match &config.jwks {
            JwksSource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read the JWKS file {}: {e}", path.display()))?;
                let keys = parse_jwks(&text)?;
                if keys.by_kid.is_empty() && keys.only.is_none() {
                    return Err(format!(
                        "the JWKS file {} holds no RS256 or ES256 signing key",
                        path.display()
                    ));
                }
                keys
            }
            JwksSource::Url(_) => KeySet::default(),
        };
        Ok(Self(Arc::new(Inner {
            rs256: validation(Algorithm::RS256, &config),
            es256: validation(Algorithm::ES256, &config),
            config,
            keys: RwLock::new(Arc::new(keys)),
            refetch: Notify::new(),
        })))
    }

    /// For a URL source: fetches the keys now and then on schedule or when a token names an
    /// unknown key, until `shutdown` resolves. A file source needs nothing.
    pub async fn keep_fresh(self, shutdown: impl std::future::Future<Output = ()>) {
        let JwksSource::Url(url) = &self.0.config.jwks else {
            return;
        };
        let client = match https_client() {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "JWT_JWKS: cannot build an HTTPS client");
                return;
            }
        };
        tokio::pin!(shutdown);
        let mut last_fetch: Option<Instant> = None;
        loop {
            if last_fetch.is_none_or(|at| at.elapsed() >= JWKS_MIN_REFETCH) {
                last_fetch = Some(Instant::now());
                match fetch(&client, url).await {
                    Ok(keys) => self.replace(keys),
                    Err(e) => {
                        tracing::warn!(%url, error = %e, "JWT_JWKS: fetch failed; keeping the keys held")
                    }
                }
            }
            let wait = if self.keys().loaded {
                JWKS_REFRESH
            } else {
                Duration::from_secs(2)
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.0.refetch.notified() => {}
            }
        }
    }

    fn keys(&self) -> Arc<KeySet> {
        match self.0.keys.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, keys: KeySet) {
        let keys = Arc::new(keys);
        match self.0.keys.write() {
            Ok(mut held) => *held = keys,
            Err(poisoned) => *poisoned.into_inner() = keys,
        }
    }

    /// The principal a bearer token stands for.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let invalid = |why: &str| AuthError::InvalidToken(why.to_string());
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("the token is not a JWT with an RS256 or ES256 header"))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(invalid("only RS256 and ES256 tokens are accepted"));
        }
        let keys = self.keys();
        if !keys.loaded {
            return Err(AuthError::KeysUnavailable);
        }
        let key = match &header.kid {
            Some(kid) => keys.by_kid.get(kid).or_else(|| {
                self.0.refetch.notify_one();
                None
            }),
            None => keys.only.as_ref(),
        };
        let Some((key, algorithm)) = key else {
            return Err(invalid(
                "the token's signing key is not among the issuer's keys",
            ));
        };
        if *algorithm != header.alg {
            return Err(invalid("the token's algorithm does not match its key"));
        }
        let validation = match algorithm {
            Algorithm::RS256 => &self.0.rs256,
            _ => &self.0.es256,
        };
        let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            invalid(match e.kind() {
                K::ExpiredSignature => "the token has expired",
                K::ImmatureSignature => "the token is not valid yet",
                K::InvalidIssuer => "the token's issuer is not accepted here",
                K::InvalidAudience => "the token is not meant for this audience",
                K::InvalidSignature => "the token's signature does not verify",
                K::MissingRequiredClaim(_) => {
                    "the token lacks a required claim (exp, iss, aud, sub)"
                }
                _ => "the token is malformed",
            })
        })?;
        principal_of(data.claims)
    }
}

fn principal_of(claims: Claims) -> Result<Principal, AuthError> {
    let role = match claims.role.as_deref() {
        Some("admin") => Role::Admin,
        None | Some("customer") => {
            let id = match &claims.customer_id {
                Some(serde_json::Value::Number(n)) => n.as_i64(),
                Some(serde_json::Value::String(s)) => s.parse().ok(),
                Some(_) => None,
                None => claims.sub.parse().ok(),
            };
            match id
                .and_then(|id| i32::try_from(id).ok())
                .filter(|id| *id > 0)
            {
                Some(id) => Role::Customer(id),
                None => {
                    return Err(AuthError::InvalidToken(
                        "the token names no customer (a positive customer_id claim or subject)"
                            .to_string(),
                    ))
                }
            }
        }
        Some(_) => {
            return Err(AuthError::InvalidToken(
                "the token's role is neither admin nor customer".to_string(),
            ))
        }
    };
    Ok(Principal {
        role,
        name: format!("jwt:{}", claims.sub).into(),
    })
}

/// The RS256 and ES256 (P-256) signing keys of a JWKS document; others are skipped.
fn parse_jwks(text: &str) -> Result<KeySet, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("the JWKS is not valid: {e}"))?;
    let mut keys = KeySet {
        loaded: true,
        ..KeySet::default()
    };
    let mut usable = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let parsed = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(rsa), None | Some(KeyAlgorithm::RS256)) => {
                DecodingKey::from_rsa_components(&rsa.n, &rsa.e).map(|k| (k, Algorithm::RS256))
            }
            (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                if ec.curve == EllipticCurve::P256 =>
            {
                DecodingKey::from_ec_components(&ec.x, &ec.y).map(|k| (k, Algorithm::ES256))
            }
            _ => continue,
        };
        let key = parsed.map_err(|e| format!("a JWKS key is not valid: {e}"))?;
        if let Some(kid) = &jwk.common.key_id {
            keys.by_kid.insert(kid.clone(), key.clone());
        }
        usable.push(key);
    }
    if usable.len() == 1 {
        keys.only = usable.pop();
    }
    Ok(keys)
}

type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<bytes::Bytes>,
>;

/// An HTTP(S) client on rustls with ring and the system's CAs, given its provider explicitly.
fn https_client() -> Result<HttpsClient, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider)
        .map_err(|e| format!("loading the system's CA certificates: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(tls),
    )
}

/// The most of a JWKS document read (a few keys are a few kilobytes).
const MAX_JWKS_BYTES: usize = 256 * 1024;

async fn fetch(client: &HttpsClient, url: &str) -> Result<KeySet, String> {
    use http_body_util::BodyExt;
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let exchange = async {
        let response = client.get(uri).await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let body = http_body_util::Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| "the answer is not UTF-8".to_string())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "timed out".to_string())??;
    parse_jwks(&text)
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("config", &self.0.config)
            .finish_non_exhaustive()
    }
}
