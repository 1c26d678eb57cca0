//! Who may do what, checked at every service's edge.
//!
//! A request proves who it is with `X-API-Key` (see [`keys`]) or `Authorization: Bearer <JWT>`
//! (see [`jwt`]); [`guard`] turns that into a [`Principal`] in the request's extensions, or
//! answers 401 with `WWW-Authenticate` and the error body. The routes then say what they need:
//! the [`Admin`] and [`Internal`] extractors answer 403 to anyone else, and a handler that
//! touches a customer's cart or order calls [`Principal::act_for`] with that customer's id.
//!
//! | role | may |
//! | --- | --- |
//! | `customer:<id>` | browse the catalog; its own carts, checkouts and orders |
//! | `service` | what a customer may browse, plus the internal calls between services (stock reservations, card authorization) |
//! | `admin` | everything: create products, adjust stock, read `/metrics`, `/stats`, `/gateway/targets` |
//!
//! `/health` and `/ready` are always open. `AUTH_MODE=off` serves everyone as if an
//! administrator, and says so loudly at start; it must be set explicitly.
//!
//! The rate limit ([`crate::ratelimit`]) runs in the same middleware, after authentication, so
//! a credential has one bucket wherever its requests come from, and requests without a valid
//! credential share their address's bucket (a key guesser is throttled too).

pub mod jwt;
pub mod keys;
pub mod ring_provider;
#[cfg(any(test, feature = "test-support"))]
pub mod test_issuer;

use crate::config::{ConfigError, Env};
use crate::error::ApiError;
use crate::metrics::{Counter, Metrics};
use crate::ratelimit::{self, Client, RateLimiter};
use crate::secret::Secret;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jwt::{JwksSource, JwtConfig, JwtVerifier};
use keys::ApiKeys;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// What a credential may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Admin,
    Service,
    Customer(i32),
    /// `AUTH_MODE=off`: no credential asked, everything allowed.
    Open,
}

/// Who a request is, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub role: Role,
    /// Names the credential in logs and rate-limit buckets (`key:1a2b3c4d`, `jwt:<subject>`).
    pub name: Arc<str>,
}

impl Principal {
    pub fn open() -> Self {
        Self {
            role: Role::Open,
            name: "open".into(),
        }
    }

    /// Whether the request may act for `customer_id`'s carts and orders.
    pub fn act_for(&self, customer_id: i32) -> Result<(), ApiError> {
        match self.role {
            Role::Admin | Role::Open => Ok(()),
            Role::Customer(id) if id == customer_id => Ok(()),
            _ => Err(forbidden(
                "this credential may act only for its own customer's carts and orders",
            )),
        }
    }

    /// Whether [`Principal::act_for`] can refuse anything: if not, a handler need not look up
    /// whose a cart is.
    pub fn is_customer_bound(&self) -> bool {
        matches!(self.role, Role::Customer(_) | Role::Service)
    }

    fn is_admin(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Open)
    }
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    #[error("this request needs an X-API-Key header or an Authorization: Bearer token")]
    Missing,
    #[error("the API key is not known")]
    UnknownKey,
    #[error("bearer tokens are not accepted by this service (no JWT_JWKS configured)")]
    NoTokens,
    #[error("the bearer token is not valid: {0}")]
    InvalidToken(String),
    #[error("the token signing keys are not loaded yet; retry shortly")]
    KeysUnavailable,
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        if self == Self::KeysUnavailable {
            return ApiError::unavailable("AUTH_UNAVAILABLE", message).into_response();
        }
        let mut response =
            ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message).into_response();
        let bearer = match &self {
            Self::InvalidToken(why) => format!(
                "Bearer realm=\"shop\", error=\"invalid_token\", error_description=\"{}\"",
                why.replace('"', "'")
            ),
            _ => "Bearer realm=\"shop\"".to_string(),
        };
        let headers = response.headers_mut();
        for challenge in [
            bearer.as_str(),
            "ApiKey realm=\"shop\", header=\"X-API-Key\"",
        ] {
            if let Ok(value) = HeaderValue::from_str(challenge) {
                headers.append(http::header::WWW_AUTHENTICATE, value);
            }
        }
        response
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    On,
    Off,
}

