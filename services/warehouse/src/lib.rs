//! The warehouse: consumes approved orders from RabbitMQ and keeps the books.
//!
//! - [`ledger`]: the totals and the `order_uid` dedupe (the domain, no I/O).
//! - [`consumer`]: the AMQP consumer: manual acks on N channels, poison to the DLQ, reconnects.
//! - [`routes`]: `GET /stats`.
//! - [`configuration`]: environment variables.
//!
//! [`Application`] wires them together; `main` only reads the configuration, runs it until
//! SIGTERM/SIGINT and prints the final report.

pub mod configuration;
pub mod consumer;
pub mod ledger;
pub mod routes;

use crate::configuration::Settings;
use crate::consumer::{ConsumerState, OrderConsumer};
use crate::ledger::{Ledger, Stats};
use axum::Router;
use common::http::{self, Readiness};
use common::metrics::Metrics;
use common::shutdown::{self, CancellationToken};
use std::sync::Arc;
use tokio::net::TcpListener;

pub struct Application {
    settings: Settings,
    listener: TcpListener,
    port: u16,
    router: Router,
    ledger: Arc<Ledger>,
    state: Arc<ConsumerState>,
}

impl Application {
    /// Binds the HTTP port (0 picks a free one) and assembles the service; nothing runs yet.
    pub async fn build(settings: Settings) -> std::io::Result<Self> {
        let metrics = Metrics::new();
        let ledger = Arc::new(Ledger::registered(&metrics));
        let state = Arc::new(ConsumerState::new(settings.consumer.channels, &metrics));
        let ready_state = Arc::clone(&state);
        let readiness = Readiness::new().check("rabbitmq", move || {
            let state = Arc::clone(&ready_state);
            async move { state.readiness() }
        });
        let router = http::with_common_layers(
            routes::router(Arc::clone(&ledger)),
            &settings.service,
            &metrics,
            readiness,
        );
        let listener = http::bind(settings.service.port).await?;
        let port = listener.local_addr()?.port();
        Ok(Self {
            settings,
            listener,
            port,
            router,
            ledger,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn ledger(&self) -> Arc<Ledger> {
        Arc::clone(&self.ledger)
    }

    pub fn consumer_state(&self) -> Arc<ConsumerState> {
        Arc::clone(&self.state)
    }

    /// Consumes and serves until `shutdown` is cancelled. The consumer stops first (finishing and
    /// acking what it holds, closing the connection); the HTTP server keeps answering during that
    /// drain (with `/ready` failing) and stops last. Returns the final totals.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<Stats> {
        tracing::info!(
            port = self.port,
            instance = %self.settings.service.instance_id,
            queue = %self.settings.consumer.topology.queue,
            amqp = %common::messaging::redact_url(&self.settings.consumer.amqp_url),
            "warehouse listening"
        );
        let consumer = OrderConsumer::new(
            self.settings.consumer.clone(),
            Arc::clone(&self.ledger),
            Arc::clone(&self.state),
        );
        let mut consumer = tokio::spawn(consumer.run(shutdown.clone()));
        let server_stop = CancellationToken::new();
        let mut server = tokio::spawn(shutdown::serve(
            self.listener,
            self.router,
            server_stop.clone(),
            self.settings.service.shutdown_timeout,
        ));
        let mut server_result = None;
        tokio::select! {
            done = &mut consumer => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "the consumer task failed");
                }
            }
            done = &mut server => {
                // The server only ends on its own if it failed: stop consuming too.
                server_result = Some(done);
                shutdown.cancel();
                if let Err(e) = (&mut consumer).await {
                    tracing::error!(error = %e, "the consumer task failed");
                }
            }
        }
        server_stop.cancel();
        let served = match server_result {
            Some(done) => done,
            None => server.await,
        };
        match served {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(std::io::Error::other(e)),
        }
        Ok(self.ledger.snapshot())
    }
}
