//! The AMQP side: one connection, `channels` channels with `prefetch` each, manual acks.
//!
//! Guarantees, and how they are kept:
//! - **No order is silently lost.** A channel task validates a delivery and hands it to the
//!   [`batch`](crate::batch) writers, which ack it only after the ledger has committed it, so a
//!   crash at any point leaves every unapplied message unacked, and the broker redelivers it.
//! - **No double counting.** Redeliveries (and republished orders) are deduplicated by the ledger
//!   on `order_uid`, then acked.
//! - **Poison never stalls a channel.** A message that is not a valid order is rejected without
//!   requeue by its channel task, which dead-letters it to `<queue>.dlq` (whatever the state of
//!   the ledger store), then counted and logged once.
//! - **Ledger store down.** The writers hold their batches unacked and retry; the channels stop
//!   receiving once their prefetch is used up, so the rest waits in the queue.
//! - **Connection or channel loss.** The whole session (connection and all its channels) is torn
//!   down and rebuilt with exponential backoff: topology redeclared, prefetch reapplied, consumers
//!   restarted. Unacked deliveries go back to the queue and come back here, deduplicated.
//! - **Shutdown.** Each channel stops taking deliveries, the writers commit and ack what they
//!   were handed (one try each if the store is down), then the connection is closed; prefetched
//!   but unprocessed messages are requeued by the broker for the next consumer.

use crate::batch::{self, Pending};
use crate::configuration::ConsumerSettings;
use crate::ledger::{self, Ledger};
use common::messaging::{self, OrderMessage};
use common::metrics::{Counter, Gauge, Metrics};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long a connection attempt may take (a black-holed broker would otherwise hang for the
/// operating system's TCP timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long closing the connection may take at the end of a session.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A session that consumed at least this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(5);

/// What the rest of the service can see of the consumer (readiness, metrics).
pub struct ConsumerState {
    consuming: AtomicUsize,
    channels: usize,
    last_error: Mutex<Option<String>>,
    sessions: Counter,
    consuming_gauge: Gauge,
    batches: Counter,
    store_failures: Counter,
}

impl ConsumerState {
    pub fn new(channels: u16, metrics: &Metrics) -> Self {
        Self {
            consuming: AtomicUsize::new(0),
            channels: usize::from(channels),
            last_error: Mutex::new(None),
            sessions: metrics.counter(
                "warehouse_amqp_sessions_total",
                "Broker sessions established (1 + reconnections).",
            ),
            consuming_gauge: metrics.gauge(
                "warehouse_consuming_channels",
                "Channels currently consuming the order queue.",
            ),
            batches: metrics.counter(
                "warehouse_batches_total",
                "Batches of deliveries committed to the ledger (then acked).",
            ),
            store_failures: metrics.counter(
                "warehouse_store_failures_total",
                "Batch commits that failed because the ledger store was unavailable (retried).",
            ),
        }
    }

    /// Channels currently consuming.
    pub fn consuming(&self) -> usize {
        self.consuming.load(Ordering::Relaxed)
    }

    /// Sessions established so far: 1 after the first connect, +1 per reconnection.
    pub fn sessions(&self) -> u64 {
        self.sessions.get()
    }

    /// Batches committed so far.
    pub fn batches(&self) -> u64 {
        self.batches.get()
    }

    /// Failed batch commits (the store was unavailable) so far.
    pub fn store_failures(&self) -> u64 {
        self.store_failures.get()
    }

    pub(crate) fn batch_committed(&self) {
        self.batches.inc();
    }

    pub(crate) fn store_failed(&self) {
        self.store_failures.inc();
    }

    /// Ready when every configured channel is consuming.
    pub fn readiness(&self) -> Result<(), String> {
        let consuming = self.consuming();
        if consuming == self.channels {
            return Ok(());
        }
        let last = self
            .last_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default();
        Err(format!(
            "consuming on {consuming}/{} channels{last}",
            self.channels
        ))
    }

    fn set_consuming(&self, n: usize) {
        self.consuming.store(n, Ordering::Relaxed);
        self.consuming_gauge
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    fn set_error(&self, error: &str) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error.to_string());
        }
    }
}

