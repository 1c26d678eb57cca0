//! Each rule against a crafted fixture: a clean campaign passes, and each kind of damage is
//! caught by exactly its own count.

use super::input::{self, parse_csv, Fault};
use super::{reconcile, Inputs, Reconciliation};

const T0: u64 = 1_700_000_000_000;

/// Six audited checkouts, one from outside the audit (cart 100):
/// cart 1: 200 → fulfilled; cart 2: 200 → cancelled later; cart 3: 402;
/// cart 4: 202 → fulfilled; cart 5: timeout, never created; cart 6: 503 → cancelled.
fn audit() -> String {
    let rows = [
        (0, 2_000, 1, "200", "null", "1", "\"placed\""),
        (10, 3_000, 2, "200", "null", "2", "\"placed\""),
        (20, 1_000, 3, "402", "null", "null", "null"),
        (1_000, 900_000, 4, "202", "null", "4", "\"pending\""),
        (1_100, 30_000_000, 5, "null", "\"timeout\"", "null", "null"),
        (1_200, 5_000, 6, "503", "null", "null", "null"),
        (1_300, 2_500, 8, "200", "null", "8", "\"placed\""),
    ];
    rows.iter()
        .map(|(dt, lat, cart, status, error, id, st)| {
            format!(
                "{{\"t_ms\":{},\"latency_us\":{lat},\"cart\":{cart},\"status\":{status},\"error\":{error},\"order_id\":{id},\"order_status\":{st}}}\n",
                T0 + dt
            )
        })
        .collect()
}

const ORDERS: &str = "order_id,order_uid,shopping_cart_id,status
1,uid-1,1,fulfilled
2,uid-2,2,cancelled
4,uid-4,4,fulfilled
6,uid-6,6,cancelled
8,uid-8,8,fulfilled
100,uid-100,100,fulfilled
";

fn body(uid: &str, id: u64, cart: u64, items: &[(u64, i64)]) -> String {
    let items: Vec<String> = items
        .iter()
        .map(|(p, q)| format!("{{\"\"product_id\"\":{p},\"\"quantity\"\":{q}}}"))
        .collect();
    format!(
        "\"{{\"\"order_uid\"\":\"\"{uid}\"\",\"\"order_id\"\":{id},\"\"shopping_cart_id\"\":{cart},\"\"customer_id\"\":7,\"\"items\"\":[{}]}}\"",
        items.join(",")
    )
}

fn applied() -> String {
    format!(
        "order_uid,order_id,outcome,order_body
uid-1,1,fulfilled,{}
uid-2,2,cancelled,
uid-4,4,fulfilled,{}
uid-6,,cancelled,
uid-8,8,fulfilled,{}
uid-100,100,fulfilled,{}
",
        body("uid-1", 1, 1, &[(1, 2)]),
        body("uid-4", 4, 4, &[(2, 1), (1, 1)]),
        body("uid-8", 8, 8, &[(2, 1)]),
        body("uid-100", 100, 100, &[(3, 1)]),
    )
}

/// Product 1 split over two lanes, as a `GROUP BY` that forgot to sum would leave it.
const TOTALS: &str = "product_id,quantity\n1,2\n1,1\n2,2\n3,1\n";

const STOCK: &str = "product_id,on_hand,reserved,sold,oversold,received
1,97,0,3,0,100
2,99,0,1,1,100
3,98,1,1,0,100
4,100,0,0,0,100
";

fn faults() -> Vec<Fault> {
    vec![
        // Starts before cart 4's 202; the first 200 sent after it is cart 8's.
        Fault {
            name: "kill-leader-node".into(),
            start_ms: T0 + 500,
            end_ms: T0 + 1_250,
            detail: Some("rabbit-2".into()),
        },
        // After every checkout: no recovery seen.
        Fault {
            name: "close-connections".into(),
            start_ms: T0 + 5_000,
            end_ms: T0 + 5_000,
            detail: None,
        },
    ]
}

struct Fixture {
    audit: String,
    orders: String,
    applied: String,
    totals: String,
    stock: Option<String>,
}

impl Fixture {
    fn clean() -> Fixture {
        Fixture {
            audit: audit(),
            orders: ORDERS.into(),
            applied: applied(),
            totals: TOTALS.into(),
            stock: Some(STOCK.into()),
        }
    }

    fn inputs(&self) -> Inputs {
        Inputs {
            audit: input::parse_audit("audit.jsonl", &self.audit).expect("audit"),
            orders: input::parse_orders("orders.csv", &self.orders).expect("orders"),
            applied: input::parse_applied("applied.csv", &self.applied).expect("applied"),
            totals: input::parse_totals("totals.csv", &self.totals).expect("totals"),
            stock: self
                .stock
                .as_deref()
                .map(|s| input::parse_stock("stock.csv", s).expect("stock")),
            faults: Some(faults()),
            applied_file: "applied.csv".into(),
        }
    }

