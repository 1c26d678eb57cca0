//! `Idempotency-Key` on `POST /shopping-cart` and `POST /shopping-carts/{id}/checkout`, over real
//! HTTP against the real app, card authorizer, RabbitMQ and, for the Redis variant, Redis (a key
//! prefix per test). Then the two idempotency stores' own contract, and the stored-size bound on
//! a router of its own.

mod support;

use axum::routing::post;
use axum::Router;
use cart_service::idempotency::{
    self, Claim, ClaimToken, Idempotency, IdempotencyStore, MemoryIdempotencyStore,
    RedisIdempotencyStore, StoredResponse,
};
use common::metrics::Metrics;
use common::shutdown::CancellationToken;
use common::testing::TestRedis;
use futures::future::join_all;
use reqwest::header::HeaderValue;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{
    error_body, spawn_app_with, spawn_authorizer, spawn_second, FaultyProxy, Mode, Options,
    TestApp, CARD,
};

#[derive(Debug, Clone, Copy)]
enum Kind {
    Memory,
    Redis,
}

/// The app with its carts (and so its keys) in memory or in a fresh Redis prefix.
async fn app_with(kind: Kind, options: Options) -> (TestApp, Option<TestRedis>) {
    match kind {
        Kind::Memory => (spawn_app_with(options).await, None),
        Kind::Redis => {
            let redis = TestRedis::create().await;
            let app = spawn_app_with(Options {
                store: Some(redis.config()),
                ..options
            })
            .await;
            (app, Some(redis))
        }
    }
}

async fn app(kind: Kind) -> (TestApp, Option<TestRedis>) {
    app_with(kind, Options::default()).await
}

/// An answer read whole: status, headers, the body's bytes.
struct Answer {
    status: StatusCode,
    replayed: bool,
    content_type: Option<String>,
    body: bytes::Bytes,
}

impl Answer {
    async fn of(resp: reqwest::Response) -> Self {
        let replayed = match resp.headers().get("idempotent-replayed") {
            None => false,
            Some(value) => {
                assert_eq!(value, "true");
                true
            }
        };
        Self {
            status: resp.status(),
            replayed,
            content_type: resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body: resp.bytes().await.expect("body"),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The same answer, replayed: status, content type and body byte for byte.
    fn assert_replays(&self, first: &Answer) {
        assert!(self.replayed, "not marked replayed");
        assert!(!first.replayed, "the first answer is not a replay");
        assert_eq!(self.status, first.status);
        assert_eq!(self.content_type, first.content_type);
        assert_eq!(self.body, first.body);
    }
}

async fn post_keyed(app: &TestApp, path: &str, key: &str, body: Value) -> Answer {
    let resp = app
        .client
        .post(format!("{}{path}", app.base))
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .expect("request");
    Answer::of(resp).await
}

async fn create_keyed(app: &TestApp, key: &str, customer_id: i64) -> Answer {
    post_keyed(
        app,
        "/shopping-cart",
        key,
        json!({ "customer_id": customer_id }),
    )
    .await
}

async fn checkout_keyed(app: &TestApp, cart: i64, key: &str) -> Answer {
    post_keyed(
        app,
        &format!("/shopping-carts/{cart}/checkout"),
        key,
        json!({ "credit_card_number": CARD }),
    )
    .await
}

/// The id the next cart gets: how many carts exist, plus one (a cart made to find out).
async fn next_cart_id(app: &TestApp) -> i64 {
    app.create_cart().await
}

async fn the_same_key_and_body_replay_the_first_answer(kind: Kind) {
    let (app, _redis) = app(kind).await;
    let first = create_keyed(&app, "create-1", 7).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.json(), json!({"shopping_cart_id": 1}));
    for _ in 0..3 {
        create_keyed(&app, "create-1", 7)
            .await
            .assert_replays(&first);
    }
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.lines().any(|l| l == "idempotent_replays_total 3"),
        "{metrics}"
    );
    // Only one cart was made.
    assert_eq!(next_cart_id(&app).await, 2);
    // Another key is another request.
    let other = create_keyed(&app, "create-2", 7).await;
    assert_eq!(other.json(), json!({"shopping_cart_id": 3}));
    assert!(!other.replayed);
    // Without a key, nothing changes: every request runs.
    assert_eq!(next_cart_id(&app).await, 4);
    app.delete_queues().await;
}

