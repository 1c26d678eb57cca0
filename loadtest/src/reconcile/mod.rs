//! `chaos-reconcile`: a fault campaign's checkouts (the `--audit` of `loadtest`) reconciled
//! order by order against what the durable stores hold at the end (the cart's orders, the
//! warehouse's ledger and totals, the product service's stock), plus recovery times per fault.
//!
//! The rules, and why each one fails the run or not, are in [`HELP`].

mod faults;
pub mod input;
mod render;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::audit::AuditRec;
pub use faults::FaultReport;
use input::{Applied, AppliedRow, Fault, InputError, Item, OrderRow, StockRow, TotalRow};

/// Offending ids listed per finding.
pub const EXAMPLES: usize = 20;

/// What `--help` says after the options.
pub const HELP: &str = "\
Rules (each counted; up to 20 offending carts/orders/products listed per non-zero count):
  lost                   an audit 200 whose order_id has no applied row, or whose applied row is
                         for another cart (a 200 later cancelled has a cancelled row: not lost)
  double-applied         a second applied row for an order_uid or order_id, or a product whose
                         ledger total is above the sum of its fulfilled rows' item quantities
  totals_short           a product whose ledger total is below that sum
  stock_mismatch         (--stock) a product whose sold + oversold differs from that sum
  stock_unbalanced       (--stock) a stock row where on_hand + reserved + sold != received
  applied_after_refusal  an audit 4xx for a cart that has a fulfilled applied row
  ambiguous              audit 202, 5xx, no answer (error) or a 2xx without an order id: resolved
                         by cart to applied (fulfilled row), cancelled (cancelled row) or
                         not_applied (no row); unresolved when no row but the orders table still
                         has the cart's order pending/placed/cancelling (or says it is final)
  unaudited_applied      applied rows whose cart is not in the audit (setup traffic?): listed,
                         not a failure
Faults (--faults): recovery = from start_ms to the completion (t_ms + latency) of the earliest
audit 200 sent at or after start_ms; checkouts, errors (no answer or 5xx) and latency p50/p99/max
over audit rows sent in [start_ms, max(end_ms, recovery)]; last error = from start_ms to the
completion of the last error (not a 'stopped' one) sent after start_ms that completed before the
next fault's start.
Exit status: 0 when lost, double-applied, totals_short, stock_mismatch, stock_unbalanced,
applied_after_refusal and unresolved are all 0; 1 otherwise; 2 on bad input (file and line named).
The last line of stdout is always:
  lost N, double-applied N, ambiguous N, faults N, checkouts N";

/// Everything the rules need, as read from the files.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub audit: Vec<AuditRec>,
    pub orders: Vec<OrderRow>,
    pub applied: Vec<AppliedRow>,
    pub totals: Vec<TotalRow>,
    pub stock: Option<Vec<StockRow>>,
    pub faults: Option<Vec<Fault>>,
    /// Name of the applied file, for the messages about its rows.
    pub applied_file: String,
}

/// One offending cart, order or product.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Example {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cart: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_id: Option<u64>,
    pub detail: String,
}

/// A count and its first [`EXAMPLES`] cases.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub count: u64,
    pub examples: Vec<Example>,
}

impl Finding {
    fn add(&mut self, example: impl FnOnce() -> Example) {
        self.count += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(example());
        }
    }
}

/// The audit's answers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Answers {
    pub by_code: BTreeMap<u16, u64>,
    pub s2xx: u64,
    pub s4xx: u64,
    pub s5xx: u64,
    /// 1xx/3xx: not expected from a checkout.
    pub other: u64,
    pub no_answer: u64,
    /// No-answer rows by the audit's error kind.
    pub errors: BTreeMap<String, u64>,
}

/// Ambiguous checkouts and how the stores resolved them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ambiguous {
    pub count: u64,
    pub applied: u64,
    pub cancelled: u64,
    pub not_applied: u64,
    pub unresolved: Finding,
}

/// The ledger as read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LedgerSummary {
    pub rows: u64,
    pub fulfilled: u64,
    pub cancelled: u64,
    pub units_fulfilled: i64,
    pub products_in_totals: u64,
}

