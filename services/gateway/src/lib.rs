//! The gateway: the local stand-in for the AWS Application Load Balancer.
//!
//! - [`config`]: target groups and tuning from the environment.
//! - [`targets`]: target groups, active health checks, the per-target sliding window.
//! - [`balancer`]: weighted random choice and the automatic-target-weights rule (pure).
//! - [`h1`]: HTTP/1.1 message heads, body framing and chunked bodies on the wire.
//! - [`wire`]: a framed socket, a body's framing cursor, and the one body relay.
//! - [`proxy`]: one client connection: the path rules, forwarding and its failure policy, the
//!   heads it writes, the gateway's own routes.
//! - [`health`]: the active health checks' client and loop.
//! - [`server`]: the listener and the graceful drain.
//! - [`routes`]: the gateway's own routes (`GET /gateway/targets`).

pub mod balancer;
pub mod config;
pub mod h1;
pub mod health;
pub mod proxy;
pub mod routes;
pub mod server;
pub mod targets;
pub mod wire;

use crate::config::GatewayConfig;
use crate::health::UpstreamClient;
use crate::targets::TargetGroup;
use axum::Router;
use common::http::Readiness;
use common::metrics::Metrics;
use common::shutdown::CancellationToken;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The gateway's shared state.
#[derive(Debug)]
pub struct Gateway {
    pub config: GatewayConfig,
    pub product: Arc<TargetGroup>,
    pub cart: Arc<TargetGroup>,
    /// Present only with `EXPOSE_CCA=true`.
    pub cca: Option<Arc<TargetGroup>>,
    pub client: UpstreamClient,
    pub upstream_timeout: Duration,
}

impl Gateway {
    pub fn new(config: GatewayConfig) -> Self {
        let product = Arc::new(TargetGroup::new(
            "product",
            "/product*",
            &config.product_targets,
        ));
        let cart = Arc::new(TargetGroup::new(
            "cart",
            "/shopping-cart*, /orders*, /customers*",
            &config.cart_targets,
        ));
        let cca = config.expose_cca.then(|| {
            Arc::new(TargetGroup::new(
                "credit-card-authorizer",
                "/credit-card-authorizer*",
                &config.cca_targets,
            ))
        });
        Self {
            client: health::client(config.connect_timeout),
            upstream_timeout: config.upstream_timeout,
            product,
            cart,
            cca,
            config,
        }
    }

    /// The path rules, as on the ALB: `/product*` → product; `/shopping-cart*`, `/orders*` and
    /// `/customers*` → cart; `/credit-card-authorizer*` → authorizer only when exposed. Matched
    /// as whole segments (`/product`, `/products`, `/product/...`, `/products/...`), which covers
    /// every public path; anything else is the gateway's own (its routes, or 404 with the error
    /// body), including the product service's `/internal/*`.
    pub fn group_for(&self, path: &str) -> Option<&Arc<TargetGroup>> {
        let under = |prefix: &str| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        if under("/product") || under("/products") {
            Some(&self.product)
        } else if under("/shopping-cart")
            || under("/shopping-carts")
            || under("/orders")
            || under("/customers")
        {
            Some(&self.cart)
        } else if under("/credit-card-authorizer") {
            self.cca.as_ref()
        } else {
            None
        }
    }

    pub fn groups(&self) -> Vec<Arc<TargetGroup>> {
        let mut groups = vec![Arc::clone(&self.product), Arc::clone(&self.cart)];
        if let Some(cca) = &self.cca {
            groups.push(Arc::clone(cca));
        }
        groups
    }

    /// Starts the health-check and ATW tasks; they stop when `stop` is cancelled.
    pub fn spawn_background(&self, stop: &CancellationToken) {
        for group in self.groups() {
            for target in &group.targets {
                tokio::spawn(health::health_loop(
                    group.name,
                    Arc::clone(target),
                    self.client.clone(),
                    self.config.health.clone(),
                    stop.clone(),
                ));
            }
        }
        tokio::spawn(targets::atw_loop(
            self.groups(),
            self.config.atw,
            stop.clone(),
        ));
    }
}

/// The gateway's own routes with the common layers (proxied paths never reach them).
pub fn app(gateway: Arc<Gateway>, metrics: &Metrics) -> Router {
    let for_ready = Arc::clone(&gateway);
    let readiness = Readiness::new().check("targets", move || {
        let gw = Arc::clone(&for_ready);
        async move {
            let empty: Vec<&str> = gw
                .groups()
                .iter()
                .filter(|g| g.healthy_count() == 0)
                .map(|g| g.name)
                .collect();
            if empty.is_empty() {
                Ok(())
            } else {
                Err(format!("no healthy target in: {}", empty.join(", ")))
            }
        }
    });
    for group in gateway.groups() {
        for target in &group.targets {
            metrics.expose_float_gauge(
                "gateway_target_weight",
                "The ATW weight of each target (0 < weight <= 1), as /gateway/targets shows it.",
                &[("group", group.name), ("target", &target.url.url)],
                target.weight_gauge(),
            );
        }
    }
    let config = gateway.config.service.clone();
    common::http::with_common_layers(routes::router(gateway), &config, metrics, readiness)
}

pub struct Application {
    listener: TcpListener,
    port: u16,
    gateway: Arc<Gateway>,
    router: Router,
    metrics: Metrics,
}

impl Application {
    /// Binds the port (0 in tests), runs the first round of health checks, builds the router.
    pub async fn build(config: GatewayConfig) -> anyhow::Result<Self> {
        let listener = common::http::bind(config.service.port).await?;
        let port = listener.local_addr()?.port();
        let gateway = Arc::new(Gateway::new(config));
        health::initial_checks(&gateway.groups(), &gateway.client, &gateway.config.health).await;
        let metrics = Metrics::new();
        let router = app(Arc::clone(&gateway), &metrics);
        Ok(Self {
            listener,
            port,
            gateway,
            router,
            metrics,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn gateway(&self) -> Arc<Gateway> {
        Arc::clone(&self.gateway)
    }

    /// Serves until `shutdown` is cancelled, then drains.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        self.gateway.spawn_background(&shutdown);
        let drain = self.gateway.config.service.shutdown_timeout;
        let shared = Arc::new(proxy::Shared::new(
            Arc::clone(&self.gateway),
            self.router,
            self.metrics,
            shutdown,
        ));
        server::serve(self.listener, shared, drain).await
    }
}
