//! `POST /product`, `GET /products/{id}` and its alias `GET /product/{id}`.

use crate::catalog::{Catalog, CatalogError, NewProduct};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::metrics::Counter;
use common::{ApiError, ApiJson, PathId};
use rand::Rng;
use std::sync::Arc;

/// The route module's errors, mapped to the contract's responses.
#[derive(Debug, thiserror::Error)]
pub enum ProductError {
    #[error("product {0} not found")]
    NotFound(i32),
    #[error(transparent)]
    Invalid(ApiError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

impl IntoResponse for ProductError {
    fn into_response(self) -> Response {
        match self {
            Self::NotFound(id) => {
                ApiError::not_found("PRODUCT_NOT_FOUND", format!("product {id} not found"))
                    .into_response()
            }
            Self::Invalid(err) => err.into_response(),
            Self::Catalog(err) => ApiError::internal(err.to_string()).into_response(),
        }
    }
}

/// Answers a share of catalog requests with 503 (`FAILURE_RATE`). Only the catalog routes wear
/// it: `/health` stays green, which is the point of the demonstration.
#[derive(Clone)]
pub struct FaultInjection {
    rate: f64,
    injected: Counter,
}

impl FaultInjection {
    pub fn new(rate: f64, injected: Counter) -> Self {
        Self { rate, injected }
    }
}

async fn inject_faults(State(faults): State<FaultInjection>, req: Request, next: Next) -> Response {
    if faults.rate > 0.0 && rand::rng().random::<f64>() < faults.rate {
        faults.injected.inc();
        return ApiError::unavailable(
            "SERVICE_UNAVAILABLE",
            "this instance is failing on purpose (FAILURE_RATE)",
        )
        .into_response();
    }
    next.run(req).await
}

pub fn router(catalog: Arc<Catalog>, faults: FaultInjection) -> Router {
    Router::new()
        .route("/product", post(create_product))
        .route("/products/{product_id}", get(get_product))
        .route("/product/{product_id}", get(get_product))
        .route_layer(middleware::from_fn_with_state(faults, inject_faults))
        .with_state(catalog)
}

#[tracing::instrument(level = "debug", skip_all, fields(product_id = id))]
async fn get_product(
    State(catalog): State<Arc<Catalog>>,
    PathId(id): PathId,
) -> Result<Response, ProductError> {
    let json = catalog.get(id).ok_or(ProductError::NotFound(id))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

#[tracing::instrument(skip_all, fields(sku = %new.sku))]
async fn create_product(
    State(catalog): State<Arc<Catalog>>,
    ApiJson(new): ApiJson<NewProduct>,
) -> Result<(StatusCode, Json<serde_json::Value>), ProductError> {
    new.validate().map_err(ProductError::Invalid)?;
    let id = catalog.create(new)?;
    tracing::info!(product_id = id, "product created");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "product_id": id })),
    ))
}