    fn run(&self) -> Reconciliation {
        reconcile(&self.inputs()).expect("reconcile")
    }
}

#[test]
fn a_clean_campaign_passes() {
    let r = Fixture::clean().run();
    assert!(r.passed(), "{}", r.to_text());
    assert_eq!(r.checkouts, 7);
    assert_eq!(r.lost.count, 0);
    assert_eq!(r.double_applied.count, 0);
    assert_eq!(r.totals_short.count, 0);
    assert_eq!(r.stock_mismatch.count + r.stock_unbalanced.count, 0);
    assert_eq!(r.applied_after_refusal.count, 0);
    let a = &r.ambiguous;
    assert_eq!(
        (a.count, a.applied, a.cancelled, a.not_applied),
        (3, 1, 1, 1)
    );
    assert_eq!(a.unresolved.count, 0);
    // Setup traffic is listed, not failed.
    assert_eq!(r.unaudited_applied.count, 1);
    assert_eq!(r.unaudited_applied.examples[0].cart, Some(100));
    assert_eq!(r.ledger.rows, 6);
    assert_eq!(r.ledger.fulfilled, 4);
    assert_eq!(r.ledger.cancelled, 2);
    assert_eq!(r.ledger.units_fulfilled, 6);
    assert_eq!(r.answers.s2xx, 4);
    assert_eq!(r.answers.s4xx, 1);
    assert_eq!(r.answers.s5xx, 1);
    assert_eq!(r.answers.errors.get("timeout"), Some(&1));
    let text = r.to_text();
    assert_eq!(
        text.lines().last(),
        Some("lost 0, double-applied 0, ambiguous 3, faults 2, checkouts 7")
    );
    assert!(text.contains("PASS"), "{text}");
}

#[test]
fn faults_get_recovery_and_window_counts() {
    let mut fx = Fixture::clean();
    // The load generator's own stop, after the window: not an error of the fault's.
    fx.audit.push_str(&format!(
        "{{\"t_ms\":{},\"latency_us\":1000,\"cart\":9,\"status\":null,\"error\":\"stopped\",\"order_id\":null,\"order_status\":null}}\n",
        T0 + 1_400
    ));
    let r = fx.run();
    let f = &r.faults[0];
    // Cart 8's 200: sent at +1300 ms, answered 2.5 ms later → 802.5 ms after the start.
    let rec = f.recovery_s.expect("recovered");
    assert!((rec - 0.8025).abs() < 1e-9, "{rec}");
    assert_eq!(f.started_s, Some(0.5));
    assert!((f.duration_s - 0.75).abs() < 1e-9);
    // Window [+500, +1303]: carts 4, 5, 6 and 8; the timeout and the 503 are errors.
    assert_eq!(f.window_end_ms, T0 + 1_303);
    assert_eq!(f.checkouts, 4);
    assert_eq!(f.errors, 2);
    assert_eq!(f.max_ms, Some(30_000.0));
    assert_eq!(f.p50_ms, Some(5.0));
    // The last failure that ended before the next fault (+5000 ms): cart 6's 503, answered
    // at +1205 ms. Cart 5's timeout ended after the next fault began: not this one's.
    let last = f.last_error_s.expect("errors");
    assert!((last - 0.705).abs() < 1e-9, "{last}");
    let g = &r.faults[1];
    assert_eq!(g.recovery_s, None);
    assert_eq!(g.last_error_s, None);
    assert_eq!(g.checkouts, 0);
    assert_eq!(g.p99_ms, None);
    let text = r.to_text();
    assert!(text.contains("kill-leader-node"), "{text}");
    assert!(text.contains("last error"), "{text}");
    assert!(text.contains("none"), "{text}");
}

#[test]
fn a_200_without_its_ledger_row_is_lost() {
    let mut fx = Fixture::clean();
    fx.audit.push_str(&format!(
        "{{\"t_ms\":{},\"latency_us\":1,\"cart\":9,\"status\":200,\"error\":null,\"order_id\":9,\"order_status\":\"placed\"}}\n",
        T0 + 2_000
    ));
    let r = fx.run();
    assert_eq!(r.lost.count, 1);
    assert_eq!(r.lost.examples[0].cart, Some(9));
    assert_eq!(r.failed, ["lost"]);
    assert!(r
        .to_text()
        .ends_with("lost 1, double-applied 0, ambiguous 3, faults 2, checkouts 8\n"));
}

