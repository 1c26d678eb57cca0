//! The text report of `chaos-reconcile`; its last line is [`Reconciliation::last_line`].

use std::fmt::Write as _;

use super::{Finding, Reconciliation};

/// A finding's line and, when it is not zero, its examples indented below.
fn finding(o: &mut String, name: &str, f: &Finding, note: &str) {
    let _ = writeln!(o, "{name:<22} {:>9}{note}", f.count);
    for e in &f.examples {
        let mut ids = String::new();
        if let Some(c) = e.cart {
            let _ = write!(ids, "cart {c} ");
        }
        if let Some(id) = e.order_id {
            let _ = write!(ids, "order {id} ");
        }
        if let Some(uid) = &e.order_uid {
            let _ = write!(ids, "uid {uid} ");
        }
        if let Some(p) = e.product_id {
            let _ = write!(ids, "product {p} ");
        }
        let _ = writeln!(o, "    {}: {}", ids.trim_end(), e.detail);
    }
    if f.count > f.examples.len() as u64 {
        let _ = writeln!(o, "    … and {} more", f.count - f.examples.len() as u64);
    }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

fn opt_s(v: Option<f64>) -> String {
    v.map_or_else(|| "none".into(), |v| format!("{v:.2}s"))
}

pub fn text(r: &Reconciliation) -> String {
    let mut o = String::new();
    let a = &r.answers;
    let codes: Vec<String> = a.by_code.iter().map(|(c, n)| format!("{c} {n}")).collect();
    let errors: Vec<String> = a.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let _ = writeln!(
        o,
        "checkouts {}: 2xx {}, 4xx {}, 5xx {}, other {}, no answer {}",
        r.checkouts, a.s2xx, a.s4xx, a.s5xx, a.other, a.no_answer
    );
    if !codes.is_empty() {
        let _ = writeln!(o, "  by status: {}", codes.join(", "));
    }
    if !errors.is_empty() {
        let _ = writeln!(o, "  no answer: {}", errors.join(", "));
    }
    let l = &r.ledger;
    let _ = writeln!(
        o,
        "ledger: {} applied rows ({} fulfilled, {} cancelled), {} units fulfilled, {} products in the totals",
        l.rows, l.fulfilled, l.cancelled, l.units_fulfilled, l.products_in_totals
    );
    o.push('\n');
    finding(&mut o, "lost", &r.lost, "");
    finding(&mut o, "double-applied", &r.double_applied, "");
    finding(&mut o, "totals_short", &r.totals_short, "");
    if r.stock_checked {
        finding(&mut o, "stock_mismatch", &r.stock_mismatch, "");
        finding(&mut o, "stock_unbalanced", &r.stock_unbalanced, "");
    } else {
        let _ = writeln!(o, "{:<22} {:>9}", "stock", "not checked (no --stock)");
    }
    finding(
        &mut o,
        "applied_after_refusal",
        &r.applied_after_refusal,
        "",
    );
    let m = &r.ambiguous;
    let _ = writeln!(
        o,
        "{:<22} {:>9}: applied {}, cancelled {}, not applied {}, unresolved {}",
        "ambiguous", m.count, m.applied, m.cancelled, m.not_applied, m.unresolved.count
    );
    finding(&mut o, "  unresolved", &m.unresolved, "");
    finding(
        &mut o,
        "unaudited_applied",
        &r.unaudited_applied,
        if r.unaudited_applied.count > 0 {
            "  (not a failure: orders from outside the audited run)"
        } else {
            ""
        },
    );

    if !r.faults.is_empty() {
        o.push('\n');
        let _ = writeln!(
            o,
            "{:<24} {:>9} {:>9} {:>9} {:>10} {:>9} {:>7} {:>9} {:>9} {:>9}",
            "fault",
            "started",
            "duration",
            "recovery",
            "last error",
            "checkouts",
            "errors",
            "p50 ms",
            "p99 ms",
            "max ms"
        );
        for f in &r.faults {
            let started = f
                .started_s
                .map_or_else(|| "-".into(), |s| format!("{s:.2}s"));
            let _ = writeln!(
                o,
                "{:<24} {:>9} {:>9} {:>9} {:>10} {:>9} {:>7} {:>9} {:>9} {:>9}",
                f.name,
                started,
                format!("{:.2}s", f.duration_s),
                opt_s(f.recovery_s),
                opt_s(f.last_error_s),
                f.checkouts,
                f.errors,
                opt_ms(f.p50_ms),
                opt_ms(f.p99_ms),
                opt_ms(f.max_ms)
            );
        }
    }
    o.push('\n');
    if r.passed() {
        let _ = writeln!(o, "PASS");
    } else {
        let _ = writeln!(o, "FAIL: {}", r.failed.join(", "));
    }
    let _ = writeln!(o, "{}", r.last_line());
    o
}