async fn the_same_key_with_another_body_is_422(kind: Kind) {
    let (app, _redis) = app(kind).await;
    let first = create_keyed(&app, "k", 7).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let reused = create_keyed(&app, "k", 8).await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.error(), "IDEMPOTENCY_KEY_REUSED");
    assert!(!reused.replayed);
    // The body is compared byte for byte: the same JSON spelled differently is another body.
    let spaced = app
        .client
        .post(format!("{}/shopping-cart", app.base))
        .header("idempotency-key", "k")
        .header("content-type", "application/json")
        .body(r#"{ "customer_id": 7 }"#)
        .send()
        .await
        .expect("request");
    assert_eq!(spaced.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // The first answer is still there, and nothing else was created.
    create_keyed(&app, "k", 7).await.assert_replays(&first);
    assert_eq!(next_cart_id(&app).await, 2);
    app.delete_queues().await;
}

async fn keys_are_scoped_by_route(kind: Kind) {
    let (app, _redis) = app(kind).await;
    let created = create_keyed(&app, "shared", 7).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let cart = created.json()["shopping_cart_id"].as_i64().expect("id");
    // The same key on the checkout of a cart is a different key: it runs (and the cart is empty).
    let checkout = checkout_keyed(&app, cart, "shared").await;
    assert!(!checkout.replayed);
    assert_eq!(checkout.status, StatusCode::BAD_REQUEST);
    assert_eq!(checkout.error(), "CART_EMPTY");
    // A 4xx is kept like any answer: the same request with that key gets it again, even once
    // the cart has items. A new attempt needs a new key.
    assert_eq!(
        app.add_item(cart, 1, 1).await.status(),
        StatusCode::NO_CONTENT
    );
    checkout_keyed(&app, cart, "shared")
        .await
        .assert_replays(&checkout);
    let placed = checkout_keyed(&app, cart, "shared-2").await;
    assert_eq!(placed.status, StatusCode::OK);
    // And the checkouts of two carts are two scopes.
    let other = app.filled_cart().await;
    let second = checkout_keyed(&app, other, "shared-2").await;
    assert_eq!(second.status, StatusCode::OK);
    assert!(!second.replayed);
    assert_ne!(second.json()["order_id"], placed.json()["order_id"]);
    assert_eq!(app.drain().await.len(), 2);
    app.delete_queues().await;
}

async fn a_4xx_answer_is_kept(kind: Kind) {
    let (app, _redis) = app(kind).await;
    let first = create_keyed(&app, "bad", 0).await;
    assert_eq!(first.status, StatusCode::BAD_REQUEST);
    assert_eq!(first.error(), "INVALID_INPUT");
    create_keyed(&app, "bad", 0).await.assert_replays(&first);
    // Malformed JSON is an answer of the route like any other.
    let malformed = || async {
        let resp = app
            .client
            .post(format!("{}/shopping-cart", app.base))
            .header("idempotency-key", "oops")
            .header("content-type", "application/json")
            .body("{oops")
            .send()
            .await
            .expect("request");
        Answer::of(resp).await
    };
    let first = malformed().await;
    assert_eq!(first.error(), "MALFORMED_JSON");
    malformed().await.assert_replays(&first);
    app.delete_queues().await;
}

async fn invalid_keys_are_400_and_nothing_runs(kind: Kind) {
    let (app, _redis) = app(kind).await;
    let too_long = "k".repeat(256);
    let bad: Vec<HeaderValue> = [
        &b""[..],
        b"with space",
        b"tab\there",
        "caf\u{e9}".as_bytes(),
        too_long.as_bytes(),
    ]
    .iter()
    .map(|v| HeaderValue::from_bytes(v).expect("a header value"))
    .collect();
    for key in bad {
        let resp = app
            .client
            .post(format!("{}/shopping-cart", app.base))
            .header("idempotency-key", key.clone())
            .json(&json!({"customer_id": 7}))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{key:?}");
        let body = error_body(resp).await;
        assert_eq!(body["error"], "INVALID_IDEMPOTENCY_KEY", "{key:?}");
        assert_eq!(body["details"], "Idempotency-Key");
    }
    // Two keys on one request.
    let resp = app
        .client
        .post(format!("{}/shopping-cart", app.base))
        .header("idempotency-key", "a")
        .header("idempotency-key", "b")
        .json(&json!({"customer_id": 7}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_body(resp).await["error"], "INVALID_IDEMPOTENCY_KEY");
    // A request body over the service's limit is refused before any key is claimed.
    let resp = app
        .client
        .post(format!("{}/shopping-cart", app.base))
        .header("idempotency-key", "big")
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"customer_id": 7, "pad": "{}"}}"#,
            "x".repeat(70_000)
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_body(resp).await["error"], "PAYLOAD_TOO_LARGE");
    // The longest valid key works; nothing before it created a cart.
    let longest = create_keyed(&app, &"k".repeat(255), 7).await;
    assert_eq!(longest.json(), json!({"shopping_cart_id": 1}));
    app.delete_queues().await;
}

