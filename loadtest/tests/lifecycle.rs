//! The `lifecycle` scenario end to end against a tiny deterministic axum implementation of the
//! cart's order API on 127.0.0.1 (as in `scenarios.rs`): its tallies must add up, request by
//! request, to what the stub answered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use loadtest::report::Report;
use loadtest::{run, Cli, LifecycleConfig, RunConfig, Scenario};
use serde_json::{json, Value};

const PRODUCTS: u64 = 10;
/// Carts holding this product are refused with 409 `OUT_OF_STOCK`.
const SOLD_OUT: u64 = 7;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    Pending,
    Placed,
    Cancelling,
    Fulfilled,
    Cancelled,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Placed => "placed",
            Status::Cancelling => "cancelling",
            Status::Fulfilled => "fulfilled",
            Status::Cancelled => "cancelled",
        }
    }

    fn is_final(self) -> bool {
        matches!(self, Status::Fulfilled | Status::Cancelled)
    }
}

struct Order {
    customer: u64,
    status: Status,
    /// The warehouse never gets to it: it stays placed / cancelling.
    stuck: bool,
    reads: u32,
}

#[derive(Default)]
struct Stub {
    next_cart: u64,
    carts: HashMap<u64, (u64, Vec<u64>)>,
    items_added: u64,
    /// Checkouts that reached the payment decision (not refused for stock).
    decided: u64,
    orders: BTreeMap<u64, Order>,
    keys: HashSet<String>,
    checkouts_without_key: u64,
    cancels: u64,
    lists: u64,
}

#[derive(Default)]
struct App(Mutex<Stub>);

impl App {
    fn lock(&self) -> MutexGuard<'_, Stub> {
        self.0.lock().expect("stub lock")
    }
}

fn error(status: StatusCode, code: &str) -> Response {
    (status, Json(json!({"error": code, "message": code}))).into_response()
}

fn order_json(id: u64, o: &Order) -> Value {
    json!({"order_id": id, "order_uid": format!("uid-{id}"), "shopping_cart_id": id,
           "customer_id": o.customer, "items": [], "status": o.status.as_str(),
           "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"})
}

async fn create_cart(State(app): State<Arc<App>>, Json(body): Json<Value>) -> Response {
    let Some(customer) = body["customer_id"].as_u64().filter(|c| *c >= 1) else {
        return error(StatusCode::BAD_REQUEST, "INVALID_FIELD");
    };
    let mut s = app.lock();
    s.next_cart += 1;
    let id = s.next_cart;
    s.carts.insert(id, (customer, Vec::new()));
    (StatusCode::CREATED, Json(json!({"shopping_cart_id": id}))).into_response()
}

async fn add_item(
    State(app): State<Arc<App>>,
    Path(id): Path<u64>,
    Json(body): Json<Value>,
) -> Response {
    let pid = body["product_id"].as_u64().unwrap_or(0);
    if pid == 0 || pid > PRODUCTS || body["quantity"].as_u64() != Some(1) {
        return error(StatusCode::NOT_FOUND, "PRODUCT_NOT_FOUND");
    }
    let mut s = app.lock();
    let Some((_, items)) = s.carts.get_mut(&id) else {
        return error(StatusCode::NOT_FOUND, "CART_NOT_FOUND");
    };
    items.push(pid);
    s.items_added += 1;
    StatusCode::NO_CONTENT.into_response()
}

