//! One checkout, traced end to end through the real binaries: the five services run as their own
//! processes (each its own `service.name`), RabbitMQ is the real broker, and their spans go over
//! real OTLP to a receiver in this test: the gateway, the cart and the authorizer by gRPC, the
//! product service and the warehouse by HTTP/protobuf. The test sends its own `traceparent`, then
//! checks that every span of the checkout joined that one trace with the right parents, from the
//! gateway to the warehouse's ack, and that no attribute carries the card number.
//!
//! The other binaries are found beside the gateway's (`cargo nextest run --workspace` builds them
//! all; with `-p gateway` alone, build them first: `cargo build --bins`).

use common::testing::otlp::{
    OtlpReceiver, ReceivedSpan, SPAN_KIND_CLIENT, SPAN_KIND_CONSUMER, SPAN_KIND_PRODUCER,
    SPAN_KIND_SERVER,
};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CARD: &str = "4111-1111-1111-1111";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// The spawned services; killed when the test ends, however it ends.
struct Services(Vec<(String, Child)>);

impl Drop for Services {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Services {
    fn spawn(&mut self, binary: &str, env: &[(&str, String)], log: &std::path::Path) {
        let path = binary_path(binary);
        let log_file = std::fs::File::create(log.join(format!("{binary}.log"))).expect("log file");
        let mut command = Command::new(&path);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AUTH_MODE", "off")
            .env("RUST_LOG", "info")
            // Export every 200 ms instead of every 5 s.
            .env("OTEL_BSP_SCHEDULE_DELAY", "200")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("the log file again"))
            .stderr(log_file);
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", path.display()));
        self.0.push((binary.to_string(), child));
    }

    /// Fails with the service's name if one of them has exited.
    fn all_running(&mut self) {
        for (name, child) in &mut self.0 {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{name} exited early: {status}");
            }
        }
    }
}

