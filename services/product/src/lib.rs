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
//!
//! Each product also has stock ([`stock`]), which checkouts reserve through the internal API
//! ([`internal`]); reservations are settled by the warehouse's outcome events ([`events`]) or
//! returned by the timeout ([`sweeper`]).

pub mod catalog;
pub mod configuration;
pub mod events;
pub mod internal;
pub mod routes;
pub mod stock;
pub mod store;
pub mod sweeper;

use crate::configuration::Settings;
use crate::events::{EventConsumer, EventMetrics};
use crate::store::memory::MemoryCatalog;
use crate::store::postgres::PgCatalog;
use crate::store::{CatalogError, CatalogStore, StockStore};
use common::http::{bind, with_common_layers, Readiness};
use common::metrics::{Counter, Metrics};
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
    pub stock: Arc<dyn StockStore>,
    released_by_ttl: Counter,
    event_metrics: EventMetrics,
}

/// The opened store (one object behind both traits) and what `/ready` checks for it.
struct OpenStore {
    catalog: Arc<dyn CatalogStore>,
    stock: Arc<dyn StockStore>,
    readiness: Readiness,
    pool: Option<PgPool>,
}

/// Opens the configured store and seeds it. On PostgreSQL both wait up to
/// `STORE_STARTUP_TIMEOUT_MS` for the database, so a service started with it comes up with it.
async fn open_store(settings: &Settings, metrics: &Metrics) -> Result<OpenStore, BuildError> {
    let seed = settings.seed_products;
    let seed_stock = settings.seed_stock;
    let Some(config) = &settings.store else {
        let store = Arc::new(MemoryCatalog::default());
        store.seed(seed, seed_stock).await?;
        return Ok(OpenStore {
            catalog: store.clone(),
            stock: store,
            readiness: Readiness::new(),
            pool: None,
        });
    };
    let catalog = PgCatalog::connect(config, settings.cache_capacity, metrics).await?;
    retry_until(
        "the catalog seed",
        config.startup_timeout,
        |err: &CatalogError| matches!(err, CatalogError::Unavailable(_)),
        || catalog.seed(seed, seed_stock),
    )
    .await?;
    let pool = catalog.pool().clone();
    let ping_pool = pool.clone();
    let readiness = Readiness::new().check("postgresql", move || {
        let pool = ping_pool.clone();
        async move { common::store::postgres::ping(&pool).await }
    });
    let store = Arc::new(catalog);
    Ok(OpenStore {
        catalog: store.clone(),
        stock: store,
        readiness,
        pool: Some(pool),
    })
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, BuildError> {
        let metrics = Metrics::new();
        let OpenStore {
            catalog,
            stock,
            readiness,
            pool,
        } = open_store(&settings, &metrics).await?;
        let injected = metrics.counter(
            "product_injected_failures_total",
            "Requests answered 503 on purpose (FAILURE_RATE).",
        );
        let released_by_ttl = metrics.counter(
            "product_reservations_released_by_ttl_total",
            "Held reservations released because they outlived RESERVATION_TTL_MS unconfirmed.",
        );
        let event_metrics = EventMetrics::register(&metrics);
        let routes = routes::router(
            Arc::clone(&catalog),
            Arc::clone(&stock),
            routes::FaultInjection::new(settings.failure_rate, injected),
            settings.seed_stock,
        )
        .merge(internal::router(Arc::clone(&stock)));
        let router = with_common_layers(routes, &settings.service, &metrics, readiness);
        let listener = bind(settings.service.port).await?;
        let port = listener.local_addr()?.port();
        tracing::info!(
            port,
            instance = %settings.service.instance_id,
            store = %catalog.kind(),
            seeded = settings.seed_products,
            seed_stock = settings.seed_stock,
            reservation_ttl_ms = settings.reservation_ttl.as_millis() as u64,
            failure_rate = settings.failure_rate,
            events = settings
                .events
                .as_ref()
                .map(|e| e.topology.stock_events_queue.as_str())
                .unwrap_or("off"),
            "product-service listening"
        );
        Ok(Self {
            port,
            listener,
            router,
            settings,
            pool,
            catalog,
            stock,
            released_by_ttl,
            event_metrics,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves, sweeps and consumes until `shutdown` is cancelled. The background tasks stop with
    /// the server (or if it fails), and are waited for: the consumer settles or hands back the
    /// message in hand and closes its connection before the pool is closed.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let background = shutdown.child_token();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(sweeper::run(
            Arc::clone(&self.stock),
            self.settings.reservation_ttl,
            self.released_by_ttl.clone(),
            background.clone(),
        ));
        if let Some(events) = self.settings.events.clone() {
            let consumer =
                EventConsumer::new(events, Arc::clone(&self.stock), self.event_metrics.clone());
            tasks.spawn(consumer.run(background.clone()));
        }
        let served = common::shutdown::serve(
            self.listener,
            self.router,
            shutdown,
            self.settings.service.shutdown_timeout,
        )
        .await;
        background.cancel();
        while let Some(done) = tasks.join_next().await {
            if let Err(err) = done {
                tracing::error!(error = %err, "a background task failed");
            }
        }
        // Say goodbye to the database instead of leaving it to notice the dropped sockets.
        if let Some(pool) = self.pool {
            pool.close().await;
        }
        served
    }
}
