//! Reading the reconciliation's inputs: the audit and faults (JSON lines) and the stores' CSV
//! exports (`psql \copy (...) TO 'file' WITH CSV HEADER`). Every error names the file and line.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;

use crate::audit::AuditRec;

/// Bad input: which file, which line (1-based, of the file), what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub file: String,
    pub line: Option<u64>,
    pub msg: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{} line {l}: {}", self.file, self.msg),
            None => write!(f, "{}: {}", self.file, self.msg),
        }
    }
}

impl std::error::Error for InputError {}

fn err(file: &str, line: Option<u64>, msg: impl Into<String>) -> InputError {
    InputError {
        file: file.to_string(),
        line,
        msg: msg.into(),
    }
}

/// One item of an order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Item {
    pub product_id: u64,
    pub quantity: i64,
}

/// A row of the cart's `orders` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    pub order_id: u64,
    pub order_uid: String,
    pub cart: u64,
    pub status: String,
    /// From an optional `items` column (JSON): counts a fulfilled ledger row without a body.
    pub items: Option<Vec<Item>>,
}

/// The ledger's outcome of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Applied {
    Fulfilled,
    Cancelled,
}

/// The order message stored with a fulfilled ledger row (only the fields used here).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OrderMsg {
    #[serde(default)]
    pub order_id: Option<u64>,
    #[serde(default)]
    pub shopping_cart_id: Option<u64>,
    #[serde(default)]
    pub items: Vec<Item>,
}

/// A row of the warehouse's `applied_orders` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedRow {
    /// Line in the applied file, for messages.
    pub line: u64,
    pub order_uid: String,
    pub order_id: Option<u64>,
    pub outcome: Applied,
    pub body: Option<OrderMsg>,
}

/// A row of the ledger's per-product totals (rows of one product are added up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TotalRow {
    pub product_id: u64,
    pub quantity: i64,
}

/// A row of the product service's `stock` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockRow {
    pub product_id: u64,
    pub on_hand: i64,
    pub reserved: i64,
    pub sold: i64,
    pub oversold: i64,
    pub received: i64,
}

/// One fault of the campaign (unix ms; `end_ms` = when it was undone).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Fault {
    pub name: String,
    pub start_ms: u64,
    pub end_ms: u64,
    #[serde(default)]
    pub detail: Option<String>,
}

/// Records of a CSV text as psql writes it (RFC 4180: `,` separated, `"` quoted with `""`
/// inside, quoted fields may hold commas and line breaks; an unquoted empty field is NULL and
/// reads as ""). Each record comes with the line it starts on. Blank lines are skipped.
pub fn parse_csv(file: &str, text: &str) -> Result<Vec<(u64, Vec<String>)>, InputError> {
    let mut records = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut line = 1u64;
    let mut start_line = 1u64;
    let mut in_quotes = false;
    // The current field was quoted and its closing quote is behind us.
    let mut closed = false;
    // Anything seen on this record yet (a blank line is no record).
    let mut any = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => {
                    in_quotes = false;
                    closed = true;
                }
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            ',' => {
                fields.push(std::mem::take(&mut field));
                closed = false;
                any = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                if any || !field.is_empty() || closed {
                    fields.push(std::mem::take(&mut field));
                    records.push((start_line, std::mem::take(&mut fields)));
                }
                closed = false;
                any = false;
                line += 1;
                start_line = line;
            }
            '"' if field.is_empty() && !closed => {
                in_quotes = true;
                any = true;
            }
            _ if closed => {
                return Err(err(
                    file,
                    Some(line),
                    format!("unexpected {c:?} after a closing quote"),
                ));
            }
            '"' => return Err(err(file, Some(line), "a quote inside an unquoted field")),
            _ => {
                field.push(c);
                any = true;
            }
        }
    }
    if in_quotes {
        return Err(err(
            file,
            Some(start_line),
            "a quoted field is not closed before the end of the file",
        ));
    }
    if any || !field.is_empty() || closed {
        fields.push(field);
        records.push((start_line, fields));
    }
    Ok(records)
}

/// A CSV file with a header row, columns looked up by name.
struct Table<'a> {
    file: &'a str,
    cols: HashMap<String, usize>,
    rows: Vec<(u64, Vec<String>)>,
}

impl<'a> Table<'a> {
    fn parse(file: &'a str, text: &str) -> Result<Table<'a>, InputError> {
        let mut rows = parse_csv(file, text)?.into_iter();
        let Some((_, header)) = rows.next() else {
            return Err(err(file, None, "empty: expected a header row"));
        };
        let cols = header
            .iter()
            .enumerate()
            .map(|(i, h)| (h.trim().to_ascii_lowercase(), i))
            .collect();
        let rows: Vec<_> = rows.collect();
        for (line, r) in &rows {
            if r.len() != header.len() {
                return Err(err(
                    file,
                    Some(*line),
                    format!("{} fields, the header has {}", r.len(), header.len()),
                ));
            }
        }
        Ok(Table { file, cols, rows })
    }

    fn col(&self, name: &str) -> Result<usize, InputError> {
        self.cols.get(name).copied().ok_or_else(|| {
            err(
                self.file,
                Some(1),
                format!("no column {name:?} in the header"),
            )
        })
    }

    fn opt_col(&self, name: &str) -> Option<usize> {
        self.cols.get(name).copied()
    }

    fn int<T: std::str::FromStr>(&self, line: u64, name: &str, v: &str) -> Result<T, InputError> {
        v.trim().parse().map_err(|_| {
            err(
                self.file,
                Some(line),
                format!("column {name}: not an integer: {v:?}"),
            )
        })
    }

    /// An integer, or `None` for an empty field (NULL).
    fn opt_int(&self, line: u64, name: &str, v: &str) -> Result<Option<u64>, InputError> {
        if v.trim().is_empty() {
            Ok(None)
        } else {
            self.int(line, name, v).map(Some)
        }
    }
}

/// Parse a JSON-lines file: one value per non-blank line.
fn json_lines<T: for<'de> Deserialize<'de>>(file: &str, text: &str) -> Result<Vec<T>, InputError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| err(file, Some(i as u64 + 1), e.to_string()))
        })
        .collect()
}

