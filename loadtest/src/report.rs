//! Final report: merged statistics, JSON shape and the human-readable text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::http::Target;
use crate::run::step_names;
use crate::stats::{
    header_text, new_hist, LifecycleTallies, SecondRow, StepStats, Tally, WorkerRec,
};
use crate::{LifecycleConfig, RunConfig, Scenario};

#[derive(Debug, Clone, Serialize)]
pub struct SetupReport {
    pub carts_requested: u64,
    pub carts_created: u64,
    pub failures: u64,
    pub elapsed_s: f64,
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

impl Latency {
    pub fn from_hist(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency {
                min: 0.0,
                mean: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p99_9: 0.0,
                max: 0.0,
            };
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            min: ms(h.min()),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Counts per outcome.
#[derive(Debug, Clone, Serialize)]
pub struct StatusCounts {
    /// Every HTTP status seen, by code.
    pub by_code: BTreeMap<u16, u64>,
    pub ok_2xx: u64,
    pub s400: u64,
    pub s402: u64,
    pub s404: u64,
    pub other_4xx: u64,
    pub s5xx: u64,
    /// Connection errors / protocol errors.
    pub transport_errors: u64,
    pub timeouts: u64,
    /// 2xx responses whose body was unusable (e.g. no cart id).
    pub invalid_responses: u64,
}

impl StatusCounts {
    fn from_tally(t: &Tally) -> StatusCounts {
        let s400 = t.count_of(400);
        let s402 = t.count_of(402);
        let s404 = t.count_of(404);
        StatusCounts {
            by_code: t.codes(),
            ok_2xx: t.ok(),
            s400,
            s402,
            s404,
            other_4xx: t.class_count(4) - s400 - s402 - s404,
            s5xx: t.class_count(5),
            transport_errors: t.transport,
            timeouts: t.timeout,
            invalid_responses: t.invalid,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub name: String,
    /// Completed requests (cut-at-stop ones excluded).
    pub count: u64,
    pub statuses: StatusCounts,
    pub latency_ms: Latency,
}

impl StepReport {
    fn from_stats(s: &StepStats) -> StepReport {
        StepReport {
            name: s.name.to_string(),
            count: s.tally.completed(),
            statuses: StatusCounts::from_tally(&s.tally),
            latency_ms: Latency::from_hist(&s.hist),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OpenModel {
    pub rate: f64,
    /// Iterations whose intended send time fell inside the run.
    pub due: u64,
    /// Due iterations that were never sent (all workers busy until the stop time).
    pub dropped: u64,
    /// Iterations sent more than 10 ms after their intended time (all workers were busy).
    pub late: u64,
    /// Service time (from the actual send), for comparison with the corrected latency.
    pub service_time_ms: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceShare {
    pub instance: String,
    pub count: u64,
    pub share: f64,
}

/// The `lifecycle` scenario's settings and end-of-run tallies.
#[derive(Debug, Clone, Serialize)]
pub struct LifecycleReport {
    pub settings: LifecycleConfig,
    #[serde(flatten)]
    pub tallies: LifecycleTallies,
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub base_url: String,
    /// "closed" (workers send → await) or "open" (fixed arrival rate).
    pub model: String,
    pub concurrency: usize,
    pub requests_limit: Option<u64>,
    pub duration_limit_s: Option<f64>,
    pub setup: Option<SetupReport>,
    /// Wall time of the timed phase.
    pub elapsed_s: f64,
    /// Completed iterations per second.
    pub throughput_per_s: f64,
    /// Whole iterations (= the single request for checkout/product). Latency from intended send.
    pub iterations: StepReport,
    /// Per request kind.
    pub steps: Vec<StepReport>,
    /// Iterations still in flight when the duration ran out (cut, not counted anywhere else).
    pub cut_at_stop: u64,
    pub open_model: Option<OpenModel>,
    /// Responses per `x-served-by` header value (all steps).
    pub served_by: Vec<InstanceShare>,
    /// Connections opened in the timed phase (workers + reconnects).
    pub connections: u64,
    /// `lifecycle` only: orders placed, cancels by answer, final statuses, failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<LifecycleReport>,
    /// `--audit`: where the checkout lines went and how many.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<crate::audit::AuditSummary>,
    #[serde(skip)]
    pub timeseries: Vec<SecondRow>,
}

pub(crate) fn build_report(
    cfg: &RunConfig,
    target: &Target,
    setup: Option<SetupReport>,
    recs: Vec<(WorkerRec, u64)>,
    timeseries: Vec<SecondRow>,
    elapsed: Duration,
    due: Option<u64>,
) -> Report {
    let mut iter = StepStats::new("iteration");
    let mut steps: Vec<StepStats> = step_names(cfg.scenario)
        .iter()
        .map(|n| StepStats::new(n))
        .collect();
    let mut service = new_hist(3);
    let mut served: BTreeMap<String, u64> = BTreeMap::new();
    let mut started = 0;
    let mut late = 0;
    let mut connections = 0;
    let mut lifecycle = LifecycleTallies::default();
    for (r, conns) in &recs {
        lifecycle.merge(&r.lifecycle);
        iter.merge(&r.iter);
        for (acc, s) in steps.iter_mut().zip(&r.steps) {
            acc.merge(s);
        }
        let _ = service.add(&r.service);
        for (h, n) in &r.served_total {
            *served.entry(header_text(h)).or_default() += n;
        }
        started += r.started;
        late += r.late;
        connections += conns;
    }
    // Single-step scenarios record latency once (see `WorkerRec::step`): the step's histogram is
    // the iteration's in the closed model and the service time's in the open model.
    if let [only] = steps.as_mut_slice() {
        only.hist = if cfg.rate.is_some() {
            service.clone()
        } else {
            iter.hist.clone()
        };
    }
    let total_served: u64 = served.values().sum();
    let served_by = served
        .into_iter()
        .map(|(instance, count)| InstanceShare {
            instance,
            count,
            share: if total_served > 0 {
                count as f64 / total_served as f64
            } else {
                0.0
            },
        })
        .collect();
    let completed = iter.tally.completed();
    let elapsed_s = elapsed.as_secs_f64();
    let open_model = cfg.rate.map(|rate| {
        let due = due.unwrap_or(started);
        OpenModel {
            rate,
            due,
            dropped: due.saturating_sub(started),
            late,
            service_time_ms: Latency::from_hist(&service),
        }
    });
    let limit = cfg.effective_requests();
    Report {
        scenario: cfg.scenario,
        base_url: target.base_url.clone(),
        model: if cfg.rate.is_some() { "open" } else { "closed" }.into(),
        concurrency: cfg.concurrency,
        requests_limit: (limit != u64::MAX).then_some(limit),
        duration_limit_s: cfg.duration.map(|d| d.as_secs_f64()),
        setup,
        elapsed_s,
        throughput_per_s: if elapsed_s > 0.0 {
            completed as f64 / elapsed_s
        } else {
            0.0
        },
        cut_at_stop: iter.tally.stopped,
        iterations: StepReport::from_stats(&iter),
        steps: steps.iter().map(StepReport::from_stats).collect(),
        open_model,
        served_by,
        connections,
        lifecycle: (cfg.scenario == Scenario::Lifecycle).then_some(LifecycleReport {
            settings: cfg.lifecycle,
            tallies: lifecycle,
        }),
        audit: None,
        timeseries,
    }
}

impl Report {
    /// Human-readable report.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "== loadtest {} against {} ({} model, concurrency {}) ==",
            self.scenario, self.base_url, self.model, self.concurrency
        );
        if let Some(s) = &self.setup {
            let _ = writeln!(
                o,
                "setup (untimed): {} of {} carts prepared in {:.1}s{}",
                s.carts_created,
                s.carts_requested,
                s.elapsed_s,
                if s.failures > 0 {
                    format!(", {} failed", s.failures)
                } else {
                    String::new()
                }
            );
        }
        let unit = match self.scenario {
            Scenario::Flow | Scenario::Lifecycle => "iterations",
            _ => "requests",
        };
        let _ = writeln!(
            o,
            "completed {} {unit} in {:.2}s = {:.1} {unit}/s",
            self.iterations.count, self.elapsed_s, self.throughput_per_s
        );
        if self.cut_at_stop > 0 {
            let _ = writeln!(
                o,
                "{} in flight at the stop time (cut, not counted)",
                self.cut_at_stop
            );
        }
        if let Some(om) = &self.open_model {
            let _ = writeln!(
                o,
                "open model: target {:.1}/s, {} due, {} late (>10ms behind schedule), {} dropped (never sent)",
                om.rate, om.due, om.late, om.dropped
            );
        }
        o.push('\n');
        let _ = writeln!(o, "{}", status_header());
        let multi = self.steps.len() > 1;
        let label = if multi {
            "iteration"
        } else {
            self.steps.first().map_or("requests", |s| s.name.as_str())
        };
        let _ = writeln!(o, "{}", status_row(label, &self.iterations));
        if multi {
            for s in &self.steps {
                let _ = writeln!(o, "{}", status_row(&s.name, s));
            }
        }
        o.push('\n');
        let _ = writeln!(o, "{}", latency_header());
        let _ = writeln!(o, "{}", latency_row(label, &self.iterations.latency_ms));
        if multi {
            for s in &self.steps {
                let _ = writeln!(o, "{}", latency_row(&s.name, &s.latency_ms));
            }
        }
        if let Some(om) = &self.open_model {
            let _ = writeln!(o, "{}", latency_row("service time", &om.service_time_ms));
            let _ = writeln!(
                o,
                "(open model: latency is measured from the intended send time)"
            );
        }
        if let Some(l) = &self.lifecycle {
            o.push('\n');
            l.write_text(&mut o);
        }
        if !self.served_by.is_empty() {
            o.push('\n');
            let _ = writeln!(o, "responses per x-served-by instance:");
            for s in &self.served_by {
                let _ = writeln!(
                    o,
                    "  {:<24} {:>10}  {:>5.1}%",
                    s.instance,
                    s.count,
                    s.share * 100.0
                );
            }
        }
        if let Some(a) = &self.audit {
            o.push('\n');
            let _ = writeln!(o, "audit: {} checkout lines in {}", a.lines, a.path);
            if let Some(e) = &a.error {
                let _ = writeln!(o, "audit: INCOMPLETE: {e}");
            }
        }
        o
    }
}

impl LifecycleReport {
    fn write_text(&self, o: &mut String) {
        let (s, t) = (&self.settings, &self.tallies);
        let _ = writeln!(
            o,
            "lifecycle: {} polls per order; {:.0}% cancelled, then polled until final (at most {}); {} ms between polls",
            s.polls,
            s.cancel_share * 100.0,
            s.final_polls,
            s.poll_interval.as_millis()
        );
        let c = &t.checkouts;
        let _ = writeln!(
            o,
            "  checkouts     {:>9}: placed (200) {}, pending (202) {}, out of stock (409) {}, declined (402) {}, failed {}",
            c.placed + c.pending + c.out_of_stock + c.declined + c.failed,
            c.placed,
            c.pending,
            c.out_of_stock,
            c.declined,
            c.failed
        );
        let c = &t.cancels;
        let _ = writeln!(
            o,
            "  cancels       {:>9}: accepted (202) {}, already cancelled (200) {}, already fulfilled (409) {}, failed {}",
            c.accepted + c.already_cancelled + c.already_fulfilled + c.failed,
            c.accepted,
            c.already_cancelled,
            c.already_fulfilled,
            c.failed
        );
        let f = &t.final_status;
        let _ = writeln!(
            o,
            "  final status  {:>9}: fulfilled {}, cancelled {}, still not final {}, not followed to the end {}",
            f.fulfilled + f.cancelled + f.not_final + f.unknown,
            f.fulfilled,
            f.cancelled,
            f.not_final,
            f.unknown
        );
        let i = &t.iterations;
        let _ = writeln!(
            o,
            "  iterations    {:>9}: ok {}, failed {} (5xx {}, unexpected status {}, transport {}, timeout {}, bad body {})",
            i.ok + i.failed,
            i.ok,
            i.failed,
            i.failed_5xx,
            i.failed_unexpected_status,
            i.failed_transport,
            i.failed_timeout,
            i.failed_invalid
        );
        let _ = writeln!(
            o,
            "  (402, 409 OUT_OF_STOCK and 409 ORDER_ALREADY_FULFILLED are expected outcomes, not failures)"
        );
    }
}

fn status_header() -> String {
    format!(
        "{:<14} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9} {:>8}",
        "status", "total", "2xx", "400", "402", "404", "4xx*", "5xx", "transport", "timeout"
    )
}

fn status_row(name: &str, s: &StepReport) -> String {
    let c = &s.statuses;
    format!(
        "{:<14} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9} {:>8}",
        name,
        s.count,
        c.ok_2xx,
        c.s400,
        c.s402,
        c.s404,
        c.other_4xx,
        c.s5xx,
        c.transport_errors + c.invalid_responses,
        c.timeouts
    )
}

fn latency_header() -> String {
    format!(
        "{:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "min", "mean", "p50", "p90", "p99", "p99.9", "max"
    )
}

fn latency_row(name: &str, l: &Latency) -> String {
    format!(
        "{:<14} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        name, l.min, l.mean, l.p50, l.p90, l.p99, l.p99_9, l.max
    )
}
