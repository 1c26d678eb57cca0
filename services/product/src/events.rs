//! The warehouse's outcome events, applied to reservations: a fulfilled order's reservation is
//! sold, a cancelled one's is released.
//!
//! The warehouse publishes one [`OrderEvents`] message per processed batch to the fanout
//! exchange `<queue>.events`; this service consumes its copy, `<queue>.events.stock`, on one
//! channel with a small prefetch, one message at a time:
//!
//! - a message's events are applied in **one transaction** ([`StockStore::apply_events`]) and
//!   the message is acked only after it committed: a crash in between leaves it unacked, and
//!   the redelivery is harmless because every transition is idempotent (a settled reservation
//!   stays as it is);
//! - a message that is not `OrderEvents` JSON is rejected without requeue: the broker
//!   dead-letters it to `<queue>.dlq`, and it is counted and logged;
//! - while the store is unavailable the message is held unacked and retried with backoff (the
//!   rest waits in the queue);
//! - the broker being away stops nothing else: the service starts and serves without it, this
//!   consumer logs each failed attempt and reconnects with backoff, redeclaring the topology.
//!   The broker is not part of `/ready` (the catalog works without it); the gauge
//!   `product_stock_events_connected` shows it.

use crate::configuration::EventSettings;
use crate::stock::{EventTally, StockError};
use crate::store::{CatalogError, StockStore};
use common::messaging::{self, OrderEvents};
use common::metrics::{Counter, Gauge, Metrics};
use common::shutdown::CancellationToken;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A session that consumed at least this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(5);
/// Retrying a message while the store is down: from this, doubling, up to the cap.
const STORE_RETRY_MIN: Duration = Duration::from_millis(100);
const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

/// The consumer's counters, on `/metrics`.
#[derive(Clone)]
pub struct EventMetrics {
    sessions: Counter,
    connected: Gauge,
    messages: Counter,
    rejected: Counter,
    committed: Counter,
    sold_after_release: Counter,
    oversold_units: Counter,
    released: Counter,
    unchanged: Counter,
    unknown: Counter,
    cancelled_after_commit: Counter,
    store_failures: Counter,
}

impl EventMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        Self {
            sessions: metrics.counter(
                "product_stock_events_sessions_total",
                "Broker sessions of the stock events consumer (1 + reconnections).",
            ),
            connected: metrics.gauge(
                "product_stock_events_connected",
                "1 while the stock events consumer is consuming, else 0.",
            ),
            messages: metrics.counter(
                "product_stock_events_messages_total",
                "Event messages applied and acked.",
            ),
            rejected: metrics.counter(
                "product_stock_events_rejected_total",
                "Event messages rejected to the dead-letter queue (malformed, or failing to apply).",
            ),
            committed: metrics.counter(
                "product_reservations_committed_total",
                "Held or confirmed reservations sold by a fulfilment event.",
            ),
            sold_after_release: metrics.counter(
                "product_reservations_sold_after_release_total",
                "Released reservations whose order was fulfilled anyway (sold from on hand).",
            ),
            oversold_units: metrics.counter(
                "product_stock_oversold_units_total",
                "Units fulfilled beyond what was on hand (also in each product's oversold).",
            ),
            released: metrics.counter(
                "product_reservations_cancelled_total",
                "Held or confirmed reservations released by a cancellation event.",
            ),
            unchanged: metrics.counter(
                "product_stock_events_unchanged_total",
                "Events that found their reservation already settled (redeliveries).",
            ),
            unknown: metrics.counter(
                "product_stock_events_unknown_order_total",
                "Events for an order without a reservation (ignored).",
            ),
            cancelled_after_commit: metrics.counter(
                "product_stock_events_cancelled_after_commit_total",
                "Cancellations of reservations already sold (left sold; should not happen).",
            ),
            store_failures: metrics.counter(
                "product_stock_events_store_failures_total",
                "Attempts to apply an event message that failed because the store was unavailable (retried).",
            ),
        }
    }

    fn record(&self, tally: &EventTally) {
        self.messages.inc();
        self.committed.add(tally.committed);
        self.sold_after_release.add(tally.sold_after_release);
        self.oversold_units.add(tally.oversold_units);
        self.released.add(tally.released);
        self.unchanged.add(tally.unchanged);
        self.unknown.add(tally.unknown);
        self.cancelled_after_commit
            .add(tally.cancelled_after_commit.len() as u64);
    }
}

/// Why a session ended.
enum SessionEnd {
    Shutdown,
    Lost(String),
}

pub struct EventConsumer {
    settings: EventSettings,
    stock: Arc<dyn StockStore>,
    metrics: EventMetrics,
}

impl EventConsumer {
    pub fn new(settings: EventSettings, stock: Arc<dyn StockStore>, metrics: EventMetrics) -> Self {
        Self {
            settings,
            stock,
            metrics,
        }
    }