/// The audit written by `loadtest --audit`.
pub fn parse_audit(file: &str, text: &str) -> Result<Vec<AuditRec>, InputError> {
    json_lines(file, text)
}

/// The faults file: `{"name","start_ms","end_ms","detail"?}` per line.
pub fn parse_faults(file: &str, text: &str) -> Result<Vec<Fault>, InputError> {
    let faults: Vec<Fault> = json_lines(file, text)?;
    for (i, f) in faults.iter().enumerate() {
        if f.end_ms < f.start_ms {
            return Err(err(
                file,
                None,
                format!(
                    "fault {} ({}): end_ms {} is before start_ms {}",
                    i + 1,
                    f.name,
                    f.end_ms,
                    f.start_ms
                ),
            ));
        }
    }
    Ok(faults)
}

/// `order_id,order_uid,shopping_cart_id,status[,items]`.
pub fn parse_orders(file: &str, text: &str) -> Result<Vec<OrderRow>, InputError> {
    let t = Table::parse(file, text)?;
    let (id, uid, cart, status) = (
        t.col("order_id")?,
        t.col("order_uid")?,
        t.col("shopping_cart_id")?,
        t.col("status")?,
    );
    let items = t.opt_col("items");
    t.rows
        .iter()
        .map(|(line, r)| {
            let items =
                match items.map(|i| r[i].trim()).filter(|s| !s.is_empty()) {
                    Some(s) => Some(serde_json::from_str(s).map_err(|e| {
                        err(file, Some(*line), format!("column items: bad JSON: {e}"))
                    })?),
                    None => None,
                };
            Ok(OrderRow {
                order_id: t.int(*line, "order_id", &r[id])?,
                order_uid: r[uid].clone(),
                cart: t.int(*line, "shopping_cart_id", &r[cart])?,
                status: r[status].trim().to_string(),
                items,
            })
        })
        .collect()
}

/// `order_uid,order_id,outcome,order_body`; `order_id` and `order_body` may be NULL.
pub fn parse_applied(file: &str, text: &str) -> Result<Vec<AppliedRow>, InputError> {
    let t = Table::parse(file, text)?;
    let (uid, id, outcome, body) = (
        t.col("order_uid")?,
        t.col("order_id")?,
        t.col("outcome")?,
        t.col("order_body")?,
    );
    t.rows
        .iter()
        .map(|(line, r)| {
            let outcome = match r[outcome].trim() {
                "fulfilled" => Applied::Fulfilled,
                "cancelled" => Applied::Cancelled,
                o => {
                    return Err(err(
                        file,
                        Some(*line),
                        format!("column outcome: {o:?} is neither fulfilled nor cancelled"),
                    ))
                }
            };
            let body = match r[body].trim() {
                "" => None,
                s => Some(serde_json::from_str(s).map_err(|e| {
                    err(
                        file,
                        Some(*line),
                        format!("column order_body: not an order message: {e}"),
                    )
                })?),
            };
            if r[uid].is_empty() {
                return Err(err(file, Some(*line), "column order_uid is empty"));
            }
            Ok(AppliedRow {
                line: *line,
                order_uid: r[uid].clone(),
                order_id: t.opt_int(*line, "order_id", &r[id])?,
                outcome,
                body,
            })
        })
        .collect()
}

/// `product_id,quantity`.
pub fn parse_totals(file: &str, text: &str) -> Result<Vec<TotalRow>, InputError> {
    let t = Table::parse(file, text)?;
    let (p, q) = (t.col("product_id")?, t.col("quantity")?);
    t.rows
        .iter()
        .map(|(line, r)| {
            Ok(TotalRow {
                product_id: t.int(*line, "product_id", &r[p])?,
                quantity: t.int(*line, "quantity", &r[q])?,
            })
        })
        .collect()
}

/// `product_id,on_hand,reserved,sold,oversold,received`.
pub fn parse_stock(file: &str, text: &str) -> Result<Vec<StockRow>, InputError> {
    let t = Table::parse(file, text)?;
    let c = [
        t.col("product_id")?,
        t.col("on_hand")?,
        t.col("reserved")?,
        t.col("sold")?,
        t.col("oversold")?,
        t.col("received")?,
    ];
    t.rows
        .iter()
        .map(|(line, r)| {
            let n = |i: usize, name: &str| t.int::<i64>(*line, name, &r[c[i]]);
            Ok(StockRow {
                product_id: t.int(*line, "product_id", &r[c[0]])?,
                on_hand: n(1, "on_hand")?,
                reserved: n(2, "reserved")?,
                sold: n(3, "sold")?,
                oversold: n(4, "oversold")?,
                received: n(5, "received")?,
            })
        })
        .collect()
}
