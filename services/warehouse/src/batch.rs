//! The batch writers: the channel tasks hand validated deliveries (orders and cancels) over, a
//! writer takes whatever is waiting (up to `batch_max`, without waiting for more), applies it to
//! the ledger as one unit and hands it to its announcer, which publishes the outcome events of
//! every batch committed since its last publish as one message and only once the broker has
//! confirmed them acks each delivery.
//!
//! Why this keeps "exactly once" with a durable store: an entry's outcome record and its effect
//! on the totals commit together, and its ack is sent after the commit. A crash before the commit
//! leaves the entry unapplied and unacked (the broker redelivers it); a crash between the commit
//! and the ack leaves it applied and unacked (the redelivery finds its uid's outcome, changes
//! nothing, and announces that outcome again, so no event is lost either).
//!
//! A batch the store cannot take (it is down) is held, unacked, and retried with backoff until
//! the store is back or the broker session ends (then the broker redelivers it to the next
//! session). Nothing is rejected or requeued meanwhile, so the messages wait in the queue. A
//! batch the store *refuses* (an entry it can never store) is retried one entry at a time and
//! only the refused entry is dead-lettered. A batch whose events the broker does not confirm is
//! nacked with requeue after a backoff: its redelivery is a duplicate and re-announces.

use crate::consumer::ConsumerState;
use crate::events::{self, EventPublisher};
use crate::ledger::{ApplyError, Entry, Ledger, Recorded};
use common::messaging::{CancelMessage, OrderMessage};
use common::telemetry;
use futures::future::join_all;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::Acker;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};

/// First and longest wait between two tries of a batch the store could not take.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What a valid delivery asks for.
#[derive(Debug, Clone)]
pub enum Request {
    Order(OrderMessage),
    Cancel(CancelMessage),
}

impl Request {
    pub fn entry(&self) -> Entry<'_> {
        match self {
            Self::Order(order) => Entry::Order(order),
            Self::Cancel(cancel) => Entry::Cancel(cancel),
        }
    }

    pub fn uid(&self) -> &str {
        self.entry().uid()
    }
}

/// A validated delivery that is not settled yet.
pub struct Pending {
    pub request: Request,
    pub acker: Acker,
    pub redelivered: bool,
    /// The delivery's consumer span (a child of the checkout's publish), ended when the
    /// delivery is settled; `Span::none()` when no traces are exported.
    pub span: Span,
}

/// How the writers work (see `configuration`).
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// Concurrent writers per session, each with its own lane of totals.
    pub writers: u16,
    /// The most deliveries in one batch.
    pub batch_max: usize,
}

