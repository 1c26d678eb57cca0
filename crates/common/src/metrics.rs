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

/// Buckets for a publisher confirm (`amqp_publish_confirm_seconds`): a confirm takes a few
/// milliseconds on a healthy broker and at most the 5 s confirm timeout.
pub const CONFIRM_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
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

/// A gauge with a fractional value (a balancer weight), registered with [`Metrics::float_gauge`].
#[derive(Clone, Default)]
pub struct FloatGauge(Arc<AtomicU64>);

impl std::fmt::Debug for FloatGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FloatGauge({})", self.get())
    }
}

impl FloatGauge {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// A latency histogram with buckets chosen for what it measures (a publish confirm, a store
/// call, an order's lag), registered with [`Metrics::histogram`]. Not striped like the request
/// histograms: these are observed a few thousand times a second at most.
#[derive(Clone)]
pub struct LatencyHistogram(Arc<Buckets>);

struct Buckets {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self(Arc::new(Buckets {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }))
    }

    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = self.0.bounds.iter().position(|upper| secs <= *upper) {
            self.0.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.0.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.0.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (upper, n) in self.0.bounds.iter().zip(&self.0.counts) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{upper}\"}} {cumulative}"
            );
        }
        let count = self.count();
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

enum Custom {
    Counter(Counter),
    Gauge(Gauge),
    FloatGauge(FloatGauge),
    Histogram(LatencyHistogram),
}

/// A registered metric: its family name, help, label pairs rendered (`a="x",b="y"`), value.
struct Registered {
    name: String,
    help: String,
    labels: String,
    metric: Custom,
}

type Series = (Method, u16);

struct Registry {
    /// Tells registries apart in the per-thread caches (tests run many in one process).
    id: u64,
    /// route → (method, status) → latency histogram.
    routes: DashMap<String, DashMap<Series, Arc<Histogram>>>,
    custom: Mutex<Vec<Registered>>,
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

    /// A gauge of one series of a labelled family (`gateway_target_weight{group,target}`).
    pub fn float_gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> FloatGauge {
        let gauge = FloatGauge::default();
        self.expose_float_gauge(name, help, labels, &gauge);
        gauge
    }

    /// Renders a gauge that lives elsewhere (a target's weight, which the balancer owns).
    pub fn expose_float_gauge(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        gauge: &FloatGauge,
    ) {
        self.register_with(name, help, labels, Custom::FloatGauge(gauge.clone()));
    }

    /// A latency histogram with these bucket bounds (seconds, ascending) and labels.
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        bounds: &'static [f64],
        labels: &[(&str, &str)],
    ) -> LatencyHistogram {
        let histogram = LatencyHistogram::new(bounds);
        self.register_with(name, help, labels, Custom::Histogram(histogram.clone()));
        histogram
    }

    fn register(&self, name: &str, help: &str, metric: Custom) {
        self.register_with(name, help, &[], metric);
    }

    fn register_with(&self, name: &str, help: &str, labels: &[(&str, &str)], metric: Custom) {
        let labels = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect::<Vec<_>>()
            .join(",");
        if let Ok(mut custom) = self.0.custom.lock() {
            custom.push(Registered {
                name: name.to_string(),
                help: help.to_string(),
                labels,
                metric,
            });
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
            // A family's series together, its HELP and TYPE once (the text format asks both).
            let mut sorted: Vec<&Registered> = custom.iter().collect();
            sorted.sort_by(|a, b| a.name.cmp(&b.name));
            let mut previous: Option<&str> = None;
            for r in sorted {
                let kind = match r.metric {
                    Custom::Counter(_) => "counter",
                    Custom::Gauge(_) | Custom::FloatGauge(_) => "gauge",
                    Custom::Histogram(_) => "histogram",
                };
                let name = r.name.as_str();
                if previous != Some(name) {
                    let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", r.help);
                    previous = Some(name);
                }
                let series = if r.labels.is_empty() {
                    name.to_string()
                } else {
                    format!("{name}{{{}}}", r.labels)
                };
                match &r.metric {
                    Custom::Counter(c) => {
                        let _ = writeln!(out, "{series} {}", c.get());
                    }
                    Custom::Gauge(g) => {
                        let _ = writeln!(out, "{series} {}", g.get());
                    }
                    Custom::FloatGauge(g) => {
                        let _ = writeln!(out, "{series} {}", g.get());
                    }
                    Custom::Histogram(h) => h.render(&mut out, name, &r.labels),
                }
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
        assert_eq!(
            text.matches("# TYPE orders_published_total counter")
                .count(),
            1
        );
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

    #[test]
    fn labelled_families_render_help_once_and_histograms_their_own_buckets() {
        const BOUNDS: [f64; 3] = [0.001, 0.01, 0.1];
        let m = Metrics::new();
        let a = m.float_gauge("weight", "Weights.", &[("target", "http://a:1")]);
        let b = m.float_gauge("weight", "Weights.", &[("target", "b\"x")]);
        a.set(0.75);
        b.set(0.25);
        let confirms = m.histogram("confirm_seconds", "Confirms.", &BOUNDS, &[("queue", "q")]);
        confirms.observe(Duration::from_micros(500));
        confirms.observe(Duration::from_millis(50));
        confirms.observe(Duration::from_secs(1));
        let lag = m.histogram("lag_seconds", "Lag.", &BOUNDS, &[]);
        lag.observe(Duration::from_millis(5));
        let text = m.render();
        assert_eq!(text.matches("# TYPE weight gauge").count(), 1, "{text}");
        assert!(
            text.contains("weight{target=\"http://a:1\"} 0.75"),
            "{text}"
        );
        assert!(text.contains("weight{target=\"b\\\"x\"} 0.25"), "{text}");
        assert!(text.contains("# TYPE confirm_seconds histogram"), "{text}");
        assert!(
            text.contains("confirm_seconds_bucket{queue=\"q\",le=\"0.001\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("confirm_seconds_bucket{queue=\"q\",le=\"0.1\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("confirm_seconds_bucket{queue=\"q\",le=\"+Inf\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("confirm_seconds_count{queue=\"q\"} 3"),
            "{text}"
        );
        assert!(text.contains("lag_seconds_bucket{le=\"0.01\"} 1"), "{text}");
        assert!(text.contains("lag_seconds_count 1"), "{text}");
    }
}
