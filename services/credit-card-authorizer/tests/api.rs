//! The authorizer over real HTTP on an ephemeral port.

use credit_card_authorizer::{configuration::Settings, Application};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

async fn spawn_app(decline_rate: f64) -> String {
    let mut settings = Settings::for_tests();
    settings.decline_rate = decline_rate;
    let app = Application::build(settings).await.expect("build");
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(common::shutdown::CancellationToken::new()));
    base
}

async fn authorize(client: &Client, base: &str, body: Value) -> reqwest::Response {
    client
        .post(format!("{base}/credit-card-authorizer/authorize"))
        .json(&body)
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn well_formed_card_is_approved_with_an_id() {
    let base = spawn_app(0.0).await;
    let client = Client::new();
    let resp = authorize(
        &client,
        &base,
        json!({"credit_card_number": "1234-5678-9012-3456"}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["status"], "APPROVED");
    assert_eq!(body["authorization_id"].as_str().map(str::len), Some(36));
}

#[tokio::test]
async fn malformed_cards_and_bodies_are_400_with_the_error_body() {
    let base = spawn_app(0.0).await;
    let client = Client::new();
    for bad in [
        json!({"credit_card_number": "1234567890123456"}),
        json!({"credit_card_number": "1234-5678-9012-345x"}),
        json!({"credit_card_number": ""}),
    ] {
        let resp = authorize(&client, &base, bad.clone()).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error"], "INVALID_CARD_NUMBER");
    }
    for bad in [json!({}), json!({"credit_card_number": 1234}), json!([1])] {
        let resp = authorize(&client, &base, bad.clone()).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error"], "INVALID_INPUT");
    }
    let resp = client
        .post(format!("{base}/credit-card-authorizer/authorize"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"], "MALFORMED_JSON");
}

#[tokio::test]
async fn default_decline_rate_declines_about_ten_percent_with_402() {
    let base = spawn_app(Settings::for_tests().decline_rate).await;
    let client = Client::new();
    let total = 2000;
    let mut declined = 0;
    for _ in 0..total {
        let resp = authorize(
            &client,
            &base,
            json!({"credit_card_number": "4111-1111-1111-1111"}),
        )
        .await;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::PAYMENT_REQUIRED => {
                declined += 1;
                let body: Value = resp.json().await.expect("json");
                assert_eq!(body["error"], "PAYMENT_DECLINED");
                assert!(body["message"].is_string());
            }
            other => panic!("unexpected {other}"),
        }
    }
    // Binomial(2000, 0.1): mean 200, sd ≈ 13.4; [130, 270] is beyond five standard deviations.
    assert!((130..=270).contains(&declined), "{declined} of {total}");
}

#[tokio::test]
async fn decline_rate_one_declines_everything() {
    let base = spawn_app(1.0).await;
    let client = Client::new();
    for _ in 0..50 {
        let resp = authorize(
            &client,
            &base,
            json!({"credit_card_number": "4111-1111-1111-1111"}),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    }
}

/// `--help` lists what the service reads (it runs the same reading code on the defaults), and
/// every variable it lists is documented in a README, so neither can drift from the code.
#[test]
fn help_lists_the_variables_and_the_readmes_document_each() {
    let listed = common::config::check_help(
        env!("CARGO_BIN_EXE_credit-card-authorizer"),
        &[
            include_str!("../README.md"),
            include_str!("../../../README.md"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for name in ["PORT", "DECLINE_RATE", "LOG_FORMAT"] {
        assert!(listed.iter().any(|l| l == name), "{name} not in {listed:?}");
    }
}

/// Configuration is environment only: an argument is a mistake, said so, not ignored.
#[test]
fn an_unexpected_argument_is_refused_with_exit_code_2() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_credit-card-authorizer"))
        .arg("--port=9999")
        .env_clear()
        .output()
        .expect("run the binary");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--help"), "{stderr}");
}