/// Starts the session's writers on `tasks`; they stop once every sender is dropped and the
/// queue is drained. `capacity` should cover every unacked delivery (channels x prefetch), so a
/// channel task never waits to hand one over.
pub fn spawn(
    ledger: Arc<Ledger>,
    state: Arc<ConsumerState>,
    publisher: Arc<EventPublisher>,
    settings: BatchSettings,
    capacity: usize,
    session: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> mpsc::Sender<Pending> {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let rx = Arc::new(Mutex::new(rx));
    for lane in 0..settings.writers.max(1) {
        let writer = Writer {
            lane,
            ledger: Arc::clone(&ledger),
            state: Arc::clone(&state),
            publisher: Arc::clone(&publisher),
            session: session.clone(),
        };
        tasks.spawn(writer.run(Arc::clone(&rx), settings.batch_max.max(1)));
    }
    tx
}

struct Writer {
    lane: u16,
    ledger: Arc<Ledger>,
    state: Arc<ConsumerState>,
    publisher: Arc<EventPublisher>,
    session: CancellationToken,
}

/// What became of a batch.
enum Commit {
    Done(Vec<Recorded>),
    /// The session ended while the store was down: the broker takes the deliveries back.
    Abandoned,
    Refused(String),
}

impl Writer {
    async fn run(self, rx: Arc<Mutex<mpsc::Receiver<Pending>>>, batch_max: usize) {
        // A committed batch's events and acks go to this writer's announcer task, so the writer
        // goes straight on to the next commit. The announcer is awaited before the writer ends
        // (and the session closes the connection). The channel is bounded in effect: only
        // unacked deliveries (channels x prefetch) can be committed.
        let (committed, to_announce) = mpsc::unbounded_channel();
        let announcer = tokio::spawn(self.announcer().run(to_announce));
        loop {
            let mut batch = Vec::with_capacity(batch_max);
            // One writer waits for deliveries at a time; it takes all that are waiting.
            let taken = rx.lock().await.recv_many(&mut batch, batch_max).await;
            if taken == 0 {
                break;
            }
            self.settle(batch, &committed).await;
        }
        drop(committed);
        let _ = announcer.await;
    }

    fn announcer(&self) -> Announcer {
        Announcer {
            ledger: Arc::clone(&self.ledger),
            publisher: Arc::clone(&self.publisher),
            session: self.session.clone(),
        }
    }

    async fn settle(&self, mut batch: Vec<Pending>, committed: &mpsc::UnboundedSender<Committed>) {
        match self.commit(&mut batch).await {
            Commit::Done(recorded) => {
                if let Err(mpsc::error::SendError((batch, recorded))) =
                    committed.send((batch, recorded))
                {
                    // The announcer is gone (it cannot be while the writer runs): announce here.
                    self.announcer().announce_then_ack(batch, recorded).await;
                }
            }
            Commit::Abandoned => {}
            Commit::Refused(reason) if batch.len() == 1 => self.reject(batch, &reason).await,
            Commit::Refused(_) => {
                // Find the entry the store refuses: the others are applied as usual.
                for pending in batch {
                    let mut single = vec![pending];
                    match self.commit(&mut single).await {
                        Commit::Done(recorded) => {
                            self.announcer().announce_then_ack(single, recorded).await;
                        }
                        Commit::Abandoned => return,
                        Commit::Refused(reason) => self.reject(single, &reason).await,
                    }
                }
            }
        }
    }

    /// Applies the batch, retrying while the store is unavailable and the session lives.
    async fn commit(&self, batch: &mut Vec<Pending>) -> Commit {
        let mut backoff = RETRY_MIN;
        let mut failures = 0u32;
        loop {
            let applied = {
                let entries: Vec<Entry<'_>> = batch.iter().map(|p| p.request.entry()).collect();
                let span = telemetry::batch_span("ledger apply", batch.iter().map(|p| &p.span));
                self.ledger
                    .apply_batch(self.lane, &entries)
                    .instrument(span)
                    .await
            };
            let error = match applied {
                Ok(recorded) => {
                    self.state.committed(batch);
                    if failures > 0 {
                        tracing::info!(failures, lane = self.lane, "the ledger store is back");
                    }
                    return Commit::Done(recorded);
                }
                Err(ApplyError::Refused(reason)) => return Commit::Refused(reason),
                Err(ApplyError::Unavailable(e)) => e,
            };
            failures += 1;
            self.state.store_failed();
            // Deliveries of a channel that has died are redelivered to the next session.
            batch.retain(|p| p.acker.usable());
            if batch.is_empty() || self.session.is_cancelled() {
                tracing::warn!(error = %error, held = batch.len(), "the ledger store is unavailable; leaving the deliveries to the broker");
                return Commit::Abandoned;
            }
            if failures == 1 {
                tracing::warn!(error = %error, held = batch.len(), lane = self.lane, "the ledger store is unavailable; holding the deliveries unacked and retrying");
            } else {
                tracing::debug!(error = %error, failures, "the ledger store is still unavailable");
            }
            tokio::select! {
                () = self.session.cancelled() => return Commit::Abandoned,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }

    async fn reject(&self, batch: Vec<Pending>, reason: &str) {
        for pending in batch {
            let rejected = pending
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await;
            if matches!(rejected, Ok(true)) {
                self.ledger.record_rejected();
                tracing::warn!(order_uid = %pending.request.uid(), %reason, "the ledger store refused a message; dead-lettered");
            }
        }
    }
}

/// A committed batch: its deliveries and what the ledger recorded for each.
type Committed = (Vec<Pending>, Vec<Recorded>);

/// The most committed batches one events message announces.
const ANNOUNCE_MAX_BATCHES: usize = 64;

/// Publishes committed batches' events, then settles their deliveries.
struct Announcer {
    ledger: Arc<Ledger>,
    publisher: Arc<EventPublisher>,
    session: CancellationToken,
}

impl Announcer {
    /// Announces what its writer commits. Every batch committed while the previous events
    /// message waited for its confirm goes out in the next one: under load one confirm settles
    /// many small batches. (One message per batch made the broker's work, not the ledger's, the
    /// limit of the drain: a batch is often a single delivery.)
    async fn run(self, mut committed: mpsc::UnboundedReceiver<Committed>) {
        let mut gathered = Vec::new();
        while committed
            .recv_many(&mut gathered, ANNOUNCE_MAX_BATCHES)
            .await
            > 0
        {
            // In commit order, as one batch.
            let mut batches = gathered.drain(..);
            let (mut batch, mut recorded) = batches.next().unwrap_or_default();
            for (more, more_recorded) in batches {
                batch.extend(more);
                recorded.extend(more_recorded);
            }
            self.announce_then_ack(batch, recorded).await;
        }
    }

    /// Acks every delivery once the events are confirmed. An ack that fails (its channel died)
    /// leaves the entry applied and unacked: the broker redelivers it, the ledger sees a
    /// duplicate and the event is published again. Events that are not confirmed: every
    /// delivery is nacked with requeue after a backoff (not at once when the session ends).
    async fn announce_then_ack(&self, batch: Vec<Pending>, recorded: Vec<Recorded>) {
        let outcomes: Vec<_> = recorded.iter().map(|r| r.outcome).collect();
        let events = {
            let entries: Vec<Entry<'_>> = batch.iter().map(|p| p.request.entry()).collect();
            events::build(&entries, recorded)
        };
        let span = telemetry::batch_span("order-events publish", batch.iter().map(|p| &p.span));
        if let Err(error) = self
            .publisher
            .publish(&events)
            .instrument(span.clone())
            .await
        {
            telemetry::record_error(&span);
            self.ledger.record_event_publish_failure();
            let wait = self.publisher.backoff();
            tracing::warn!(%error, deliveries = batch.len(), retry_in_ms = wait.as_millis() as u64, "the outcome events were not confirmed; requeueing the batch");
            tokio::select! {
                () = self.session.cancelled() => {}
                () = tokio::time::sleep(wait) => {}
            }
            let nacks = batch.iter().map(|pending| {
                pending.acker.nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
            });
            for (pending, nacked) in batch.iter().zip(join_all(nacks).await) {
                if !matches!(nacked, Ok(true)) {
                    tracing::debug!(order_uid = %pending.request.uid(), "not nacked: the channel is gone (the broker requeues it)");
                }
            }
            return;
        }
        self.ledger
            .record_events_published(events.events.len() as u64);
        let acks = batch.iter().zip(outcomes).map(|(pending, outcome)| async move {
            // Logged before the ack: a test reading the log knows every acked delivery.
            match &pending.request {
                Request::Order(order) => {
                    tracing::debug!(order_uid = %order.order_uid, ?outcome, redelivered = pending.redelivered, "order settled");
                }
                Request::Cancel(cancel) => {
                    tracing::debug!(order_uid = %cancel.order_uid, ?outcome, redelivered = pending.redelivered, "cancel settled");
                }
            }
            let acked = pending
                .acker
                .ack(BasicAckOptions::default())
                .instrument(telemetry::ack_span(&pending.span))
                .await;
            match acked {
                Ok(true) => {}
                Ok(false) => tracing::debug!(order_uid = %pending.request.uid(), "not acked: the channel is gone"),
                Err(e) => tracing::debug!(order_uid = %pending.request.uid(), error = %e, "not acked"),
            }
        });
        join_all(acks).await;
    }
}
