//! The built `chaos-reconcile` binary on fixture files: exit status and last line for a clean
//! campaign, a lost order and bad input; `--json` and `--help`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_chaos-reconcile");
const T0: u64 = 1_700_000_000_000;

fn audit_line(dt: u64, cart: u64, status: &str, error: &str, order: &str) -> String {
    format!(
        "{{\"t_ms\":{},\"latency_us\":1500,\"cart\":{cart},\"status\":{status},\"error\":{error},\"order_id\":{order},\"order_status\":null}}\n",
        T0 + dt
    )
}

/// Writes the files of a small clean campaign: two placed orders (one later cancelled), one
/// declined checkout, one timeout that never became an order.
fn fixture(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let files = [
        (
            "audit",
            "audit.jsonl",
            [
                audit_line(0, 1, "200", "null", "1"),
                audit_line(5, 2, "200", "null", "2"),
                audit_line(9, 3, "402", "null", "null"),
                audit_line(20, 4, "null", "\"timeout\"", "null"),
            ]
            .concat(),
        ),
        (
            "orders",
            "orders.csv",
            "order_id,order_uid,shopping_cart_id,status\n1,u1,1,fulfilled\n2,u2,2,cancelled\n"
                .to_string(),
        ),
        (
            "applied",
            "applied.csv",
            "order_uid,order_id,outcome,order_body\n\
             u1,1,fulfilled,\"{\"\"order_uid\"\":\"\"u1\"\",\"\"order_id\"\":1,\"\"shopping_cart_id\"\":1,\"\"customer_id\"\":3,\"\"items\"\":[{\"\"product_id\"\":5,\"\"quantity\"\":2}]}\"\n\
             u2,2,cancelled,\n"
                .to_string(),
        ),
        ("totals", "totals.csv", "product_id,quantity\n5,2\n".to_string()),
        (
            "stock",
            "stock.csv",
            "product_id,on_hand,reserved,sold,oversold,received\n5,98,0,2,0,100\n".to_string(),
        ),
        (
            "faults",
            "faults.jsonl",
            format!(
                "{{\"name\":\"kill-leader-node\",\"start_ms\":{},\"end_ms\":{},\"detail\":\"rabbit-1\"}}\n",
                T0 + 1,
                T0 + 8
            ),
        ),
    ];
    files
        .into_iter()
        .map(|(flag, name, text)| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write fixture");
            (flag, p)
        })
        .collect()
}

fn run(files: &[(&str, PathBuf)], extra: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    for (flag, path) in files {
        cmd.arg(format!("--{flag}")).arg(path);
    }
    cmd.args(extra).output().expect("run chaos-reconcile")
}

fn last_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn clean_campaign_exits_0_with_the_summary_last() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = fixture(dir.path());
    let json = dir.path().join("out.json");
    let json_arg = json.display().to_string();
    let o = run(&files, &["--json", &json_arg]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        last_line(&o),
        "lost 0, double-applied 0, ambiguous 1, faults 1, checkouts 4"
    );
    assert!(stdout.contains("kill-leader-node"), "{stdout}");
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).expect("json");
    assert_eq!(v["checkouts"], 4);
    assert_eq!(v["ambiguous"]["not_applied"], 1);
    assert_eq!(v["failed"].as_array().map(Vec::len), Some(0));
    // Recovery: the 200 sent at +5 ms answered 1.5 ms later, 5.5 ms after the start at +1.
    let rec = v["faults"][0]["recovery_s"].as_f64().expect("recovered");
    assert!((rec - 0.0055).abs() < 1e-9, "{rec}");
}

#[test]
fn a_lost_order_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = fixture(dir.path());
    let audit = &files[0].1;
    let mut text = std::fs::read_to_string(audit).expect("audit");
    text.push_str(&audit_line(30, 7, "200", "null", "7"));
    std::fs::write(audit, text).expect("write");
    let o = run(&files, &[]);
    assert_eq!(o.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("cart 7 order 7"), "{stdout}");
    assert!(stdout.contains("FAIL: lost"), "{stdout}");
    assert_eq!(
        last_line(&o),
        "lost 1, double-applied 0, ambiguous 1, faults 1, checkouts 5"
    );
}

#[test]
fn bad_input_exits_2_naming_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = fixture(dir.path());
    let orders = &files[1].1;
    std::fs::write(
        orders,
        "order_id,order_uid,shopping_cart_id,status\n1,u1,1,fulfilled\n2,u2,two,cancelled\n",
    )
    .expect("write");
    let o = run(&files, &[]);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!("{} line 3", orders.display())),
        "{stderr}"
    );
    assert!(stderr.contains("shopping_cart_id"), "{stderr}");

    // A missing file and a missing required option are bad input too.
    let fresh = tempfile::tempdir().expect("tempdir");
    let mut missing = fixture(fresh.path());
    missing[3].1 = fresh.path().join("nope.csv");
    let o = run(&missing, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope.csv"));
    let o = run(&files[..2], &[]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn help_explains_the_rules() {
    let o = Command::new(BIN).arg("--help").output().expect("help");
    assert_eq!(o.status.code(), Some(0));
    let help = String::from_utf8_lossy(&o.stdout);
    for word in [
        "--audit",
        "--orders",
        "--applied",
        "--totals",
        "--stock",
        "--faults",
        "--json",
        "lost",
        "double-applied",
        "applied_after_refusal",
        "unresolved",
        "recovery",
        "Exit status",
    ] {
        assert!(help.contains(word), "{word} missing from --help:\n{help}");
    }
}
