//! The AMQP side: one connection; `channels` channels with `prefetch` each on the order queue,
//! one more on the cancel queue, and one confirm-mode channel for outcome events; manual acks.
//!
//! Guarantees, and how they are kept:
//! - **No order or cancel is silently lost.** A channel task validates a delivery and hands it
//!   to the [`batch`](crate::batch) writers, which ack it only after the ledger has committed it
//!   and the broker has confirmed its outcome event, so a crash at any point leaves every
//!   unapplied (or unannounced) message unacked, and the broker redelivers it.
//! - **One outcome per order.** The ledger records the first of an order and its cancel; a
//!   redelivery or the one that came second changes nothing and is announced with the recorded
//!   outcome, then acked.
//! - **Cancels are never stuck behind orders.** They have their own queue and channel, and an
//!   order held by `FULFILMENT_DELAY_MS` waits in a timer queue of its own, not in a channel or
//!   a writer: neither the other channels nor the cancels wait for it.
//! - **Poison never stalls a channel.** A message that is not a valid order (on the order queue)
//!   or cancel (on the cancel queue) is rejected without requeue by its channel task, which
//!   dead-letters it to `<queue>.dlq` (whatever the state of the ledger store), then counted and
//!   logged once.
//! - **Ledger store down.** The writers hold their batches unacked and retry; the channels stop
//!   receiving once their prefetch is used up, so the rest waits in the queue.
//! - **Connection or channel loss** (the events channel included). The whole session
//!   (connection and all its channels) is torn down and rebuilt with exponential backoff:
//!   topology redeclared, prefetch reapplied, consumers restarted. Unacked deliveries go back to
//!   the queue and come back here, deduplicated, and are announced again.
//! - **Shutdown.** Each channel stops taking deliveries, the writers commit, announce and ack
//!   what they were handed (one try each if the store is down), then the connection is closed;
//!   prefetched but unprocessed messages, and orders still being held, are requeued by the
//!   broker for the next consumer.

mod channel;
mod depth;

use crate::batch;
use crate::configuration::ConsumerSettings;
use crate::events::{self, EventPublisher};
use crate::ledger::Ledger;
use common::messaging::{self, Topology};
use common::metrics::{Counter, Gauge, LatencyHistogram, Metrics};
use depth::QueueDepth;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use channel::{consume_channel, hold, ChannelError, Handoff, Source};

/// How long closing the connection may take at the end of a session.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A session that consumed at least this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(5);

/// What the rest of the service can see of the consumer (readiness, metrics).
pub struct ConsumerState {
    /// Order channels consuming.
    consuming: AtomicUsize,
    /// Whether the cancel channel is consuming.
    consuming_cancels: AtomicBool,
    channels: usize,
    last_error: Mutex<Option<String>>,
    sessions: Counter,
    consuming_gauge: Gauge,
    batches: Counter,
    store_failures: Counter,
    redelivered: Counter,
    order_lag: LatencyHistogram,
    /// `amqp_publish_confirm_seconds{destination=<events exchange>}`.
    events_confirm: LatencyHistogram,
    /// `warehouse_queue_messages{queue}` of the order and cancel queues.
    depth: QueueDepth,
}

/// `warehouse_order_lag_seconds`: from a second (an order waiting in the queue behind a burst) to
/// a quarter of an hour (a warehouse that was down).
const LAG_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];

impl ConsumerState {
    pub fn new(channels: u16, topology: &Topology, metrics: &Metrics) -> Self {
        Self {
            events_confirm: messaging::confirm_latency(metrics, &topology.events_exchange),
            depth: QueueDepth::new(&[&topology.queue, &topology.cancel_queue], metrics),
            consuming: AtomicUsize::new(0),
            consuming_cancels: AtomicBool::new(false),
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
            redelivered: metrics.counter(
                "warehouse_redelivered_total",
                "Committed deliveries (orders and cancels) the broker had delivered before.",
            ),
            order_lag: metrics.histogram(
                "warehouse_order_lag_seconds",
                "Age of an order when its batch commits: commit time minus its created_at.",
                &LAG_BUCKETS,
                &[],
            ),
        }
    }

    /// A batch committed: its redeliveries counted and its orders' ages observed.
    pub(crate) fn committed(&self, batch: &[crate::batch::Pending]) {
        self.batches.inc();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        for pending in batch {
            if pending.redelivered {
                self.redelivered.inc();
            }
            if let crate::batch::Request::Order(order) = &pending.request {
                // A clock behind the cart's counts as no lag, not as a negative one.
                let age = u64::try_from(now - order.created_at.unix_timestamp_nanos()).unwrap_or(0);
                self.order_lag.observe(std::time::Duration::from_nanos(age));
            }
        }
    }

    /// Order channels currently consuming.
    pub fn consuming(&self) -> usize {
        self.consuming.load(Ordering::Relaxed)
    }