/// `AUTH_MODE`, `API_KEYS`, `JWT_*`.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub api_keys: Secret<ApiKeys>,
    pub jwt: Option<JwtVerifier>,
}

impl AuthConfig {
    pub fn read(env: &mut Env) -> Result<Self, ConfigError> {
        let mode = env.parse_with(
            "AUTH_MODE",
            AuthMode::On,
            "on",
            "on: every request but /health and /ready needs a credential; off: none (logged loudly)",
            |v| match v {
                "on" => Ok(AuthMode::On),
                "off" => Ok(AuthMode::Off),
                _ => Err("expected on or off".to_string()),
            },
        )?;
        let api_keys = env.secret_with(
            "API_KEYS",
            ApiKeys::default(),
            "",
            "accepted X-API-Key keys by SHA-256: <sha256-hex>:admin|service|customer:<id>,…",
            ApiKeys::parse,
            |_| "[redacted]".to_string(),
        )?;
        let jwks = env.parse_with(
            "JWT_JWKS",
            None,
            "",
            "bearer tokens (RS256/ES256): the signing keys, a JWKS file or http(s) URL",
            |v| JwksSource::parse(v).map(Some),
        )?;
        let issuer = env.string("JWT_ISSUER", "", "the iss a bearer token must carry");
        let audience = env.string("JWT_AUDIENCE", "", "the aud a bearer token must carry");
        let leeway = Duration::from_secs(env.var(
            "JWT_LEEWAY_SECS",
            30u64,
            "clock skew allowed on a token's exp and nbf, in seconds",
        )?);
        let jwt = match jwks {
            None => None,
            Some(jwks) => {
                for (name, value) in [("JWT_ISSUER", &issuer), ("JWT_AUDIENCE", &audience)] {
                    if value.is_empty() {
                        return Err(ConfigError::new(
                            name,
                            String::new(),
                            "must be set when JWT_JWKS is: tokens from any issuer or for any audience would pass".to_string(),
                        ));
                    }
                }
                let config = JwtConfig {
                    jwks,
                    issuer,
                    audience,
                    leeway,
                };
                let verifier = JwtVerifier::new(config)
                    .map_err(|reason| ConfigError::new("JWT_JWKS", String::new(), reason))?;
                Some(verifier)
            }
        };
        if mode == AuthMode::On && api_keys.expose().is_empty() && jwt.is_none() {
            // Reported once the rest is read: a bad value elsewhere is named first.
            env.defer(ConfigError::new(
                "AUTH_MODE",
                "on".to_string(),
                "no credential could pass: set API_KEYS and/or JWT_JWKS, or AUTH_MODE=off to serve without authentication".to_string(),
            ));
        }
        Ok(Self {
            mode,
            api_keys,
            jwt,
        })
    }

    /// No authentication (tests that are not about it).
    pub fn off() -> Self {
        Self {
            mode: AuthMode::Off,
            api_keys: Secret::new(ApiKeys::default()),
            jwt: None,
        }
    }

    /// Only these keys (tests): `keys` are `(key in clear, role)`.
    pub fn with_keys(keys: &[(&str, &str)]) -> Self {
        let list: Vec<String> = keys
            .iter()
            .map(|(key, role)| format!("{}:{role}", keys::hash_hex(key)))
            .collect();
        Self {
            mode: AuthMode::On,
            api_keys: Secret::new(ApiKeys::parse(&list.join(",")).unwrap_or_default()),
            jwt: None,
        }
    }
}

/// Authentication and the rate limit: see the module documentation.
#[derive(Clone)]
pub struct Guard(Arc<GuardInner>);

