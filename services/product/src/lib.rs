//! The product catalog.
//!
//! The catalog lives in one of two stores behind [`store::CatalogStore`]: PostgreSQL when
//! `DATABASE_URL` is set (durable, shared by every instance, with a bounded cache of found products
//! in front), else a sharded in-memory map. Either way each product's JSON is rendered once, so a
//! hot `GET` is a map lookup and a reference-count bump.
//!
//! `FAILURE_RATE` turns an instance into the deliberately bad one of the load-balancer
//! demonstration: that share of catalog requests answer 503 while `/health` stays green, which is
//! exactly the failure a health check cannot see and automatic target weights can.

pub mod catalog;
pub mod configuration;
pub mod routes;
pub mod store;

use crate::configuration::Settings;
use crate::store::memory::MemoryCatalog;
use crate::store::postgres::PgCatalog;
use crate::store::{CatalogError, CatalogStore};
use common::http::{bind, with_common_layers, Readiness};
use common::metrics::Metrics;
use common::shutdown::CancellationToken;
use common::store::postgres::{PgPool, PgSetupError};
use common::store::retry_until;
use std::sync::Arc;
use tokio::net::TcpListener;

pub const DEFAULT_PORT: u16 = 8081;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] PgSetupError),
    #[error("seeding the catalog failed: {0}")]
    Seed(#[from] CatalogError),
}

pub struct Application {
    port: u16,
    listener: TcpListener,
    router: axum::Router,
    settings: Settings,
    pool: Option<PgPool>,
    pub catalog: Arc<dyn CatalogStore>,
}

/// The opened store and what `/ready` checks for it.
struct OpenStore {
    catalog: Arc<dyn CatalogStore>,
    readiness: Readiness,
    pool: Option<PgPool>,
}

/// Opens the configured store and seeds it. On PostgreSQL both wait up to
/// `STORE_STARTUP_TIMEOUT_MS` for the database, so a service started with it comes up with it.
async fn open_store(settings: &Settings) -> Result<OpenStore, BuildError> {
    let seed = settings.seed_products;
    let Some(config) = &settings.store else {
        let catalog = MemoryCatalog::default();
        catalog.seed(seed).await?;
        return Ok(OpenStore {
            catalog: Arc::new(catalog),
            readiness: Readiness::new(),
            pool: None,
        });
    };
    let catalog = PgCatalog::connect(config, settings.cache_capacity).await?;
    retry_until(
        "the catalog seed",
        config.startup_timeout,
        |err: &CatalogError| matches!(err, CatalogError::Unavailable(_)),
        || catalog.seed(seed),
    )
    .await?;
    let pool = catalog.pool().clone();
    let ping_pool = pool.clone();
    let readiness = Readiness::new().check("postgresql", move || {
        let pool = ping_pool.clone();
        async move { common::store::postgres::ping(&pool).await }
    });
    Ok(OpenStore {
        catalog: Arc::new(catalog),
        readiness,
        pool: Some(pool),
    })
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, BuildError> {
        let OpenStore {
            catalog,
            readiness,
            pool,
        } = open_store(&settings).await?;
        let metrics = Metrics::new();
        let injected = metrics.counter(
            "product_injected_failures_total",
            "Requests answered 503 on purpose (FAILURE_RATE).",
        );
        let routes = routes::router(
            Arc::clone(&catalog),
            routes::FaultInjection::new(settings.failure_rate, injected),
        );
        let router = with_common_layers(routes, &settings.service, &metrics, readiness);
        let listener = bind(settings.service.port).await?;
        let port = listener.local_addr()?.port();
        tracing::info!(
            port,
            instance = %settings.service.instance_id,
            store = %catalog.kind(),
            seeded = settings.seed_products,
            failure_rate = settings.failure_rate,
            "product-service listening"
        );
        Ok(Self {
            port,
            listener,
            router,
            settings,
            pool,
            catalog,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let served = common::shutdown::serve(
            self.listener,
            self.router,
            shutdown,
            self.settings.service.shutdown_timeout,
        )
        .await;
        // Say goodbye to the database instead of leaving it to notice the dropped sockets.
        if let Some(pool) = self.pool {
            pool.close().await;
        }
        served
    }
}