/// The whole result (also the `--json` document).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reconciliation {
    pub checkouts: u64,
    /// Unix ms of the earliest audit row (the origin of the faults' `started`).
    pub first_audit_ms: Option<u64>,
    pub answers: Answers,
    pub ledger: LedgerSummary,
    pub lost: Finding,
    pub double_applied: Finding,
    pub totals_short: Finding,
    /// Whether `--stock` was given.
    pub stock_checked: bool,
    pub stock_mismatch: Finding,
    pub stock_unbalanced: Finding,
    pub applied_after_refusal: Finding,
    pub ambiguous: Ambiguous,
    pub unaudited_applied: Finding,
    pub faults: Vec<FaultReport>,
    /// Names of the failing counts; empty = the run passed.
    pub failed: Vec<&'static str>,
}

impl Reconciliation {
    pub fn passed(&self) -> bool {
        self.failed.is_empty()
    }

    /// The summary line printed last.
    pub fn last_line(&self) -> String {
        format!(
            "lost {}, double-applied {}, ambiguous {}, faults {}, checkouts {}",
            self.lost.count,
            self.double_applied.count,
            self.ambiguous.count,
            self.faults.len(),
            self.checkouts
        )
    }

    pub fn to_text(&self) -> String {
        render::text(self)
    }
}

/// A ledger row with what is known of its order.
struct Entry<'a> {
    row: &'a AppliedRow,
    order_id: Option<u64>,
    cart: Option<u64>,
}

impl Entry<'_> {
    fn example(&self, detail: String) -> Example {
        Example {
            cart: self.cart,
            order_id: self.order_id,
            order_uid: Some(self.row.order_uid.clone()),
            product_id: None,
            detail,
        }
    }
}

fn is_final(status: &str) -> bool {
    matches!(status, "fulfilled" | "cancelled")
}