struct GuardInner {
    mode: AuthMode,
    keys: ApiKeys,
    jwt: Option<JwtVerifier>,
    limiter: Option<RateLimiter>,
    unauthenticated: Counter,
}

impl Guard {
    pub fn new(config: &AuthConfig, limiter: Option<RateLimiter>, metrics: &Metrics) -> Self {
        if config.mode == AuthMode::Off {
            tracing::warn!(
                "AUTH_MODE=off: NO AUTHENTICATION. Anyone who can reach this service may read \
                 every cart and order, create products and read its internals."
            );
        }
        if let Some(jwt) = &config.jwt {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(jwt.clone().keep_fresh(std::future::pending()));
            }
        }
        Self(Arc::new(GuardInner {
            mode: config.mode,
            keys: config.api_keys.expose().clone(),
            jwt: config.jwt.clone(),
            limiter,
            unauthenticated: metrics.counter(
                "auth_unauthenticated_total",
                "Requests answered 401: no credential, an unknown key or an invalid token.",
            ),
        }))
    }

    /// Who the request's credential says it is.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        if self.0.mode == AuthMode::Off {
            return Ok(Principal::open());
        }
        if let Some(key) = headers.get(X_API_KEY) {
            return self
                .0
                .keys
                .find(key.as_bytes())
                .cloned()
                .ok_or(AuthError::UnknownKey);
        }
        let Some(authorization) = headers.get(http::header::AUTHORIZATION) else {
            return Err(AuthError::Missing);
        };
        let token = authorization
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(AuthError::Missing)?;
        match &self.0.jwt {
            Some(jwt) => jwt.verify(token),
            None => Err(AuthError::NoTokens),
        }
    }

    fn refuse(&self, err: AuthError) -> Response {
        if err != AuthError::KeysUnavailable {
            self.0.unauthenticated.inc();
        }
        err.into_response()
    }
}

/// The middleware on every service's own routes: `from_fn_with_state(guard, auth::guard)`.
pub async fn guard(State(guard): State<Guard>, mut request: Request, next: Next) -> Response {
    let principal = guard.authenticate(request.headers());
    if let Some(limiter) = &guard.0.limiter {
        let client = match &principal {
            // The services' calls to each other are not the public's traffic: never limited.
            Ok(Principal {
                role: Role::Service,
                ..
            }) => None,
            Ok(Principal {
                role: Role::Open, ..
            })
            | Err(_) => address_of(&request, limiter).map(Client::Address),
            Ok(principal) => Some(Client::Credential(principal.name.clone())),
        };
        if let Some(client) = client {
            if let Err(wait) = limiter.take(&client, Instant::now()) {
                return limiter.refuse(wait);
            }
        }
    }
    match principal {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(err) => guard.refuse(err),
    }
}

fn address_of(request: &Request, limiter: &RateLimiter) -> Option<std::net::IpAddr> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    ratelimit::client_address(request.headers(), peer, limiter.trusted_hops())
}

/// The middleware on routes only an administrator may use (`/metrics`): authentication, no
/// rate limit (scrapes come often, from few addresses).
pub async fn require_admin(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    match guard.authenticate(request.headers()) {
        Ok(principal) if principal.is_admin() => next.run(request).await,
        Ok(_) => forbidden("only an administrator may read this").into_response(),
        Err(err) => guard.refuse(err),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Fails closed: a route outside the guard has no principal and serves nobody.
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::internal("the route is not behind the authentication layer"))
    }
}

/// Only an administrator: product creation, stock adjustments.
pub struct Admin(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        if principal.is_admin() {
            Ok(Self(principal))
        } else {
            Err(forbidden("only an administrator may do this"))
        }
    }
}

/// A service of the shop (or an administrator): the internal calls between services.
pub struct Internal(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Internal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        if principal.is_admin() || principal.role == Role::Service {
            Ok(Self(principal))
        } else {
            Err(forbidden(
                "this is an internal route, for the shop's own services",
            ))
        }
    }
}