#[test]
fn a_200_whose_ledger_row_is_another_carts_is_lost() {
    let mut fx = Fixture::clean();
    // Order 4 is in the ledger, but for cart 4.
    fx.audit.push_str(&format!(
        "{{\"t_ms\":{},\"latency_us\":1,\"cart\":10,\"status\":200,\"error\":null,\"order_id\":4,\"order_status\":null}}\n",
        T0 + 2_000
    ));
    let r = fx.run();
    assert_eq!(r.lost.count, 1);
    assert!(r.lost.examples[0].detail.contains("cart 4"), "{:?}", r.lost);
    assert_eq!(r.failed, ["lost"]);
}

#[test]
fn a_second_ledger_row_for_an_order_is_double_applied() {
    let mut fx = Fixture::clean();
    fx.applied.push_str(&format!(
        "uid-1,1,fulfilled,{}\n",
        body("uid-1", 1, 1, &[(1, 2)])
    ));
    let r = fx.run();
    assert_eq!(r.double_applied.count, 1);
    assert_eq!(
        r.double_applied.examples[0].order_uid.as_deref(),
        Some("uid-1")
    );
    // Its items are counted once: the totals still match.
    assert_eq!(r.totals_short.count, 0);
    assert_eq!(r.failed, ["double-applied"]);

    // Same order id under another uid.
    let mut fx = Fixture::clean();
    fx.applied.push_str("uid-1b,1,cancelled,\n");
    let r = fx.run();
    assert_eq!(r.double_applied.count, 1);
    assert!(r.double_applied.examples[0].detail.contains("order_id"));
}

#[test]
fn totals_above_the_orders_are_double_applied_and_below_are_short() {
    let mut fx = Fixture::clean();
    fx.totals = "product_id,quantity\n1,4\n2,2\n3,1\n".into();
    let r = fx.run();
    assert_eq!(r.double_applied.count, 1);
    assert_eq!(r.double_applied.examples[0].product_id, Some(1));
    assert!(r.double_applied.examples[0].detail.contains("+1"));
    assert_eq!(r.failed, ["double-applied"]);

    let mut fx = Fixture::clean();
    fx.totals = "product_id,quantity\n1,3\n3,1\n".into();
    let r = fx.run();
    assert_eq!(r.totals_short.count, 1);
    assert_eq!(r.totals_short.examples[0].product_id, Some(2));
    assert_eq!(r.double_applied.count, 0);
    assert_eq!(r.failed, ["totals_short"]);
}

#[test]
fn stock_must_match_the_orders_and_balance() {
    let mut fx = Fixture::clean();
    fx.stock = Some(STOCK.replace("1,97,0,3,0,100", "1,96,0,4,0,100"));
    let r = fx.run();
    assert_eq!(r.stock_mismatch.count, 1);
    assert_eq!(r.stock_mismatch.examples[0].product_id, Some(1));
    assert_eq!(r.failed, ["stock_mismatch"]);

    let mut fx = Fixture::clean();
    fx.stock = Some(STOCK.replace("2,99,0,1,1,100", "2,98,0,1,1,100"));
    let r = fx.run();
    assert_eq!(r.stock_unbalanced.count, 1);
    assert_eq!(r.failed, ["stock_unbalanced"]);

    // A product sold by the ledger but missing from the stock table.
    let mut fx = Fixture::clean();
    fx.stock = Some(STOCK.replace("3,98,1,1,0,100\n", ""));
    let r = fx.run();
    assert_eq!(r.stock_mismatch.count, 1);
    assert_eq!(r.stock_mismatch.examples[0].product_id, Some(3));

    // Without --stock nothing is checked.
    let mut fx = Fixture::clean();
    fx.stock = None;
    let r = fx.run();
    assert!(!r.stock_checked && r.passed());
    assert!(r.to_text().contains("not checked"));
}

#[test]
fn a_refused_checkout_that_was_fulfilled_fails() {
    let mut fx = Fixture::clean();
    fx.applied.push_str(&format!(
        "uid-3,3,fulfilled,{}\n",
        body("uid-3", 3, 3, &[(3, 1)])
    ));
    fx.totals = "product_id,quantity\n1,3\n2,2\n3,2\n".into();
    fx.stock = None;
    let r = fx.run();
    assert_eq!(r.applied_after_refusal.count, 1);
    assert_eq!(r.applied_after_refusal.examples[0].cart, Some(3));
    assert!(r.applied_after_refusal.examples[0].detail.contains("402"));
    assert_eq!(r.failed, ["applied_after_refusal"]);
}

