//! Target groups: each target's health (active checks with thresholds), weight, and counts.
//!
//! The hot path touches only atomics: [`TargetGroup::pick`] reads each target's health flag and
//! weight, and [`Target::record`] adds to two counters. The health-check tasks and the ATW tick
//! own the slower state behind mutexes.

use crate::balancer::{self, Verdict, WindowStats};
use crate::config::{AtwConfig, HealthCheckConfig, TargetUrl};
use common::metrics::FloatGauge;
use common::shutdown::CancellationToken;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain counters behind; keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug, Default)]
struct HealthState {
    consecutive_ok: u32,
    consecutive_fail: u32,
    checks: u64,
    last_error: Option<String>,
}

#[derive(Debug)]
struct AtwState {
    /// Per tick: (responses, errors) added during that tick; newest at the back.
    window: VecDeque<(u64, u64)>,
    seen_requests: u64,
    seen_errors: u64,
    verdict: Verdict,
    window_stats: WindowStats,
}

/// One registered target.
#[derive(Debug)]
pub struct Target {
    pub url: TargetUrl,
    healthy: AtomicBool,
    /// Shared with `/metrics` (`gateway_target_weight`).
    weight: FloatGauge,
    requests: AtomicU64,
    errors: AtomicU64,
    health: Mutex<HealthState>,
    atw: Mutex<AtwState>,
}

