//! Shopping carts and checkout.
//!
//! Checkout is the one place where the synchronous and asynchronous halves of the system meet:
//! the card is authorized over HTTP, then the order is published to RabbitMQ and the customer gets
//! 200 only once the broker has confirmed it. A cart moves `open → checking_out → checked_out`;
//! the middle state is what makes two concurrent checkouts of one cart produce one order, and the
//! order id and message id are kept on the cart after a failed publish so a retry republishes
//! the same order, which the warehouse deduplicates.
//!
//! Carts live in memory by default, or in Redis (`REDIS_URL`) where every cart instance shares
//! them and the state machine holds across instances; see [`store`].

pub mod carts;
pub mod checkout;
pub mod clients;
pub mod configuration;
pub mod idempotency;
pub mod orders;
pub mod publisher;
pub mod routes;
pub mod store;

use crate::clients::stock::StockReservations;
use crate::clients::{Authorizer, ProductCatalog};
use crate::configuration::Settings;
use crate::orders::events::OutcomeMetrics;
use crate::orders::{MemoryOrderStore, OrderStore, PgOrderStore};
use crate::publisher::OrderPublisher;
use crate::store::{CartStore, MemoryCartStore, RedisCartStore};
use common::http::{bind, with_common_layers, Readiness};
use common::metrics::Metrics;
use common::shutdown::CancellationToken;
use std::sync::Arc;
use tokio::net::TcpListener;

pub const DEFAULT_PORT: u16 = 8082;

/// Everything a handler needs (shared behind one `Arc`: axum clones the state per request).
#[derive(Clone)]
pub struct AppState {
    pub carts: Arc<dyn CartStore>,
    /// Where `Idempotency-Key`s and their answers are kept.
    pub idempotency: idempotency::Idempotency,
    pub products: ProductCatalog,
    /// For cancels; checkouts publish through `checkout`.
    pub publisher: OrderPublisher,
    pub orders: Arc<dyn OrderStore>,
    /// The checkout workflow over the real authorizer, publisher and stock reservations.
    pub checkout: Arc<checkout::Workflow>,
}

pub struct Application {
    port: u16,
    listener: TcpListener,
    router: axum::Router,
    settings: Settings,
    outcome_metrics: OutcomeMetrics,
    pub state: Arc<AppState>,
}

/// Redis if `REDIS_URL` is set, else memory (swept in the background).
fn cart_store(
    settings: &Settings,
    metrics: &Metrics,
) -> Result<Arc<dyn CartStore>, Box<dyn std::error::Error>> {
    let lifetimes = settings.lifetimes();
    Ok(match &settings.store {
        Some(config) => Arc::new(RedisCartStore::new(config, lifetimes)?.observed(metrics)),
        None => {
            let store = Arc::new(MemoryCartStore::new(lifetimes));
            store.spawn_sweeper();
            store
        }
    })
}

/// PostgreSQL if `DATABASE_URL` is set (waiting up to `STORE_STARTUP_TIMEOUT_MS` for it), else
/// memory.
async fn order_store(
    settings: &Settings,
    metrics: &Metrics,
) -> Result<Arc<dyn OrderStore>, Box<dyn std::error::Error>> {
    Ok(match &settings.orders_db {
        Some(config) => {
            let pool =
                common::store::postgres::connect(config, &orders::postgres::MIGRATOR).await?;
            Arc::new(PgOrderStore::new(pool).observed(metrics))
        }
        None => Arc::new(MemoryOrderStore::default()),
    })
}

/// Stock reserved at the product service during checkout, unless `RESERVE_STOCK=false`.
fn stock_reservations(
    http: &clients::HttpClient,
    settings: &Settings,
) -> Result<Option<StockReservations>, String> {
    if !settings.reserve_stock {
        return Ok(None);
    }
    StockReservations::new(http.clone(), settings).map(Some)
}

