//! The card authorizer: an internal service the cart calls synchronously during checkout.
//!
//! A card number must look like `dddd-dddd-dddd-dddd`; a well-formed one is declined with
//! probability `DECLINE_RATE` (402) and otherwise approved with an authorization id. Card numbers
//! never reach the logs beyond their last four digits.

pub mod authorize;
pub mod configuration;

use crate::configuration::Settings;
use common::http::{bind, with_common_layers, Readiness};
use common::metrics::Metrics;
use common::shutdown::CancellationToken;
use tokio::net::TcpListener;

pub const DEFAULT_PORT: u16 = 8083;

pub struct Application {
    port: u16,
    listener: TcpListener,
    router: axum::Router,
    settings: Settings,
}

impl Application {
    pub async fn build(settings: Settings) -> std::io::Result<Self> {
        let metrics = Metrics::new();
        let outcomes = authorize::Outcomes {
            approved: metrics.counter("card_authorizations_approved_total", "Approved cards."),
            declined: metrics.counter("card_authorizations_declined_total", "Declined cards."),
        };
        let routes = authorize::router(settings.decline_rate, outcomes);
        let router = with_common_layers(routes, &settings.service, &metrics, Readiness::new());
        let listener = bind(settings.service.port).await?;
        let port = listener.local_addr()?.port();
        tracing::info!(
            port,
            decline_rate = settings.decline_rate,
            "credit-card-authorizer listening"
        );
        Ok(Self {
            port,
            listener,
            router,
            settings,
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
