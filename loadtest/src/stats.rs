//! Per-worker statistics (no shared state on the hot path except a few relaxed atomics for the
//! live progress display) and the per-second time series collector.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use hyper::header::HeaderValue;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::http::Failure;

/// Highest latency the histograms track exactly (larger values are clamped): 10 minutes in µs.
const HIST_MAX_US: u64 = 600_000_000;

/// Histogram of latencies in microseconds.
pub fn new_hist(sigfig: u8) -> Histogram<u64> {
    // The bounds are constants known to be valid (1 <= low, high >= 2*low, sigfig <= 5).
    Histogram::new_with_bounds(1, HIST_MAX_US, sigfig.min(5)).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Result of one request or one whole iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP response with this status.
    Status(u16),
    /// A 2xx response whose body could not be understood (e.g. no cart id).
    Invalid(u16),
    /// No response.
    Failed(Failure),
}

impl Outcome {
    pub fn is_ok(self) -> bool {
        matches!(self, Outcome::Status(s) if (200..300).contains(&s))
    }
}

/// Counts per status code and per failure kind.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    codes: Vec<(u16, u64)>,
    pub transport: u64,
    pub timeout: u64,
    pub invalid: u64,
    /// Requests cut because the run's time was up (not counted as errors nor in latency).
    pub stopped: u64,
}

impl Tally {
    pub fn add(&mut self, o: Outcome) {
        match o {
            Outcome::Status(code) => self.add_code(code, 1),
            Outcome::Invalid(_) => self.invalid += 1,
            Outcome::Failed(Failure::Transport) => self.transport += 1,
            Outcome::Failed(Failure::Timeout) => self.timeout += 1,
            Outcome::Failed(Failure::Stopped) => self.stopped += 1,
        }
    }

    fn add_code(&mut self, code: u16, n: u64) {
        if let Some(e) = self.codes.iter_mut().find(|(c, _)| *c == code) {
            e.1 += n;
        } else {
            self.codes.push((code, n));
        }
    }

    pub fn merge(&mut self, other: &Tally) {
        for &(c, n) in &other.codes {
            self.add_code(c, n);
        }
        self.transport += other.transport;
        self.timeout += other.timeout;
        self.invalid += other.invalid;
        self.stopped += other.stopped;
    }

    /// Completed (counted) requests: everything except those cut by the stop time.
    pub fn completed(&self) -> u64 {
        self.codes.iter().map(|(_, n)| n).sum::<u64>()
            + self.transport
            + self.timeout
            + self.invalid
    }