/// Sold-out product → 409; then by decision number n: every 10th (9, 19, …) declined, n % 10
/// == 4 answered 202 pending (odd order ids of those already cancelled by the settler), the
/// rest 200 placed. Order ids divisible by 3 are fulfilled at once (a fast warehouse), ids
/// ≡ 1 mod 5 never move (a backlog); the others move one step per read.
async fn checkout(
    State(app): State<Arc<App>>,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> Response {
    let mut s = app.lock();
    match headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        Some(k) => {
            if !s.keys.insert(k.to_string()) {
                return error(StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED");
            }
        }
        None => s.checkouts_without_key += 1,
    }
    let Some((customer, items)) = s.carts.remove(&id) else {
        return error(StatusCode::NOT_FOUND, "CART_NOT_FOUND");
    };
    if items.is_empty() {
        return error(StatusCode::BAD_REQUEST, "CART_EMPTY");
    }
    if items.contains(&SOLD_OUT) {
        return error(StatusCode::CONFLICT, "OUT_OF_STOCK");
    }
    let n = s.decided;
    s.decided += 1;
    if n % 10 == 9 {
        return error(StatusCode::PAYMENT_REQUIRED, "PAYMENT_DECLINED");
    }
    let order_id = s.orders.len() as u64 + 1;
    let pending = n % 10 == 4;
    let status = match (pending, order_id.is_multiple_of(3)) {
        (true, _) if order_id % 2 == 1 => Status::Cancelled,
        (true, _) => Status::Pending,
        (false, true) => Status::Fulfilled,
        (false, false) => Status::Placed,
    };
    s.orders.insert(
        order_id,
        Order {
            customer,
            status,
            stuck: order_id % 5 == 1,
            reads: 0,
        },
    );
    if pending {
        (
            StatusCode::ACCEPTED,
            Json(json!({"order_id": order_id, "status": "pending"})),
        )
            .into_response()
    } else {
        Json(json!({"order_id": order_id, "status": "placed"})).into_response()
    }
}

async fn get_order(State(app): State<Arc<App>>, Path(id): Path<u64>) -> Response {
    let mut s = app.lock();
    let Some(o) = s.orders.get_mut(&id) else {
        return error(StatusCode::NOT_FOUND, "ORDER_NOT_FOUND");
    };
    o.reads += 1;
    let answer = order_json(id, o);
    if !o.stuck {
        o.status = match o.status {
            Status::Pending => Status::Placed,
            Status::Placed => Status::Fulfilled,
            Status::Cancelling => Status::Cancelled,
            done => done,
        };
    }
    Json(answer).into_response()
}

/// Every 7th cancel request (6, 13, …) fails with 503 `BROKER_UNAVAILABLE`.
async fn cancel(State(app): State<Arc<App>>, Path(id): Path<u64>) -> Response {
    let mut s = app.lock();
    let n = s.cancels;
    s.cancels += 1;
    let Some(o) = s.orders.get_mut(&id) else {
        return error(StatusCode::NOT_FOUND, "ORDER_NOT_FOUND");
    };
    if n % 7 == 6 {
        return error(StatusCode::SERVICE_UNAVAILABLE, "BROKER_UNAVAILABLE");
    }
    match o.status {
        Status::Fulfilled => error(StatusCode::CONFLICT, "ORDER_ALREADY_FULFILLED"),
        Status::Cancelled => Json(order_json(id, o)).into_response(),
        _ => {
            o.status = Status::Cancelling;
            (StatusCode::ACCEPTED, Json(order_json(id, o))).into_response()
        }
    }
}

async fn list_orders(
    State(app): State<Arc<App>>,
    Path(customer): Path<u64>,
    RawQuery(q): RawQuery,
) -> Response {
    if q.as_deref() != Some("limit=10") {
        return error(StatusCode::BAD_REQUEST, "INVALID_FIELD");
    }
    let mut s = app.lock();
    s.lists += 1;
    let items: Vec<Value> = s
        .orders
        .iter()
        .rev()
        .filter(|(_, o)| o.customer == customer)
        .take(10)
        .map(|(id, o)| order_json(*id, o))
        .collect();
    Json(json!({"items": items, "next_cursor": null})).into_response()
}

async fn serve() -> (SocketAddr, Arc<App>) {
    let app = Arc::new(App::default());
    let router = Router::new()
        .route("/shopping-cart", post(create_cart))
        .route("/shopping-carts/{id}/addItem", post(add_item))
        .route("/shopping-carts/{id}/checkout", post(checkout))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/cancel", post(cancel))
        .route("/customers/{id}/orders", get(list_orders))
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, app)
}

fn cfg(addr: SocketAddr, requests: u64, lifecycle: LifecycleConfig) -> RunConfig {
    let mut c = RunConfig::new(Scenario::Lifecycle, format!("http://{addr}"));
    c.concurrency = 6;
    c.requests = Some(requests);
    c.products = PRODUCTS;
    c.timeout = Duration::from_secs(10);
    c.lifecycle = lifecycle;
    c
}

