//! The warehouse's own route; `/health`, `/ready` and `/metrics` come from `common::http`.

use crate::ledger::{Ledger, Stats};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use common::auth::Admin;
use common::store::StoreUnavailable;
use common::ApiError;
use std::sync::Arc;

pub fn router(ledger: Arc<Ledger>) -> Router {
    Router::new().route("/stats", get(stats)).with_state(ledger)
}

/// The route module's errors.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The totals live in a store that cannot be read now: 503 `STORE_UNAVAILABLE`.
    #[error(transparent)]
    Store(#[from] StoreUnavailable),
}

impl IntoResponse for StatsError {
    fn into_response(self) -> Response {
        match self {
            Self::Store(err) => ApiError::from(err).into_response(),
        }
    }
}

/// `GET /stats`: `{orders_processed, duplicates, rejected, products: {"<id>": qty},
/// orders_cancelled, orders_refused, cancels_lost, duplicate_cancels, events_published,
/// event_publish_failures}`. `orders_processed` (fulfilled), `orders_cancelled` and `products`
/// come from the ledger store (durable with PostgreSQL); the rest are this process's counts.
#[tracing::instrument(skip_all)]
async fn stats(_: Admin, State(ledger): State<Arc<Ledger>>) -> Result<Json<Stats>, StatsError> {
    Ok(Json(ledger.stats().await?))
}
