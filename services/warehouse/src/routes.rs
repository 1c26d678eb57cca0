//! The warehouse's own route; `/health`, `/ready` and `/metrics` come from `common::http`.

use crate::ledger::{Ledger, Stats};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;

pub fn router(ledger: Arc<Ledger>) -> Router {
    Router::new().route("/stats", get(stats)).with_state(ledger)
}

/// `GET /stats`: `{orders_processed, duplicates, rejected, products: {"<id>": qty}}`.
async fn stats(State(ledger): State<Arc<Ledger>>) -> Json<Stats> {
    Json(ledger.snapshot())
}