fn code(r: &Report, step: &str, c: u16) -> u64 {
    let s = r
        .steps
        .iter()
        .find(|s| s.name == step)
        .unwrap_or_else(|| panic!("no step {step}"));
    s.statuses.by_code.get(&c).copied().unwrap_or(0)
}

fn count(r: &Report, step: &str) -> u64 {
    r.steps
        .iter()
        .find(|s| s.name == step)
        .map_or(0, |s| s.count)
}

/// Every tally against the per-step status counts and against the stub's own records.
fn assert_adds_up(r: &Report, app: &App, n: u64, final_polls: u32) {
    let l = &r.lifecycle.as_ref().expect("lifecycle report").tallies;
    let s = app.lock();
    assert_eq!(r.iterations.count, n);
    assert_eq!(r.cut_at_stop, 0);

    assert_eq!(code(r, "create_cart", 201), n);
    assert_eq!(count(r, "add_item"), s.items_added);
    assert_eq!(code(r, "add_item", 204), s.items_added);
    assert!((n..=3 * n).contains(&s.items_added), "{}", s.items_added);

    // One checkout per iteration, each with its own key, tallied by its answer.
    let c = &l.checkouts;
    assert_eq!(count(r, "checkout"), n);
    assert_eq!(s.checkouts_without_key, 0);
    assert_eq!(s.keys.len() as u64, n);
    assert_eq!(c.placed, code(r, "checkout", 200));
    assert_eq!(c.pending, code(r, "checkout", 202));
    assert_eq!(c.out_of_stock, code(r, "checkout", 409));
    assert_eq!(c.declined, code(r, "checkout", 402));
    assert_eq!(c.failed, 0);
    assert_eq!(c.placed + c.pending + c.out_of_stock + c.declined, n);
    assert_eq!(c.placed + c.pending, s.orders.len() as u64);
    assert!(c.out_of_stock > 0 && c.declined > 0 && c.pending > 0);

    // Every cancel answer counted once, in its bucket.
    let k = &l.cancels;
    assert_eq!(count(r, "cancel"), s.cancels);
    assert_eq!(k.accepted, code(r, "cancel", 202));
    assert_eq!(k.already_cancelled, code(r, "cancel", 200));
    assert_eq!(k.already_fulfilled, code(r, "cancel", 409));
    assert_eq!(k.failed, code(r, "cancel", 503));
    assert_eq!(
        k.accepted + k.already_cancelled + k.already_fulfilled + k.failed,
        s.cancels
    );
    assert_eq!(k.failed, s.cancels / 7);

    // Every order once in the final tally, and what it says matches the stub's records.
    let f = &l.final_status;
    assert_eq!(
        f.fulfilled + f.cancelled + f.not_final + f.unknown,
        c.placed + c.pending
    );
    assert_eq!(
        f.unknown, k.failed,
        "only a failed cancel cut an order short"
    );
    let stub_final = |st: Status| s.orders.values().filter(|o| o.status == st).count() as u64;
    assert!(f.fulfilled <= stub_final(Status::Fulfilled));
    assert!(f.cancelled <= stub_final(Status::Cancelled));
    // Polls after a cancel stop at a final status or after `final_polls` reads.
    for o in s.orders.values() {
        assert!(o.reads <= final_polls.max(2), "{} reads", o.reads);
    }
    assert_eq!(count(r, "get_order"), code(r, "get_order", 200));
    assert_eq!(
        count(r, "get_order"),
        s.orders.values().map(|o| u64::from(o.reads)).sum::<u64>()
    );

    // Expected non-2xx are no failures: only the 503s of the cancels are.
    let i = &l.iterations;
    assert_eq!(i.failed, k.failed);
    assert_eq!(i.failed_5xx, k.failed);
    assert_eq!(i.ok + i.failed, n);
    assert_eq!(count(r, "list_orders"), i.ok);
    assert_eq!(s.lists, i.ok);
    assert_eq!(r.iterations.statuses.s5xx, k.failed);
    assert_eq!(r.iterations.statuses.transport_errors, 0);
}