    pub fn ok(&self) -> u64 {
        self.codes
            .iter()
            .filter(|(c, _)| (200..300).contains(c))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn count_of(&self, code: u16) -> u64 {
        self.codes
            .iter()
            .filter(|(c, _)| *c == code)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn codes(&self) -> BTreeMap<u16, u64> {
        self.codes.iter().copied().collect()
    }

    pub fn class_count(&self, class: u16) -> u64 {
        self.codes
            .iter()
            .filter(|(c, _)| c / 100 == class)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Latency histogram + status tally of one step (or of whole iterations).
pub struct StepStats {
    pub name: &'static str,
    pub hist: Histogram<u64>,
    pub tally: Tally,
}

impl StepStats {
    pub fn new(name: &'static str) -> StepStats {
        StepStats {
            name,
            hist: new_hist(3),
            tally: Tally::default(),
        }
    }

    pub fn record(&mut self, o: Outcome, d: Duration) {
        self.tally.add(o);
        if o != Outcome::Failed(Failure::Stopped) {
            let _ = self.hist.record(micros(d).min(HIST_MAX_US));
        }
    }

    pub fn merge(&mut self, other: &StepStats) {
        let _ = self.hist.add(&other.hist);
        self.tally.merge(&other.tally);
    }
}

/// Counters read by the progress display.
#[derive(Debug, Default)]
pub struct Live {
    pub done: AtomicU64,
    pub non_2xx: AtomicU64,
    pub failed: AtomicU64,
}

/// What one worker saw during one second of the timed phase.
pub struct SecondBucket {
    pub sec: u32,
    pub hist: Histogram<u64>,
    pub done: u64,
    pub ok: u64,
    pub non_2xx: u64,
    pub failed: u64,
    pub served: Vec<(HeaderValue, u64)>,
}

impl SecondBucket {
    fn new(sec: u32) -> SecondBucket {
        SecondBucket {
            sec,
            hist: new_hist(2),
            done: 0,
            ok: 0,
            non_2xx: 0,
            failed: 0,
            served: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.done == 0 && self.served.is_empty()
    }
}

/// Checkout answers of the `lifecycle` scenario.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CheckoutTally {
    /// 200: the broker confirmed the order.
    pub placed: u64,
    /// 202: the confirm was lost; the order is `pending`.
    pub pending: u64,
    /// 409 `OUT_OF_STOCK` (expected, not a failure).
    pub out_of_stock: u64,
    /// 402 (expected, not a failure).
    pub declined: u64,
    /// 5xx, transport errors, timeouts, unusable bodies and any other status.
    pub failed: u64,
}

/// Cancel answers of the `lifecycle` scenario (one per cancel request that got an answer).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CancelTally {
    /// 202: the cancel is on its way (`cancelling`).
    pub accepted: u64,
    /// 200: the order was already cancelled.
    pub already_cancelled: u64,
    /// 409 `ORDER_ALREADY_FULFILLED`: the warehouse was first (expected, not a failure).
    pub already_fulfilled: u64,
    /// 5xx (e.g. 503 `BROKER_UNAVAILABLE`), transport errors, timeouts, any other status.
    pub failed: u64,
}

/// The last status seen of each order a checkout created (200 or 202), counted once per order.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FinalTally {
    pub fulfilled: u64,
    pub cancelled: u64,
    /// Still `pending`, `placed` or `cancelling` when its polls were used up.
    pub not_final: u64,
    /// Not followed to the end: a failure or the stop time ended its iteration first.
    pub unknown: u64,
}

/// How `lifecycle` iterations ended. Expected non-2xx answers (402, 409 `OUT_OF_STOCK`,
/// 409 `ORDER_ALREADY_FULFILLED`) are not failures; iterations cut at the stop time are in
/// neither count.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IterationTally {
    pub ok: u64,
    pub failed: u64,
    /// The failures by the kind of the request that ended them.
    pub failed_5xx: u64,
    /// Any status the step does not expect (e.g. 404 for an order just placed, 400).
    pub failed_unexpected_status: u64,
    pub failed_transport: u64,
    pub failed_timeout: u64,
    /// A 2xx whose body could not be understood (no order id, unknown status).
    pub failed_invalid: u64,
}

/// End-of-run tallies of the `lifecycle` scenario.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LifecycleTallies {
    pub checkouts: CheckoutTally,
    pub cancels: CancelTally,
    pub final_status: FinalTally,
    pub iterations: IterationTally,
}

impl LifecycleTallies {
    /// Record the failure that ended an iteration (a cut at the stop time is not one).
    pub fn failure(&mut self, o: Outcome) {
        let i = &mut self.iterations;
        match o {
            Outcome::Status(s) if s >= 500 => i.failed_5xx += 1,
            Outcome::Status(_) => i.failed_unexpected_status += 1,
            Outcome::Invalid(_) => i.failed_invalid += 1,
            Outcome::Failed(Failure::Transport) => i.failed_transport += 1,
            Outcome::Failed(Failure::Timeout) => i.failed_timeout += 1,
            Outcome::Failed(Failure::Stopped) => return,
        }
        i.failed += 1;
    }