/// A workspace binary beside this test's gateway binary.
fn binary_path(name: &str) -> PathBuf {
    let gateway = PathBuf::from(env!("CARGO_BIN_EXE_gateway"));
    let path = gateway.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace's binaries first (cargo build --bins)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn wait_ready(client: &reqwest::Client, services: &mut Services, url: &str) {
    for _ in 0..300 {
        services.all_running();
        if let Ok(r) = client.get(format!("{url}/ready")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never became ready");
}

/// The one span of `service` with this name.
fn span<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {service} span {name:?}, got {found:#?}; all: {spans:#?}"
    );
    found[0]
}

fn assert_child(child: &ReceivedSpan, parent: &ReceivedSpan) {
    assert_eq!(
        child.parent_span_id, parent.span_id,
        "{} {:?} should be a child of {} {:?}",
        child.service, child.name, parent.service, parent.name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_checkout_is_one_trace_from_the_gateway_to_the_warehouse_ack() {
    let receiver = OtlpReceiver::start().await;
    let logs = std::env::temp_dir().join(format!("shop-trace-{}", std::process::id()));
    std::fs::create_dir_all(&logs).expect("log dir");
    let amqp = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672".into());
    let queue = format!("trace-test-{}", uuid::Uuid::new_v4());
    let [product, cca, cart, warehouse, gateway] = [(); 5].map(|()| free_port());
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let otlp = |protocol: &str| {
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_string()),
        ]
    };
    let mut services = Services(Vec::new());
    let (grpc, http) = (otlp("grpc"), otlp("http/protobuf"));
    services.spawn(
        "product-service",
        &[
            &http[..],
            &[("PORT", product.to_string()), ("SEED_PRODUCTS", "3".into())],
        ]
        .concat(),
        &logs,
    );
    services.spawn(
        "credit-card-authorizer",
        &[
            &grpc[..],
            &[("PORT", cca.to_string()), ("DECLINE_RATE", "0".into())],
        ]
        .concat(),
        &logs,
    );
    let broker = [("AMQP_URL", amqp), ("ORDER_QUEUE", queue.clone())];
    services.spawn(
        "cart-service",
        &[
            &grpc[..],
            &broker[..],
            &[
                ("PORT", cart.to_string()),
                ("PRODUCT_URL", url(product)),
                ("CCA_URL", url(cca)),
                // The per-request debug lines (common::edge), to find the trace id in them.
                ("RUST_LOG", "info,common::edge=debug".into()),
            ],
        ]
        .concat(),
        &logs,
    );
    services.spawn(
        "warehouse",
        &[&http[..], &broker[..], &[("PORT", warehouse.to_string())]].concat(),
        &logs,
    );
    services.spawn(
        "gateway",
        &[
            &grpc[..],
            &[
                ("PORT", gateway.to_string()),
                ("PRODUCT_TARGETS", url(product)),
                ("CART_TARGETS", url(cart)),
                ("CCA_TARGETS", url(cca)),
                ("HEALTH_INTERVAL_MS", "200".into()),
            ],
        ]
        .concat(),
        &logs,
    );
    let client = reqwest::Client::new();
    for port in [product, cca, cart, warehouse, gateway] {
        wait_ready(&client, &mut services, &url(port)).await;
    }

    // The shopping happens untraced by the caller; only the checkout carries its traceparent.
    let shop = url(gateway);
    let created: serde_json::Value = client
        .post(format!("{shop}/shopping-cart"))
        .json(&serde_json::json!({ "customer_id": 7 }))
        .send()
        .await
        .expect("create a cart")
        .json()
        .await
        .expect("its body");
    let cart_id = created["shopping_cart_id"].as_i64().expect("a cart id");
    let added = client
        .post(format!("{shop}/shopping-carts/{cart_id}/addItem"))
        .json(&serde_json::json!({ "product_id": 1, "quantity": 2 }))
        .send()
        .await
        .expect("add an item");
    assert_eq!(added.status(), 204);
    let checkout = client
        .post(format!("{shop}/shopping-carts/{cart_id}/checkout"))
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .json(&serde_json::json!({ "credit_card_number": CARD }))
        .send()
        .await
        .expect("checkout");
    assert_eq!(checkout.status(), 200, "{:?}", checkout.text().await);

    // Complete once every service has exported its part: the processes export on their own
    // schedules, so the warehouse's ack may well arrive before the gateway's span.
    let route = "POST /shopping-carts/{shopping_cart_id}/checkout";
    let expected = [
        ("gateway", "POST cart".to_string()),
        ("cart-service", route.to_string()),
        ("cart-service", "POST card authorizer".to_string()),
        (
            "credit-card-authorizer",
            "POST /credit-card-authorizer/authorize".to_string(),
        ),
        ("cart-service", format!("{queue} publish")),
        ("warehouse", format!("{queue} process")),
        ("warehouse", "ledger apply".to_string()),
        ("warehouse", "ack".to_string()),
    ];
    let all = receiver
        .wait_for(Duration::from_secs(20), |spans| {
            expected.iter().all(|(service, name)| {
                spans
                    .iter()
                    .any(|s| s.trace_id == TRACE_ID && s.service == *service && s.name == *name)
            })
        })
        .await;
    services.all_running();
    // Shown when the test fails: what arrived, by service.
    for s in &all {
        eprintln!(
            "received {} {:?} trace {} span {} parent {} via {}",
            s.service, s.name, s.trace_id, s.span_id, s.parent_span_id, s.protocol
        );
    }
    let trace: Vec<ReceivedSpan> = all
        .iter()
        .filter(|s| s.trace_id == TRACE_ID)
        .cloned()
        .collect();

    let proxy = span(&trace, "gateway", "POST cart");
    assert_eq!(
        proxy.parent_span_id, CALLER_SPAN,
        "the caller's span is the root"
    );
    assert_eq!(proxy.kind, SPAN_KIND_SERVER);
    assert_eq!(proxy.attribute("http.response.status_code"), Some("200"));

    let checkout = span(&trace, "cart-service", route);
    assert_child(checkout, proxy);
    assert_eq!(checkout.kind, SPAN_KIND_SERVER);

    let call = span(&trace, "cart-service", "POST card authorizer");
    assert_child(call, checkout);
    assert_eq!(call.kind, SPAN_KIND_CLIENT);
    let authorize = span(
        &trace,
        "credit-card-authorizer",
        "POST /credit-card-authorizer/authorize",
    );
    assert_child(authorize, call);

    let publish = span(&trace, "cart-service", &format!("{queue} publish"));
    assert_child(publish, checkout);
    assert_eq!(publish.kind, SPAN_KIND_PRODUCER);

    let process = span(&trace, "warehouse", &format!("{queue} process"));
    assert_child(process, publish);
    assert_eq!(process.kind, SPAN_KIND_CONSUMER);
    let ledger = span(&trace, "warehouse", "ledger apply");
    assert_child(ledger, process);
    let ack = span(&trace, "warehouse", "ack");
    assert_child(ack, process);

    // Both protocols carried spans of this trace.
    assert!(trace.iter().any(|s| s.protocol == "grpc"));
    assert!(trace.iter().any(|s| s.protocol == "http/protobuf"));
    // Every span names the binary it came from.
    for s in &trace {
        assert!(
            [
                "gateway",
                "cart-service",
                "credit-card-authorizer",
                "product-service",
                "warehouse"
            ]
            .contains(&s.service.as_str()),
            "{s:?}"
        );
    }
    // Health checks are not traced, and the card number is nowhere, in any span received.
    let digits: String = CARD.chars().filter(char::is_ascii_digit).collect();
    for s in &all {
        assert_ne!(s.attribute("http.route"), Some("/health"), "{s:?}");
        for (key, value) in &s.attributes {
            let value_digits: String = value.chars().filter(char::is_ascii_digit).collect();
            assert!(
                !value.contains(CARD) && !value_digits.contains(&digits),
                "span {:?} attribute {key} carries the card number",
                s.name
            );
        }
    }
    // The cart's log lines inside the checkout carry its trace id.
    let cart_log = std::fs::read_to_string(logs.join("cart-service.log")).expect("the cart's log");
    let plain = without_ansi(&cart_log);
    assert!(
        plain
            .lines()
            .any(|l| l.contains("/checkout") && l.contains(&format!("trace_id={TRACE_ID}"))),
        "no log line of the checkout carries trace_id={TRACE_ID}:\n{plain}"
    );
    let _ = std::fs::remove_dir_all(&logs);
}

/// The text without the terminal colour codes the log formatter writes.
fn without_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... m
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
