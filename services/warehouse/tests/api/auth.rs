//! The warehouse's internals are an administrator's: `/stats` and `/metrics` answer 401 without
//! a credential and 403 to a customer; `/health` and `/ready` stay open.

use crate::helpers::{spawn_app_with, unique_queue};
use common::auth::AuthConfig;
use reqwest::StatusCode;
use warehouse::configuration::Settings;

#[tokio::test]
async fn stats_and_metrics_are_for_administrators_only() {
    let mut settings = Settings::for_tests(&unique_queue());
    settings.service.auth =
        AuthConfig::with_keys(&[("wh-admin", "admin"), ("wh-customer", "customer:7")]);
    let app = spawn_app_with(settings).await;
    let status = |path: &'static str, key: Option<&'static str>| {
        let request = app.http.get(format!("{}{path}", app.address));
        let request = match key {
            Some(key) => request.header("x-api-key", key),
            None => request,
        };
        async move { request.send().await.expect("the app answers").status() }
    };
    for path in ["/stats", "/metrics"] {
        assert_eq!(status(path, None).await, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            status(path, Some("wh-customer")).await,
            StatusCode::FORBIDDEN,
            "{path}"
        );
        assert_eq!(
            status(path, Some("wh-admin")).await,
            StatusCode::OK,
            "{path}"
        );
    }
    assert_eq!(status("/health", None).await, StatusCode::OK);
    assert_ne!(status("/ready", None).await, StatusCode::UNAUTHORIZED);
}
