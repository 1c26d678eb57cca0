//! Outcome events: after batches commit, ONE [`OrderEvents`] message with one [`OrderEvent`]
//! per delivery goes to the fanout `Topology::events_exchange` (persistent, under publisher
//! confirms), and only once the broker has confirmed it are the deliveries acked. One message
//! carries every batch its writer committed while the previous message awaited its confirm.
//!
//! Every delivery gets an event, duplicates and losers included, each stating the uid's
//! *recorded* outcome: so an event lost before its delivery was acked (a crash, a failed
//! publish) is published again when the delivery comes back. Listeners apply events
//! idempotently. A fulfilment carries the order, so a listener that never recorded it can; a
//! cancellation carries the winning cancel's reason, and the order when the warehouse has it.

use crate::ledger::{Entry, Recorded};
use common::messaging::{self, OrderEvent, OrderEvents, OrderMessage, OrderOutcome, Topology};
use common::metrics::LatencyHistogram;
use common::telemetry;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Connection};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long the broker may take to confirm an events message before the batch is requeued.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait before requeueing a batch whose events were not confirmed: doubles from the first
/// to the longest with consecutive failures, so a broker that refuses them is not spun on.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The events of a batch: one per entry, in order. `recorded` is the ledger's answer for
/// `entries` (same length, same order).
pub fn build(entries: &[Entry<'_>], recorded: Vec<Recorded>) -> OrderEvents {
    // A cancel decided in the same batch as its order, or losing to it, learns the order from
    // the batch (the store only reads back orders recorded earlier).
    let batch_orders: HashMap<&str, &OrderMessage> =
        if entries.iter().any(|e| matches!(e, Entry::Cancel(_))) {
            entries
                .iter()
                .filter_map(|e| match e {
                    Entry::Order(order) => Some((order.order_uid.as_str(), *order)),
                    Entry::Cancel(_) => None,
                })
                .collect()
        } else {
            HashMap::new()
        };
    let events = entries
        .iter()
        .zip(recorded)
        .map(|(entry, recorded)| {
            let outcome = recorded.outcome.recorded();
            let reason = match outcome {
                OrderOutcome::Cancelled => recorded.reason,
                OrderOutcome::Fulfilled => None,
            };
            match entry {
                Entry::Order(order) => OrderEvent {
                    order_uid: order.order_uid.clone(),
                    order_id: order.order_id,
                    outcome,
                    reason,
                    order: Some((*order).clone()),
                },
                Entry::Cancel(cancel) => {
                    let order = recorded.order.or_else(|| {
                        batch_orders
                            .get(cancel.order_uid.as_str())
                            .map(|order| (*order).clone())
                    });
                    OrderEvent {
                        order_uid: cancel.order_uid.clone(),
                        order_id: order.as_ref().map_or(cancel.order_id, |o| o.order_id),
                        outcome,
                        reason,
                        order,
                    }
                }
            }
        })
        .collect();
    OrderEvents { events }
}

/// The session's confirm-mode channel for events.
pub struct EventPublisher {
    channel: Channel,
    exchange: String,
    confirm_timeout: Duration,
    /// Cancelled once the channel is found closed: the session is rebuilt (a channel closed by
    /// the broker, say for a deleted exchange, never publishes again).
    lost: CancellationToken,
    failures: AtomicU32,
    confirm_latency: LatencyHistogram,
}

impl EventPublisher {
    /// Opens the channel and puts it in confirm mode (the topology is declared by the caller).
    pub async fn open(
        connection: &Connection,
        topology: &Topology,
        confirm_timeout: Duration,
        confirm_latency: LatencyHistogram,
    ) -> lapin::Result<Self> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            exchange: topology.events_exchange.clone(),
            confirm_timeout,
            lost: CancellationToken::new(),
            failures: AtomicU32::new(0),
            confirm_latency,
        })
    }

    /// Cancelled when the channel has closed.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Publishes `events` and waits for the broker's confirm. Not `mandatory`: the topology
    /// declares and binds the listeners' queues at every session start, so the fanout routes.
    /// The message carries the current span's trace context.
    pub async fn publish(&self, events: &OrderEvents) -> Result<(), String> {
        let payload = events.to_json();
        let properties = if telemetry::exporting() {
            messaging::with_trace_context(
                events.properties(""),
                telemetry::trace_fields(&tracing::Span::current()),
            )
        } else {
            events.properties("")
        };
        let sent = Instant::now();
        let published = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                &payload,
                properties,
            )
            .await;
        let confirm = match published {
            Ok(confirm) => confirm,
            Err(e) => return Err(self.channel_failed(format!("publish: {e}"))),
        };
        let confirmed = tokio::time::timeout(self.confirm_timeout, confirm).await;
        if let Ok(Ok(_)) = &confirmed {
            self.confirm_latency.observe(sent.elapsed());
        }
        match confirmed {
            Ok(Ok(confirmation)) if confirmation.is_ack() => {
                self.failures.store(0, Ordering::Relaxed);
                Ok(())
            }
            Ok(Ok(_)) => Err("the broker nacked the events message".to_string()),
            Ok(Err(e)) => Err(self.channel_failed(format!("confirm: {e}"))),
            Err(_) => Err(format!("no confirm within {:?}", self.confirm_timeout)),
        }
    }

    /// The wait before requeueing after a failed publish (counts the failure).
    pub fn backoff(&self) -> Duration {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed).min(16);
        BACKOFF_MIN
            .saturating_mul(2u32.saturating_pow(failures))
            .min(BACKOFF_MAX)
    }

    fn channel_failed(&self, error: String) -> String {
        if !self.channel.status().connected() {
            self.lost.cancel();
        }
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Outcome;
    use common::messaging::{CancelMessage, CancelReason, OrderItem};

    fn order(uid: &str, order_id: i32) -> OrderMessage {
        OrderMessage {
            order_uid: uid.to_string(),
            order_id,
            shopping_cart_id: 1,
            customer_id: 1,
            items: vec![OrderItem {
                product_id: 1,
                quantity: 1,
            }],
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn cancel(uid: &str, order_id: i32) -> CancelMessage {
        CancelMessage {
            order_uid: uid.to_string(),
            order_id,
            reason: CancelReason::NotConfirmed,
            requested_at: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn recorded(outcome: Outcome, reason: Option<CancelReason>) -> Recorded {
        Recorded {
            outcome,
            reason,
            order: None,
        }
    }

    #[test]
    fn every_entry_gets_an_event_stating_the_recorded_outcome() {
        let a = order("a", 1);
        let a_cancel = cancel("a", 1);
        let b_cancel = cancel("b", 2);
        let b = order("b", 2);
        let stored = order("c", 3);
        let c_cancel = cancel("c", 99);
        let entries = [
            Entry::Order(&a),
            Entry::Cancel(&a_cancel),
            Entry::Cancel(&b_cancel),
            Entry::Order(&b),
            Entry::Cancel(&c_cancel),
        ];
        let why = Some(CancelReason::NotConfirmed);
        let results = vec![
            recorded(Outcome::Applied, None),
            recorded(Outcome::CancelLost, None),
            recorded(Outcome::Cancelled, why),
            recorded(Outcome::Refused, why),
            Recorded {
                order: Some(stored.clone()),
                ..recorded(Outcome::CancelLost, None)
            },
        ];
        let events = build(&entries, results).events;
        assert_eq!(events.len(), 5);
        // The order fulfilled, and the cancel that lost to it in the same batch, both with it.
        assert_eq!(events[0].outcome, OrderOutcome::Fulfilled);
        assert_eq!(events[0].order.as_ref(), Some(&a));
        assert_eq!(events[1].outcome, OrderOutcome::Fulfilled);
        assert_eq!(events[1].order.as_ref(), Some(&a));
        assert_eq!(events[1].reason, None);
        // The cancel that won, with the order it stopped (same batch), and the refused order.
        assert_eq!(events[2].outcome, OrderOutcome::Cancelled);
        assert_eq!(events[2].reason, why);
        assert_eq!(events[2].order.as_ref(), Some(&b));
        assert_eq!(events[3].outcome, OrderOutcome::Cancelled);
        assert_eq!(events[3].reason, why);
        assert_eq!(events[3].order.as_ref(), Some(&b));
        // A cancel losing to an order recorded earlier: the store's order and its id.
        assert_eq!(events[4].order.as_ref(), Some(&stored));
        assert_eq!(events[4].order_id, 3);
        let json = OrderEvents { events }.to_json();
        assert_eq!(OrderEvents::from_json(&json).map(|e| e.events.len()), Ok(5));
    }

    #[test]
    fn a_cancel_without_a_known_order_keeps_its_own_id() {
        let lone = cancel("z", 5);
        let events = build(
            &[Entry::Cancel(&lone)],
            vec![recorded(
                Outcome::Cancelled,
                Some(CancelReason::NotConfirmed),
            )],
        )
        .events;
        assert_eq!(events[0].order_id, 5);
        assert_eq!(events[0].order, None);
    }
}
