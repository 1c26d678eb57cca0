//! Prometheus text-format metrics: request count and latency per route, method and status, plus
//! whatever counters and gauges a service registers.
//!
//! Small on purpose: a lookup in two sharded maps and a few relaxed atomic adds per request, so the
//! metrics never show up in the throughput benchmarks.

use axum::extract::{MatchedPath, State};
use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use std::fmt::Write;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|upper| secs <= *upper) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// A monotonically increasing counter registered with [`Metrics::counter`].
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down, registered with [`Metrics::gauge`].
#[derive(Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn add(&self, v: i64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

enum Custom {
    Counter(Counter),
    Gauge(Gauge),
}

#[derive(Default)]
struct Registry {
    /// route → (method, status) → latency histogram.
    routes: DashMap<String, DashMap<(Method, u16), Arc<Histogram>>>,
    custom: Mutex<Vec<(String, String, Custom)>>,
}

#[derive(Clone, Default)]
pub struct Metrics(Arc<Registry>);

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a counter; call at start-up, keep the handle.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        let counter = Counter::default();
        self.register(name, help, Custom::Counter(counter.clone()));
        counter
    }

    /// Registers a gauge; call at start-up, keep the handle.
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        let gauge = Gauge::default();
        self.register(name, help, Custom::Gauge(gauge.clone()));
        gauge
    }

    fn register(&self, name: &str, help: &str, metric: Custom) {
        if let Ok(mut custom) = self.0.custom.lock() {
            custom.push((name.to_string(), help.to_string(), metric));
        }
    }

    pub fn observe(&self, route: &str, method: &Method, status: u16, elapsed: Duration) {
        let key = (method.clone(), status);
        if let Some(by_status) = self.0.routes.get(route) {
            if let Some(h) = by_status.get(&key) {
                h.observe(elapsed);
                return;
            }
            let h = Arc::clone(by_status.entry(key).or_default().value());
            h.observe(elapsed);
            return;
        }
        let by_status = self.0.routes.entry(route.to_string()).or_default();
        let h = Arc::clone(by_status.entry(key).or_default().value());
        h.observe(elapsed);
    }

    /// Total requests seen for a route and status (used by tests and `/gateway/targets`-style views).
    pub fn requests(&self, route: &str, status: u16) -> u64 {
        self.0.routes.get(route).map_or(0, |by_status| {
            by_status
                .iter()
                .filter(|e| e.key().1 == status)
                .map(|e| e.value().count.load(Ordering::Relaxed))
                .sum()
        })
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP http_requests_total HTTP requests by route, method and status.\n");
        out.push_str("# TYPE http_requests_total counter\n");
        let mut series: Vec<(String, Method, u16, Arc<Histogram>)> = Vec::new();
        for route in self.0.routes.iter() {
            for entry in route.value().iter() {
                let (method, status) = entry.key().clone();
                series.push((
                    route.key().clone(),
                    method,
                    status,
                    Arc::clone(entry.value()),
                ));
            }
        }
        series.sort_by(|a, b| (&a.0, a.1.as_str(), a.2).cmp(&(&b.0, b.1.as_str(), b.2)));
        for (route, method, status, h) in &series {
            let _ = writeln!(
                out,
                "http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {}",
                h.count.load(Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP http_request_duration_seconds HTTP request latency by route, method and status.\n",
        );
        out.push_str("# TYPE http_request_duration_seconds histogram\n");
        for (route, method, status, h) in &series {
            let labels = format!("route=\"{route}\",method=\"{method}\",status=\"{status}\"");
            let mut cumulative = 0;
            for (i, upper) in BUCKETS.iter().enumerate() {
                cumulative += h.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "http_request_duration_seconds_bucket{{{labels},le=\"{upper}\"}} {cumulative}"
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(
                out,
                "http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(out, "http_request_duration_seconds_sum{{{labels}}} {sum}");
            let _ = writeln!(
                out,
                "http_request_duration_seconds_count{{{labels}}} {count}"
            );
        }
        if let Ok(custom) = self.0.custom.lock() {
            for (name, help, metric) in custom.iter() {
                let (kind, value) = match metric {
                    Custom::Counter(c) => ("counter", c.get().to_string()),
                    Custom::Gauge(g) => ("gauge", g.get().to_string()),
                };
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
                );
            }
        }
        out
    }
}

/// Layer: times every request and records it under its matched route (never the raw path, which
/// would let clients create unbounded series). A plain tower layer rather than `from_fn`: it sits
/// on every request of every service and should cost a few atomic adds, not a boxed future.
#[derive(Clone)]
pub struct TrackLayer(pub Metrics);

impl<S> tower::Layer<S> for TrackLayer {
    type Service = Track<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Track {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Track<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B> tower::Service<axum::http::Request<B>> for Track<S>
where
    S: tower::Service<axum::http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let method = req.method().clone();
        let route = req.extensions().get::<MatchedPath>().cloned();
        TrackFuture {
            inner: self.inner.call(req),
            metrics: self.metrics.clone(),
            method,
            route,
            started: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct TrackFuture<F> {
        #[pin]
        inner: F,
        metrics: Metrics,
        method: Method,
        route: Option<MatchedPath>,
        started: Instant,
    }
}

impl<F, E> Future for TrackFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            let route = this.route.as_ref().map_or("unmatched", MatchedPath::as_str);
            this.metrics.observe(
                route,
                this.method,
                response.status().as_u16(),
                this.started.elapsed(),
            );
        }
        Poll::Ready(result)
    }
}

/// `GET /metrics`.
pub async fn render(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_buckets_and_custom_metrics() {
        let m = Metrics::new();
        let published = m.counter("orders_published_total", "Orders confirmed by the broker.");
        published.add(3);
        m.observe(
            "/products/{id}",
            &Method::GET,
            200,
            Duration::from_millis(2),
        );
        m.observe(
            "/products/{id}",
            &Method::GET,
            200,
            Duration::from_millis(20),
        );
        m.observe(
            "/products/{id}",
            &Method::GET,
            404,
            Duration::from_micros(100),
        );
        let text = m.render();
        assert!(text.contains(
            "http_requests_total{route=\"/products/{id}\",method=\"GET\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "http_request_duration_seconds_bucket{route=\"/products/{id}\",method=\"GET\",status=\"200\",le=\"0.0025\"} 1"
        ));
        assert!(text.contains(
            "http_request_duration_seconds_bucket{route=\"/products/{id}\",method=\"GET\",status=\"200\",le=\"0.025\"} 2"
        ));
        assert!(text.contains("orders_published_total 3"));
        assert_eq!(m.requests("/products/{id}", 404), 1);
    }
}