/// `--audit`: one line per checkout, with its answer; orders carry the body's id and status.
fn assert_audit_matches(r: &Report, path: &std::path::Path, n: u64) {
    let text = std::fs::read_to_string(path).expect("audit file");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len() as u64, n);
    assert_eq!(r.audit.as_ref().map(|a| a.lines), Some(n));
    let mut by_code: BTreeMap<u64, u64> = BTreeMap::new();
    let mut carts = HashSet::new();
    let mut order_ids = HashSet::new();
    for l in &lines {
        assert!(carts.insert(l["cart"].as_u64().expect("cart")), "{l}");
        assert!(l["t_ms"].as_u64().is_some() && l["latency_us"].as_u64().is_some());
        assert!(l["error"].is_null(), "{l}");
        let code = l["status"].as_u64().expect("status");
        *by_code.entry(code).or_default() += 1;
        match code {
            200 | 202 => {
                assert!(order_ids.insert(l["order_id"].as_u64().expect("order id")));
                let want = if code == 200 { "placed" } else { "pending" };
                assert_eq!(l["order_status"], want, "{l}");
            }
            _ => assert!(
                l["order_id"].is_null() && l["order_status"].is_null(),
                "{l}"
            ),
        }
    }
    for (c, k) in by_code {
        assert_eq!(k, code(r, "checkout", c as u16), "status {c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_cancelling_every_order_tallies_each_answer_once() {
    let (addr, app) = serve().await;
    let settings = LifecycleConfig {
        polls: 2,
        cancel_share: 1.0,
        final_polls: 4,
        poll_interval: Duration::from_millis(1),
    };
    let r = run(&cfg(addr, 200, settings)).await.expect("run");
    assert_adds_up(&r, &app, 200, 4);
    let l = &r.lifecycle.as_ref().expect("lifecycle").tallies;
    let orders = l.checkouts.placed + l.checkouts.pending;
    // Every order got exactly one cancel, and each kind of answer came up.
    assert_eq!(count(&r, "cancel"), orders);
    assert!(l.cancels.accepted > 0);
    assert!(l.cancels.already_cancelled > 0);
    assert!(l.cancels.already_fulfilled > 0);
    assert!(l.cancels.failed > 0);
    assert!(l.final_status.cancelled > 0);
    assert!(l.final_status.fulfilled > 0);
    {
        let s = app.lock();
        // A cancelled order stuck in `cancelling` was polled exactly `final_polls` times.
        let stuck: Vec<&Order> = s
            .orders
            .values()
            .filter(|o| o.status == Status::Cancelling)
            .collect();
        assert!(!stuck.is_empty());
        for o in &stuck {
            assert!(o.stuck);
            assert_eq!(o.reads, 4);
        }
        assert_eq!(l.final_status.not_final, stuck.len() as u64);
        assert!(s
            .orders
            .values()
            .filter(|o| o.reads > 0)
            .all(|o| o.status.is_final() || o.reads == 4));
    }

    let text = r.to_text();
    assert!(text.contains("already fulfilled (409)"), "{text}");
    assert!(text.contains("list_orders"), "{text}");
    let json: Value = serde_json::to_value(&r).expect("json");
    assert_eq!(json["scenario"], "lifecycle");
    assert_eq!(json["lifecycle"]["settings"]["cancel_share"], 1.0);
    assert_eq!(
        json["lifecycle"]["cancels"]["already_fulfilled"],
        l.cancels.already_fulfilled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_default_share_cancels_a_fifth_and_polls_the_rest() {
    let (addr, app) = serve().await;
    let settings = LifecycleConfig {
        poll_interval: Duration::ZERO,
        ..LifecycleConfig::DEFAULT
    };
    assert_eq!(settings.polls, 2);
    assert!((settings.cancel_share - 0.2).abs() < 1e-12);
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.jsonl");
    let mut c = cfg(addr, 150, settings);
    c.audit = Some(audit.clone());
    let r = run(&c).await.expect("run");
    assert_adds_up(&r, &app, 150, settings.final_polls);
    assert_audit_matches(&r, &audit, 150);
    let l = &r.lifecycle.as_ref().expect("lifecycle").tallies;
    // 150 × 0.2 = 30 iterations chosen; only those that got an order send the cancel.
    let cancels = count(&r, "cancel");
    assert!(cancels > 0 && cancels <= 30, "{cancels} cancels");
    // Orders not cancelled are read exactly `polls` times.
    let s = app.lock();
    let twice = s.orders.values().filter(|o| o.reads == 2).count() as u64;
    let orders = l.checkouts.placed + l.checkouts.pending;
    assert!(twice >= orders - cancels, "{twice} of {orders}");
}

#[test]
fn lifecycle_flags_parse_with_defaults_and_reject_bad_values() {
    let cli = Cli::try_parse_from(["loadtest", "lifecycle"]).expect("defaults");
    let c = RunConfig::from(&cli);
    assert_eq!(c.scenario, Scenario::Lifecycle);
    assert_eq!(c.lifecycle, LifecycleConfig::DEFAULT);
    assert_eq!(c.lifecycle.poll_interval, Duration::from_millis(100));

    let cli = Cli::try_parse_from([
        "loadtest",
        "lifecycle",
        "--cancel-share",
        "0.5",
        "--polls",
        "3",
        "--final-polls",
        "7",
        "--poll-interval",
        "0",
        "--duration",
        "2s",
    ])
    .expect("parse");
    let c = RunConfig::from(&cli);
    assert_eq!(c.lifecycle.cancel_share, 0.5);
    assert_eq!(c.lifecycle.polls, 3);
    assert_eq!(c.lifecycle.final_polls, 7);
    assert_eq!(c.lifecycle.poll_interval, Duration::ZERO);
    assert_eq!(c.effective_requests(), u64::MAX);
    assert!(c.validate().is_ok());
    let cli =
        Cli::try_parse_from(["loadtest", "lifecycle", "--cancel-share", "20%"]).expect("percent");
    assert!((RunConfig::from(&cli).lifecycle.cancel_share - 0.2).abs() < 1e-12);

    for bad in ["1.5", "-0.1", "NaN", "lots"] {
        let flag = format!("--cancel-share={bad}");
        let e = Cli::try_parse_from(["loadtest", "lifecycle", flag.as_str()])
            .expect_err(bad)
            .to_string();
        assert!(e.contains("share"), "{bad}: {e}");
    }
    assert!(Cli::try_parse_from(["loadtest", "lifecycle", "--polls", "-1"]).is_err());
    let cli =
        Cli::try_parse_from(["loadtest", "lifecycle", "--final-polls", "5000"]).expect("parse");
    assert!(RunConfig::from(&cli).validate().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_cut_by_the_duration_still_counts_every_order_once() {
    let (addr, app) = serve().await;
    let mut c = cfg(
        addr,
        1,
        LifecycleConfig {
            polls: 3,
            cancel_share: 0.5,
            final_polls: 50,
            poll_interval: Duration::from_millis(20),
        },
    );
    c.requests = None;
    c.duration = Some(Duration::from_millis(700));
    let r = run(&c).await.expect("run");
    let l = &r.lifecycle.as_ref().expect("lifecycle").tallies;
    let s = app.lock();
    let orders = l.checkouts.placed + l.checkouts.pending;
    assert!(orders > 0);
    assert_eq!(orders, s.orders.len() as u64);
    let f = &l.final_status;
    assert_eq!(f.fulfilled + f.cancelled + f.not_final + f.unknown, orders);
    // Iterations are either finished (ok or failed) or cut at the stop time, never two of these.
    assert_eq!(l.iterations.ok + l.iterations.failed, r.iterations.count);
    assert!(r.cut_at_stop <= 6, "{} cut", r.cut_at_stop);
    assert!(
        f.unknown >= l.iterations.failed && f.unknown <= l.iterations.failed + r.cut_at_stop,
        "{} unknown, {} failed, {} cut",
        f.unknown,
        l.iterations.failed,
        r.cut_at_stop
    );
    assert_eq!(count(&r, "list_orders"), l.iterations.ok);
    println!("{}", r.to_text());
}
