//! The HTTP plumbing every service wears, in one place so that no service can forget a piece:
//! `/health`, `/ready`, `/metrics`, the [`edge`](crate::edge) layer (`x-request-id`, `x-served-by`,
//! body limit, request metrics), JSON bodies on every error (including axum's own 404/405), and a
//! per-request span when DEBUG logging is on.

use crate::auth::{self, Guard};
use crate::config::ServiceConfig;
use crate::edge::EdgeLayer;
use crate::error::ApiError;
use crate::metrics::{self, Metrics};
use crate::ratelimit::RateLimiter;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::{join_all, BoxFuture};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

pub use crate::edge::{REQUEST_ID, SERVED_BY};

/// How long one readiness check may take before it counts as failed.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The dependency checks behind `GET /ready`. No checks: ready as soon as it serves.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Check)>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a named check; `Err(reason)` makes `/ready` answer 503 naming it.
    pub fn check<F, Fut>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((
            name,
            Arc::new(move || Box::pin(check()) as BoxFuture<'static, _>),
        ));
        self
    }

    /// Runs every check concurrently; the failures, by name.
    pub async fn failures(&self) -> Vec<(&'static str, String)> {
        let runs = self.checks.iter().map(|(name, check)| async move {
            match tokio::time::timeout(READY_CHECK_TIMEOUT, check()).await {
                Ok(Ok(())) => None,
                Ok(Err(reason)) => Some((*name, reason)),
                Err(_) => Some((*name, "timed out".to_string())),
            }
        });
        join_all(runs).await.into_iter().flatten().collect()
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn ready(State(readiness): State<Readiness>) -> Response {
    let failures = readiness.failures().await;
    if failures.is_empty() {
        return Json(serde_json::json!({ "status": "ready" })).into_response();
    }
    let names: Vec<&str> = failures.iter().map(|(name, _)| *name).collect();
    let details: Vec<String> = failures
        .iter()
        .map(|(name, reason)| format!("{name}: {reason}"))
        .collect();
    ApiError::unavailable(
        "NOT_READY",
        format!("dependencies unavailable: {}", names.join(", ")),
    )
    .with_details(details.join("; "))
    .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("NOT_FOUND", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "this route does not accept that method",
    )
}

/// Wraps a service's routes with everything every service must have.
pub fn with_common_layers(
    app: Router,
    config: &ServiceConfig,
    metrics: &Metrics,
    readiness: Readiness,
) -> Router {
    let limiter = config
        .rate_limit
        .enabled()
        .then(|| RateLimiter::new(config.rate_limit, metrics));
    let guard = Guard::new(&config.auth, limiter, metrics);
    // `/health` and `/ready` are open to anyone (load balancers, orchestrators); `/metrics` is an
    // administrator's, not rate limited (scrapes come often, from few addresses).
    let ops = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready).with_state(readiness))
        .route(
            "/metrics",
            get(metrics::render)
                .with_state(metrics.clone())
                .route_layer(axum::middleware::from_fn_with_state(
                    guard.clone(),
                    auth::require_admin,
                )),
        );
    // The service's own routes: authenticated, then rate limited per credential.
    let app = app
        .layer(axum::middleware::from_fn_with_state(guard, auth::guard))
        .merge(ops)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    // A span per request only when DEBUG is on for this process (`RUST_LOG=debug`): then every
    // request is logged with its id; otherwise the layer is not installed at all, because even a
    // disabled span costs a wrapped body and a few calls on every request. It goes inside the edge
    // layer, so the span sees the request id the edge accepted or generated. Not when traces are
    // exported: the edge's own request span logs each request then, with its trace id.
    let app = if tracing::enabled!(Level::DEBUG) && !crate::telemetry::exporting() {
        app.layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::debug_span!("request", method = %req.method(), uri = %req.uri(), request_id = %id)
                })
                .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
    } else {
        app
    };
    app.layer(EdgeLayer::new(
        metrics.clone(),
        &config.instance_id,
        config.body_limit,
    ))
}

/// Binds all interfaces on `port` (0 picks a free one, for tests).
pub async fn bind(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind(("0.0.0.0", port)).await
}