/// Why a session ended.
enum SessionEnd {
    /// Shutdown was requested; everything in hand was finished.
    Shutdown,
    /// The connection or a channel failed; reconnect.
    Lost(String),
}

#[derive(Debug, thiserror::Error)]
enum ChannelError {
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker cancelled the consumer (queue deleted?)")]
    Cancelled,
    #[error("the channel closed before the delivery could be settled")]
    NotSettled,
    #[error("the batch writers are gone")]
    WritersGone,
}

/// Consumes the order queue into a ledger until shut down, reconnecting as needed.
#[derive(Clone)]
pub struct OrderConsumer {
    settings: ConsumerSettings,
    ledger: Arc<Ledger>,
    state: Arc<ConsumerState>,
}

impl OrderConsumer {
    pub fn new(settings: ConsumerSettings, ledger: Arc<Ledger>, state: Arc<ConsumerState>) -> Self {
        Self {
            settings,
            ledger,
            state,
        }
    }

    /// Runs until `shutdown` is cancelled; returns once in-flight deliveries are settled and the
    /// connection is closed.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = self.settings.reconnect_min;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let started = Instant::now();
            let end = self.session(&shutdown).await;
            self.state.set_consuming(0);
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
            self.state.set_error(&reason);
            tracing::warn!(
                error = %reason,
                retry_in_ms = backoff.as_millis() as u64,
                "broker session lost; reconnecting"
            );
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.settings.reconnect_max);
        }
        tracing::info!("order consumer stopped");
    }

    /// One connection with all its channels, from connect to teardown.
    async fn session(&self, shutdown: &CancellationToken) -> SessionEnd {
        let properties = ConnectionProperties::default()
            .with_connection_name(self.settings.connection_name.as_str().into());
        let connection = tokio::select! {
            () = shutdown.cancelled() => return SessionEnd::Shutdown,
            connected = tokio::time::timeout(
                CONNECT_TIMEOUT,
                Connection::connect(&self.settings.amqp_url, properties),
            ) => match connected {
                Ok(Ok(connection)) => connection,
                Ok(Err(e)) => {
                    return SessionEnd::Lost(format!(
                        "cannot connect to {}: {e}",
                        messaging::redact_url(&self.settings.amqp_url)
                    ))
                }
                Err(_) => {
                    return SessionEnd::Lost(format!(
                        "cannot connect to {}: no answer within {CONNECT_TIMEOUT:?}",
                        messaging::redact_url(&self.settings.amqp_url)
                    ))
                }
            },
        };
        let end = self.consume(&connection, shutdown).await;
        // Closing requeues whatever was prefetched but not settled; on a dead connection this
        // fails fast, which is fine.
        let close = connection.close(200, "warehouse session ended".into());
        if let Ok(Err(e)) = tokio::time::timeout(CLOSE_TIMEOUT, close).await {
            tracing::debug!(error = %e, "closing the broker connection");
        }
        end
    }

    async fn consume(&self, connection: &Connection, shutdown: &CancellationToken) -> SessionEnd {
        let session = shutdown.child_token();
        let mut writers = JoinSet::new();
        let unacked = usize::from(self.settings.channels) * usize::from(self.settings.prefetch);
        let handoff = batch::spawn(
            Arc::clone(&self.ledger),
            Arc::clone(&self.state),
            self.settings.batch,
            unacked,
            session.clone(),
            &mut writers,
        );
        let mut tasks = JoinSet::new();
        let opened = self
            .open_channels(connection, &session, &mut tasks, &handoff)
            .await;
        // The channel tasks hold the only senders now: the writers stop once those are gone.
        drop(handoff);
        if let Err(e) = opened {
            session.cancel();
            tasks.join_all().await;
            writers.join_all().await;
            return SessionEnd::Lost(format!("cannot set up the consumers: {e}"));
        }
        self.state.sessions.inc();
        self.state
            .set_consuming(usize::from(self.settings.channels));
        tracing::info!(
            queue = %self.settings.topology.queue,
            channels = self.settings.channels,
            prefetch = self.settings.prefetch,
            writers = self.settings.batch.writers,
            batch_max = self.settings.batch.batch_max,
            "consuming orders"
        );

        // Run until shutdown, or until any channel fails: then stop the others too, since the
        // session is rebuilt as a whole. A writer only ends early if it panicked.
        let end = tokio::select! {
            () = shutdown.cancelled() => SessionEnd::Shutdown,
            Some(first) = tasks.join_next() => match first {
                Ok(Ok(())) => SessionEnd::Shutdown,
                Ok(Err(e)) => SessionEnd::Lost(e.to_string()),
                Err(e) => SessionEnd::Lost(format!("channel task failed: {e}")),
            },
            Some(writer) = writers.join_next() => SessionEnd::Lost(format!("a batch writer ended: {writer:?}")),
        };
        self.state.set_consuming(0);
        session.cancel();
        while let Some(result) = tasks.join_next().await {
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "channel ended with an error"),
                Err(e) => tracing::warn!(error = %e, "channel task failed"),
            }
        }
        // The writers commit and ack what they were handed before the connection closes.
        while let Some(result) = writers.join_next().await {
            if let Err(e) = result {
                tracing::warn!(error = %e, "batch writer failed");
            }
        }
        end
    }

    async fn open_channels(
        &self,
        connection: &Connection,
        session: &CancellationToken,
        tasks: &mut JoinSet<Result<(), ChannelError>>,
        handoff: &mpsc::Sender<Pending>,
    ) -> Result<(), lapin::Error> {
        for index in 0..self.settings.channels {
            let channel = connection.create_channel().await?;
            if index == 0 {
                self.settings.topology.declare(&channel).await?;
            }
            channel
                .basic_qos(self.settings.prefetch, BasicQosOptions::default())
                .await?;
            let tag = format!("{}-{index}", self.settings.connection_name);
            let consumer = channel
                .basic_consume(
                    self.settings.topology.queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            tasks.spawn(consume_channel(
                channel,
                consumer,
                Arc::clone(&self.ledger),
                handoff.clone(),
                session.clone(),
            ));
        }
        Ok(())
    }
}