async fn concurrent_requests_with_one_key_run_once(kind: Kind) {
    let (app, _redis) = app(kind).await;
    let answers = join_all((0..16).map(|_| create_keyed(&app, "race", 7))).await;
    let mut ids = HashSet::new();
    let mut ran = 0;
    for answer in &answers {
        match answer.status {
            StatusCode::CREATED => {
                ids.insert(answer.json()["shopping_cart_id"].as_i64().expect("id"));
                if !answer.replayed {
                    ran += 1;
                }
            }
            StatusCode::CONFLICT => assert_eq!(answer.error(), "IDEMPOTENCY_KEY_IN_USE"),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ran, 1);
    assert_eq!(ids, HashSet::from([1]));
    assert_eq!(next_cart_id(&app).await, 2);
    app.delete_queues().await;
}

/// The authorizer behind a proxy the test can stall or cut; it runs until the token is cancelled.
async fn with_proxied_authorizer(
    kind: Kind,
) -> (TestApp, FaultyProxy, CancellationToken, Option<TestRedis>) {
    let deps = CancellationToken::new();
    let cca = spawn_authorizer(&deps, 0.0).await;
    let proxy = FaultyProxy::start(cca.trim_start_matches("http://")).await;
    let (app, redis) = app_with(
        kind,
        Options {
            cca_url: Some(proxy.url_for(&cca)),
            ..Options::default()
        },
    )
    .await;
    (app, proxy, deps, redis)
}

async fn a_second_request_while_the_first_runs_is_409(kind: Kind) {
    let (app, proxy, deps, _redis) = with_proxied_authorizer(kind).await;
    let _stop = deps.drop_guard();
    let cart = app.filled_cart().await;
    proxy.set(Mode::Stall);
    let (first, (in_use, reused)) = tokio::join!(checkout_keyed(&app, cart, "pay-1"), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let in_use = checkout_keyed(&app, cart, "pay-1").await;
        let reused = post_keyed(
            &app,
            &format!("/shopping-carts/{cart}/checkout"),
            "pay-1",
            json!({"credit_card_number": "5500-0000-0000-0004"}),
        )
        .await;
        proxy.set(Mode::Pass);
        (in_use, reused)
    });
    assert_eq!(in_use.status, StatusCode::CONFLICT);
    assert_eq!(in_use.error(), "IDEMPOTENCY_KEY_IN_USE");
    assert!(in_use.json()["details"].is_string());
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.error(), "IDEMPOTENCY_KEY_REUSED");
    // The first one went through once the authorizer answered, and it is what a retry gets.
    assert_eq!(first.status, StatusCode::OK);
    checkout_keyed(&app, cart, "pay-1")
        .await
        .assert_replays(&first);
    assert_eq!(app.drain().await.len(), 1);
    app.delete_queues().await;
}

async fn a_checkout_retried_with_its_key_answers_the_same_order(kind: Kind) {
    let (app, _redis) = app(kind).await;
    let cart = app.filled_cart().await;
    let first = checkout_keyed(&app, cart, "checkout-7").await;
    assert_eq!(first.status, StatusCode::OK);
    let order_id = first.json()["order_id"].as_i64().expect("order_id");
    for _ in 0..2 {
        let retry = checkout_keyed(&app, cart, "checkout-7").await;
        retry.assert_replays(&first);
        assert_eq!(retry.json()["order_id"], order_id);
    }
    let messages = app.drain().await;
    assert_eq!(messages.len(), 1, "one order published");
    assert_eq!(i64::from(messages[0].0.order_id), order_id);
    app.delete_queues().await;
}

