//! `POST /product`, `GET /products/{id}` and its alias `GET /product/{id}`.

use crate::catalog::NewProduct;
use crate::store::{CatalogError, CatalogStore};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
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
            Self::Catalog(CatalogError::Unavailable(err)) => ApiError::from(err).into_response(),
            Self::Catalog(err @ (CatalogError::Full | CatalogError::Internal(_))) => {
                ApiError::internal(err.to_string()).into_response()
            }
        }
    }
}

/// Answers a share of catalog requests with 503 (`FAILURE_RATE`). Only the catalog routes
/// ask for it: `/health` stays green, which is the point of the demonstration.
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

#[derive(Clone)]
pub struct CatalogState {
    catalog: Arc<dyn CatalogStore>,
    faults: FaultInjection,
}

/// An extractor that fails the request on purpose, before the body is even read. (An extractor
/// rather than a middleware layer: it runs on every catalog request and costs one random number.)
pub struct PassedFaultInjection;

impl FromRequestParts<CatalogState> for PassedFaultInjection {
    type Rejection = ApiError;

    async fn from_request_parts(
        _parts: &mut Parts,
        state: &CatalogState,
    ) -> Result<Self, Self::Rejection> {
        let faults = &state.faults;
        if faults.rate > 0.0 && rand::rng().random::<f64>() < faults.rate {
            faults.injected.inc();
            return Err(ApiError::unavailable(
                "SERVICE_UNAVAILABLE",
                "this instance is failing on purpose (FAILURE_RATE)",
            ));
        }
        Ok(Self)
    }
}

pub fn router(catalog: Arc<dyn CatalogStore>, faults: FaultInjection) -> Router {
    Router::new()
        .route("/product", post(create_product))
        .route("/products/{product_id}", get(get_product))
        .route("/product/{product_id}", get(get_product))
        .with_state(CatalogState { catalog, faults })
}

#[tracing::instrument(level = "debug", skip_all, fields(product_id = id))]
async fn get_product(
    _: PassedFaultInjection,
    State(CatalogState { catalog, .. }): State<CatalogState>,
    PathId(id): PathId,
) -> Result<Response, ProductError> {
    // A held product answers without awaiting; otherwise the store decides (and may be down).
    let json = match catalog.cached(id) {
        Some(json) => json,
        None => catalog
            .get_json(id)
            .await?
            .ok_or(ProductError::NotFound(id))?,
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

#[tracing::instrument(skip_all, fields(sku = %new.sku))]
async fn create_product(
    _: PassedFaultInjection,
    State(CatalogState { catalog, .. }): State<CatalogState>,
    ApiJson(new): ApiJson<NewProduct>,
) -> Result<(StatusCode, Json<serde_json::Value>), ProductError> {
    new.validate().map_err(ProductError::Invalid)?;
    let id = catalog.create(new).await?;
    tracing::info!(product_id = id, "product created");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "product_id": id })),
    ))
}
