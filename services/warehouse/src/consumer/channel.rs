//! One channel's side of the consumer: validate each delivery, hand a valid order or cancel to
//! the batch writers (through the hold, with `FULFILMENT_DELAY_MS`), dead-letter anything else.

use crate::batch::{Pending, Request};
use crate::ledger::{self, Ledger};
use common::messaging::{self, CancelMessage, OrderMessage};
use common::telemetry;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::{Channel, Consumer};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant as TokioInstant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub(super) enum ChannelError {
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker cancelled the consumer (queue deleted?)")]
    Cancelled,
    #[error("the channel closed before the delivery could be settled")]
    NotSettled,
    #[error("the batch writers are gone")]
    WritersGone,
}

/// Which queue a channel consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    Orders,
    Cancels,
}

/// Where a channel task hands its valid deliveries.
#[derive(Clone)]
pub(super) struct Handoff {
    pub(super) writers: mpsc::Sender<Pending>,
    /// Orders go through the hold first when `FULFILMENT_DELAY_MS` is set.
    pub(super) held: Option<(mpsc::Sender<(TokioInstant, Pending)>, Duration)>,
    /// `UNSAFE_ACK_ON_RECEIPT`: the deliberately broken mode (see the configuration).
    pub(super) ack_on_receipt: bool,
}

/// Holds each order until its due time (arrival + `FULFILMENT_DELAY_MS`), then hands it to the
/// writers. The delay is the same for all, so the queue is in due order (up to the few
/// microseconds between channels). Ends with the session: what it still holds is dropped
/// unacked, and the broker requeues it when the connection closes.
pub(super) async fn hold(
    mut held: mpsc::Receiver<(TokioInstant, Pending)>,
    writers: mpsc::Sender<Pending>,
    session: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            biased;
            () = session.cancelled() => return,
            next = held.recv() => next,
        };
        let Some((due, pending)) = next else { return };
        tokio::select! {
            biased;
            () = session.cancelled() => return,
            () = tokio::time::sleep_until(due) => {}
        }
        if writers.send(pending).await.is_err() {
            return;
        }
    }
}

/// One channel's loop: take a delivery, hand it over (or reject it), repeat; stop between
/// deliveries when asked.
pub(super) async fn consume_channel(
    // Held so the channel lives as long as its consumer.
    _channel: Channel,
    mut consumer: Consumer,
    source: Source,
    ledger: Arc<Ledger>,
    handoff: Handoff,
    stop: CancellationToken,
) -> Result<(), ChannelError> {
    loop {
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(()),
            next = consumer.next() => next,
        };
        match next {
            Some(Ok(delivery)) => dispatch(&ledger, &handoff, source, delivery).await?,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(ChannelError::Cancelled),
        }
    }
}

/// What a delivery's body is, for its queue.
fn parse(source: Source, body: &[u8]) -> Result<Request, String> {
    match source {
        Source::Orders => OrderMessage::from_json(body)
            .and_then(|order| ledger::check_storable(&order).map(|()| Request::Order(order))),
        Source::Cancels => CancelMessage::from_json(body)
            .and_then(|cancel| ledger::check_cancel(&cancel).map(|()| Request::Cancel(cancel))),
    }
}

/// Hands a valid order or cancel over (an order through the hold, if any); rejects anything
/// else to the DLQ at once.
async fn dispatch(
    ledger: &Ledger,
    handoff: &Handoff,
    source: Source,
    delivery: Delivery,
) -> Result<(), ChannelError> {
    let request = match parse(source, &delivery.data) {
        Ok(request) => request,
        Err(reason) => return reject(ledger, delivery, source, &reason).await,
    };
    let is_order = matches!(request, Request::Order(_));
    if handoff.ack_on_receipt {
        // Broken on purpose: the broker forgets the delivery before the ledger has it. The
        // writer's own ack later finds the acker used and does nothing.
        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
    }
    let span = if telemetry::exporting() {
        telemetry::consumer_span(
            delivery.routing_key.as_str(),
            messaging::trace_context(&delivery.properties),
            delivery.redelivered,
        )
    } else {
        tracing::Span::none()
    };
    let pending = Pending {
        request,
        acker: delivery.acker,
        redelivered: delivery.redelivered,
        span,
    };
    // Never waits: each queue holds every delivery the broker may have unacked.
    match &handoff.held {
        Some((held, delay)) if is_order => held
            .send((TokioInstant::now() + *delay, pending))
            .await
            .map_err(|_| ChannelError::WritersGone),
        _ => handoff
            .writers
            .send(pending)
            .await
            .map_err(|_| ChannelError::WritersGone),
    }
}

/// Dead-letters a message that is not a valid order or cancel (reject without requeue).
async fn reject(
    ledger: &Ledger,
    delivery: Delivery,
    source: Source,
    reason: &str,
) -> Result<(), ChannelError> {
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
        queue = ?source,
        "rejected a message that is not a valid order or cancel; dead-lettered"
    );
    Ok(())
}