impl Application {
    /// Builds the app. The broker need not be up: publishing connects lazily and `/ready`
    /// reports the broker's state, so the service starts, says it is not ready, and heals.
    pub async fn build(settings: Settings) -> Result<Self, Box<dyn std::error::Error>> {
        let metrics = Metrics::new();
        let idempotency = idempotency::Idempotency::from_settings(&settings, &metrics)?;
        // Connecting is part of each call's own timeout; this only stops a connect from outliving
        // the shorter of the two.
        let http = clients::HttpClient::new(
            settings.cca_timeout.min(settings.product_timeout),
            settings.service_api_key.as_ref(),
        );
        let publisher = OrderPublisher::new(&settings, &metrics)?;
        let carts = cart_store(&settings, &metrics)?;
        let orders = order_store(&settings, &metrics).await?;
        let stock = stock_reservations(&http, &settings)?;
        let products = ProductCatalog::new(http.clone(), &settings)?;
        let checkout = checkout::Workflow::new(
            Arc::clone(&carts),
            Arc::clone(&orders),
            Authorizer::new(http, &settings)?,
            publisher.clone(),
            stock,
            &metrics,
        );
        let state = Arc::new(AppState {
            carts: Arc::clone(&carts),
            idempotency,
            products,
            publisher: publisher.clone(),
            orders: Arc::clone(&orders),
            checkout: Arc::new(checkout),
        });
        let mut readiness = Readiness::new().check("rabbitmq", move || {
            let publisher = publisher.clone();
            async move { publisher.check().await }
        });
        if settings.store.is_some() {
            readiness = readiness.check("redis", move || {
                let carts = Arc::clone(&carts);
                async move { carts.check().await }
            });
        }
        if settings.orders_db.is_some() {
            readiness = readiness.check("postgresql", move || {
                let orders = Arc::clone(&orders);
                async move { orders.check().await }
            });
        }
        let router = with_common_layers(
            routes::router(Arc::clone(&state)).merge(orders::api::router(Arc::clone(&state))),
            &settings.service,
            &metrics,
            readiness,
        );
        let listener = bind(settings.service.port).await?;
        let store_at = settings.store.as_ref().map_or(String::new(), |redis| {
            format!("{} keys {}*", redis.redacted_url(), redis.key_prefix)
        });
        let port = listener.local_addr()?.port();
        tracing::info!(
            port,
            product_url = %settings.product_url,
            cca_url = %settings.cca_url,
            amqp = %settings.broker.redacted(),
            queue = %settings.topology.queue,
            store = %state.carts.kind(),
            store_at = %store_at,
            orders = %state.orders.kind(),
            reserve_stock = settings.reserve_stock,
            cart_ttl_s = settings.cart_ttl.as_secs(),
            checkout_lease_ms = settings.checkout_lease.as_millis() as u64,
            "cart-service listening"
        );
        Ok(Self {
            port,
            listener,
            router,
            settings,
            outcome_metrics: OutcomeMetrics::register(&metrics),
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let publisher = self.state.publisher.clone();
        // The order-outcome consumer and the pending-order settler stop once the server has
        // drained, so checkouts finishing during the drain still get their outcomes applied.
        let background = CancellationToken::new();
        tokio::spawn(orders::events::consume_outcomes(
            self.settings.broker.clone(),
            self.settings.topology.clone(),
            Arc::clone(&self.state.orders),
            self.outcome_metrics.clone(),
            background.clone(),
        ));
        tokio::spawn(orders::events::settle_pending(
            Arc::clone(&self.state.orders),
            publisher.clone(),
            self.settings.pending_order_timeout,
            self.outcome_metrics.clone(),
            background.clone(),
        ));
        let result = common::shutdown::serve(
            self.listener,
            self.router,
            shutdown,
            self.settings.service.shutdown_timeout,
        )
        .await;
        background.cancel();
        // In-flight checkouts have drained: close the channels so the broker sees a clean goodbye.
        publisher.close().await;
        result
    }
}
