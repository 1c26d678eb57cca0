//! The per-request work every service does at its edge, as one tower layer: accept or generate
//! `x-request-id` and echo it back, stamp `x-served-by`, enforce the default body limit, and
//! record the request in the metrics under its matched route.
//!
//! Why one hand-written layer rather than four stock ones (tower-http's set/propagate request id,
//! set-header, axum's body limit, a metrics layer): axum applies `Router::layer` to every route,
//! boxing each layer in its own `Route`, and clones the whole stack on every request. Four stock
//! layers meant five boxed clones, a formatted UUID string and shared reference counts touched by
//! both cores on every request: by hand (server CPU per request under wrk) that was the product
//! service's largest cost after the kernel. This layer is one box, one small allocation for a generated id, and no
//! shared writes on the hot path apart from the metrics cells of the current thread.

use crate::metrics::Metrics;
use crate::telemetry::{self, RequestSpan};
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{HeaderName, HeaderValue, Method, Request};
use axum::response::Response;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");

/// Builds [`Edge`] services; see the module documentation.
#[derive(Clone)]
pub struct EdgeLayer(Arc<Shared>);

struct Shared {
    metrics: Metrics,
    served_by: HeaderValue,
    body_limit: usize,
}

impl EdgeLayer {
    pub fn new(metrics: Metrics, instance_id: &str, body_limit: usize) -> Self {
        // A static header value is cloned without touching a reference count, so the cores never
        // contend for it. The instance id lives as long as the process, so leaking it once per
        // service built (once in production, a few dozen times in a test run) costs nothing.
        // `from_static` takes visible ASCII only (it panics on anything else), while a header
        // value may also carry UTF-8 bytes: such an id keeps the ordinary, counted value.
        let served_by = match HeaderValue::from_str(instance_id) {
            Ok(_) if instance_id.is_ascii() => {
                HeaderValue::from_static(Box::leak(instance_id.to_owned().into_boxed_str()))
            }
            Ok(value) => value,
            Err(_) => HeaderValue::from_static("invalid-instance-id"),
        };
        Self(Arc::new(Shared {
            metrics,
            served_by,
            body_limit,
        }))
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<<DefaultBodyLimit as Layer<S>>::Service>;

    fn layer(&self, inner: S) -> Self::Service {
        Edge {
            inner: DefaultBodyLimit::max(self.0.body_limit).layer(inner),
            shared: Arc::clone(&self.0),
        }
    }
}

#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// A fresh request id: a v4 UUID, hyphenated, encoded on the stack (no formatter, no `String`).
pub fn new_request_id() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("invalid-request-id"))
}

impl<S, B> Service<Request<B>> for Edge<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let request_id = match req.headers().get(&REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = new_request_id();
                req.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        let method = req.method().clone();
        let route = req.extensions().get::<MatchedPath>().cloned();
        // A server span only when traces are exported, and none for the probes and scrapes.
        let span = match &route {
            Some(route) if telemetry::exporting() && !is_probe(route.as_str()) => {
                RequestSpan::server(&method, route.as_str(), req.headers())
            }
            _ => RequestSpan::none(),
        };
        let inner = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        EdgeFuture {
            inner,
            span,
            shared: Arc::clone(&self.shared),
            request_id: Some(request_id),
            method,
            route,
            started: Instant::now(),
        }
    }
}

pin_project! {
    pub struct EdgeFuture<F> {
        #[pin]
        inner: F,
        shared: Arc<Shared>,
        request_id: Option<HeaderValue>,
        method: Method,
        route: Option<MatchedPath>,
        started: Instant,
        span: RequestSpan,
    }
}

/// Routes polled by load balancers and scrapers: not worth a trace each.
fn is_probe(route: &str) -> bool {
    matches!(route, "/health" | "/ready" | "/metrics")
}

impl<F, E> Future for EdgeFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = {
            let _entered = this.span.enter();
            std::task::ready!(this.inner.poll(cx))
        };
        if let Ok(response) = &mut result {
            let headers = response.headers_mut();
            // A handler (or the gateway, forwarding an upstream answer) may have set these already;
            // theirs win, as with tower-http's `if_not_present`.
            if let Some(id) = this.request_id.take() {
                headers.entry(REQUEST_ID).or_insert(id);
            }
            if !headers.contains_key(&SERVED_BY) {
                headers.insert(SERVED_BY, this.shared.served_by.clone());
            }
            let span: &RequestSpan = this.span;
            if !span.is_none() {
                let status = response.status().as_u16();
                span.finish(status);
                let latency_ms = this.started.elapsed().as_secs_f64() * 1000.0;
                tracing::debug!(parent: span.log_span(), status, latency_ms, "finished processing request");
            }
            let route = this.route.as_ref().map_or("unmatched", MatchedPath::as_str);
            this.shared.metrics.observe(
                route,
                this.method,
                response.status().as_u16(),
                this.started.elapsed(),
            );
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_instance_id_becomes_a_served_by_value_without_panicking() {
        let served_by = |id: &str| EdgeLayer::new(Metrics::new(), id, 1024).0.served_by.clone();
        assert_eq!(served_by("product-8081"), "product-8081");
        assert_eq!(served_by("produkt-ü").as_bytes(), "produkt-ü".as_bytes());
        assert_eq!(served_by("bad\nid"), "invalid-instance-id");
    }
}
