//! Active health checks, as on an ALB target group: their HTTP client, the first round before
//! the gateway serves, and one loop per target. What a result does to a target (thresholds,
//! healthy/unhealthy) is [`Target`]'s business.

use crate::config::{HealthCheckConfig, TargetUrl};
use crate::targets::{Target, TargetGroup};
use axum::body::Body;
use common::shutdown::CancellationToken;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;

/// The hyper client the health checks use (they are few; the request path has its own engine).
pub type UpstreamClient = Client<HttpConnector, Body>;

pub fn client(connect_timeout: Duration) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(50))
        .build(connector)
}

/// `GET <target><path>` with a timeout: `Ok` on a 2xx.
pub async fn probe(
    client: &UpstreamClient,
    target: &TargetUrl,
    cfg: &HealthCheckConfig,
) -> Result<(), String> {
    let uri = format!("http://{}{}", target.authority, cfg.path);
    let request = http::Request::get(uri)
        .header(http::header::USER_AGENT, "gateway-health-check")
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    let check = async {
        let response = client.request(request).await.map_err(|e| {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg = format!("{msg}: {s}");
                source = s.source();
            }
            msg
        })?;
        let status = response.status();
        // Drain the body so the connection goes back to the pool.
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("status {}", status.as_u16()))
        }
    };
    match tokio::time::timeout(cfg.timeout, check).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {} ms", cfg.timeout.as_millis())),
    }
}

/// The first round of checks, all targets at once, before the gateway serves.
pub async fn initial_checks(
    groups: &[Arc<TargetGroup>],
    client: &UpstreamClient,
    cfg: &HealthCheckConfig,
) {
    let mut checks = Vec::new();
    for group in groups {
        for target in &group.targets {
            let (target, client, cfg, name) =
                (Arc::clone(target), client.clone(), cfg.clone(), group.name);
            checks.push(tokio::spawn(async move {
                let result = probe(&client, &target.url, &cfg).await;
                if let Err(reason) = &result {
                    tracing::warn!(group = name, target = %target.url.url, %reason, "target failed its first health check; no traffic until it passes");
                }
                target.apply_initial_check(result);
            }));
        }
    }
    for check in checks {
        let _ = check.await;
    }
}

/// Checks one target every `interval` until `stop`.
pub async fn health_loop(
    group: &'static str,
    target: Arc<Target>,
    client: UpstreamClient,
    cfg: HealthCheckConfig,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; the initial check already ran
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let result = probe(&client, &target.url, &cfg).await;
        let reason = result.as_ref().err().cloned();
        match target.apply_check(result, &cfg) {
            Some(true) => {
                tracing::info!(group, target = %target.url.url, "target is healthy again")
            }
            Some(false) => tracing::warn!(
                group,
                target = %target.url.url,
                reason = reason.as_deref().unwrap_or(""),
                "target is unhealthy; it gets no traffic until it passes its health checks"
            ),
            None => {}
        }
    }
}
