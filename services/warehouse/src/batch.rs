//! The batch writers: the channel tasks hand validated deliveries over, a writer takes whatever
//! is waiting (up to `batch_max`, without waiting for more), applies it to the ledger as one
//! unit, and only after that commit acks each delivery.
//!
//! Why this keeps "exactly once" with a durable store: an order's dedupe record and its effect
//! on the totals commit together, and its ack is sent after the commit. A crash before the commit
//! leaves the order unapplied and unacked (the broker redelivers it); a crash between the commit
//! and the ack leaves it applied and unacked (the redelivery finds its uid and is a duplicate).
//!
//! A batch the store cannot take (it is down) is held, unacked, and retried with backoff until
//! the store is back or the broker session ends (then the broker redelivers it to the next
//! session). Nothing is rejected or requeued meanwhile, so the messages wait in the queue. A
//! batch the store *refuses* (an order it can never store) is retried one order at a time and
//! only the refused order is dead-lettered.

use crate::consumer::ConsumerState;
use crate::ledger::{ApplyError, Ledger, Outcome};
use common::messaging::OrderMessage;
use futures::future::join_all;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::Acker;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// First and longest wait between two tries of a batch the store could not take.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// A validated order whose delivery is not settled yet.
pub struct Pending {
    pub order: OrderMessage,
    pub acker: Acker,
    pub redelivered: bool,
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
    session: CancellationToken,
}

/// What became of a batch.
enum Commit {
    Done(Vec<Outcome>),
    /// The session ended while the store was down: the broker takes the deliveries back.
    Abandoned,
    Refused(String),
}

impl Writer {
    async fn run(self, rx: Arc<Mutex<mpsc::Receiver<Pending>>>, batch_max: usize) {
        // A committed batch's acks are sent by a task of their own, so the writer goes straight
        // on to the next commit; they are all awaited before the writer ends (and the session
        // closes the connection).
        let mut acks = JoinSet::new();
        loop {
            while acks.try_join_next().is_some() {}
            let mut batch = Vec::with_capacity(batch_max);
            // One writer waits for deliveries at a time; it takes all that are waiting.
            let taken = rx.lock().await.recv_many(&mut batch, batch_max).await;
            if taken == 0 {
                break;
            }
            self.settle(batch, &mut acks).await;
        }
        acks.join_all().await;
    }

    async fn settle(&self, mut batch: Vec<Pending>, acks: &mut JoinSet<()>) {
        match self.commit(&mut batch).await {
            Commit::Done(outcomes) => {
                acks.spawn(ack(batch, outcomes));
            }
            Commit::Abandoned => {}
            Commit::Refused(reason) if batch.len() == 1 => self.reject(batch, &reason).await,
            Commit::Refused(_) => {
                // Find the order the store refuses: the others are applied as usual.
                for pending in batch {
                    let mut single = vec![pending];
                    match self.commit(&mut single).await {
                        Commit::Done(outcomes) => ack(single, outcomes).await,
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
            let orders: Vec<&OrderMessage> = batch.iter().map(|p| &p.order).collect();
            let error = match self.ledger.apply_batch(self.lane, &orders).await {
                Ok(outcomes) => {
                    self.state.batch_committed();
                    if failures > 0 {
                        tracing::info!(failures, lane = self.lane, "the ledger store is back");
                    }
                    return Commit::Done(outcomes);
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
                tracing::warn!(order_uid = %pending.order.order_uid, %reason, "the ledger store refused an order; dead-lettered");
            }
        }
    }
}

/// Acks every delivery of a committed batch. An ack that fails (its channel died) leaves the
/// order applied and unacked: the broker redelivers it and the ledger sees a duplicate.
async fn ack(batch: Vec<Pending>, outcomes: Vec<Outcome>) {
    let acks = batch.iter().zip(outcomes).map(|(pending, outcome)| async move {
        tracing::debug!(order_uid = %pending.order.order_uid, ?outcome, redelivered = pending.redelivered, "order settled");
        match pending.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => {}
            Ok(false) => tracing::debug!(order_uid = %pending.order.order_uid, "not acked: the channel is gone"),
            Err(e) => tracing::debug!(order_uid = %pending.order.order_uid, error = %e, "not acked"),
        }
    });
    join_all(acks).await;
}
