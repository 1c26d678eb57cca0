//! The product catalog.
//!
//! An in-memory, sharded map (reads and writes never serialise on one lock). Each product's JSON is
//! rendered once when it is stored, so a `GET` is a map lookup and a reference-count bump.
//!
//! `FAILURE_RATE` turns an instance into the deliberately bad one of the load-balancer
//! demonstration: that share of catalog requests answer 503 while `/health` stays green, which is
//! exactly the failure a health check cannot see and automatic target weights can.

pub mod catalog;
pub mod configuration;
pub mod routes;

use crate::catalog::Catalog;
use crate::configuration::Settings;
use common::http::{bind, with_common_layers, Readiness};
use common::metrics::Metrics;
use common::shutdown::CancellationToken;
use std::sync::Arc;
use tokio::net::TcpListener;

pub const DEFAULT_PORT: u16 = 8081;

pub struct Application {
    port: u16,
    listener: TcpListener,
    router: axum::Router,
    settings: Settings,
    pub catalog: Arc<Catalog>,
}

impl Application {
    pub async fn build(settings: Settings) -> std::io::Result<Self> {
        let catalog = Arc::new(Catalog::default());
        catalog.seed(settings.seed_products);
        let metrics = Metrics::new();
        let injected = metrics.counter(
            "product_injected_failures_total",
            "Requests answered 503 on purpose (FAILURE_RATE).",
        );
        let routes = routes::router(
            Arc::clone(&catalog),
            routes::FaultInjection::new(settings.failure_rate, injected),
        );
        let router = with_common_layers(routes, &settings.service, &metrics, Readiness::new());
        let listener = bind(settings.service.port).await?;
        let port = listener.local_addr()?.port();
        tracing::info!(
            port,
            instance = %settings.service.instance_id,
            seeded = settings.seed_products,
            failure_rate = settings.failure_rate,
            "product-service listening"
        );
        Ok(Self {
            port,
            listener,
            router,
            settings,
            catalog,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        common::shutdown::serve(
            self.listener,
            self.router,
            shutdown,
            self.settings.service.shutdown_timeout,
        )
        .await
    }
}
