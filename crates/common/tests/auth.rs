//! Authentication and authorization as a client meets them: the common layers over a small app
//! on a real socket, with API keys and ES256 tokens from a JWKS (a file, and a URL served by a
//! second real server). Every refusal is checked for its status, its `WWW-Authenticate` and its
//! error body.

use axum::extract::Path;
use axum::routing::{get, post};
use axum::{Json, Router};
use common::auth::jwt::{JwksSource, JwtConfig, JwtVerifier};
use common::auth::test_issuer::{self, hs256_token, unsigned_token, TestIssuer};
use common::auth::{Admin, AuthConfig, AuthMode, Internal, Principal};
use common::config::{Env, ServiceConfig};
use common::http::{with_common_layers, Readiness};
use common::metrics::Metrics;
use common::ratelimit::RateLimitConfig;
use common::shutdown::{serve, CancellationToken};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

const ADMIN_KEY: &str = "admin-key-0001";
const SERVICE_KEY: &str = "service-key-0001";
const ALICE_KEY: &str = "alice-key-0001"; // customer 7
const BOB_KEY: &str = "bob-key-0001"; // customer 8

fn app() -> Router {
    Router::new()
        .route(
            "/whoami",
            get(|p: Principal| async move { Json(json!({"name": &*p.name, "role": format!("{:?}", p.role)})) }),
        )
        .route(
            "/customers/{id}/orders",
            get(|p: Principal, Path(id): Path<i32>| async move {
                p.act_for(id).map(|()| "the orders")
            }),
        )
        .route("/product", post(|_: Admin| async { "created" }))
        .route("/internal/reservations", post(|_: Internal| async { "held" }))
}

async fn spawn_with(auth: AuthConfig, rate_limit: RateLimitConfig) -> String {
    let mut config = ServiceConfig::for_tests("auth-1");
    config.auth = auth;
    config.rate_limit = rate_limit;
    let app = with_common_layers(app(), &config, &Metrics::new(), Readiness::new());
    serve_app(app).await
}

async fn serve_app(app: Router) -> String {
    let listener = common::http::bind(0).await.expect("bind");
    let address = format!(
        "http://127.0.0.1:{}",
        listener.local_addr().expect("addr").port()
    );
    tokio::spawn(serve(
        listener,
        app,
        CancellationToken::new(),
        Duration::from_secs(1),
    ));
    address
}

fn keys() -> AuthConfig {
    AuthConfig::with_keys(&[
        (ADMIN_KEY, "admin"),
        (SERVICE_KEY, "service"),
        (ALICE_KEY, "customer:7"),
        (BOB_KEY, "customer:8"),
    ])
}

fn jwks_file(issuer: &TestIssuer) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "shop-jwks-{}-{}.json",
        std::process::id(),
        issuer.kid
    ));
    std::fs::write(&path, issuer.jwks().to_string()).expect("write the JWKS");
    path
}

fn with_tokens(source: JwksSource) -> AuthConfig {
    let verifier = JwtVerifier::new(JwtConfig {
        jwks: source,
        issuer: test_issuer::ISSUER.to_string(),
        audience: test_issuer::AUDIENCE.to_string(),
        leeway: Duration::from_secs(5),
    })
    .expect("a verifier");
    AuthConfig {
        jwt: Some(verifier),
        ..keys()
    }
}

enum Cred<'a> {
    None,
    Key(&'a str),
    Bearer(&'a str),
}

async fn call(
    method: &str,
    url: &str,
    cred: Cred<'_>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let http = reqwest::Client::new();
    let request = match method {
        "POST" => http.post(url),
        _ => http.get(url),
    };
    let request = match cred {
        Cred::None => request,
        Cred::Key(key) => request.header("x-api-key", key),
        Cred::Bearer(token) => request.bearer_auth(token),
    };
    let response = request.send().await.expect("the server answers");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, body)
}

