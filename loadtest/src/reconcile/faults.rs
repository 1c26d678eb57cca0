//! Per-fault recovery time and the checkouts' experience during each fault.

use serde::Serialize;

use super::input::Fault;
use crate::audit::AuditRec;

/// One fault's row of the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultReport {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Seconds from the first audit row to the fault's start (negative: before the load).
    pub started_s: Option<f64>,
    pub duration_s: f64,
    /// From the start to the completion of the first 200 sent at or after it; `None`: none came.
    pub recovery_s: Option<f64>,
    /// From the start to the completion of the last failed checkout (5xx or no answer, not the
    /// load generator's own stop) sent after it and ended before the next fault began: how long
    /// the fault's disruption lasted, where `recovery_s` says how soon anything worked again.
    /// `None`: no checkout failed.
    pub last_error_s: Option<f64>,
    /// End of the window the counts below cover: max(end_ms, recovery).
    pub window_end_ms: u64,
    pub checkouts: u64,
    /// No answer or 5xx.
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// Completion time of an audit row in unix µs (its send time plus its latency).
fn completed_us(a: &AuditRec) -> u64 {
    a.t_ms.saturating_mul(1000).saturating_add(a.latency_us)
}

pub fn report(faults: &[Fault], audit: &[AuditRec], first_ms: Option<u64>) -> Vec<FaultReport> {
    // Sorted by send time: each fault's rows are one slice, found by binary search.
    let mut rows: Vec<&AuditRec> = audit.iter().collect();
    rows.sort_by_key(|a| a.t_ms);
    faults
        .iter()
        .map(|f| {
            // The next fault to start after this one bounds what this one is blamed for.
            let next_start_ms = faults
                .iter()
                .map(|g| g.start_ms)
                .filter(|&s| s > f.start_ms)
                .min()
                .unwrap_or(u64::MAX);
            let from = rows.partition_point(|a| a.t_ms < f.start_ms);
            // The earliest completion among 200s sent since the start; rows are in send order
            // and complete after they are sent, so the scan stops once sends pass the best.
            let mut best: Option<u64> = None;
            for a in &rows[from..] {
                if best.is_some_and(|b| a.t_ms.saturating_mul(1000) > b) {
                    break;
                }
                if a.status == Some(200) {
                    let c = completed_us(a);
                    best = Some(best.map_or(c, |b| b.min(c)));
                }
            }
            let recovered_ms = best.map(|us| us.div_ceil(1000));
            let window_end_ms = recovered_ms.map_or(f.end_ms, |r| r.max(f.end_ms));
            let to = rows.partition_point(|a| a.t_ms <= window_end_ms);
            let window = &rows[from..to.max(from)];
            let mut lat: Vec<u64> = window.iter().map(|a| a.latency_us).collect();
            lat.sort_unstable();
            let errors = window
                .iter()
                .filter(|a| a.status.is_none_or(|s| s >= 500))
                .count() as u64;
            // Failures that ended before the next fault began: one sent just before it and
            // failed by it is the next fault's; the load generator's own stop is nobody's.
            let next_start_us = next_start_ms.saturating_mul(1000);
            let until = rows.partition_point(|a| a.t_ms < next_start_ms);
            let last_error_us = rows[from..until.max(from)]
                .iter()
                .filter(|a| a.status.is_none_or(|s| s >= 500))
                .filter(|a| a.error.as_deref() != Some("stopped"))
                .map(|a| completed_us(a))
                .filter(|&done| done < next_start_us)
                .max();
            let pct = |q: f64| quantile(&lat, q).map(|us| us as f64 / 1000.0);
            FaultReport {
                name: f.name.clone(),
                detail: f.detail.clone(),
                start_ms: f.start_ms,
                end_ms: f.end_ms,
                started_s: first_ms.map(|t| (f.start_ms as f64 - t as f64) / 1000.0),
                duration_s: (f.end_ms - f.start_ms) as f64 / 1000.0,
                recovery_s: best.map(|us| seconds_after(f.start_ms, us)),
                last_error_s: last_error_us.map(|us| seconds_after(f.start_ms, us)),
                window_end_ms,
                checkouts: window.len() as u64,
                errors,
                p50_ms: pct(0.5),
                p99_ms: pct(0.99),
                max_ms: lat.last().map(|&us| us as f64 / 1000.0),
            }
        })
        .collect()
}

/// Seconds from `start_ms` to `us` (unix µs).
fn seconds_after(start_ms: u64, us: u64) -> f64 {
    (us as f64 / 1000.0 - start_ms as f64) / 1000.0
}

/// Nearest-rank quantile of sorted values.
fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&v, 1.0), Some(100));
        assert_eq!(quantile(&[7], 0.99), Some(7));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
