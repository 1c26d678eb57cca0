//! The warehouse: consumes approved orders and their cancellations from RabbitMQ, records one
//! outcome per order (fulfilled or cancelled, whichever came first), keeps the books, and
//! announces every outcome on the events exchange.
//!
//! - [`ledger`]: the outcomes and the totals behind one [`ledger::LedgerStore`] trait, in memory
//!   (default) or on PostgreSQL (`DATABASE_URL`).
//! - [`consumer`]: the AMQP consumer: N order channels, a cancel channel, the fulfilment hold,
//!   poison to the DLQ, reconnects.
//! - [`batch`]: the writers that commit the channels' deliveries in batches, then announce and
//!   ack them.
//! - [`events`]: the outcome events, published under confirms before the acks.
//! - [`routes`]: `GET /stats`.
//! - [`configuration`]: environment variables.
//!
//! [`Application`] wires them together; `main` only reads the configuration, runs it until
//! SIGTERM/SIGINT and prints the final report.

pub mod batch;
pub mod configuration;
pub mod consumer;
pub mod events;
pub mod ledger;
pub mod routes;

use crate::configuration::Settings;
use crate::consumer::{ConsumerState, OrderConsumer};
use crate::ledger::memory::MemoryLedger;
use crate::ledger::postgres::{PgLedger, MIGRATOR};
use crate::ledger::{Ledger, LedgerStore, Stats};
use axum::Router;
use common::http::{self, Readiness};
use common::metrics::Metrics;
use common::shutdown::{self, CancellationToken};
use common::store::{postgres as pg, StoreUnavailable};
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

/// The totals at the end: from the store, unless it could not be read.
pub type FinalTotals = Result<Stats, StoreUnavailable>;

/// The ledger store the settings ask for, and its readiness check if it has one. PostgreSQL is
/// connected and migrated here (waiting up to `STORE_STARTUP_TIMEOUT_MS` for it).
async fn ledger_store(
    settings: &Settings,
    readiness: Readiness,
    metrics: &Metrics,
) -> anyhow::Result<(Arc<dyn LedgerStore>, Readiness)> {
    let Some(config) = &settings.store else {
        return Ok((Arc::new(MemoryLedger::new()), readiness));
    };
    let pool = pg::connect(config, &MIGRATOR).await?;
    let ready_pool = pool.clone();
    let readiness = readiness.check("postgresql", move || {
        let pool = ready_pool.clone();
        async move { pg::ping(&pool).await }
    });
    Ok((Arc::new(PgLedger::new(pool).observed(metrics)), readiness))
}

impl Application {
    /// Binds the HTTP port (0 picks a free one), connects the ledger store and assembles the
    /// service; nothing consumes yet.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let metrics = Metrics::new();
        let state = Arc::new(ConsumerState::new(
            settings.consumer.channels,
            &settings.consumer.topology,
            &metrics,
        ));
        let ready_state = Arc::clone(&state);
        let readiness = Readiness::new().check("rabbitmq", move || {
            let state = Arc::clone(&ready_state);
            async move { state.readiness() }
        });
        let (store, readiness) = ledger_store(&settings, readiness, &metrics).await?;
        let ledger = Arc::new(Ledger::registered(store, &metrics));
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
    /// drain (with `/ready` failing) and stops last. Returns the final totals, read from the
    /// store after the consumer has stopped.
    pub async fn run_until_stopped(
        self,
        shutdown: CancellationToken,
    ) -> std::io::Result<FinalTotals> {
        let database = self
            .settings
            .store
            .as_ref()
            .map(|config| format!("{} (schema {})", config.redacted_url(), config.schema));
        tracing::info!(
            port = self.port,
            instance = %self.settings.service.instance_id,
            queue = %self.settings.consumer.topology.queue,
            amqp = %self.settings.consumer.broker.redacted(),
            store = %self.ledger.store().kind(),
            database = database.as_deref().unwrap_or("-"),
            "warehouse listening"
        );
        if self.settings.consumer.unsafe_ack_on_receipt {
            tracing::error!("UNSAFE_ACK_ON_RECEIPT is set: deliveries are acked before the ledger commits them, so a crash LOSES ORDERS. This mode exists only to show that the fault campaign catches it; never run it for real");
        }
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
        Ok(self.ledger.stats().await)
    }
}