#[test]
fn an_ambiguous_checkout_still_in_flight_is_unresolved() {
    let mut fx = Fixture::clean();
    fx.audit.push_str(&format!(
        "{{\"t_ms\":{},\"latency_us\":7,\"cart\":7,\"status\":null,\"error\":\"reset\",\"order_id\":null,\"order_status\":null}}\n",
        T0 + 2_000
    ));
    fx.orders.push_str("7,uid-7,7,placed\n");
    let r = fx.run();
    let a = &r.ambiguous;
    assert_eq!(a.count, 4);
    assert_eq!(a.unresolved.count, 1);
    assert_eq!(a.not_applied, 1);
    assert!(a.unresolved.examples[0].detail.contains("placed"));
    assert_eq!(r.failed, ["unresolved"]);
    assert_eq!(r.answers.errors.get("reset"), Some(&1));
}

#[test]
fn examples_stop_at_twenty() {
    let mut fx = Fixture::clean();
    for c in 0..25u64 {
        fx.audit.push_str(&format!(
            "{{\"t_ms\":{T0},\"latency_us\":1,\"cart\":{},\"status\":200,\"error\":null,\"order_id\":{},\"order_status\":null}}\n",
            1000 + c,
            1000 + c
        ));
    }
    let r = fx.run();
    assert_eq!(r.lost.count, 25);
    assert_eq!(r.lost.examples.len(), 20);
    assert!(r.to_text().contains("and 5 more"));
}

#[test]
fn a_fulfilled_row_without_items_is_bad_input() {
    let mut fx = Fixture::clean();
    fx.applied.push_str("uid-9,9,fulfilled,\n");
    let e = reconcile(&fx.inputs()).expect_err("uncountable");
    assert_eq!(e.file, "applied.csv");
    assert_eq!(e.line, Some(8));
    // With an items column in the orders file it is counted from there.
    let mut fx = Fixture::clean();
    fx.applied.push_str("uid-9,9,fulfilled,\n");
    fx.orders = ORDERS
        .replace(
            "order_id,order_uid,shopping_cart_id,status",
            "order_id,order_uid,shopping_cart_id,status,items",
        )
        .lines()
        .map(|l| {
            if l.starts_with("order_id") {
                l.to_string()
            } else {
                format!("{l},")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n9,uid-9,9,fulfilled,\"[{\"\"product_id\"\":4,\"\"quantity\"\":2}]\"\n";
    fx.totals.push_str("4,2\n");
    fx.stock = None;
    let r = fx.run();
    assert!(r.passed(), "{}", r.to_text());
    assert_eq!(r.ledger.units_fulfilled, 8);
}

#[test]
fn csv_quoting_as_psql_writes_it() {
    let text = "a,b,c\r\n1,\"x,\"\"y\"\"\",\n2,\"multi\nline\",\"\"\n\n3,,z";
    let rows = parse_csv("f.csv", text).expect("parse");
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows[1],
        (2, vec!["1".into(), "x,\"y\"".into(), String::new()])
    );
    assert_eq!(rows[2].0, 3);
    assert_eq!(rows[2].1[1], "multi\nline");
    assert_eq!(rows[3], (6, vec!["3".into(), String::new(), "z".into()]));

    let e = parse_csv("f.csv", "a,b\n1,\"open\n2,3\n").expect_err("unterminated");
    assert_eq!((e.file.as_str(), e.line), ("f.csv", Some(2)));
    let e = parse_csv("f.csv", "a,b\n1,\"x\"y\n").expect_err("junk after quote");
    assert_eq!(e.line, Some(2));
}

#[test]
fn bad_rows_name_the_file_and_line() {
    let e = input::parse_orders(
        "orders.csv",
        "order_id,order_uid,shopping_cart_id,status\n1,u,1,placed\nx,u2,2,placed\n",
    )
    .expect_err("not an integer");
    assert_eq!(
        e.to_string(),
        "orders.csv line 3: column order_id: not an integer: \"x\""
    );
    let e =
        input::parse_orders("orders.csv", "order_id,order_uid,status\n").expect_err("no column");
    assert!(e.to_string().contains("shopping_cart_id"), "{e}");
    let e = input::parse_applied(
        "applied.csv",
        "order_uid,order_id,outcome,order_body\nu,1,lost,\n",
    )
    .expect_err("outcome");
    assert_eq!(e.line, Some(2));
    let e = input::parse_totals("totals.csv", "product_id,quantity\n1\n").expect_err("short row");
    assert_eq!(e.line, Some(2));
    let e = input::parse_audit("audit.jsonl", "{\"t_ms\":1}\n").expect_err("fields");
    assert_eq!(e.line, Some(1));
    let e = input::parse_faults(
        "faults.jsonl",
        "{\"name\":\"x\",\"start_ms\":5,\"end_ms\":4}\n",
    )
    .expect_err("backwards");
    assert!(e.to_string().contains("before"), "{e}");
    let e = input::parse_totals("totals.csv", "").expect_err("empty");
    assert!(e.to_string().contains("header"), "{e}");
}