/// Apply every rule. Fails only on input that cannot be counted (a fulfilled row whose items
/// are nowhere to be found).
pub fn reconcile(inp: &Inputs) -> Result<Reconciliation, InputError> {
    let mut r = Reconciliation {
        checkouts: inp.audit.len() as u64,
        first_audit_ms: inp.audit.iter().map(|a| a.t_ms).min(),
        stock_checked: inp.stock.is_some(),
        ..Reconciliation::default()
    };

    let orders_by_uid: HashMap<&str, &OrderRow> = inp
        .orders
        .iter()
        .map(|o| (o.order_uid.as_str(), o))
        .collect();
    let mut orders_by_cart: HashMap<u64, Vec<&OrderRow>> = HashMap::new();
    for o in &inp.orders {
        orders_by_cart.entry(o.cart).or_default().push(o);
    }

    // The ledger: each row's order id and cart from the row, its body, or the orders table.
    let mut entries = Vec::with_capacity(inp.applied.len());
    let mut expected: BTreeMap<u64, i64> = BTreeMap::new();
    let mut uids: HashSet<&str> = HashSet::with_capacity(inp.applied.len());
    for row in &inp.applied {
        // A second row of a uid is reported below; its items are counted once, with the first.
        let first = uids.insert(row.order_uid.as_str());
        let order = orders_by_uid.get(row.order_uid.as_str());
        let body = row.body.as_ref();
        let e = Entry {
            row,
            order_id: row
                .order_id
                .or_else(|| body.and_then(|b| b.order_id))
                .or_else(|| order.map(|o| o.order_id)),
            cart: body
                .and_then(|b| b.shopping_cart_id)
                .or_else(|| order.map(|o| o.cart)),
        };
        r.ledger.rows += 1;
        if row.outcome == Applied::Fulfilled && first {
            r.ledger.fulfilled += 1;
            let items: &[Item] = match (body, order.and_then(|o| o.items.as_deref())) {
                (Some(b), _) => &b.items,
                (None, Some(items)) => items,
                (None, None) => {
                    return Err(InputError {
                        file: inp.applied_file.clone(),
                        line: Some(row.line),
                        msg: format!(
                            "fulfilled order {} has no order_body and the orders file has no \
                             items for it: its quantities cannot be counted",
                            row.order_uid
                        ),
                    })
                }
            };
            for it in items {
                *expected.entry(it.product_id).or_default() += it.quantity;
                r.ledger.units_fulfilled += it.quantity;
            }
        } else if row.outcome == Applied::Cancelled {
            r.ledger.cancelled += 1;
        }
        entries.push(e);
    }

    let mut by_order_id: HashMap<u64, Vec<&Entry>> = HashMap::new();
    let mut by_cart: HashMap<u64, Vec<&Entry>> = HashMap::new();
    uids.clear();
    for e in &entries {
        let dup_uid = !uids.insert(e.row.order_uid.as_str());
        let dup_id = e.order_id.is_some_and(|id| by_order_id.contains_key(&id));
        if dup_uid || dup_id {
            let what = if dup_uid { "order_uid" } else { "order_id" };
            r.double_applied.add(|| {
                e.example(format!(
                    "another applied row for this {what} (line {} is a second one)",
                    e.row.line
                ))
            });
        }
        if let Some(id) = e.order_id {
            by_order_id.entry(id).or_default().push(e);
        }
        if let Some(c) = e.cart {
            by_cart.entry(c).or_default().push(e);
        }
    }

    check_totals(&mut r, inp, &expected);
    if let Some(stock) = &inp.stock {
        check_stock(&mut r, stock, &expected);
    }

    let mut audit_carts = HashSet::with_capacity(inp.audit.len());
    for a in &inp.audit {
        audit_carts.insert(a.cart);
        count_answer(&mut r.answers, a);
        let ex = |detail: String| Example {
            cart: Some(a.cart),
            order_id: a.order_id,
            detail,
            ..Example::default()
        };
        let for_cart = by_cart.get(&a.cart).map_or(&[][..], Vec::as_slice);
        match (a.status, a.order_id) {
            (Some(200), Some(id)) => match by_order_id.get(&id) {
                None => r
                    .lost
                    .add(|| ex("200, but the ledger has no row for the order".into())),
                Some(rows) if !rows.iter().any(|e| e.cart.is_none_or(|c| c == a.cart)) => {
                    let other = rows.iter().find_map(|e| e.cart).unwrap_or_default();
                    r.lost
                        .add(|| ex(format!("200, but the ledger row is for cart {other}")));
                }
                Some(_) => {}
            },
            (Some(400..=499), _) => {
                if let Some(e) = for_cart
                    .iter()
                    .find(|e| e.row.outcome == Applied::Fulfilled)
                {
                    let code = a.status.unwrap_or_default();
                    r.applied_after_refusal.add(|| {
                        let mut x = e.example(format!("refused with {code}, then fulfilled"));
                        x.cart = Some(a.cart);
                        x
                    });
                }
            }
            _ => resolve_ambiguous(&mut r.ambiguous, a, for_cart, &orders_by_cart),
        }
    }

    for e in &entries {
        if !e.cart.is_some_and(|c| audit_carts.contains(&c)) {
            let outcome = match e.row.outcome {
                Applied::Fulfilled => "fulfilled",
                Applied::Cancelled => "cancelled",
            };
            r.unaudited_applied.add(|| match e.cart {
                Some(_) => e.example(format!("{outcome}, no checkout of this cart in the audit")),
                None => e.example(format!("{outcome}, cart unknown (no body, not in orders)")),
            });
        }
    }

    if let Some(faults) = &inp.faults {
        r.faults = faults::report(faults, &inp.audit, r.first_audit_ms);
    }

    let checks: [(&'static str, u64); 7] = [
        ("lost", r.lost.count),
        ("double-applied", r.double_applied.count),
        ("totals_short", r.totals_short.count),
        ("stock_mismatch", r.stock_mismatch.count),
        ("stock_unbalanced", r.stock_unbalanced.count),
        ("applied_after_refusal", r.applied_after_refusal.count),
        ("unresolved", r.ambiguous.unresolved.count),
    ];
    r.failed = checks
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, _)| *name)
        .collect();
    Ok(r)
}

