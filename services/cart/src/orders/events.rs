//! The two background tasks that move orders after their checkout answered:
//!
//! - [`consume_outcomes`] applies the warehouse's outcome events (`<queue>.events.orders`, bound
//!   to the events exchange) to the order store, acking each message after the store took it.
//!   Events come at least once and the store never moves a final status, so redeliveries and
//!   several cart instances sharing the queue are harmless.
//! - [`settle_pending`] withdraws orders left `pending` (their publish's fate was unknown) that
//!   the warehouse has not reported within `PENDING_ORDER_TIMEOUT_MS`: it publishes a cancel.
//!   If the order did reach the warehouse first, the cancel loses and the order is fulfilled;
//!   otherwise the warehouse records the cancel, will never fulfil the order, and the product
//!   service returns its stock. Either way one outcome, announced by the same events.

use super::api::request_cancel;
use super::OrderStore;
use crate::publisher::OrderPublisher;
use common::messaging::{self, Broker, OrderEvents, Topology};
use common::metrics::{Counter, Metrics};
use common::shutdown::CancellationToken;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::ConnectionProperties;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Outcome messages (one per warehouse batch) held unacked at once.
const PREFETCH: u16 = 20;

#[derive(Clone)]
pub struct OutcomeMetrics {
    applied: Counter,
    malformed: Counter,
    withdrawn: Counter,
}

impl OutcomeMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        Self {
            applied: metrics.counter(
                "order_outcomes_applied_total",
                "Warehouse outcome events applied to the order store.",
            ),
            malformed: metrics.counter(
                "order_outcome_messages_malformed_total",
                "Outcome messages that could not be read (dead-lettered).",
            ),
            withdrawn: metrics.counter(
                "orders_withdrawn_total",
                "Pending orders the warehouse did not report in time, cancelled (not_confirmed).",
            ),
        }
    }
}

/// Runs until `stop`, reconnecting with backoff whenever the broker goes away.
pub async fn consume_outcomes(
    broker: Broker,
    topology: Topology,
    orders: Arc<dyn OrderStore>,
    metrics: OutcomeMetrics,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let session = consume_session(&broker, &topology, orders.as_ref(), &metrics, &stop);
        let result = tokio::select! {
            () = stop.cancelled() => return,
            result = session => result,
        };
        if stop.is_cancelled() {
            return;
        }
        match result {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(err) => {
                tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "order outcome consumer disconnected");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn consume_session(
    broker: &Broker,
    topology: &Topology,
    orders: &dyn OrderStore,
    metrics: &OutcomeMetrics,
    stop: &CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let connection = messaging::connect(
        broker,
        ConnectionProperties::default().with_connection_name("cart-service outcomes".into()),
        messaging::NODE_CONNECT_TIMEOUT,
    )
    .await?;
    let channel = connection.create_channel().await?;
    topology.declare(&channel).await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut deliveries = channel
        .basic_consume(
            topology.order_events_queue.as_str().into(),
            "cart-service".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %topology.order_events_queue, "consuming order outcomes");
    while let Some(delivery) = deliveries.next().await {
        let delivery = delivery?;
        let events = match OrderEvents::from_json(&delivery.data) {
            Ok(events) => events,
            Err(err) => {
                metrics.malformed.inc();
                tracing::warn!(error = %err, "malformed outcome message dead-lettered");
                delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
                continue;
            }
        };
        // Keep the message until the store has it: a store outage holds this consumer (and,
        // through the prefetch, the queue) instead of losing outcomes.
        let mut wait = Duration::from_millis(100);
        while let Err(err) = orders.apply_outcomes(&events.events).await {
            tracing::warn!(error = %err, "order outcomes not recorded yet; retrying");
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(MAX_BACKOFF);
        }
        metrics.applied.add(events.events.len() as u64);
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

/// Every so often, cancels the orders that stayed `pending` longer than `timeout`.
pub async fn settle_pending(
    orders: Arc<dyn OrderStore>,
    publisher: OrderPublisher,
    timeout: Duration,
    metrics: OutcomeMetrics,
    stop: CancellationToken,
) {
    let period = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let cutoff = OffsetDateTime::now_utc() - timeout;
        let stale = match orders.stale_pending(cutoff, 100).await {
            Ok(stale) => stale,
            Err(err) => {
                tracing::warn!(error = %err, "pending orders could not be read");
                continue;
            }
        };
        for order in stale {
            match request_cancel(
                orders.as_ref(),
                &publisher,
                &order,
                common::messaging::CancelReason::NotConfirmed,
                "pending-order-settler",
            )
            .await
            {
                Ok(_) => {
                    metrics.withdrawn.inc();
                    tracing::info!(order_id = order.order_id, order_uid = %order.order_uid, "pending order not reported by the warehouse in time: cancel requested");
                }
                Err(err) => {
                    // The broker is likely down: try again next round.
                    tracing::warn!(order_id = order.order_id, error = %err, "pending order could not be withdrawn yet");
                    break;
                }
            }
        }
    }
}
