//! The real gateway on an ephemeral port in front of real upstream HTTP servers started here
//! (small axum apps with a switchable health check, failure rate and delay), over real sockets.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use common::shutdown::CancellationToken;
use gateway::config::{AtwConfig, GatewayConfig};
use gateway::Application;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- upstreams

struct Upstream {
    id: String,
    healthy: AtomicBool,
    failure_rate_bits: AtomicU64,
    delay_ms: AtomicU64,
    hits: AtomicU64,
}

#[derive(Clone)]
struct UpstreamHandle {
    state: Arc<Upstream>,
    url: String,
    stop: CancellationToken,
}

impl UpstreamHandle {
    fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }
    fn set_failure_rate(&self, rate: f64) {
        self.state
            .failure_rate_bits
            .store(rate.to_bits(), Ordering::SeqCst);
    }
    fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
    fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::SeqCst)
    }
}

async fn upstream_health(State(s): State<Arc<Upstream>>) -> StatusCode {
    if s.healthy.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Echoes what it received, as JSON, with `x-served-by`; fails or sleeps as configured.
async fn upstream_echo(State(s): State<Arc<Upstream>>, req: Request) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let served_by = [("x-served-by", s.id.clone())];
    let rate = f64::from_bits(s.failure_rate_bits.load(Ordering::SeqCst));
    if rate > 0.0 && gateway::balancer::random_unit() < rate {
        let body = serde_json::json!({"error": "INJECTED_FAILURE", "message": "injected"});
        return (StatusCode::SERVICE_UNAVAILABLE, served_by, Json(body)).into_response();
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 4 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let headers: HashMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let echo = serde_json::json!({
        "instance": s.id,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_len": body.len(),
        "body_head": String::from_utf8_lossy(&body[..body.len().min(64)]),
    });
    (
        StatusCode::OK,
        served_by,
        [("x-upstream-custom", "kept")],
        Json(echo),
    )
        .into_response()
}

/// A chunked answer (hyper chunks a body of unknown length): three pieces, then the end.
async fn upstream_stream() -> Response {
    let pieces = ["alpha-", "beta-", "gamma"].map(|p| Ok::<_, std::io::Error>(p.to_string()));
    Response::new(axum::body::Body::from_stream(futures::stream::iter(pieces)))
}

async fn start_upstream(id: &str) -> UpstreamHandle {
    start_upstream_on(id, "127.0.0.1:0").await
}

async fn start_upstream_on(id: &str, addr: &str) -> UpstreamHandle {
    let state = Arc::new(Upstream {
        id: id.to_string(),
        healthy: AtomicBool::new(true),
        failure_rate_bits: AtomicU64::new(0f64.to_bits()),
        delay_ms: AtomicU64::new(0),
        hits: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/health", get(upstream_health))
        .route("/products/stream", get(upstream_stream))
        .fallback(upstream_echo)
        .with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind upstream");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let until = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(until.cancelled_owned())
            .await;
    });
    UpstreamHandle { state, url, stop }
}

// ---------------------------------------------------------------- gateway

struct TestGateway {
    base: String,
    gateway: Arc<gateway::Gateway>,
    stop: CancellationToken,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn urls(us: &[&UpstreamHandle]) -> Vec<String> {
    us.iter().map(|u| u.url.clone()).collect()
}

fn config(
    product: &[&UpstreamHandle],
    cart: &[&UpstreamHandle],
    cca: &[&UpstreamHandle],
) -> GatewayConfig {
    GatewayConfig::for_tests(&urls(product), &urls(cart), &urls(cca)).expect("valid targets")
}

/// Targets "product-x" (the product group) and "cart-x" (the cart group, and the authorizer's
/// should it be exposed), with a test configuration pointing at them.
async fn product_and_cart() -> (UpstreamHandle, UpstreamHandle, GatewayConfig) {
    let (p, c) = (
        start_upstream("product-x").await,
        start_upstream("cart-x").await,
    );
    let cfg = config(&[&p], &[&c], &[&c]);
    (p, c, cfg)
}

async fn start_gateway(config: GatewayConfig) -> TestGateway {
    let app = Application::build(config).await.expect("gateway builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    let gateway = app.gateway();
    let stop = CancellationToken::new();
    tokio::spawn(app.run(stop.clone()));
    TestGateway {
        base,
        gateway,
        stop,
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .build()
        .expect("client")
}

fn served_by(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

async fn error_body(r: reqwest::Response) -> serde_json::Value {
    let body: serde_json::Value = r.json().await.expect("JSON error body");
    assert!(
        body["error"].is_string() && body["message"].is_string(),
        "{body}"
    );
    body
}

/// Polls until `cond` holds (the gateway's health checks run every 100 ms in tests).
async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn path_rules_send_each_prefix_to_its_group_and_everything_else_gets_404() {
    let (p, c, a) = (
        start_upstream("product-x").await,
        start_upstream("cart-x").await,
        start_upstream("cca-x").await,
    );
    let gw = start_gateway(config(&[&p], &[&c], &[&a])).await;
    let client = http();
    for (method, path, expected) in [
        ("GET", "/products/5", "product-x"),
        ("GET", "/product/5", "product-x"),
        ("POST", "/product", "product-x"),
        ("POST", "/shopping-cart", "cart-x"),
        ("GET", "/shopping-carts/3", "cart-x"),
        ("POST", "/shopping-carts/3/addItem", "cart-x"),
        ("GET", "/orders/7", "cart-x"),
        ("POST", "/orders/7/cancel", "cart-x"),
        ("GET", "/customers/42/orders", "cart-x"),
    ] {
        let r = client
            .request(
                method.parse().expect("method"),
                format!("{}{path}", gw.base),
            )
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200, "{method} {path}");
        assert_eq!(served_by(&r), expected, "{method} {path}");
    }
    for path in [
        "/nope",
        "/credit-card-authorizer/authorize",
        "/",
        "/productsx/1",
        "/ordersx",
        "/internal/reservations",
    ] {
        let r = client
            .post(format!("{}{path}", gw.base))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(error_body(r).await["error"], "NOT_FOUND");
    }
    assert_eq!(
        a.hits(),
        0,
        "the authorizer is internal unless EXPOSE_CCA=true"
    );
    let raw = client
        .get(format!("{}/gateway/targets", gw.base))
        .send()
        .await
        .expect("targets")
        .text()
        .await
        .expect("text");
    // scripts/demo-atw.sh reads these fields in this order with sed.
    assert!(
        raw.contains(&format!(
            r#"{{"url":"{}","healthy":true,"state":"healthy","weight":1.0,"atw_verdict":"#,
            p.url
        )),
        "{raw}"
    );
    let view: serde_json::Value = serde_json::from_str(&raw).expect("json");
    let names: Vec<&str> = view["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert_eq!(names, vec!["product", "cart"]);
    assert_eq!(view["groups"][0]["targets"][0]["url"], p.url.as_str());
    assert_eq!(view["groups"][0]["targets"][0]["healthy"], true);
    assert_eq!(view["groups"][0]["targets"][0]["weight"], 1.0);
    assert_eq!(view["groups"][0]["targets"][0]["requests"], 3);
    let ready = client
        .get(format!("{}/ready", gw.base))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn expose_cca_routes_the_authorizer() {
    let (p, c, a) = (
        start_upstream("product-x").await,
        start_upstream("cart-x").await,
        start_upstream("cca-x").await,
    );
    let mut cfg = config(&[&p], &[&c], &[&a]);
    cfg.expose_cca = true;
    let gw = start_gateway(cfg).await;
    let r = http()
        .post(format!("{}/credit-card-authorizer/authorize", gw.base))
        .header("content-type", "application/json")
        .body(r#"{"credit_card_number":"1234-5678-9012-3456"}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(served_by(&r), "cca-x");
    assert_eq!(gw.gateway.groups().len(), 3);
}

#[tokio::test]
async fn method_path_query_headers_and_body_are_preserved_and_forwarded_for_is_added() {
    let (_p, _c, cfg) = product_and_cart().await;
    let gw = start_gateway(cfg).await;
    // Bigger than any socket buffer, so it has to stream through.
    let body: Vec<u8> = std::iter::repeat_n(b"0123456789abcdef".as_slice(), 32 * 1024)
        .flatten()
        .copied()
        .collect();
    let r = http()
        .put(format!(
            "{}/shopping-carts/42/addItem?a=1&b=two%20words",
            gw.base
        ))
        .header("content-type", "application/octet-stream")
        .header("x-custom", "hello")
        .header("x-request-id", "req-123")
        .header("x-forwarded-for", "203.0.113.9")
        .body(body.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-upstream-custom"], "kept");
    assert_eq!(r.headers()["x-request-id"], "req-123");
    let echo: serde_json::Value = r.json().await.expect("echo");
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/shopping-carts/42/addItem");
    assert_eq!(echo["query"], "a=1&b=two%20words");
    assert_eq!(echo["body_len"], body.len());
    assert_eq!(
        echo["body_head"],
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    let h = &echo["headers"];
    assert_eq!(h["x-custom"], "hello");
    assert_eq!(h["content-type"], "application/octet-stream");
    assert_eq!(h["x-request-id"], "req-123");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(
        h["x-forwarded-host"]
            .as_str()
            .is_some_and(|v| v.starts_with("127.0.0.1:")),
        "{h}"
    );

    // Without an incoming x-forwarded-for the gateway starts the list; a request id is generated.
    let r = http()
        .get(format!("{}/products/1", gw.base))
        .send()
        .await
        .expect("request");
    assert!(r.headers().contains_key("x-request-id"));
    let echo: serde_json::Value = r.json().await.expect("echo");
    assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1");
    assert!(echo["headers"]["x-request-id"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));
    assert_eq!(echo["body_len"], 0);
}

#[tokio::test]
async fn slow_upstream_gets_504_and_dead_upstream_gets_502_both_counted_as_errors() {
    let (p, c, mut cfg) = product_and_cart().await;
    cfg.upstream_timeout = Duration::from_millis(300);
    // Slow health checks, so the dead target is still registered healthy when we call it.
    cfg.health.interval = Duration::from_secs(30);
    let gw = start_gateway(cfg).await;
    p.set_delay(Duration::from_secs(3));
    let started = Instant::now();
    let r = http()
        .get(format!("{}/products/1", gw.base))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(error_body(r).await["error"], "GATEWAY_TIMEOUT");

    c.stop.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = http()
        .get(format!("{}/shopping-carts/1", gw.base))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 502);
    assert_eq!(error_body(r).await["error"], "BAD_GATEWAY");
    let product = &gw.gateway.product.targets[0];
    let cart = &gw.gateway.cart.targets[0];
    assert_eq!((product.requests(), product.errors()), (1, 1));
    assert_eq!((cart.requests(), cart.errors()), (1, 1));
}

#[tokio::test]
async fn all_targets_unhealthy_gives_503_and_not_ready() {
    let (p1, p2, c) = (
        start_upstream("p1").await,
        start_upstream("p2").await,
        start_upstream("cart-x").await,
    );
    p1.set_healthy(false);
    p2.set_healthy(false);
    let gw = start_gateway(config(&[&p1, &p2], &[&c], &[&c])).await;
    let client = http();
    let r = client
        .get(format!("{}/products/1", gw.base))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 503);
    assert_eq!(error_body(r).await["error"], "SERVICE_UNAVAILABLE");
    assert_eq!(p1.hits() + p2.hits(), 0);
    let ready = client
        .get(format!("{}/ready", gw.base))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 503);
    // The cart group is unaffected.
    let r = client
        .get(format!("{}/shopping-carts/1", gw.base))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn an_unhealthy_target_gets_no_traffic_and_comes_back_when_it_recovers() {
    let (p1, p2, c) = (
        start_upstream("p1").await,
        start_upstream("p2").await,
        start_upstream("cart-x").await,
    );
    let gw = start_gateway(config(&[&p1, &p2], &[&c], &[&c])).await;
    let client = http();
    let g = Arc::clone(&gw.gateway);
    p1.set_healthy(false);
    eventually("p1 unhealthy", Duration::from_secs(10), || {
        !g.product.targets[0].is_healthy()
    })
    .await;
    let before = p1.hits();
    for _ in 0..100 {
        let r = client
            .get(format!("{}/products/1", gw.base))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
        assert_eq!(served_by(&r), "p2");
    }
    assert_eq!(p1.hits(), before);
    let view: serde_json::Value = client
        .get(format!("{}/gateway/targets", gw.base))
        .send()
        .await
        .expect("targets")
        .json()
        .await
        .expect("json");
    assert_eq!(view["groups"][0]["targets"][0]["state"], "unhealthy");
    assert_eq!(
        view["groups"][0]["targets"][0]["last_health_error"],
        "status 503"
    );

    p1.set_healthy(true);
    eventually("p1 healthy again", Duration::from_secs(10), || {
        g.product.targets[0].is_healthy()
    })
    .await;
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..200 {
        let r = client
            .get(format!("{}/products/1", gw.base))
            .send()
            .await
            .expect("request");
        *counts.entry(served_by(&r)).or_default() += 1;
    }
    assert!(counts.get("p1").copied().unwrap_or(0) >= 40, "{counts:?}");
    assert!(counts.get("p2").copied().unwrap_or(0) >= 40, "{counts:?}");
}

/// Sends `n` GETs with `workers` concurrent clients; counts (served_by → responses, 5xx).
async fn drive(base: &str, n: usize, workers: usize) -> (HashMap<String, u64>, u64) {
    let client = http();
    let per_worker = n / workers;
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (client, base) = (client.clone(), base.to_string());
            tokio::spawn(async move {
                let mut counts: HashMap<String, u64> = HashMap::new();
                let mut errors = 0;
                for i in 0..per_worker {
                    let url = format!("{base}/products/{}", (w * per_worker + i) % 1000 + 1);
                    if let Ok(r) = client.get(url).send().await {
                        if r.status().is_server_error() {
                            errors += 1;
                        }
                        *counts.entry(served_by(&r)).or_default() += 1;
                        let _ = r.bytes().await;
                    }
                }
                (counts, errors)
            })
        })
        .collect();
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((c, e)) = t.await {
            errors += e;
            for (k, v) in c {
                *counts.entry(k).or_default() += v;
            }
        }
    }
    (counts, errors)
}

fn share(counts: &HashMap<String, u64>, id: &str) -> f64 {
    let total: u64 = counts.values().sum();
    counts.get(id).copied().unwrap_or(0) as f64 / total.max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_target_weights_shift_traffic_away_from_the_failing_target_and_back() {
    let (good1, good2, bad, c) = (
        start_upstream("good-1").await,
        start_upstream("good-2").await,
        start_upstream("bad").await,
        start_upstream("cart-x").await,
    );
    bad.set_failure_rate(0.5);
    let mut cfg = config(&[&good1, &good2, &bad], &[&c], &[&c]);
    cfg.atw = AtwConfig {
        tick: Duration::from_millis(100),
        window_ticks: 30, // a 3 s window
        min_requests: 10,
        ..AtwConfig::default()
    };
    let gw = start_gateway(cfg).await;
    let g = Arc::clone(&gw.gateway);

    // Before ATW has data: roughly a third each.
    let (early, early_errors) = drive(&gw.base, 600, 6).await;
    let early_bad = share(&early, "bad");
    println!("first 600: {early:?}, bad share {early_bad:.3}, 5xx {early_errors}");

    // Steady load until the bad target's weight has stepped down to (near) the floor.
    let start = Instant::now();
    while g.product.targets[2].weight() > 0.05 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the bad target's weight never dropped"
        );
        drive(&gw.base, 120, 6).await;
    }
    assert!(
        g.product.targets[2].is_healthy(),
        "ATW lowers the weight; it never deregisters"
    );
    assert!(g.product.targets[2].weight() > 0.0);
    assert_eq!(g.product.targets[0].weight(), 1.0);

    let (later, later_errors) = drive(&gw.base, 1200, 6).await;
    let later_bad = share(&later, "bad");
    let later_5xx = later_errors as f64 / later.values().sum::<u64>().max(1) as f64;
    println!("later 1200: {later:?}, bad share {later_bad:.3}, 5xx rate {later_5xx:.3}");
    assert!(later_bad <= 0.10, "bad share {later_bad} > 10%: {later:?}");
    assert!(later_5xx < 0.06, "client-seen 5xx rate {later_5xx}");
    let view: serde_json::Value = http()
        .get(format!("{}/gateway/targets", gw.base))
        .send()
        .await
        .expect("targets")
        .json()
        .await
        .expect("json");
    // At the floor it gets so little traffic that on a slow machine its window may fall under
    // min_requests for a tick (then it is probed back up a step); either way it is held down.
    let verdict = view["groups"][0]["targets"][2]["atw_verdict"].as_str();
    assert!(
        matches!(verdict, Some("anomalous" | "insufficient_data")),
        "{verdict:?}"
    );
    assert!(view["groups"][0]["targets"][2]["weight"].as_f64() < Some(0.2));
    assert_eq!(view["groups"][0]["atw_active"], true);
    // /metrics carries the same weights, per group and target, for dashboards.
    let metrics = http()
        .get(format!("{}/metrics", gw.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let weight_of = |target: &serde_json::Value| {
        let series = format!(
            "gateway_target_weight{{group=\"product\",target=\"{}\"}} ",
            target["url"].as_str().unwrap_or_default()
        );
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let bad_weight = weight_of(&view["groups"][0]["targets"][2]).expect("the bad target's weight");
    assert!(bad_weight < 0.2, "{bad_weight}\n{metrics}");
    assert_eq!(
        weight_of(&view["groups"][0]["targets"][0]),
        Some(1.0),
        "{metrics}"
    );

    // The target recovers: once its bad responses leave the window it regains full weight.
    bad.set_failure_rate(0.0);
    let start = Instant::now();
    while g.product.targets[2].weight() < 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the weight never recovered"
        );
        drive(&gw.base, 120, 6).await;
    }
    let (recovered, _) = drive(&gw.base, 600, 6).await;
    println!("after recovery: {recovered:?}");
    assert!(share(&recovered, "bad") > 0.2, "{recovered:?}");
}

#[tokio::test]
async fn fewer_than_three_healthy_targets_keep_equal_weights() {
    let (good, bad, c) = (
        start_upstream("good").await,
        start_upstream("bad").await,
        start_upstream("cart-x").await,
    );
    bad.set_failure_rate(0.5);
    let mut cfg = config(&[&good, &bad], &[&c], &[&c]);
    cfg.atw = AtwConfig {
        tick: Duration::from_millis(50),
        window_ticks: 20,
        min_requests: 5,
        ..AtwConfig::default()
    };
    let gw = start_gateway(cfg).await;
    let (counts, _) = drive(&gw.base, 600, 4).await;
    assert!(share(&counts, "bad") > 0.3, "{counts:?}");
    assert_eq!(gw.gateway.product.targets[1].weight(), 1.0);
}

// ---------------------------------------------------------------- the wire, byte by byte

/// Writes `request` on a fresh connection and reads until the gateway closes it.
async fn raw(base: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the gateway closes the connection")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn pipelined_requests_chunked_bodies_and_http_1_0_clients_are_framed_correctly() {
    let (_p, _c, cfg) = product_and_cart().await;
    let gw = start_gateway(cfg).await;
    // A chunked request body, then a second request in the same write, then one that closes.
    let answer = raw(
        &gw.base,
        "POST /shopping-carts/1/addItem HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\n\r\n\
         4\r\nwiki\r\n6;ext=1\r\npedia!\r\n0\r\n\r\n\
         GET /products/2?x=y HTTP/1.1\r\nHost: shop\r\n\r\n\
         GET /products/stream HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n",
    )
    .await;
    let answers: Vec<&str> = answer.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 3, "{answer}");
    assert!(answers[0].starts_with("200 OK\r\n"), "{answer}");
    assert!(answers[0].contains(r#""body_len":10"#), "{answer}");
    assert!(
        answers[0].contains(r#""body_head":"wikipedia!""#),
        "{answer}"
    );
    assert!(answers[1].contains(r#""path":"/products/2""#), "{answer}");
    assert!(answers[1].contains(r#""query":"x=y""#), "{answer}");
    assert!(
        answers[2]
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{answer}"
    );
    assert!(
        answers[2]
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{answer}"
    );
    assert!(
        answers[2].ends_with("6\r\nalpha-\r\n5\r\nbeta-\r\n5\r\ngamma\r\n0\r\n\r\n"),
        "{answer}"
    );

    // HTTP/1.0 cannot take chunks: the gateway sends the bare data and closes.
    let answer = raw(&gw.base, "GET /products/stream HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("transfer-encoding"),
        "{answer}"
    );
    assert!(answer.ends_with("\r\n\r\nalpha-beta-gamma"), "{answer}");

    // reqwest decodes the passed-through chunks like any client.
    let r = http()
        .get(format!("{}/products/stream", gw.base))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("body"), "alpha-beta-gamma");
}

#[tokio::test]
async fn ambiguous_or_malformed_requests_get_a_4xx_error_body_and_reach_no_target() {
    let (p, c, cfg) = product_and_cart().await;
    let gw = start_gateway(cfg).await;
    let hits_before = p.hits() + c.hits();
    for (request, status) in [
        // the classic smuggling shapes
        ("POST /products/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400"),
        ("POST /products/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", "400"),
        ("POST /products/1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", "400"),
        ("GET /products/1 HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n", "400"),
        ("GET /products/1 HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n", "400"),
        ("POST /products/1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "400"),
        // found by the differential test against hyper (tests/h1_differential.rs)
        ("POST /products/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello", "400"),
        ("POST /products/1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n0\r\n\r\n", "400"),
        ("POST /products/1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\nContent-Length: 5\r\n\r\nhello", "400"),
        ("POST /products/1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 5\r\nhello\r\n0\r\n\r\n", "400"),
        ("POST /products/1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n X: y\r\n\r\n", "400"),
    ] {
        let answer = raw(&gw.base, request).await;
        assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{request:?}: {answer}");
        assert!(answer.contains("connection: close\r\n"), "{answer}");
        assert!(answer.contains("x-served-by: gateway-test\r\n"), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
        let body: serde_json::Value = serde_json::from_str(body).expect("error body");
        assert!(body["error"].is_string() && body["message"].is_string(), "{body}");
    }
    let big = format!(
        "GET /products/1 HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert!(raw(&gw.base, &big).await.starts_with("HTTP/1.1 431 "));
    assert_eq!(p.hits() + c.hits(), hits_before, "nothing reached a target");
}

#[tokio::test]
async fn a_request_head_trickled_byte_by_byte_gets_408_at_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (p, _c, mut cfg) = product_and_cart().await;
    cfg.header_timeout = Duration::from_millis(400);
    let gw = start_gateway(cfg).await;
    let addr = gw.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.split();
    let started = Instant::now();
    // One byte every 50 ms: each read is well within the idle timeout, the head never ends.
    let trickle = async {
        for byte in b"GET /products/1 HTTP/1.1\r\nHost: shop\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let mut answer = Vec::new();
    let read = async {
        let _ = reader.read_to_end(&mut answer).await;
    };
    tokio::select! {
        () = read => {}
        () = trickle => {}
        () = tokio::time::sleep(Duration::from_secs(5)) => panic!("no answer after 5 s"),
    }
    let elapsed = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert!(answer.contains(r#""error":"REQUEST_TIMEOUT""#), "{answer}");
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert_eq!(p.hits(), 0, "nothing reached a target");

    // A head that arrives whole in time is served as usual.
    let answer = raw(
        &gw.base,
        "GET /products/1 HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
}

#[tokio::test]
async fn a_restarted_target_is_reconnected_without_a_client_visible_error() {
    let (p, c) = (
        start_upstream("product-1").await,
        start_upstream("cart-x").await,
    );
    let addr = p.url.trim_start_matches("http://").to_string();
    let gw = start_gateway(config(&[&p], &[&c], &[&c])).await;
    let client = http();
    let get = || client.get(format!("{}/products/1", gw.base)).send();
    assert_eq!(served_by(&get().await.expect("request")), "product-1");
    // The target goes away and comes back on the same address; the gateway's kept connection to
    // the old one is dead.
    p.stop.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p2 = start_upstream_on("product-2", &addr).await;
    let g = Arc::clone(&gw.gateway);
    eventually(
        "the target is healthy again",
        Duration::from_secs(10),
        || g.product.targets[0].is_healthy(),
    )
    .await;
    for _ in 0..3 {
        let r = get().await.expect("request");
        assert_eq!(r.status(), 200);
        assert_eq!(served_by(&r), "product-2");
    }
    assert_eq!(p2.hits(), 3);
}

/// `--help` lists what the service reads (it runs the same reading code on the defaults), and
/// every variable it lists is documented in a README, so neither can drift from the code.
#[test]
fn help_lists_the_variables_and_the_readmes_document_each() {
    let listed = common::config::check_help(
        env!("CARGO_BIN_EXE_gateway"),
        &[
            include_str!("../README.md"),
            include_str!("../../../README.md"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for name in [
        "PORT",
        "PRODUCT_TARGETS",
        "ATW_FLOOR",
        "HEALTH_PATH",
        "MAX_CONNECTIONS",
    ] {
        assert!(listed.iter().any(|l| l == name), "{name} not in {listed:?}");
    }
}