    pub fn merge(&mut self, o: &LifecycleTallies) {
        let (c, oc) = (&mut self.checkouts, &o.checkouts);
        c.placed += oc.placed;
        c.pending += oc.pending;
        c.out_of_stock += oc.out_of_stock;
        c.declined += oc.declined;
        c.failed += oc.failed;
        let (c, oc) = (&mut self.cancels, &o.cancels);
        c.accepted += oc.accepted;
        c.already_cancelled += oc.already_cancelled;
        c.already_fulfilled += oc.already_fulfilled;
        c.failed += oc.failed;
        let (f, of) = (&mut self.final_status, &o.final_status);
        f.fulfilled += of.fulfilled;
        f.cancelled += of.cancelled;
        f.not_final += of.not_final;
        f.unknown += of.unknown;
        let (i, oi) = (&mut self.iterations, &o.iterations);
        i.ok += oi.ok;
        i.failed += oi.failed;
        i.failed_5xx += oi.failed_5xx;
        i.failed_unexpected_status += oi.failed_unexpected_status;
        i.failed_transport += oi.failed_transport;
        i.failed_timeout += oi.failed_timeout;
        i.failed_invalid += oi.failed_invalid;
    }
}

/// Everything one worker records; merged after the run.
pub struct WorkerRec {
    pub iter: StepStats,
    pub steps: Vec<StepStats>,
    /// Open model only: time from the actual send (not the intended one) to completion.
    pub service: Histogram<u64>,
    pub served_total: Vec<(HeaderValue, u64)>,
    pub started: u64,
    pub late: u64,
    /// `lifecycle` only (stays zero for the other scenarios).
    pub lifecycle: LifecycleTallies,
    open_model: bool,
    /// Completions not yet published to the live counters (batched to keep atomics cold).
    pending_live: u64,
    bucket: Option<SecondBucket>,
    tx: Option<mpsc::UnboundedSender<SecondBucket>>,
    live: Arc<Live>,
    start: Instant,
}

