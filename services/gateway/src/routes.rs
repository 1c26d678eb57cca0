//! The listener rules (as on the ALB) and `GET /gateway/targets`.

use crate::config::AtwConfig;
use crate::proxy;
use crate::targets::{GroupSnapshot, TargetGroup};
use crate::Gateway;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{any, get};
use axum::{Json, Router};
use serde::Serialize;
use std::sync::Arc;

/// Path rules: `/product*` → product, `/shopping-cart*` → cart, and `/credit-card-authorizer*`
/// → authorizer only when exposed. Matched as whole segments (`/product`, `/products`,
/// `/product/...`, `/products/...`), which covers every path of the contract; anything else falls
/// through to the common 404 with the error body.
pub fn router(gateway: Arc<Gateway>) -> Router {
    let mut router = Router::new().route("/gateway/targets", get(targets));
    for prefix in ["/product", "/products"] {
        router = router
            .route(prefix, any(product))
            .route(&format!("{prefix}/{{*rest}}"), any(product));
    }
    for prefix in ["/shopping-cart", "/shopping-carts"] {
        router = router
            .route(prefix, any(cart))
            .route(&format!("{prefix}/{{*rest}}"), any(cart));
    }
    if gateway.cca.is_some() {
        router = router
            .route("/credit-card-authorizer", any(cca))
            .route("/credit-card-authorizer/{*rest}", any(cca));
    }
    router.with_state(gateway)
}

async fn to_group(gateway: &Gateway, group: &TargetGroup, req: Request) -> Response {
    proxy::forward(&gateway.client, gateway.upstream_timeout, group, req).await
}

async fn product(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    to_group(&gw, &gw.product, req).await
}

async fn cart(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    to_group(&gw, &gw.cart, req).await
}

async fn cca(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    match &gw.cca {
        Some(group) => to_group(&gw, group, req).await,
        None => axum::response::IntoResponse::into_response(common::ApiError::not_found(
            "NOT_FOUND",
            "no such route",
        )),
    }
}

#[derive(Debug, Serialize)]
struct AtwView {
    enabled: bool,
    tick_ms: u64,
    window_ms: u64,
    min_requests: u64,
    margin: f64,
    ratio: f64,
    step_down: f64,
    floor: f64,
    recovery: f64,
}

impl From<&AtwConfig> for AtwView {
    fn from(a: &AtwConfig) -> Self {
        let tick_ms = u64::try_from(a.tick.as_millis()).unwrap_or(u64::MAX);
        Self {
            enabled: a.enabled,
            tick_ms,
            window_ms: tick_ms.saturating_mul(a.window_ticks as u64),
            min_requests: a.min_requests,
            margin: a.margin,
            ratio: a.ratio,
            step_down: a.step_down,
            floor: a.floor,
            recovery: a.recovery,
        }
    }
}

#[derive(Debug, Serialize)]
struct TargetsView {
    atw: AtwView,
    groups: Vec<GroupSnapshot>,
}

/// `GET /gateway/targets`: every group's targets with health, weight and counts.
/// Fields keep their declared order (scripts parse it without a JSON tool).
async fn targets(State(gw): State<Arc<Gateway>>) -> Json<TargetsView> {
    Json(TargetsView {
        atw: AtwView::from(&gw.config.atw),
        groups: gw.groups().iter().map(|g| g.snapshot()).collect(),
    })
}