    /// Whether the cancel queue is being consumed.
    pub fn consuming_cancels(&self) -> bool {
        self.consuming_cancels.load(Ordering::Relaxed)
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

    pub(crate) fn store_failed(&self) {
        self.store_failures.inc();
    }

    /// Ready when every configured order channel and the cancel channel are consuming.
    pub fn readiness(&self) -> Result<(), String> {
        let consuming = self.consuming();
        let cancels = self.consuming_cancels();
        if consuming == self.channels && cancels {
            return Ok(());
        }
        let last = self
            .last_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default();
        let cancels = if cancels {
            ""
        } else {
            ", not the cancel queue"
        };
        Err(format!(
            "consuming on {consuming}/{} channels{cancels}{last}",
            self.channels
        ))
    }

    fn set_consuming(&self, n: usize, cancels: bool) {
        self.consuming_cancels.store(cancels, Ordering::Relaxed);
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
            self.state.set_consuming(0, false);
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
            connected = messaging::connect(&self.settings.broker, properties, messaging::NODE_CONNECT_TIMEOUT) => {
                match connected {
                    Ok(connection) => connection,
                    Err(e) => return SessionEnd::Lost(e.to_string()),
                }
            }
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
        let publisher = match self.open_publisher(connection).await {
            Ok(publisher) => Arc::new(publisher),
            Err(e) => return SessionEnd::Lost(format!("cannot set up the events channel: {e}")),
        };
        let session = shutdown.child_token();
        let mut writers = JoinSet::new();
        let handoff = self.spawn_writers(&publisher, &session, &mut writers);
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
            .set_consuming(usize::from(self.settings.channels), true);
        tracing::info!(
            queue = %self.settings.topology.queue,
            cancel_queue = %self.settings.topology.cancel_queue,
            events_exchange = %self.settings.topology.events_exchange,
            channels = self.settings.channels,
            prefetch = self.settings.prefetch,
            writers = self.settings.batch.writers,
            batch_max = self.settings.batch.batch_max,
            fulfilment_delay_ms = self.settings.fulfilment_delay.as_millis() as u64,
            "consuming orders and cancels"
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
            () = publisher.lost().cancelled() => SessionEnd::Lost("the events channel closed".to_string()),
            // Polls the queues' depth for as long as the session runs; never ends it.
            end = async {
                self.state.depth.poll(connection, session.clone()).await;
                std::future::pending::<SessionEnd>().await
            } => end,
        };
        self.state.set_consuming(0, false);
        session.cancel();
        wind_down(tasks, writers).await;
        end
    }

    /// Starts the batch writers (and the hold before them, with `FULFILMENT_DELAY_MS`) and
    /// returns where the channel tasks hand their deliveries.
    fn spawn_writers(
        &self,
        publisher: &Arc<EventPublisher>,
        session: &CancellationToken,
        writers: &mut JoinSet<()>,
    ) -> Handoff {
        // Every delivery the broker may have unacked fits in the queues: a handoff never waits.
        let unacked =
            (usize::from(self.settings.channels) + 1) * usize::from(self.settings.prefetch);
        let to_writers = batch::spawn(
            Arc::clone(&self.ledger),
            Arc::clone(&self.state),
            Arc::clone(publisher),
            self.settings.batch,
            unacked,
            session.clone(),
            writers,
        );
        let delay = self.settings.fulfilment_delay;
        let held = (!delay.is_zero()).then(|| {
            let (tx, rx) = mpsc::channel(unacked);
            writers.spawn(hold(rx, to_writers.clone(), session.clone()));
            (tx, delay)
        });
        Handoff {
            writers: to_writers,
            held,
            ack_on_receipt: self.settings.unsafe_ack_on_receipt,
        }
    }

    /// Declares the topology (queues, dead-lettering, the events exchange and its listeners'
    /// queues) and opens the events channel.
    async fn open_publisher(&self, connection: &Connection) -> lapin::Result<EventPublisher> {
        let publisher = EventPublisher::open(
            connection,
            &self.settings.topology,
            events::CONFIRM_TIMEOUT,
            self.state.events_confirm.clone(),
        )
        .await?;
        let setup = connection.create_channel().await?;
        self.settings.topology.declare(&setup).await?;
        let _ = setup.close(200, "declared".into()).await;
        Ok(publisher)
    }

    async fn open_channels(
        &self,
        connection: &Connection,
        session: &CancellationToken,
        tasks: &mut JoinSet<Result<(), ChannelError>>,
        handoff: &Handoff,
    ) -> Result<(), lapin::Error> {
        let topology = &self.settings.topology;
        let orders = (0..self.settings.channels)
            .map(|index| (Source::Orders, &topology.queue, index.to_string()));
        let cancels = std::iter::once((
            Source::Cancels,
            &topology.cancel_queue,
            "cancel".to_string(),
        ));
        for (source, queue, suffix) in orders.chain(cancels) {
            let channel = connection.create_channel().await?;
            channel
                .basic_qos(self.settings.prefetch, BasicQosOptions::default())
                .await?;
            let tag = format!("{}-{suffix}", self.settings.connection_name);
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            tasks.spawn(consume_channel(
                channel,
                consumer,
                source,
                Arc::clone(&self.ledger),
                handoff.clone(),
                session.clone(),
            ));
        }
        Ok(())
    }
}

/// Waits for a session's channel tasks, then its writers, which commit, announce and ack what
/// they were handed before the connection closes.
async fn wind_down(mut tasks: JoinSet<Result<(), ChannelError>>, mut writers: JoinSet<()>) {
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "channel ended with an error"),
            Err(e) => tracing::warn!(error = %e, "channel task failed"),
        }
    }
    while let Some(result) = writers.join_next().await {
        if let Err(e) = result {
            tracing::warn!(error = %e, "batch writer failed");
        }
    }
}
