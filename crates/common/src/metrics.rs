//! Prometheus text-format metrics: request count and latency per route, method and status, plus
//! whatever counters and gauges a service registers.
//!
//! Recording a request must not show up in the throughput benchmarks, and on a multi-core server
//! the cost that shows is not arithmetic but cache lines bounced between cores. So each latency
//! histogram keeps one set of counters per stripe (a thread writes only its own stripe's cache
//! line), and each thread finds a series through its own small cache before falling back to the
//! shared map. Rendering sums the stripes.

use axum::extract::State;
use axum::http::{header, Method};
use axum::response::IntoResponse;
use dashmap::DashMap;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Stripes per histogram: enough that the few worker threads of a service rarely share one.
const STRIPES: usize = 8;

/// One stripe's counters, on cache lines of their own (128 bytes: two lines, as adjacent-line
/// prefetching pairs them).
#[derive(Default)]
#[repr(align(128))]
struct Cells {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

#[derive(Default)]
struct Histogram {
    stripes: [Cells; STRIPES],
}

/// This thread's stripe, assigned round-robin on first use.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let cells = &self.stripes[stripe()];
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|upper| secs <= *upper) {
            cells.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        cells.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        cells.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn sum_of(&self, field: impl Fn(&Cells) -> &AtomicU64) -> u64 {
        self.stripes
            .iter()
            .map(|cells| field(cells).load(Ordering::Relaxed))
            .sum()
    }

    fn count(&self) -> u64 {
        self.sum_of(|c| &c.count)
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

type Series = (Method, u16);

struct Registry {
    /// Tells registries apart in the per-thread caches (tests run many in one process).
    id: u64,
    /// route → (method, status) → latency histogram.
    routes: DashMap<String, DashMap<Series, Arc<Histogram>>>,
    custom: Mutex<Vec<(String, String, Custom)>>,
}

impl Default for Registry {
    fn default() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            routes: DashMap::default(),
            custom: Mutex::default(),
        }
    }
}

/// Per thread: registry id → route → the series this thread has recorded. Routes are matched
/// paths (a service's fixed route table), so this stays as small as the route table.
type ThreadCache = HashMap<u64, HashMap<Box<str>, Vec<(Series, Arc<Histogram>)>>>;

thread_local! {
    static CACHE: RefCell<ThreadCache> = RefCell::new(HashMap::new());
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
        let cached = CACHE.with(|cache| {
            let cache = cache.borrow();
            let series = cache.get(&self.0.id)?.get(route)?;
            series
                .iter()
                .find(|((m, s), _)| *s == status && m == method)
                .map(|(_, h)| Arc::clone(h))
        });
        let histogram = match cached {
            Some(h) => h,
            None => self.register_series(route, method, status),
        };
        histogram.observe(elapsed);
    }

    /// The slow path of [`observe`](Self::observe): the shared map, then this thread's cache.
    fn register_series(&self, route: &str, method: &Method, status: u16) -> Arc<Histogram> {
        let key = (method.clone(), status);
        let histogram = Arc::clone(
            self.0
                .routes
                .entry(route.to_string())
                .or_default()
                .entry(key.clone())
                .or_default()
                .value(),
        );
        CACHE.with(|cache| {
            cache
                .borrow_mut()
                .entry(self.0.id)
                .or_default()
                .entry(route.into())
                .or_default()
                .push((key, Arc::clone(&histogram)));
        });
        histogram
    }

    /// Total requests seen for a route and status (used by tests and `/gateway/targets`-style views).
    pub fn requests(&self, route: &str, status: u16) -> u64 {
        self.0.routes.get(route).map_or(0, |by_status| {
            by_status
                .iter()
                .filter(|e| e.key().1 == status)
                .map(|e| e.value().count())
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
                h.count()
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
                cumulative += h.sum_of(|c| &c.buckets[i]);
                let _ = writeln!(
                    out,
                    "http_request_duration_seconds_bucket{{{labels},le=\"{upper}\"}} {cumulative}"
                );
            }
            let count = h.count();
            let sum = h.sum_of(|c| &c.sum_nanos) as f64 / 1e9;
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

    #[test]
    fn counts_from_many_threads_add_up_across_stripes_and_registries() {
        let a = Metrics::new();
        let b = Metrics::new();
        std::thread::scope(|scope| {
            for _ in 0..12 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        a.observe("/x", &Method::GET, 200, Duration::from_micros(300));
                    }
                    b.observe("/x", &Method::GET, 200, Duration::from_millis(1));
                });
            }
        });
        assert_eq!(a.requests("/x", 200), 12_000);
        assert_eq!(b.requests("/x", 200), 12);
        assert!(a.render().contains(
            "http_request_duration_seconds_bucket{route=\"/x\",method=\"GET\",status=\"200\",le=\"0.0005\"} 12000"
        ));
    }
}
