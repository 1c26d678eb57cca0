//! End-to-end tests: a tiny deterministic axum app on 127.0.0.1:0 implements the public API,
//! and the scenarios run as library calls over real sockets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use loadtest::{output, run, Cli, RunConfig, Scenario};
use serde_json::{json, Value};

const PRODUCTS: u64 = 100;

#[derive(Default)]
struct Cart {
    items: u32,
    checked_out: bool,
}

#[derive(Default)]
struct App {
    product_gets: AtomicU64,
    checkouts: AtomicU64,
    next_cart: AtomicU64,
    carts: Mutex<HashMap<u64, Cart>>,
    /// Delay of every product GET (to make the open model fall behind).
    delay: Duration,
    /// Answer with `Connection: close` (forces the client to reconnect every time).
    close: bool,
    /// Delay of every checkout (so that the run's stop time cuts checkouts in flight).
    checkout_delay: Duration,
    /// Checkout requests that reached the server (counted before any delay).
    checkouts_received: AtomicU64,
}

fn error(status: StatusCode, msg: &str) -> Response {
    (
        status,
        Json(json!({"error": status.as_str(), "message": msg})),
    )
        .into_response()
}

/// GET /products/{id}: instance `inst-{n % 3}` answers request n; inst-2 answers 503 to every
/// other of its requests (like the deliberately bad instance).
async fn get_product(State(app): State<Arc<App>>, Path(id): Path<u64>) -> Response {
    let n = app.product_gets.fetch_add(1, SeqCst);
    if !app.delay.is_zero() {
        tokio::time::sleep(app.delay).await;
    }
    let inst = n % 3;
    let mut resp = if inst == 2 && (n / 3) % 2 == 0 {
        error(StatusCode::SERVICE_UNAVAILABLE, "bad instance")
    } else if id == 0 || id > PRODUCTS {
        error(StatusCode::NOT_FOUND, "no such product")
    } else {
        Json(
            json!({"product_id": id, "sku": "SKU0000001", "manufacturer": "Acme",
                    "category_id": 1, "weight": 10, "some_other_id": 2}),
        )
        .into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&format!("inst-{inst}")) {
        resp.headers_mut().insert("x-served-by", v);
    }
    resp
}

async fn create_cart(State(app): State<Arc<App>>, Json(body): Json<Value>) -> Response {
    if body["customer_id"].as_u64().unwrap_or(0) < 1 {
        return error(StatusCode::BAD_REQUEST, "customer_id");
    }
    let id = app.next_cart.fetch_add(1, SeqCst) + 1;
    app.carts.lock().expect("lock").insert(id, Cart::default());
    (StatusCode::CREATED, Json(json!({"shopping_cart_id": id}))).into_response()
}

async fn add_item(
    State(app): State<Arc<App>>,
    Path(id): Path<u64>,
    Json(body): Json<Value>,
) -> Response {
    let pid = body["product_id"].as_u64().unwrap_or(0);
    if pid == 0 || pid > PRODUCTS {
        return error(StatusCode::NOT_FOUND, "product");
    }
    match app.carts.lock().expect("lock").get_mut(&id) {
        Some(c) => {
            c.items += 1;
            StatusCode::NO_CONTENT.into_response()
        }
        None => error(StatusCode::NOT_FOUND, "cart"),
    }
}

/// Every 10th checkout attempt (9, 19, …) is declined with 402 and the cart stays open.
async fn checkout(
    State(app): State<Arc<App>>,
    Path(id): Path<u64>,
    Json(body): Json<Value>,
) -> Response {
    app.checkouts_received.fetch_add(1, SeqCst);
    if !app.checkout_delay.is_zero() {
        tokio::time::sleep(app.checkout_delay).await;
    }
    if body["credit_card_number"].as_str() != Some("1234-5678-9012-3456") {
        return error(StatusCode::BAD_REQUEST, "card");
    }
    let mut carts = app.carts.lock().expect("lock");
    let Some(cart) = carts.get_mut(&id) else {
        return error(StatusCode::NOT_FOUND, "cart");
    };
    if cart.checked_out || cart.items == 0 {
        return error(StatusCode::BAD_REQUEST, "already checked out or empty");
    }
    let n = app.checkouts.fetch_add(1, SeqCst);
    if n % 10 == 9 {
        return error(StatusCode::PAYMENT_REQUIRED, "declined");
    }
    cart.checked_out = true;
    Json(json!({"order_id": id})).into_response()
}