/// A 401 with both challenges and the error body; returns the message.
fn assert_unauthorized(answer: &(StatusCode, reqwest::header::HeaderMap, Value)) -> String {
    let (status, headers, body) = answer;
    assert_eq!(*status, StatusCode::UNAUTHORIZED, "{body}");
    let challenges: Vec<&str> = headers
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert!(
        challenges
            .iter()
            .any(|c| c.starts_with("Bearer realm=\"shop\"")),
        "{challenges:?}"
    );
    assert!(
        challenges.iter().any(|c| c.starts_with("ApiKey ")),
        "{challenges:?}"
    );
    assert_eq!(body["error"], "UNAUTHORIZED", "{body}");
    body["message"].as_str().unwrap_or_default().to_string()
}

fn assert_forbidden(answer: &(StatusCode, reqwest::header::HeaderMap, Value)) {
    let (status, _, body) = answer;
    assert_eq!(*status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "FORBIDDEN", "{body}");
}

#[tokio::test]
async fn without_a_credential_only_health_and_ready_answer() {
    let base = spawn_with(keys(), RateLimitConfig::off()).await;
    for path in ["/health", "/ready"] {
        assert_eq!(
            call("GET", &format!("{base}{path}"), Cred::None).await.0,
            StatusCode::OK
        );
    }
    for (method, path) in [
        ("GET", "/whoami"),
        ("GET", "/customers/7/orders"),
        ("POST", "/product"),
        ("POST", "/internal/reservations"),
        ("GET", "/metrics"),
    ] {
        let answer = call(method, &format!("{base}{path}"), Cred::None).await;
        let message = assert_unauthorized(&answer);
        assert!(message.contains("X-API-Key"), "{path}: {message}");
    }
    let answer = call("GET", &format!("{base}/whoami"), Cred::Key("not-a-key")).await;
    assert!(assert_unauthorized(&answer).contains("not known"));
    // A bearer token where no JWKS is configured.
    let answer = call("GET", &format!("{base}/whoami"), Cred::Bearer("a.b.c")).await;
    assert!(assert_unauthorized(&answer).contains("not accepted"));
}

