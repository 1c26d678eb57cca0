//! Weighted random choice and the automatic-target-weights (ATW) rule.
//!
//! Everything here is a pure function of its inputs, so the rule can be tested without sockets
//! or clocks; [`crate::targets`] feeds it the windowed counts once per tick and stores the weights.

use crate::config::AtwConfig;
use serde::Serialize;
use std::cell::Cell;

/// What one target looked like over the sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowStats {
    pub healthy: bool,
    /// Responses (and connection errors/timeouts) in the window.
    pub requests: u64,
    /// 5xx responses, connection errors and timeouts in the window.
    pub errors: u64,
}

impl WindowStats {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// Why a target got the weight it has after a tick (shown by `/gateway/targets`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Fewer than three healthy targets in the group (or ATW off): every weight is 1.0.
    Inactive,
    /// The target is unhealthy and gets no traffic; its weight is kept as it was.
    Unhealthy,
    /// Not enough responses in the target's window, or fewer than two peers with enough: the
    /// weight recovers one step (it is probed back; if it is still bad the next data shows it).
    InsufficientData,
    /// Its error rate is anomalous compared with its peers: weight lowered one step.
    Anomalous,
    /// In line with its peers: weight recovers one step towards 1.0.
    Normal,
}

/// The median of a non-empty slice (sorted in place).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Is `rate` anomalous compared with the peers' median error rate?
pub fn is_anomalous(rate: f64, peers_median: f64, atw: &AtwConfig) -> bool {
    rate >= peers_median + atw.margin && rate >= peers_median * atw.ratio
}

/// One ATW tick for a target group: the new weight and verdict of every target, given each
/// target's window and current weight (`stats` and `weights` are parallel slices).
///
/// - Fewer than 3 healthy targets (or ATW disabled): all weights 1.0, as on AWS.
/// - A healthy target with at least `min_requests` in its window, compared with the median error
///   rate of its healthy peers that also have `min_requests` (at least two such peers): anomalous
///   if its rate exceeds that median by `margin` *and* by a factor `ratio`. Anomalous → weight ×
///   `step_down`, never below `floor` (never 0, never deregistered). Otherwise → weight ×
///   `recovery`, capped at 1.0.
pub fn evaluate(stats: &[WindowStats], weights: &[f64], atw: &AtwConfig) -> Vec<(f64, Verdict)> {
    let healthy = stats.iter().filter(|s| s.healthy).count();
    if !atw.enabled || healthy < 3 {
        return stats.iter().map(|_| (1.0, Verdict::Inactive)).collect();
    }
    let recover = |w: f64| (w * atw.recovery).min(1.0);
    let has_data = |s: &WindowStats| s.healthy && s.requests >= atw.min_requests.max(1);
    stats
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let w = weights.get(i).copied().unwrap_or(1.0);
            if !s.healthy {
                return (w, Verdict::Unhealthy);
            }
            let mut peer_rates: Vec<f64> = stats
                .iter()
                .enumerate()
                .filter(|(j, p)| *j != i && has_data(p))
                .map(|(_, p)| p.error_rate())
                .collect();
            if !has_data(s) || peer_rates.len() < 2 {
                return (recover(w), Verdict::InsufficientData);
            }
            let peers = median(&mut peer_rates);
            if is_anomalous(s.error_rate(), peers, atw) {
                ((w * atw.step_down).max(atw.floor), Verdict::Anomalous)
            } else {
                (recover(w), Verdict::Normal)
            }
        })
        .collect()
}

/// A uniform number in `[0, 1)` from a per-thread xorshift generator: the pick is on the hot
/// path and needs speed, not cryptographic quality.
pub fn random_unit() -> f64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

fn seed() -> u64 {
    use std::hash::BuildHasher;
    let s = std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id());
    s | 1
}