impl Target {
    fn new(url: TargetUrl) -> Self {
        Self {
            url,
            healthy: AtomicBool::new(true),
            weight: {
                let weight = FloatGauge::default();
                weight.set(1.0);
                weight
            },
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            health: Mutex::new(HealthState::default()),
            atw: Mutex::new(AtwState {
                window: VecDeque::new(),
                seen_requests: 0,
                seen_errors: 0,
                verdict: Verdict::Inactive,
                window_stats: WindowStats {
                    healthy: true,
                    requests: 0,
                    errors: 0,
                },
            }),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn weight(&self) -> f64 {
        self.weight.get()
    }

    /// The weight as a gauge, for `/metrics`.
    pub fn weight_gauge(&self) -> &FloatGauge {
        &self.weight
    }

    fn set_weight(&self, w: f64) {
        self.weight.set(w);
    }

    /// Counts one proxied request; `error` for a 5xx, a connection error or a timeout.
    pub fn record(&self, error: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Applies one health-check result with the thresholds; returns the new health if it changed.
    pub(crate) fn apply_check(
        &self,
        result: Result<(), String>,
        cfg: &HealthCheckConfig,
    ) -> Option<bool> {
        let mut h = lock(&self.health);
        h.checks += 1;
        let was = self.is_healthy();
        match result {
            Ok(()) => {
                h.consecutive_ok = h.consecutive_ok.saturating_add(1);
                h.consecutive_fail = 0;
                h.last_error = None;
                if !was && h.consecutive_ok >= cfg.healthy_threshold {
                    self.healthy.store(true, Ordering::Relaxed);
                    return Some(true);
                }
            }
            Err(reason) => {
                h.consecutive_fail = h.consecutive_fail.saturating_add(1);
                h.consecutive_ok = 0;
                h.last_error = Some(reason);
                if was && h.consecutive_fail >= cfg.unhealthy_threshold {
                    self.healthy.store(false, Ordering::Relaxed);
                    return Some(false);
                }
            }
        }
        None
    }

    /// The first check at start decides the initial state directly (no threshold): a target that
    /// answers is healthy from the first request on, one that does not gets no traffic until it
    /// passes `healthy_threshold` checks.
    pub(crate) fn apply_initial_check(&self, result: Result<(), String>) {
        let mut h = lock(&self.health);
        h.checks += 1;
        match result {
            Ok(()) => {
                h.consecutive_ok = 1;
                self.healthy.store(true, Ordering::Relaxed);
            }
            Err(reason) => {
                h.consecutive_fail = 1;
                h.last_error = Some(reason);
                self.healthy.store(false, Ordering::Relaxed);
            }
        }
    }

    /// Moves the counts since the last tick into the window; the window's totals.
    fn roll_window(&self, window_ticks: usize) -> WindowStats {
        let requests = self.requests();
        let errors = self.errors();
        let mut a = lock(&self.atw);
        let d_req = requests.saturating_sub(a.seen_requests);
        let d_err = errors.saturating_sub(a.seen_errors);
        a.seen_requests = requests;
        a.seen_errors = errors;
        a.window.push_back((d_req, d_err));
        while a.window.len() > window_ticks {
            a.window.pop_front();
        }
        let (r, e) = a
            .window
            .iter()
            .fold((0, 0), |(r, e), (dr, de)| (r + dr, e + de));
        let stats = WindowStats {
            healthy: self.is_healthy(),
            requests: r,
            errors: e.min(r),
        };
        a.window_stats = stats;
        stats
    }

    pub fn snapshot(&self) -> TargetSnapshot {
        let (consecutive_ok, consecutive_fail, checks, last_error) = {
            let h = lock(&self.health);
            (
                h.consecutive_ok,
                h.consecutive_fail,
                h.checks,
                h.last_error.clone(),
            )
        };
        let (verdict, window) = {
            let a = lock(&self.atw);
            (a.verdict, a.window_stats)
        };
        TargetSnapshot {
            url: self.url.url.clone(),
            healthy: self.is_healthy(),
            state: if self.is_healthy() {
                "healthy"
            } else {
                "unhealthy"
            },
            weight: (self.weight() * 1000.0).round() / 1000.0,
            atw_verdict: verdict,
            requests: self.requests(),
            errors: self.errors(),
            window_requests: window.requests,
            window_errors: window.errors,
            window_error_rate: (window.error_rate() * 10_000.0).round() / 10_000.0,
            health_checks: checks,
            consecutive_successes: consecutive_ok,
            consecutive_failures: consecutive_fail,
            last_health_error: last_error,
        }
    }
}

/// What `/gateway/targets` shows for one target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetSnapshot {
    pub url: String,
    pub healthy: bool,
    pub state: &'static str,
    pub weight: f64,
    pub atw_verdict: Verdict,
    /// Requests proxied to it since start (including connection errors and timeouts).
    pub requests: u64,
    /// Of those, 5xx responses, connection errors and timeouts.
    pub errors: u64,
    pub window_requests: u64,
    pub window_errors: u64,
    pub window_error_rate: f64,
    pub health_checks: u64,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    pub last_health_error: Option<String>,
}

/// A named set of targets behind one path rule.
#[derive(Debug)]
pub struct TargetGroup {
    pub name: &'static str,
    pub path_pattern: &'static str,
    pub targets: Vec<Arc<Target>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupSnapshot {
    pub name: &'static str,
    pub path_pattern: &'static str,
    pub healthy_targets: usize,
    pub atw_active: bool,
    pub targets: Vec<TargetSnapshot>,
}

impl TargetGroup {
    pub fn new(name: &'static str, path_pattern: &'static str, urls: &[TargetUrl]) -> Self {
        Self {
            name,
            path_pattern,
            targets: urls
                .iter()
                .cloned()
                .map(|u| Arc::new(Target::new(u)))
                .collect(),
        }
    }

    /// Weighted random choice among the healthy targets; `None` if none is healthy.
    pub fn pick(&self) -> Option<&Arc<Target>> {
        if let [only] = self.targets.as_slice() {
            return only.is_healthy().then_some(only);
        }
        let weights = self
            .targets
            .iter()
            .map(|t| if t.is_healthy() { t.weight() } else { 0.0 });
        balancer::pick_weighted(weights, balancer::random_unit()).and_then(|i| self.targets.get(i))
    }

    pub fn healthy_count(&self) -> usize {
        self.targets.iter().filter(|t| t.is_healthy()).count()
    }

    /// One ATW tick: roll every target's window, evaluate, store the weights.
    pub fn atw_tick(&self, atw: &AtwConfig) {
        let stats: Vec<WindowStats> = self
            .targets
            .iter()
            .map(|t| t.roll_window(atw.window_ticks))
            .collect();
        let weights: Vec<f64> = self.targets.iter().map(|t| t.weight()).collect();
        let verdicts = balancer::evaluate(&stats, &weights, atw);
        for ((target, (weight, verdict)), old) in self.targets.iter().zip(verdicts).zip(weights) {
            if (weight - old).abs() > f64::EPSILON {
                target.set_weight(weight);
                if verdict == Verdict::Anomalous || (old < 1.0 && weight >= 1.0) {
                    tracing::info!(
                        group = self.name,
                        target = %target.url.url,
                        old_weight = old,
                        new_weight = weight,
                        ?verdict,
                        "target weight changed"
                    );
                }
            }
            lock(&target.atw).verdict = verdict;
        }
    }

    pub fn snapshot(&self) -> GroupSnapshot {
        let targets: Vec<TargetSnapshot> = self.targets.iter().map(|t| t.snapshot()).collect();
        GroupSnapshot {
            name: self.name,
            path_pattern: self.path_pattern,
            healthy_targets: self.healthy_count(),
            atw_active: targets.iter().any(|t| t.atw_verdict != Verdict::Inactive),
            targets,
        }
    }
}

/// Re-evaluates the weights of every group each tick until `stop`.
pub async fn atw_loop(groups: Vec<Arc<TargetGroup>>, atw: AtwConfig, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(atw.tick.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for group in &groups {
            group.atw_tick(&atw);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target::new(TargetUrl::parse("http://127.0.0.1:1").expect("valid"))
    }

    #[test]
    fn thresholds_gate_health_transitions() {
        let cfg = HealthCheckConfig::default();
        let t = target();
        assert!(t.is_healthy());
        assert_eq!(t.apply_check(Err("x".into()), &cfg), None);
        assert!(t.is_healthy());
        assert_eq!(t.apply_check(Err("x".into()), &cfg), Some(false));
        assert!(!t.is_healthy());
        assert_eq!(t.apply_check(Ok(()), &cfg), None);
        assert_eq!(t.apply_check(Err("x".into()), &cfg), None);
        assert_eq!(t.apply_check(Ok(()), &cfg), None);
        assert_eq!(t.apply_check(Ok(()), &cfg), Some(true));
        assert!(t.is_healthy());
    }

    #[test]
    fn unhealthy_targets_are_never_picked() {
        let urls: Vec<TargetUrl> = ["http://a:1", "http://b:2"]
            .iter()
            .map(|u| TargetUrl::parse(u).expect("valid"))
            .collect();
        let g = TargetGroup::new("product", "/product*", &urls);
        g.targets[0].apply_initial_check(Err("down".into()));
        for _ in 0..1000 {
            assert_eq!(g.pick().map(|t| t.url.url.as_str()), Some("http://b:2"));
        }
        g.targets[1].apply_initial_check(Err("down".into()));
        assert!(g.pick().is_none());
    }

    #[test]
    fn the_window_slides() {
        let t = target();
        for _ in 0..10 {
            t.record(true);
        }
        assert_eq!(t.roll_window(2).requests, 10);
        t.record(false);
        let s = t.roll_window(2);
        assert_eq!((s.requests, s.errors), (11, 10));
        let s = t.roll_window(2);
        assert_eq!((s.requests, s.errors), (1, 0));
    }
}