#[tokio::test]
async fn each_role_may_do_what_it_is_for_and_no_more() {
    let base = spawn_with(keys(), RateLimitConfig::off()).await;
    let url = |path: &str| format!("{base}{path}");
    // A customer: its own orders, nobody else's, no admin or internal routes, no metrics.
    assert_eq!(
        call("GET", &url("/customers/7/orders"), Cred::Key(ALICE_KEY))
            .await
            .0,
        StatusCode::OK
    );
    assert_forbidden(&call("GET", &url("/customers/8/orders"), Cred::Key(ALICE_KEY)).await);
    assert_forbidden(&call("GET", &url("/customers/7/orders"), Cred::Key(BOB_KEY)).await);
    assert_forbidden(&call("POST", &url("/product"), Cred::Key(ALICE_KEY)).await);
    assert_forbidden(&call("POST", &url("/internal/reservations"), Cred::Key(ALICE_KEY)).await);
    assert_forbidden(&call("GET", &url("/metrics"), Cred::Key(ALICE_KEY)).await);
    // The service key: internal routes, but no customer's orders and no admin routes.
    assert_eq!(
        call(
            "POST",
            &url("/internal/reservations"),
            Cred::Key(SERVICE_KEY)
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_forbidden(&call("GET", &url("/customers/7/orders"), Cred::Key(SERVICE_KEY)).await);
    assert_forbidden(&call("POST", &url("/product"), Cred::Key(SERVICE_KEY)).await);
    // The administrator: everything.
    for (method, path) in [
        ("GET", "/customers/7/orders"),
        ("GET", "/customers/8/orders"),
        ("POST", "/product"),
        ("POST", "/internal/reservations"),
        ("GET", "/metrics"),
    ] {
        assert_eq!(
            call(method, &url(path), Cred::Key(ADMIN_KEY)).await.0,
            StatusCode::OK,
            "{path}"
        );
    }
    // The refusals are counted.
    let (_, _, metrics) = call("GET", &url("/metrics"), Cred::Key(ADMIN_KEY)).await;
    assert!(
        metrics
            .as_str()
            .is_some_and(|m| m.contains("auth_unauthenticated_total")),
        "{metrics}"
    );
}

#[tokio::test]
async fn tokens_from_the_jwks_authenticate_and_forgeries_do_not() {
    let issuer = TestIssuer::new("k1");
    let path = jwks_file(&issuer);
    let base = spawn_with(
        with_tokens(JwksSource::File(path.clone())),
        RateLimitConfig::off(),
    )
    .await;
    let url = |path: &str| format!("{base}{path}");
    let alice = issuer.customer_token(7);
    assert_eq!(
        call("GET", &url("/customers/7/orders"), Cred::Bearer(&alice))
            .await
            .0,
        StatusCode::OK
    );
    assert_forbidden(&call("GET", &url("/customers/8/orders"), Cred::Bearer(&alice)).await);
    assert_forbidden(&call("POST", &url("/product"), Cred::Bearer(&alice)).await);
    // The subject names the customer when there is no customer_id claim.
    let by_subject = issuer.sign(&TestIssuer::claims("8", 3600));
    assert_eq!(
        call(
            "GET",
            &url("/customers/8/orders"),
            Cred::Bearer(&by_subject)
        )
        .await
        .0,
        StatusCode::OK
    );
    let admin = issuer.admin_token();
    assert_eq!(
        call("POST", &url("/product"), Cred::Bearer(&admin)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call("GET", &url("/metrics"), Cred::Bearer(&admin)).await.0,
        StatusCode::OK
    );

    let mut claims = TestIssuer::claims("7", 3600);
    let forged_key = TestIssuer::new("k1").sign(&claims); // same kid, another key
    let expired = issuer.sign(&TestIssuer::claims("7", -60)); // beyond the 5 s leeway
    let stranger = {
        claims["aud"] = json!("another-shop");
        issuer.sign(&claims)
    };
    let other_issuer = {
        claims["aud"] = json!(test_issuer::AUDIENCE);
        claims["iss"] = json!("https://evil.test");
        issuer.sign(&claims)
    };
    claims["iss"] = json!(test_issuer::ISSUER);
    let unknown_kid = TestIssuer::new("k9").sign(&claims);
    let mut no_expiry = claims.clone();
    no_expiry.as_object_mut().map(|c| c.remove("exp"));
    let no_expiry = issuer.sign(&no_expiry);
    for (token, why) in [
        (forged_key, "signature does not verify"),
        (unsigned_token(&claims), "RS256 or ES256"),
        (
            hs256_token(&claims, issuer.jwks().to_string().as_bytes()),
            "only RS256 and ES256",
        ),
        (expired, "expired"),
        (stranger, "audience"),
        (other_issuer, "issuer"),
        (unknown_kid, "not among the issuer's keys"),
        (no_expiry, "required claim"),
        ("not-a-jwt".to_string(), "RS256 or ES256"),
    ] {
        let answer = call("GET", &url("/customers/7/orders"), Cred::Bearer(&token)).await;
        let message = assert_unauthorized(&answer);
        assert!(message.contains(why), "{why}: {message}");
        let challenge = answer.1["www-authenticate"]
            .to_str()
            .unwrap_or_default()
            .to_string();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    }
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn a_jwks_url_is_fetched_and_refetched_when_the_issuer_rotates_its_key() {
    let old = TestIssuer::new("old");
    let new = TestIssuer::new("new");
    let served = std::sync::Arc::new(std::sync::Mutex::new(old.jwks()));
    let jwks_app = {
        let served = served.clone();
        Router::new().route(
            "/jwks.json",
            get(move || {
                let served = served.clone();
                async move { Json(served.lock().map(|v| v.clone()).unwrap_or_default()) }
            }),
        )
    };
    let jwks_base = serve_app(jwks_app).await;
    let base = spawn_with(
        with_tokens(JwksSource::Url(format!("{jwks_base}/jwks.json"))),
        RateLimitConfig::off(),
    )
    .await;
    let url = format!("{base}/customers/7/orders");
    let answered = |token: String| {
        let url = url.clone();
        async move { call("GET", &url, Cred::Bearer(&token)).await.0 }
    };
    // The first fetch runs in the background: poll until the old key's token passes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while answered(old.customer_token(7)).await != StatusCode::OK {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the JWKS URL was never fetched"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Rotation: the issuer now publishes both keys. A token with the new kid makes the verifier
    // fetch again (the first such token is refused, a later one passes).
    if let Ok(mut jwks) = served.lock() {
        *jwks = json!({"keys": [old.jwk(), new.jwk()]});
    }
    // Past the minimum spacing between fetches.
    tokio::time::sleep(Duration::from_secs(31)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while answered(new.customer_token(7)).await != StatusCode::OK {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated key was never fetched"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answered(old.customer_token(7)).await, StatusCode::OK);
}

#[tokio::test]
async fn the_rate_limit_counts_per_credential_and_per_address_without_one() {
    let base = spawn_with(
        keys(),
        RateLimitConfig {
            rps: 0.5,
            burst: 2.0,
            trusted_hops: 0,
        },
    )
    .await;
    let url = format!("{base}/whoami");
    // Alice spends her burst; Bob, from the same address, still has his.
    for _ in 0..2 {
        assert_eq!(
            call("GET", &url, Cred::Key(ALICE_KEY)).await.0,
            StatusCode::OK
        );
    }
    let (status, headers, body) = call("GET", &url, Cred::Key(ALICE_KEY)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(body["error"], "RATE_LIMITED");
    assert_eq!(
        call("GET", &url, Cred::Key(BOB_KEY)).await.0,
        StatusCode::OK
    );
    // Unknown keys share their address's bucket: a key guesser is throttled too.
    for _ in 0..2 {
        assert_eq!(
            call("GET", &url, Cred::Key("guess")).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        call("GET", &url, Cred::Key("guess")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The services' own calls are never limited.
    for _ in 0..5 {
        assert_eq!(
            call("GET", &url, Cred::Key(SERVICE_KEY)).await.0,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn auth_off_serves_everyone_and_on_without_credentials_refuses_to_start() {
    let base = spawn_with(AuthConfig::off(), RateLimitConfig::off()).await;
    assert_eq!(
        call("POST", &format!("{base}/product"), Cred::None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call("GET", &format!("{base}/metrics"), Cred::None).await.0,
        StatusCode::OK
    );

    let read =
        |pairs: &[(&str, &str)]| AuthConfig::read(&mut Env::from_pairs(pairs.iter().copied()));
    // On by default, and nothing configured: the start stops once everything else is read.
    let mut env = Env::defaults();
    let config = AuthConfig::read(&mut env).expect("the variables themselves are valid");
    assert_eq!(config.mode, AuthMode::On);
    let err = env.take_deferred().expect("no credential could pass");
    assert!(err.to_string().contains("AUTH_MODE"), "{err}");
    assert_eq!(
        read(&[("AUTH_MODE", "off")]).map(|c| c.mode).ok(),
        Some(AuthMode::Off)
    );
    assert!(read(&[("AUTH_MODE", "maybe")]).is_err());
    let issuer = TestIssuer::new("cfg");
    let path = jwks_file(&issuer);
    let jwks = path.to_string_lossy().to_string();
    let err = read(&[("JWT_JWKS", jwks.as_str())]).expect_err("issuer and audience are required");
    assert!(err.to_string().contains("JWT_ISSUER"), "{err}");
    let config = read(&[
        ("JWT_JWKS", jwks.as_str()),
        ("JWT_ISSUER", "i"),
        ("JWT_AUDIENCE", "a"),
    ])
    .expect("tokens only is enough");
    assert_eq!(config.mode, AuthMode::On);
    assert!(read(&[
        ("JWT_JWKS", "/no/such/jwks.json"),
        ("JWT_ISSUER", "i"),
        ("JWT_AUDIENCE", "a")
    ])
    .is_err());
    // The key hashes never show in the configuration's Debug or in an error.
    let hash = common::auth::keys::hash_hex("k");
    let listed = format!("{hash}:admin");
    let config = read(&[("API_KEYS", listed.as_str())]).expect("valid");
    assert!(!format!("{config:?}").contains(&hash[..16]));
    let bad = format!("{hash}:root");
    let err = read(&[("API_KEYS", bad.as_str())]).expect_err("unknown role");
    assert!(!err.to_string().contains(&hash[..16]), "{err}");
    let _ = std::fs::remove_file(path);
}
