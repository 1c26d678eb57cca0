//! `chaos-reconcile`: reconcile a fault campaign order by order (see `--help` and
//! `loadtest::reconcile`). CSV and JSON-lines files in, a report out; no database client.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use loadtest::reconcile::input::{self, InputError};
use loadtest::reconcile::{reconcile, Inputs, HELP};

#[derive(Debug, Parser)]
#[command(
    name = "chaos-reconcile",
    version,
    about = "Reconcile a fault campaign's checkouts order by order against the durable stores",
    long_about = "Reconcile a fault campaign's checkouts order by order against the durable stores.\n\n\
        Inputs: the JSON lines of `loadtest --audit` (one per checkout sent: t_ms, latency_us, \
        cart, status, error, order_id, order_status), and CSV exports with a header row as \
        `psql -c \"\\copy (...) TO 'file' WITH CSV HEADER\"` writes them (quoted fields, quoted \
        JSON and empty = NULL are understood). Run it after the campaign has drained: every \
        order final, every outcome event consumed.",
    after_help = HELP
)]
struct Args {
    /// JSON lines written by `loadtest --audit`.
    #[arg(long, value_name = "FILE")]
    audit: PathBuf,
    /// CSV: order_id,order_uid,shopping_cart_id,status[,items] (the cart service's orders).
    #[arg(long, value_name = "FILE")]
    orders: PathBuf,
    /// CSV: order_uid,order_id,outcome,order_body (the warehouse ledger's applied_orders;
    /// order_body = the order message JSON, may be empty for a cancelled order).
    #[arg(long, value_name = "FILE")]
    applied: PathBuf,
    /// CSV: product_id,quantity (the ledger's fulfilled totals; rows of a product are added).
    #[arg(long, value_name = "FILE")]
    totals: PathBuf,
    /// CSV: product_id,on_hand,reserved,sold,oversold,received (the product service's stock).
    #[arg(long, value_name = "FILE")]
    stock: Option<PathBuf>,
    /// JSON lines: {"name","start_ms","end_ms","detail"} per fault (unix ms).
    #[arg(long, value_name = "FILE")]
    faults: Option<PathBuf>,
    /// Also write the whole result as JSON to this file.
    #[arg(long, value_name = "OUT")]
    json: Option<PathBuf>,
}

/// Read a file and parse it, naming the file in every error.
fn load<T>(
    path: &Path,
    parse: impl FnOnce(&str, &str) -> Result<T, InputError>,
) -> Result<T, InputError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| InputError {
        file: name.clone(),
        line: None,
        msg: format!("cannot read: {e}"),
    })?;
    parse(&name, &text)
}

fn inputs(a: &Args) -> Result<Inputs, InputError> {
    Ok(Inputs {
        audit: load(&a.audit, input::parse_audit)?,
        orders: load(&a.orders, input::parse_orders)?,
        applied: load(&a.applied, input::parse_applied)?,
        totals: load(&a.totals, input::parse_totals)?,
        stock: a
            .stock
            .as_deref()
            .map(|p| load(p, input::parse_stock))
            .transpose()?,
        faults: a
            .faults
            .as_deref()
            .map(|p| load(p, input::parse_faults))
            .transpose()?,
        applied_file: a.applied.display().to_string(),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = inputs(&args).and_then(|i| reconcile(&i));
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chaos-reconcile: bad input: {e}");
            return ExitCode::from(2);
        }
    };
    let mut json_failed = false;
    if let Some(out) = &args.json {
        let written = serde_json::to_vec_pretty(&r)
            .map_err(std::io::Error::from)
            .and_then(|bytes| std::fs::write(out, bytes));
        if let Err(e) = written {
            eprintln!("chaos-reconcile: cannot write {}: {e}", out.display());
            json_failed = true;
        }
    }
    print!("{}", r.to_text());
    if json_failed {
        ExitCode::from(2)
    } else if r.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