fn count_answer(a: &mut Answers, rec: &AuditRec) {
    match rec.status {
        Some(s) => {
            *a.by_code.entry(s).or_default() += 1;
            match s / 100 {
                2 => a.s2xx += 1,
                4 => a.s4xx += 1,
                5 => a.s5xx += 1,
                _ => a.other += 1,
            }
        }
        None => {
            a.no_answer += 1;
            let kind = rec.error.as_deref().unwrap_or("unknown");
            *a.errors.entry(kind.to_string()).or_default() += 1;
        }
    }
}

/// A checkout whose answer does not say whether an order exists: the stores decide.
fn resolve_ambiguous(
    amb: &mut Ambiguous,
    a: &AuditRec,
    for_cart: &[&Entry],
    orders_by_cart: &HashMap<u64, Vec<&OrderRow>>,
) {
    amb.count += 1;
    if for_cart.iter().any(|e| e.row.outcome == Applied::Fulfilled) {
        amb.applied += 1;
    } else if !for_cart.is_empty() {
        amb.cancelled += 1;
    } else {
        let orders = orders_by_cart.get(&a.cart).map_or(&[][..], Vec::as_slice);
        match orders.first() {
            None => amb.not_applied += 1,
            Some(o) => {
                let answer = a.status.map_or_else(
                    || a.error.as_deref().unwrap_or("no answer").to_string(),
                    |s| s.to_string(),
                );
                let detail = if is_final(&o.status) {
                    format!(
                        "{answer}; the orders table says {}, the ledger has no row",
                        o.status
                    )
                } else {
                    format!("{answer}; the order is still {} (not drained)", o.status)
                };
                amb.unresolved.add(|| Example {
                    cart: Some(a.cart),
                    order_id: Some(o.order_id),
                    order_uid: Some(o.order_uid.clone()),
                    product_id: None,
                    detail,
                });
            }
        }
    }
}

/// Ledger totals against the sum of the fulfilled orders' items, product by product.
fn check_totals(r: &mut Reconciliation, inp: &Inputs, expected: &BTreeMap<u64, i64>) {
    let mut totals: BTreeMap<u64, i64> = BTreeMap::new();
    for t in &inp.totals {
        *totals.entry(t.product_id).or_default() += t.quantity;
    }
    r.ledger.products_in_totals = totals.len() as u64;
    let products: std::collections::BTreeSet<u64> =
        totals.keys().chain(expected.keys()).copied().collect();
    for p in products {
        let (found, want) = (
            totals.get(&p).copied().unwrap_or(0),
            expected.get(&p).copied().unwrap_or(0),
        );
        let ex = || Example {
            product_id: Some(p),
            detail: format!(
                "ledger total {found}, fulfilled orders' items {want} ({:+})",
                found - want
            ),
            ..Example::default()
        };
        if found > want {
            r.double_applied.add(ex);
        } else if found < want {
            r.totals_short.add(ex);
        }
    }
}

/// The product service's stock against the same sums, and each row's own balance.
fn check_stock(r: &mut Reconciliation, stock: &[StockRow], expected: &BTreeMap<u64, i64>) {
    let mut seen = HashSet::new();
    for s in stock {
        seen.insert(s.product_id);
        if s.on_hand + s.reserved + s.sold != s.received {
            r.stock_unbalanced.add(|| Example {
                product_id: Some(s.product_id),
                detail: format!(
                    "on_hand {} + reserved {} + sold {} = {} != received {}",
                    s.on_hand,
                    s.reserved,
                    s.sold,
                    s.on_hand + s.reserved + s.sold,
                    s.received
                ),
                ..Example::default()
            });
        }
        let want = expected.get(&s.product_id).copied().unwrap_or(0);
        if s.sold + s.oversold != want {
            r.stock_mismatch.add(|| Example {
                product_id: Some(s.product_id),
                detail: format!(
                    "sold {} + oversold {} = {}, fulfilled orders' items {want}",
                    s.sold,
                    s.oversold,
                    s.sold + s.oversold
                ),
                ..Example::default()
            });
        }
    }
    for (&p, &want) in expected {
        if !seen.contains(&p) && want != 0 {
            r.stock_mismatch.add(|| Example {
                product_id: Some(p),
                detail: format!("no stock row, fulfilled orders' items {want}"),
                ..Example::default()
            });
        }
    }
}
