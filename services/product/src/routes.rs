//! The public routes: `POST /product`, `GET /products/{id}` and its alias `GET /product/{id}`,
//! `GET /products` (a page of the catalog) and `GET /products/{id}/stock`. All of them are
//! subject to `FAILURE_RATE`; the internal reservation API ([`crate::internal`]) is not.

use crate::catalog::NewProduct;
use crate::stock::StockError;
use crate::store::{CatalogError, CatalogStore, StockStore};
use axum::extract::{FromRequestParts, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::auth::Admin;
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
    #[error(transparent)]
    Stock(#[from] StockError),
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
            Self::Stock(err) => ApiError::from(err).into_response(),
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
    stock: Arc<dyn StockStore>,
    faults: FaultInjection,
    /// `SEED_STOCK`: the stock of a product created without `quantity_on_hand`.
    default_stock: i64,
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

pub fn router(
    catalog: Arc<dyn CatalogStore>,
    stock: Arc<dyn StockStore>,
    faults: FaultInjection,
    default_stock: i64,
) -> Router {
    Router::new()
        .route("/product", post(create_product))
        .route("/products", get(list_products))
        .route("/products/{product_id}", get(get_product))
        .route("/product/{product_id}", get(get_product))
        .route("/products/{product_id}/stock", get(get_stock))
        .with_state(CatalogState {
            catalog,
            stock,
            faults,
            default_stock,
        })
}

/// The default and largest page of `GET /products`.
pub const DEFAULT_PAGE: u32 = 20;
pub const MAX_PAGE: u32 = 100;

/// A page request: the products with ids above `after`, at most `limit` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub after: i32,
    pub limit: u32,
}

/// `limit` (1..=100, default 20) and `cursor` (the `next_cursor` of the previous page, which is
/// the last id it listed; absent or empty for the first page). Other parameters are ignored; a
/// repeated one counts as its last value.
pub fn parse_page(query: Option<&str>) -> Result<Page, ApiError> {
    let mut limit = None;
    let mut cursor = None;
    for pair in query.unwrap_or_default().split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "limit" => limit = Some(value),
            "cursor" => cursor = Some(value),
            _ => {}
        }
    }
    let limit = match limit {
        None => DEFAULT_PAGE,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::invalid_field(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_PAGE}, got {raw:?}"),
                )
            })?,
    };
    let after = match cursor {
        None | Some("") => 0,
        Some(raw) => raw
            .parse::<i32>()
            .ok()
            .filter(|id| *id >= 1)
            .ok_or_else(|| {
                ApiError::invalid_field(
                    "cursor",
                    format!("{raw:?} is not a cursor this service handed out"),
                )
            })?,
    };
    Ok(Page { after, limit })
}

#[tracing::instrument(level = "debug", skip_all)]
async fn list_products(
    _: PassedFaultInjection,
    State(CatalogState { catalog, .. }): State<CatalogState>,
    RawQuery(query): RawQuery,
) -> Result<Json<serde_json::Value>, ProductError> {
    let page = parse_page(query.as_deref()).map_err(ProductError::Invalid)?;
    // One more than asked for tells whether there is a next page.
    let mut items = catalog.list(page.after, page.limit + 1).await?;
    let next_cursor = if items.len() > page.limit as usize {
        items.truncate(page.limit as usize);
        items.last().map(|p| p.product_id.to_string())
    } else {
        None
    };
    Ok(Json(
        serde_json::json!({ "items": items, "next_cursor": next_cursor }),
    ))
}

#[tracing::instrument(level = "debug", skip_all, fields(product_id = id))]
async fn get_stock(
    _: PassedFaultInjection,
    State(CatalogState { stock, .. }): State<CatalogState>,
    PathId(id): PathId,
) -> Result<Json<serde_json::Value>, ProductError> {
    let levels = stock.levels(id).await?.ok_or(ProductError::NotFound(id))?;
    Ok(Json(levels.public_view(id)))
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
    _: Admin,
    _: PassedFaultInjection,
    State(CatalogState {
        catalog,
        default_stock,
        ..
    }): State<CatalogState>,
    ApiJson(new): ApiJson<NewProduct>,
) -> Result<(StatusCode, Json<serde_json::Value>), ProductError> {
    new.validate().map_err(ProductError::Invalid)?;
    let stock = new.quantity_on_hand.unwrap_or(default_stock);
    let id = catalog.create(new, stock).await?;
    tracing::info!(product_id = id, stock, "product created");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "product_id": id })),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(query: &str) -> Option<String> {
        parse_page(Some(query)).err().and_then(|e| e.body.details)
    }

    #[test]
    fn pages_are_parsed_and_bounded() {
        assert_eq!(
            parse_page(None).ok(),
            Some(Page {
                after: 0,
                limit: DEFAULT_PAGE
            })
        );
        assert_eq!(
            parse_page(Some("limit=100&cursor=42&x=1")).ok(),
            Some(Page {
                after: 42,
                limit: 100
            })
        );
        assert_eq!(parse_page(Some("cursor=")).ok().map(|p| p.after), Some(0));
        for bad in [
            "limit=0",
            "limit=101",
            "limit=abc",
            "limit=",
            "limit=-1",
            "limit=1.5",
        ] {
            assert_eq!(field(bad).as_deref(), Some("limit"), "{bad}");
        }
        for bad in ["cursor=0", "cursor=-3", "cursor=abc", "cursor=2147483648"] {
            assert_eq!(field(bad).as_deref(), Some("cursor"), "{bad}");
        }
    }
}