/// Weighted random choice: the index of the chosen entry among those with a positive weight,
/// using `r` in `[0, 1)`; `None` when no weight is positive.
pub fn pick_weighted(weights: impl Iterator<Item = f64> + Clone, r: f64) -> Option<usize> {
    let total: f64 = weights.clone().filter(|w| *w > 0.0).sum();
    if total <= 0.0 {
        return None;
    }
    let mut x = r * total;
    let mut last = None;
    for (i, w) in weights.enumerate() {
        if w <= 0.0 {
            continue;
        }
        last = Some(i);
        if x < w {
            return Some(i);
        }
        x -= w;
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(requests: u64, errors: u64) -> WindowStats {
        WindowStats {
            healthy: true,
            requests,
            errors,
        }
    }

    fn weights_after(stats: &[WindowStats], weights: &[f64]) -> Vec<f64> {
        evaluate(stats, weights, &AtwConfig::default())
            .into_iter()
            .map(|(w, _)| w)
            .collect()
    }

    #[test]
    fn anomalous_target_steps_down_to_the_floor_and_never_to_zero() {
        let stats = [ok(1000, 0), ok(1000, 5), ok(300, 150)];
        let mut w = vec![1.0, 1.0, 1.0];
        w = weights_after(&stats, &w);
        assert_eq!(w, vec![1.0, 1.0, 0.5]);
        for _ in 0..20 {
            w = weights_after(&stats, &w);
        }
        assert_eq!(w[2], AtwConfig::default().floor);
        assert!(w[2] > 0.0);
        let verdicts = evaluate(&stats, &w, &AtwConfig::default());
        assert_eq!(verdicts[2].1, Verdict::Anomalous);
        assert_eq!(verdicts[0].1, Verdict::Normal);
    }

    #[test]
    fn recovered_target_regains_its_weight_gradually() {
        let stats = [ok(1000, 0), ok(1000, 0), ok(100, 0)];
        let mut w = vec![1.0, 1.0, 0.02];
        w = weights_after(&stats, &w);
        assert!((w[2] - 0.03).abs() < 1e-9, "{w:?}");
        for _ in 0..20 {
            w = weights_after(&stats, &w);
        }
        assert_eq!(w[2], 1.0);
    }

    #[test]
    fn fewer_than_three_healthy_targets_resets_all_weights() {
        let stats = [
            ok(1000, 0),
            ok(300, 150),
            WindowStats {
                healthy: false,
                requests: 0,
                errors: 0,
            },
        ];
        let out = evaluate(&stats, &[1.0, 0.1, 0.5], &AtwConfig::default());
        assert!(out
            .iter()
            .all(|(w, v)| *w == 1.0 && *v == Verdict::Inactive));
        let off = AtwConfig {
            enabled: false,
            ..AtwConfig::default()
        };
        let out = evaluate(
            &[ok(10, 0), ok(10, 0), ok(300, 300)],
            &[1.0, 1.0, 0.1],
            &off,
        );
        assert!(out.iter().all(|(w, _)| *w == 1.0));
    }

    #[test]
    fn uniform_failure_is_not_an_anomaly() {
        // Everyone fails half the time: a dependency is down, not one target.
        let stats = [ok(1000, 500), ok(1000, 480), ok(1000, 530)];
        let out = evaluate(&stats, &[1.0, 1.0, 1.0], &AtwConfig::default());
        assert!(
            out.iter().all(|(w, v)| *w == 1.0 && *v == Verdict::Normal),
            "{out:?}"
        );
    }

    #[test]
    fn small_samples_and_small_differences_are_ignored() {
        // Too few requests to judge: no step down.
        let out = evaluate(
            &[ok(1000, 0), ok(1000, 0), ok(5, 5)],
            &[1.0; 3],
            &AtwConfig::default(),
        );
        assert_eq!(out[2], (1.0, Verdict::InsufficientData));
        // 3% vs 1%: ratio met, margin not.
        let out = evaluate(
            &[ok(1000, 10), ok(1000, 10), ok(1000, 30)],
            &[1.0; 3],
            &AtwConfig::default(),
        );
        assert_eq!(out[2].1, Verdict::Normal);
        // 30% vs 20%: margin met, ratio not.
        let out = evaluate(
            &[ok(1000, 200), ok(1000, 200), ok(1000, 300)],
            &[1.0; 3],
            &AtwConfig::default(),
        );
        assert_eq!(out[2].1, Verdict::Normal);
    }

    #[test]
    fn unhealthy_targets_keep_their_weight_and_are_not_peers() {
        let down = WindowStats {
            healthy: false,
            requests: 500,
            errors: 500,
        };
        let stats = [ok(1000, 0), ok(1000, 0), ok(1000, 0), down];
        let out = evaluate(&stats, &[1.0, 1.0, 1.0, 0.25], &AtwConfig::default());
        assert_eq!(out[3], (0.25, Verdict::Unhealthy));
        assert!(out[..3]
            .iter()
            .all(|(w, v)| *w == 1.0 && *v == Verdict::Normal));
    }

    #[test]
    fn weighted_pick_follows_the_weights() {
        let w = [1.0, 0.0, 3.0];
        assert_eq!(pick_weighted(w.iter().copied(), 0.0), Some(0));
        assert_eq!(pick_weighted(w.iter().copied(), 0.24), Some(0));
        assert_eq!(pick_weighted(w.iter().copied(), 0.26), Some(2));
        assert_eq!(pick_weighted(w.iter().copied(), 0.999_999), Some(2));
        assert_eq!(pick_weighted([0.0, 0.0].iter().copied(), 0.5), None);
        let mut counts = [0u32; 3];
        for _ in 0..40_000 {
            if let Some(i) = pick_weighted(w.iter().copied(), random_unit()) {
                counts[i] += 1;
            }
        }
        assert_eq!(counts[1], 0);
        let share = f64::from(counts[2]) / 40_000.0;
        assert!((0.72..0.78).contains(&share), "{counts:?}");
    }
}