async fn a_5xx_is_not_kept_and_a_retry_runs(kind: Kind) {
    let (app, proxy, deps, _redis) = with_proxied_authorizer(kind).await;
    let _stop = deps.drop_guard();
    let cart = app.filled_cart().await;
    proxy.set(Mode::Cut);
    let failed = checkout_keyed(&app, cart, "retry-me").await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(failed.error(), "PAYMENT_SERVICE_UNAVAILABLE");
    // Not kept: the same request again runs again (and fails again while the authorizer is out).
    let again = checkout_keyed(&app, cart, "retry-me").await;
    assert_eq!(again.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!again.replayed);
    proxy.set(Mode::Pass);
    let placed = checkout_keyed(&app, cart, "retry-me").await;
    assert_eq!(placed.status, StatusCode::OK);
    assert!(!placed.replayed);
    checkout_keyed(&app, cart, "retry-me")
        .await
        .assert_replays(&placed);
    assert_eq!(app.drain().await.len(), 1);
    app.delete_queues().await;
}

macro_rules! for_both_stores {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test]
            async fn $test() {
                super::$test(super::Kind::Memory).await
            })*
        }
        mod redis {
            $(#[tokio::test]
            async fn $test() {
                super::$test(super::Kind::Redis).await
            })*
        }
    };
}

for_both_stores!(
    the_same_key_and_body_replay_the_first_answer,
    the_same_key_with_another_body_is_422,
    keys_are_scoped_by_route,
    a_4xx_answer_is_kept,
    invalid_keys_are_400_and_nothing_runs,
    concurrent_requests_with_one_key_run_once,
    a_second_request_while_the_first_runs_is_409,
    a_checkout_retried_with_its_key_answers_the_same_order,
    a_5xx_is_not_kept_and_a_retry_runs,
);

#[tokio::test]
async fn redis_keys_are_shared_by_every_instance() {
    let redis = TestRedis::create().await;
    let options = || Options {
        store: Some(redis.config()),
        ..Options::default()
    };
    let a = spawn_app_with(options()).await;
    let b = spawn_second(&a, options()).await;
    let first = create_keyed(&a, "anywhere", 7).await;
    assert_eq!(first.status, StatusCode::CREATED);
    create_keyed(&b, "anywhere", 7).await.assert_replays(&first);
    let cart = a.filled_cart().await;
    let placed = checkout_keyed(&b, cart, "anywhere").await;
    assert_eq!(placed.status, StatusCode::OK);
    checkout_keyed(&a, cart, "anywhere")
        .await
        .assert_replays(&placed);
    // Where the key lives: `<prefix>idem:<credential>:<method>:<path>:<key>` (`open`: no
    // authentication here).
    let client = ::redis::Client::open(redis.url.as_str()).expect("client");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{}idem:*", redis.prefix))
        .query_async(&mut connection)
        .await
        .expect("keys");
    let keys: HashSet<String> = keys.into_iter().collect();
    assert_eq!(
        keys,
        HashSet::from([
            format!("{}idem:open:POST:/shopping-cart:anywhere", redis.prefix),
            format!(
                "{}idem:open:POST:/shopping-carts/{cart}/checkout:anywhere",
                redis.prefix
            ),
        ])
    );
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg(format!(
            "{}idem:open:POST:/shopping-cart:anywhere",
            redis.prefix
        ))
        .query_async(&mut connection)
        .await
        .expect("pttl");
    // The test apps keep answers for an hour.
    assert!(ttl > 3_500_000 && ttl <= 3_600_000, "{ttl}");
    a.delete_queues().await;
}