impl WorkerRec {
    pub fn new(
        steps: &[&'static str],
        open_model: bool,
        tx: mpsc::UnboundedSender<SecondBucket>,
        live: Arc<Live>,
        start: Instant,
    ) -> WorkerRec {
        WorkerRec {
            iter: StepStats::new("iteration"),
            steps: steps.iter().map(|n| StepStats::new(n)).collect(),
            service: new_hist(3),
            served_total: Vec::new(),
            started: 0,
            late: 0,
            lifecycle: LifecycleTallies::default(),
            open_model,
            pending_live: 0,
            bucket: None,
            tx: Some(tx),
            live,
            start,
        }
    }

    /// Record one step of an iteration (service time of that request).
    ///
    /// Single-step scenarios only tally here: their latency histogram is the iteration one (or
    /// the service-time one in the open model), so the hot path records each value only once.
    pub fn step(&mut self, idx: usize, o: Outcome, d: Duration) {
        let single = self.steps.len() == 1;
        if let Some(s) = self.steps.get_mut(idx) {
            if single {
                s.tally.add(o);
            } else {
                s.record(o, d);
            }
        }
    }

    /// Record the `x-served-by` header of a response.
    pub fn served_by(&mut self, v: &HeaderValue, at: Instant) {
        add_served(&mut self.served_total, v);
        let b = self.bucket_for(at);
        add_served(&mut b.served, v);
    }

    /// Record one finished iteration. `latency` is measured from the intended start.
    pub fn iteration(&mut self, o: Outcome, latency: Duration, service: Duration, at: Instant) {
        self.iter.record(o, latency);
        if o == Outcome::Failed(Failure::Stopped) {
            return;
        }
        if self.open_model {
            let _ = self.service.record(micros(service).min(HIST_MAX_US));
        }
        self.pending_live += 1;
        if self.pending_live >= 64 {
            self.publish_live();
        }
        let ok = o.is_ok();
        let failed = matches!(o, Outcome::Failed(_) | Outcome::Invalid(_));
        if failed {
            self.live.failed.fetch_add(1, Relaxed);
        } else if !ok {
            self.live.non_2xx.fetch_add(1, Relaxed);
        }
        let b = self.bucket_for(at);
        b.done += 1;
        if ok {
            b.ok += 1;
        } else if failed {
            b.failed += 1;
        } else {
            b.non_2xx += 1;
        }
        let _ = b.hist.record(micros(latency).min(HIST_MAX_US));
    }

    fn bucket_for(&mut self, at: Instant) -> &mut SecondBucket {
        let sec =
            u32::try_from(at.saturating_duration_since(self.start).as_secs()).unwrap_or(u32::MAX);
        let stale = self.bucket.as_ref().is_some_and(|b| b.sec != sec);
        if stale {
            self.flush();
        }
        self.bucket.get_or_insert_with(|| SecondBucket::new(sec))
    }

    /// Hand the current second's bucket to the collector.
    pub fn flush(&mut self) {
        self.publish_live();
        if let Some(b) = self.bucket.take() {
            if let (false, Some(tx)) = (b.is_empty(), &self.tx) {
                let _ = tx.send(b);
            }
        }
    }

    fn publish_live(&mut self) {
        self.live.done.fetch_add(self.pending_live, Relaxed);
        self.pending_live = 0;
    }

    /// Flush the last bucket and release the channel (the collector ends when all are gone).
    pub fn finish(&mut self) {
        self.publish_live();
        self.flush();
        self.tx = None;
    }

    /// Flush the bucket if `at` falls into a later second (called before idling in open model).
    pub fn flush_if_before(&mut self, at: Instant) {
        let sec =
            u32::try_from(at.saturating_duration_since(self.start).as_secs()).unwrap_or(u32::MAX);
        if self.bucket.as_ref().is_some_and(|b| b.sec < sec) {
            self.flush();
        }
    }
}

fn add_served(list: &mut Vec<(HeaderValue, u64)>, v: &HeaderValue) {
    if let Some(e) = list.iter_mut().find(|(h, _)| h == v) {
        e.1 += 1;
    } else {
        list.push((v.clone(), 1));
    }
}

/// Header value as text for reports.
pub fn header_text(v: &HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}

/// One row of the per-second time series.
#[derive(Debug, Clone, Serialize)]
pub struct SecondRow {
    /// Seconds since the start of the timed phase (row covers `[second, second+1)`).
    pub second: u32,
    pub completed: u64,
    pub ok: u64,
    pub non_2xx: u64,
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Responses per `x-served-by` instance in this second.
    pub served_by: BTreeMap<String, u64>,
}

struct SecondAgg {
    hist: Histogram<u64>,
    done: u64,
    ok: u64,
    non_2xx: u64,
    failed: u64,
    served: BTreeMap<String, u64>,
}

/// Collects per-second buckets from all workers (runs as its own task).
pub async fn collect_seconds(mut rx: mpsc::UnboundedReceiver<SecondBucket>) -> Vec<SecondRow> {
    let mut secs: BTreeMap<u32, SecondAgg> = BTreeMap::new();
    while let Some(b) = rx.recv().await {
        let agg = secs.entry(b.sec).or_insert_with(|| SecondAgg {
            hist: new_hist(2),
            done: 0,
            ok: 0,
            non_2xx: 0,
            failed: 0,
            served: BTreeMap::new(),
        });
        let _ = agg.hist.add(&b.hist);
        agg.done += b.done;
        agg.ok += b.ok;
        agg.non_2xx += b.non_2xx;
        agg.failed += b.failed;
        for (h, n) in &b.served {
            *agg.served.entry(header_text(h)).or_default() += n;
        }
    }
    let Some(&last) = secs.keys().next_back() else {
        return Vec::new();
    };
    // Emit every second (also empty ones) so that stalls are visible as zeros.
    (0..=last)
        .map(|second| match secs.get(&second) {
            Some(a) => SecondRow {
                second,
                completed: a.done,
                ok: a.ok,
                non_2xx: a.non_2xx,
                failed: a.failed,
                p50_ms: ms(a.hist.value_at_quantile(0.5), a.done),
                p99_ms: ms(a.hist.value_at_quantile(0.99), a.done),
                max_ms: ms(a.hist.max(), a.done),
                served_by: a.served.clone(),
            },
            None => SecondRow {
                second,
                completed: 0,
                ok: 0,
                non_2xx: 0,
                failed: 0,
                p50_ms: 0.0,
                p99_ms: 0.0,
                max_ms: 0.0,
                served_by: BTreeMap::new(),
            },
        })
        .collect()
}

fn ms(us: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        us as f64 / 1000.0
    }
}