/// One channel's loop: take a delivery, hand it over (or reject it), repeat; stop between
/// deliveries when asked.
async fn consume_channel(
    // Held so the channel lives as long as its consumer.
    _channel: Channel,
    mut consumer: Consumer,
    ledger: Arc<Ledger>,
    handoff: mpsc::Sender<Pending>,
    stop: CancellationToken,
) -> Result<(), ChannelError> {
    loop {
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(()),
            next = consumer.next() => next,
        };
        match next {
            Some(Ok(delivery)) => dispatch(&ledger, &handoff, delivery).await?,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(ChannelError::Cancelled),
        }
    }
}

/// Hands a valid order to the writers; rejects anything else to the DLQ at once.
async fn dispatch(
    ledger: &Ledger,
    handoff: &mpsc::Sender<Pending>,
    delivery: Delivery,
) -> Result<(), ChannelError> {
    let parsed = OrderMessage::from_json(&delivery.data)
        .and_then(|order| ledger::check_storable(&order).map(|()| order));
    match parsed {
        Ok(order) => {
            let pending = Pending {
                order,
                acker: delivery.acker,
                redelivered: delivery.redelivered,
            };
            // Never waits: the queue holds every delivery the broker may have unacked.
            handoff
                .send(pending)
                .await
                .map_err(|_| ChannelError::WritersGone)
        }
        Err(reason) => reject(ledger, delivery, &reason).await,
    }
}

/// Dead-letters a message that is not a valid order (reject without requeue).
async fn reject(ledger: &Ledger, delivery: Delivery, reason: &str) -> Result<(), ChannelError> {
    let settled = delivery
        .reject(BasicRejectOptions { requeue: false })
        .await?;
    if !settled {
        return Err(ChannelError::NotSettled);
    }
    // Counted and logged once it is really on its way to the DLQ, so a reject lost with the
    // channel does not count the same message twice.
    ledger.record_rejected();
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string())
        .unwrap_or_default();
    let preview: String = String::from_utf8_lossy(&delivery.data)
        .chars()
        .take(120)
        .collect();
    tracing::warn!(
        %reason,
        %message_id,
        bytes = delivery.data.len(),
        redelivered = delivery.redelivered,
        %preview,
        "rejected a message that is not a valid order; dead-lettered"
    );
    Ok(())
}