#[tokio::test]
async fn redis_down_is_a_fast_503_that_claims_nothing() {
    let redis = TestRedis::create().await;
    let proxy = FaultyProxy::start("127.0.0.1:6379").await;
    let mut config = redis.config();
    config.url = common::secret::Secret::new(proxy.url_for(&redis.url));
    let app = spawn_app_with(Options {
        store: Some(config),
        ..Options::default()
    })
    .await;
    proxy.set(Mode::Cut);
    let started = Instant::now();
    let down = create_keyed(&app, "outage", 7).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(down.error(), "STORE_UNAVAILABLE");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    proxy.set(Mode::Pass);
    let deadline = Instant::now() + Duration::from_secs(10);
    let created = loop {
        let answer = create_keyed(&app, "outage", 7).await;
        if answer.status != StatusCode::SERVICE_UNAVAILABLE {
            break answer;
        }
        assert!(Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The key was free: the request ran now, once.
    assert_eq!(created.status, StatusCode::CREATED);
    assert!(!created.replayed);
    assert_eq!(created.json(), json!({"shopping_cart_id": 1}));
    create_keyed(&app, "outage", 7)
        .await
        .assert_replays(&created);
    app.delete_queues().await;
}

// The stores' own contract.

async fn store(kind: Kind) -> (Arc<dyn IdempotencyStore>, Option<TestRedis>) {
    match kind {
        Kind::Memory => (Arc::new(MemoryIdempotencyStore::default()), None),
        Kind::Redis => {
            let redis = TestRedis::create().await;
            let store = RedisIdempotencyStore::new(&redis.config()).expect("store");
            (Arc::new(store), Some(redis))
        }
    }
}

fn answer(fingerprint: [u8; 32], body: &str) -> StoredResponse {
    StoredResponse {
        fingerprint,
        status: 201,
        content_type: Some(axum::http::HeaderValue::from_static("application/json")),
        body: bytes::Bytes::copy_from_slice(body.as_bytes()),
    }
}

fn claimed(claim: Claim) -> ClaimToken {
    match claim {
        Claim::Claimed(token) => token,
        other => panic!("expected a claim, got {other:?}"),
    }
}

async fn stores_claim_once_keep_the_answer_and_let_a_dead_claim_lapse(kind: Kind) {
    let (store, _redis) = store(kind).await;
    let lease = Duration::from_millis(300);
    let ttl = Duration::from_secs(60);
    let (a, b) = ([1; 32], [2; 32]);
    // One of many concurrent claims wins; the others see it in flight.
    let claims = join_all((0..16).map(|_| store.claim("k", &a, lease))).await;
    let mut tokens = Vec::new();
    for claim in claims {
        match claim.expect("claim") {
            Claim::Claimed(token) => tokens.push(token),
            Claim::InFlight { fingerprint } => assert_eq!(fingerprint, a),
            Claim::Done(done) => panic!("nothing is done yet: {done:?}"),
        }
    }
    assert_eq!(tokens.len(), 1);
    let dead = tokens.remove(0);
    // Its request died: after the lease the key is free again, for any body.
    tokio::time::sleep(lease + Duration::from_millis(150)).await;
    let live = claimed(store.claim("k", &b, lease * 10).await.expect("claim"));
    assert_ne!(live.id, dead.id);
    // The dead claim can neither store over nor drop the live one.
    assert!(!store
        .complete("k", &dead, &answer(a, "dead"), ttl)
        .await
        .expect("complete"));
    assert!(!store.release("k", &dead).await.expect("release"));
    assert_eq!(
        store.claim("k", &a, lease).await.expect("claim"),
        Claim::InFlight { fingerprint: b }
    );
    assert!(store
        .complete("k", &live, &answer(b, "live"), ttl)
        .await
        .expect("complete"));
    assert_eq!(
        store.claim("k", &a, lease).await.expect("claim"),
        Claim::Done(answer(b, "live"))
    );
    // A stored answer is not released by a late release.
    assert!(!store.release("k", &live).await.expect("release"));
    assert_eq!(
        store.claim("k", &b, lease).await.expect("claim"),
        Claim::Done(answer(b, "live"))
    );
}

async fn stores_drop_released_claims_and_expired_answers(kind: Kind) {
    let (store, _redis) = store(kind).await;
    let lease = Duration::from_secs(30);
    let fp = [3; 32];
    let token = claimed(store.claim("r", &fp, lease).await.expect("claim"));
    assert!(store.release("r", &token).await.expect("release"));
    // Released (a 5xx): the next request claims it at once.
    let token = claimed(store.claim("r", &fp, lease).await.expect("claim"));
    let ttl = Duration::from_millis(300);
    assert!(store
        .complete("r", &token, &answer(fp, "{}"), ttl)
        .await
        .expect("complete"));
    assert!(matches!(
        store.claim("r", &fp, lease).await,
        Ok(Claim::Done(_))
    ));
    tokio::time::sleep(ttl + Duration::from_millis(150)).await;
    claimed(
        store
            .claim("r", &fp, lease)
            .await
            .expect("claim after the TTL"),
    );
    // Keys are independent.
    claimed(store.claim("other", &fp, lease).await.expect("claim"));
}

mod store_contract {
    use super::Kind;

    #[tokio::test]
    async fn memory_claims_once_keeps_the_answer_and_lets_a_dead_claim_lapse() {
        super::stores_claim_once_keep_the_answer_and_let_a_dead_claim_lapse(Kind::Memory).await
    }

    #[tokio::test]
    async fn redis_claims_once_keeps_the_answer_and_lets_a_dead_claim_lapse() {
        super::stores_claim_once_keep_the_answer_and_let_a_dead_claim_lapse(Kind::Redis).await
    }

    #[tokio::test]
    async fn memory_drops_released_claims_and_expired_answers() {
        super::stores_drop_released_claims_and_expired_answers(Kind::Memory).await
    }

    #[tokio::test]
    async fn redis_drops_released_claims_and_expired_answers() {
        super::stores_drop_released_claims_and_expired_answers(Kind::Redis).await
    }
}

#[tokio::test]
async fn the_memory_sweep_frees_lapsed_claims_and_expired_answers() {
    let store = MemoryIdempotencyStore::default();
    let short = Duration::from_millis(100);
    claimed(store.claim("lapses", &[1; 32], short).await.expect("claim"));
    let token = claimed(
        store
            .claim("expires", &[1; 32], short)
            .await
            .expect("claim"),
    );
    assert!(store
        .complete("expires", &token, &answer([1; 32], "{}"), short)
        .await
        .expect("complete"));
    claimed(
        store
            .claim("stays", &[1; 32], Duration::from_secs(60))
            .await
            .expect("claim"),
    );
    assert_eq!(store.len(), 3);
    tokio::time::sleep(short + Duration::from_millis(100)).await;
    store.sweep();
    assert_eq!(store.len(), 1);
}

/// A router of its own around the middleware: a handler whose answer is one byte larger than the
/// store keeps, and one whose answer is exactly that size.
#[tokio::test]
async fn an_answer_too_large_to_keep_passes_through_whole_and_the_key_is_free_again() {
    let calls = Arc::new(AtomicUsize::new(0));
    let metrics = Metrics::new();
    let idem = Idempotency::new(
        Arc::new(MemoryIdempotencyStore::default()),
        Duration::from_secs(60),
        Duration::from_secs(60),
        64 * 1024,
        &metrics,
    );
    let big = {
        let calls = Arc::clone(&calls);
        move || {
            let calls = Arc::clone(&calls);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                "x".repeat(idempotency::MAX_STORED_BODY + 1)
            }
        }
    };
    let small = {
        let calls = Arc::clone(&calls);
        move || {
            let calls = Arc::clone(&calls);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                "x".repeat(idempotency::MAX_STORED_BODY)
            }
        }
    };
    let guard = axum::middleware::from_fn_with_state(idem, idempotency::guard);
    let router = Router::new()
        .route("/big", post(big).route_layer(guard.clone()))
        .route("/small", post(small).route_layer(guard));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::new();
    let send = |path: &'static str| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let resp = client
                .post(format!("{base}{path}"))
                .header("idempotency-key", "same")
                .body("{}")
                .send()
                .await
                .expect("request");
            Answer::of(resp).await
        }
    };
    for _ in 0..2 {
        let answer = send("/big").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(!answer.replayed);
        assert_eq!(answer.body.len(), idempotency::MAX_STORED_BODY + 1);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the big answer was not kept"
    );
    // Exactly the limit is kept.
    let first = send("/small").await;
    assert_eq!(first.body.len(), idempotency::MAX_STORED_BODY);
    send("/small").await.assert_replays(&first);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    server.abort();
}