    /// Consumes until `shutdown` is cancelled, reconnecting as needed. Returns once the message
    /// in hand is settled (or left unacked for redelivery) and the connection is closed.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = self.settings.reconnect_min;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let started = Instant::now();
            let end = self.session(&shutdown).await;
            self.metrics.connected.set(0);
            let reason = match end {
                SessionEnd::Shutdown => break,
                SessionEnd::Lost(reason) => reason,
            };
            if shutdown.is_cancelled() {
                break;
            }
            if started.elapsed() >= STABLE_SESSION {
                backoff = self.settings.reconnect_min;
            }
            tracing::warn!(
                error = %reason,
                queue = %self.settings.topology.stock_events_queue,
                retry_in_ms = backoff.as_millis() as u64,
                "stock events: not connected to the broker; fulfilments and cancellations are not \
                 applied to reservations until it is back (they wait in the queue)"
            );
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.settings.reconnect_max);
        }
        tracing::info!("stock events consumer stopped");
    }

    async fn session(&self, shutdown: &CancellationToken) -> SessionEnd {
        let properties = ConnectionProperties::default()
            .with_connection_name(self.settings.connection_name.as_str().into());
        let broker = &self.settings.broker;
        let connection = tokio::select! {
            () = shutdown.cancelled() => return SessionEnd::Shutdown,
            connected = messaging::connect(broker, properties, messaging::NODE_CONNECT_TIMEOUT) => match connected {
                Ok(connection) => connection,
                Err(e) => return SessionEnd::Lost(e.to_string()),
            }
        };
        let end = self.consume(&connection, shutdown).await;
        // Closing requeues whatever was prefetched but not settled.
        let close = connection.close(200, "product-service session ended".into());
        if let Ok(Err(e)) = tokio::time::timeout(CLOSE_TIMEOUT, close).await {
            tracing::debug!(error = %e, "closing the broker connection");
        }
        end
    }

    async fn consume(&self, connection: &Connection, shutdown: &CancellationToken) -> SessionEnd {
        let topology = &self.settings.topology;
        let setup = async {
            let channel = connection.create_channel().await?;
            topology.declare(&channel).await?;
            channel
                .basic_qos(self.settings.prefetch, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    topology.stock_events_queue.as_str().into(),
                    self.settings.connection_name.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((channel, consumer))
        };
        let (_channel, mut consumer) = match setup.await {
            Ok(set) => set,
            Err(e) => return SessionEnd::Lost(format!("cannot set up the consumer: {e}")),
        };
        self.metrics.sessions.inc();
        self.metrics.connected.set(1);
        tracing::info!(
            queue = %topology.stock_events_queue,
            exchange = %topology.events_exchange,
            prefetch = self.settings.prefetch,
            "consuming stock events"
        );
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => return SessionEnd::Shutdown,
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    if let Err(end) = self.handle(delivery, shutdown).await {
                        return end;
                    }
                }
                Some(Err(e)) => return SessionEnd::Lost(e.to_string()),
                None => {
                    return SessionEnd::Lost(
                        "the broker cancelled the consumer (queue deleted?)".to_string(),
                    )
                }
            }
        }
    }

    /// Applies one message and settles it. `Err` ends the session (shutdown while the store
    /// was down, or a channel that died under the ack).
    async fn handle(
        &self,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionEnd> {
        let events = match OrderEvents::from_json(&delivery.data) {
            Ok(events) => events,
            Err(reason) => return self.reject(delivery, &reason).await,
        };
        let mut backoff = STORE_RETRY_MIN;
        let mut failures = 0u32;
        loop {
            match self.stock.apply_events(&events.events).await {
                Ok(tally) => {
                    if failures > 0 {
                        tracing::info!(failures, "stock events: the store is back");
                    }
                    self.report(&tally, delivery.redelivered);
                    return match delivery.ack(BasicAckOptions::default()).await {
                        // Applied; if the ack was lost with the channel, the redelivery is a
                        // no-op.
                        Ok(true) => Ok(()),
                        Ok(false) => {
                            Err(SessionEnd::Lost("the channel closed under an ack".into()))
                        }
                        Err(e) => Err(SessionEnd::Lost(format!("ack failed: {e}"))),
                    };
                }
                Err(StockError::Store(CatalogError::Unavailable(err))) => {
                    failures += 1;
                    self.metrics.store_failures.inc();
                    if failures == 1 {
                        tracing::warn!(error = %err, "stock events: the store is unavailable; holding the message and retrying");
                    }
                    tokio::select! {
                        // Left unacked: closing the connection hands it back to the broker.
                        () = shutdown.cancelled() => return Err(SessionEnd::Shutdown),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(STORE_RETRY_MAX);
                }
                Err(err) => {
                    // Not an outage: retrying would fail the same way and block the queue.
                    tracing::error!(error = %err, "stock events: a message failed to apply");
                    return self.reject(delivery, &err.to_string()).await;
                }
            }
        }
    }

    fn report(&self, tally: &EventTally, redelivered: bool) {
        self.metrics.record(tally);
        for (order_uid, units) in &tally.oversold {
            tracing::warn!(
                %order_uid,
                units,
                "oversold: a reservation released by its timeout was fulfilled with stock that was no longer on hand"
            );
        }
        for order_uid in &tally.cancelled_after_commit {
            tracing::warn!(
                %order_uid,
                "a cancellation arrived for a reservation already sold; it stays sold"
            );
        }
        tracing::debug!(?tally, redelivered, "stock events applied");
    }

    /// Dead-letters a message (reject without requeue), then counts and logs it.
    async fn reject(&self, delivery: Delivery, reason: &str) -> Result<(), SessionEnd> {
        match delivery.reject(BasicRejectOptions { requeue: false }).await {
            Ok(true) => {}
            Ok(false) => return Err(SessionEnd::Lost("the channel closed under a reject".into())),
            Err(e) => return Err(SessionEnd::Lost(format!("reject failed: {e}"))),
        }
        self.metrics.rejected.inc();
        let preview: String = String::from_utf8_lossy(&delivery.data)
            .chars()
            .take(120)
            .collect();
        tracing::warn!(
            %reason,
            bytes = delivery.data.len(),
            redelivered = delivery.redelivered,
            %preview,
            "stock events: rejected a message; dead-lettered"
        );
        Ok(())
    }
}
