//! The gateway's own route: `GET /gateway/targets` (administrators only).

use crate::config::AtwConfig;
use crate::targets::GroupSnapshot;
use crate::Gateway;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use common::auth::Admin;
use serde::Serialize;
use std::sync::Arc;

/// The gateway's own route; the path rules live in [`Gateway::group_for`].
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/gateway/targets", get(targets))
        .with_state(gateway)
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
async fn targets(_: Admin, State(gw): State<Arc<Gateway>>) -> Json<TargetsView> {
    Json(TargetsView {
        atw: AtwView::from(&gw.config.atw),
        groups: gw.groups().iter().map(|g| g.snapshot()).collect(),
    })
}