async fn serve(app: App) -> (SocketAddr, Arc<App>) {
    let app = Arc::new(app);
    let close = app.close;
    let mut router = Router::new()
        .route("/products/{id}", get(get_product))
        .route("/shopping-cart", post(create_cart))
        .route("/shopping-carts/{id}/addItem", post(add_item))
        .route("/shopping-carts/{id}/checkout", post(checkout))
        .with_state(app.clone());
    if close {
        router = router.layer(axum::middleware::map_response(
            |mut r: Response| async move {
                r.headers_mut()
                    .insert("connection", HeaderValue::from_static("close"));
                r
            },
        ));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, app)
}

fn cfg(scenario: Scenario, addr: SocketAddr) -> RunConfig {
    let mut c = RunConfig::new(scenario, format!("http://{addr}"));
    c.concurrency = 8;
    c.timeout = Duration::from_secs(10);
    c
}

fn code(report_codes: &std::collections::BTreeMap<u16, u64>, c: u16) -> u64 {
    report_codes.get(&c).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_counts_exact_statuses() {
    let (addr, app) = serve(App::default()).await;
    let mut c = cfg(Scenario::Checkout, addr);
    c.requests = Some(200);
    let r = run(&c).await.expect("run");
    let setup = r.setup.as_ref().expect("setup report");
    assert_eq!(setup.carts_created, 200);
    assert_eq!(setup.failures, 0);
    assert_eq!(r.iterations.count, 200);
    let s = &r.iterations.statuses;
    assert_eq!(code(&s.by_code, 200), 180);
    assert_eq!(s.s402, 20);
    assert_eq!(s.ok_2xx, 180);
    assert_eq!(
        s.s5xx + s.transport_errors + s.timeouts + s.s400 + s.s404,
        0
    );
    assert_eq!(r.steps.len(), 1);
    assert_eq!(r.steps[0].statuses.s402, 20);
    assert!(r.iterations.latency_ms.max >= r.iterations.latency_ms.p50);
    assert!(r.throughput_per_s > 0.0);
    assert_eq!(app.checkouts.load(SeqCst), 200);
    let text = r.to_text();
    assert!(text.contains("checkout"), "{text}");
    assert!(text.contains("p99.9"), "{text}");
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The audit's lines, each checked to have exactly the documented fields.
fn audit_lines(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("audit file");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    for l in &lines {
        let keys: Vec<&str> = l
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            [
                "cart",
                "error",
                "latency_us",
                "order_id",
                "order_status",
                "status",
                "t_ms"
            ],
            "{l}"
        );
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_counts_every_step() {
    let (addr, _app) = serve(App::default()).await;
    let mut c = cfg(Scenario::Flow, addr);
    c.requests = Some(100);
    c.concurrency = 4;
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.jsonl");
    c.audit = Some(audit.clone());
    let before = unix_ms();
    let r = run(&c).await.expect("run");
    let after = unix_ms();
    assert!(r.setup.is_none());
    assert_eq!(r.iterations.count, 100);
    assert_eq!(code(&r.iterations.statuses.by_code, 200), 90);
    assert_eq!(r.iterations.statuses.s402, 10);
    let names: Vec<&str> = r.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["create_cart", "add_item", "checkout"]);
    assert_eq!(code(&r.steps[0].statuses.by_code, 201), 100);
    assert_eq!(code(&r.steps[1].statuses.by_code, 204), 100);
    assert_eq!(code(&r.steps[2].statuses.by_code, 200), 90);
    assert_eq!(r.steps[2].statuses.s402, 10);
    // An iteration takes at least as long as its slowest step.
    assert!(r.iterations.latency_ms.max >= r.steps[2].latency_ms.max);
    let text = r.to_text();
    assert!(text.contains("add_item"), "{text}");

    // The audit: one line per checkout, each for its own new cart, with the checkout's answer.
    let summary = r.audit.as_ref().expect("audit summary");
    assert_eq!(summary.lines, 100);
    assert!(summary.error.is_none());
    assert!(text.contains("audit: 100 checkout lines"), "{text}");
    let lines = audit_lines(&audit);
    assert_eq!(lines.len(), 100);
    let mut carts = std::collections::HashSet::new();
    let (mut ok, mut declined) = (0, 0);
    for l in &lines {
        let cart = l["cart"].as_u64().expect("cart");
        assert!(carts.insert(cart), "cart {cart} twice");
        let t = l["t_ms"].as_u64().expect("t_ms");
        let lat = l["latency_us"].as_u64().expect("latency_us");
        assert!(t >= before && t <= after, "{l}");
        assert!(lat > 0 && t + lat / 1000 <= after, "{l}");
        assert!(l["error"].is_null(), "{l}");
        assert!(l["order_status"].is_null(), "{l}");
        match l["status"].as_u64() {
            // The stub's order id is the cart id.
            Some(200) => {
                ok += 1;
                assert_eq!(l["order_id"].as_u64(), Some(cart), "{l}");
            }
            Some(402) => {
                declined += 1;
                assert!(l["order_id"].is_null(), "{l}");
            }
            _ => panic!("unexpected line {l}"),
        }
    }
    assert_eq!((ok, declined), (90, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_keeps_checkouts_cut_by_the_stop_time_that_were_sent() {
    // Every checkout outlasts the run: each worker's one checkout is in flight at the stop.
    let (addr, app) = serve(App {
        checkout_delay: Duration::from_secs(3),
        ..App::default()
    })
    .await;
    let mut c = cfg(Scenario::Flow, addr);
    c.duration = Some(Duration::from_millis(600));
    c.concurrency = 4;
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.jsonl");
    c.audit = Some(audit.clone());
    let t0 = std::time::Instant::now();
    let r = run(&c).await.expect("run");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(r.cut_at_stop, 4);
    let lines = audit_lines(&audit);
    // The server saw exactly the checkouts the audit has: sent ones are kept (their outcome is
    // unknown to the client), none that never left.
    assert_eq!(lines.len() as u64, app.checkouts_received.load(SeqCst));
    assert_eq!(lines.len(), 4);
    for l in &lines {
        assert!(l["status"].is_null(), "{l}");
        assert_eq!(l["error"], "stopped", "{l}");
        assert!(l["order_id"].is_null(), "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn product_tallies_instances_and_5xx() {
    let (addr, _app) = serve(App::default()).await;
    let mut c = cfg(Scenario::Product, addr);
    c.requests = Some(300);
    c.concurrency = 6;
    let r = run(&c).await.expect("run");
    assert_eq!(r.iterations.count, 300);
    let s = &r.iterations.statuses;
    assert_eq!(s.ok_2xx, 250);
    assert_eq!(s.s5xx, 50);
    assert_eq!(code(&s.by_code, 503), 50);
    let per: Vec<(&str, u64)> = r
        .served_by
        .iter()
        .map(|i| (i.instance.as_str(), i.count))
        .collect();
    assert_eq!(per, [("inst-0", 100), ("inst-1", 100), ("inst-2", 100)]);
    let share: f64 = r.served_by.iter().map(|i| i.share).sum();
    assert!((share - 1.0).abs() < 1e-9);
    // The time series adds up to the totals, per instance too.
    let total: u64 = r.timeseries.iter().map(|row| row.completed).sum();
    assert_eq!(total, 300);
    let inst2: u64 = r
        .timeseries
        .iter()
        .map(|row| row.served_by.get("inst-2").copied().unwrap_or(0))
        .sum();
    assert_eq!(inst2, 100);
    let non2xx: u64 = r.timeseries.iter().map(|row| row.non_2xx).sum();
    assert_eq!(non2xx, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_when_the_server_closes_connections() {
    let (addr, _app) = serve(App {
        close: true,
        ..App::default()
    })
    .await;
    let mut c = cfg(Scenario::Product, addr);
    c.requests = Some(60);
    c.concurrency = 3;
    let r = run(&c).await.expect("run");
    assert_eq!(r.iterations.count, 60);
    assert_eq!(r.iterations.statuses.transport_errors, 0);
    assert_eq!(
        r.iterations.statuses.ok_2xx + r.iterations.statuses.s5xx,
        60
    );
    assert!(r.connections > 3, "connections {}", r.connections);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_stops_the_run() {
    let (addr, _app) = serve(App {
        delay: Duration::from_millis(2),
        ..App::default()
    })
    .await;
    let mut c = cfg(Scenario::Product, addr);
    c.duration = Some(Duration::from_millis(1200));
    c.concurrency = 4;
    let t0 = std::time::Instant::now();
    let r = run(&c).await.expect("run");
    let wall = t0.elapsed();
    assert!(wall < Duration::from_secs(8), "took {wall:?}");
    assert_eq!(
        r.requests_limit, None,
        "no request bound with --duration alone"
    );
    assert!((r.elapsed_s - 1.2).abs() < 0.05, "elapsed {}", r.elapsed_s);
    assert!(r.iterations.count > 10, "count {}", r.iterations.count);
    // With 2 ms per request and 4 workers, at most ~2400 fit in 1.2 s.
    assert!(r.iterations.count < 2600, "count {}", r.iterations.count);
    assert!(r.cut_at_stop <= 4);
    assert_eq!(r.iterations.statuses.transport_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_paces_the_open_model() {
    let (addr, _app) = serve(App::default()).await;
    let mut c = cfg(Scenario::Product, addr);
    c.rate = Some(100.0);
    c.duration = Some(Duration::from_millis(1500));
    c.concurrency = 4;
    let t0 = std::time::Instant::now();
    let r = run(&c).await.expect("run");
    let wall = t0.elapsed();
    assert!(
        wall >= Duration::from_millis(1400),
        "finished too early: {wall:?}"
    );
    let om = r.open_model.as_ref().expect("open model report");
    assert_eq!(om.due, 150);
    assert_eq!(r.model, "open");
    let sent = r.iterations.count + r.cut_at_stop;
    assert_eq!(sent + om.dropped, 150);
    // Paced, not flooded: never more than scheduled; on a loaded box some may be late/dropped.
    assert!(r.iterations.count <= 150);
    assert!(r.iterations.count >= 100, "count {}", r.iterations.count);
    assert!(
        r.throughput_per_s <= 101.0,
        "rate not respected: {}",
        r.throughput_per_s
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_counts_late_and_dropped_honestly() {
    // 50 ms per request with 2 workers = 40/s capacity, asked for 200/s.
    let (addr, _app) = serve(App {
        delay: Duration::from_millis(50),
        ..App::default()
    })
    .await;
    let mut c = cfg(Scenario::Product, addr);
    c.rate = Some(200.0);
    c.duration = Some(Duration::from_secs(1));
    c.concurrency = 2;
    let r = run(&c).await.expect("run");
    let om = r.open_model.as_ref().expect("open model report");
    assert_eq!(om.due, 200);
    assert!(r.iterations.count <= 45, "count {}", r.iterations.count);
    assert!(om.dropped >= 150, "dropped {}", om.dropped);
    assert!(om.late >= 10, "late {}", om.late);
    // Latency from the intended send time includes the queueing delay; service time does not.
    assert!(
        r.iterations.latency_ms.max > om.service_time_ms.max + 100.0,
        "corrected max {} vs service max {}",
        r.iterations.latency_ms.max,
        om.service_time_ms.max
    );
    assert!(om.service_time_ms.p50 >= 45.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_writes_json_csv_and_png() {
    let (addr, _app) = serve(App::default()).await;
    let mut c = cfg(Scenario::Product, addr);
    c.requests = Some(300);
    let r = run(&c).await.expect("run");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("nested/out");
    let paths = output::write_all(&r, &out).expect("write outputs");
    assert_eq!(paths.len(), 3);

    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join(output::SUMMARY_FILE)).expect("summary"),
    )
    .expect("valid JSON");
    assert_eq!(json["scenario"], "product");
    assert_eq!(json["iterations"]["count"], 300);
    assert_eq!(json["iterations"]["statuses"]["s5xx"], 50);
    assert!(json["iterations"]["latency_ms"]["p99_9"].is_number());
    assert_eq!(json["served_by"].as_array().map(Vec::len), Some(3));

    let csv = std::fs::read_to_string(out.join(output::TIMESERIES_FILE)).expect("csv");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    assert_eq!(header[0], "second");
    assert!(header.contains(&"p99_ms"));
    assert!(header.contains(&"served_by:inst-1"));
    let mut completed = 0;
    for line in lines {
        let cols: Vec<&str> = line.split(',').collect();
        assert_eq!(cols.len(), header.len(), "{line}");
        completed += cols[1].parse::<u64>().expect("completed column");
    }
    assert_eq!(completed, 300);

    let png = std::fs::read(out.join(output::CHART_FILE)).expect("png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&png[12..16], b"IHDR");
    let width = u32::from_be_bytes([png[16], png[17], png[18], png[19]]);
    assert_eq!(width, 1200);
    assert!(png.len() > 5_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_or_unsupported_base_url_is_a_clear_error() {
    // A port that was just free: nothing listens there.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    let e = run(&cfg(Scenario::Checkout, addr))
        .await
        .expect_err("must fail");
    assert!(format!("{e:#}").contains("not reachable"), "{e:#}");

    let c = RunConfig::new(Scenario::Product, "https://127.0.0.1:1");
    let e = run(&c).await.expect_err("https rejected");
    assert!(format!("{e:#}").contains("https"), "{e:#}");

    let c = RunConfig::new(Scenario::Product, "not a url");
    assert!(run(&c).await.is_err());

    let mut c = RunConfig::new(Scenario::Product, "http://127.0.0.1:1");
    c.concurrency = 0;
    assert!(run(&c).await.is_err());
}

#[test]
fn cli_parses_and_validates() {
    let cli = Cli::try_parse_from([
        "loadtest",
        "flow",
        "--base-url",
        "http://127.0.0.1:9",
        "-c",
        "7",
        "--duration",
        "1500ms",
        "--rate",
        "250",
    ])
    .expect("parse");
    let c = RunConfig::from(&cli);
    assert_eq!(c.scenario, Scenario::Flow);
    assert_eq!(c.concurrency, 7);
    assert_eq!(c.duration, Some(Duration::from_millis(1500)));
    assert_eq!(c.rate, Some(250.0));
    assert_eq!(c.effective_requests(), u64::MAX);

    let cli = Cli::try_parse_from(["loadtest", "checkout"]).expect("defaults");
    let c = RunConfig::from(&cli);
    assert_eq!(c.effective_requests(), 200_000);
    assert_eq!(c.concurrency, 100);
    assert_eq!(c.base_url, "http://localhost:8080");

    assert!(Cli::try_parse_from(["loadtest", "nope"]).is_err());
    assert!(Cli::try_parse_from(["loadtest", "product", "--duration", "soon"]).is_err());
    assert!(loadtest::parse_duration("2m").is_ok_and(|d| d == Duration::from_secs(120)));
    assert!(loadtest::parse_duration("0s").is_err());
    assert!(loadtest::parse_duration("5parsecs").is_err());
}
