//! Stock reservations at the product service (its internal API, never routed by the gateway).
//!
//! A checkout reserves its items under the order's uid before the card is authorized, releases
//! them when it will not publish (declined card, a publish that certainly failed), and confirms
//! them once the broker has the order, so the product service's reservation timeout never
//! returns the stock of an order that exists. Confirms are batched in the background: the
//! timeout is minutes long, and one request per order would double the checkout's calls.

use super::{endpoint, Call, HttpClient, Unavailable};
use crate::configuration::Settings;
use bytes::Bytes;
use common::messaging::OrderMessage;
use common::ErrorBody;
use hyper::{Method, StatusCode, Uri};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const SERVICE: &str = "product service";

/// Confirms waiting to be sent, at most; past that a confirm is dropped (and logged): its
/// reservation may then time out, which the product service counts when the order is fulfilled.
const CONFIRM_QUEUE: usize = 50_000;
/// Uids per confirm request.
const CONFIRM_BATCH: usize = 500;
/// How long a confirm may wait for others to share its request.
const CONFIRM_LINGER: Duration = Duration::from_millis(20);
const CONFIRM_ATTEMPTS: u32 = 5;

/// The product service's answer to a reservation.
#[derive(Debug)]
pub enum Reservation {
    /// The items are held for the order (newly, or already by an earlier attempt).
    Held,
    /// The product service said no: out of stock (409), an unknown product (404), or the uid
    /// was reserved with other items (409). Its status and error body, to pass on.
    Refused(StatusCode, ErrorBody),
}

#[derive(Clone)]
pub struct StockReservations {
    http: HttpClient,
    base: Arc<str>,
    reserve_uri: Uri,
    timeout: Duration,
    confirms: mpsc::Sender<String>,
}

impl StockReservations {
    /// Also starts the background task that sends confirms; it ends when the last clone is
    /// dropped.
    pub fn new(http: HttpClient, settings: &Settings) -> Result<Self, String> {
        let reserve_uri = endpoint(
            "PRODUCT_URL",
            &settings.product_url,
            "/internal/reservations",
        )?;
        let confirm_uri = endpoint(
            "PRODUCT_URL",
            &settings.product_url,
            "/internal/reservations/confirm",
        )?;
        let (confirms, queue) = mpsc::channel(CONFIRM_QUEUE);
        tokio::spawn(send_confirms(
            http.clone(),
            confirm_uri,
            settings.product_timeout,
            queue,
        ));
        Ok(Self {
            http,
            base: settings.product_url.as_str().into(),
            reserve_uri,
            timeout: settings.product_timeout,
            confirms,
        })
    }

    /// Reserves the order's items, all or nothing. Idempotent per order uid, so it is retried
    /// on connection failures and 5xx like any other product call.
    pub async fn reserve(
        &self,
        order: &OrderMessage,
        request_id: &str,
    ) -> Result<Reservation, Unavailable> {
        let body = serde_json::to_vec(&serde_json::json!({
            "order_uid": order.order_uid,
            "items": order.items,
        }))
        .map(Bytes::from)
        .map_err(|e| unavailable(e.to_string()))?;
        let call = Call {
            method: Method::POST,
            uri: &self.reserve_uri,
            body: Some(&body),
            request_id,
            timeout: self.timeout,
        };
        let reply = self.http.send_with_retry(SERVICE, 2, call).await?;
        match reply.status {
            StatusCode::OK | StatusCode::CREATED => Ok(Reservation::Held),
            status @ (StatusCode::CONFLICT | StatusCode::NOT_FOUND) => {
                let body = serde_json::from_slice::<ErrorBody>(&reply.body).unwrap_or_else(|_| {
                    ErrorBody {
                        error: "OUT_OF_STOCK".to_string(),
                        message: "the product service refused the reservation".to_string(),
                        details: None,
                    }
                });
                Ok(Reservation::Refused(status, body))
            }
            other => Err(unavailable(format!(
                "unexpected status {other} for a reservation"
            ))),
        }
    }

    /// Returns the order's items to stock (idempotent at the product service). If this fails,
    /// the unconfirmed reservation is returned by the product service's timeout instead.
    pub async fn release(&self, order_uid: &str, request_id: &str) -> Result<(), Unavailable> {
        let uri: Uri = format!("{}/internal/reservations/{order_uid}/release", self.base)
            .parse()
            .map_err(|e| unavailable(format!("release URI: {e}")))?;
        let call = Call {
            method: Method::POST,
            uri: &uri,
            body: None,
            request_id,
            timeout: self.timeout,
        };
        let reply = self.http.send_with_retry(SERVICE, 2, call).await?;
        match reply.status {
            // 404: nothing was held (the reservation never got through).
            StatusCode::OK | StatusCode::NOT_FOUND => Ok(()),
            StatusCode::CONFLICT => {
                // Committed: the warehouse fulfilled the order, so the stock is sold and stays so.
                tracing::warn!(%order_uid, "release refused: the reservation is already sold");
                Ok(())
            }
            other => Err(unavailable(format!(
                "unexpected status {other} for a release"
            ))),
        }
    }

    /// Queues a confirm for the order's reservation (the broker has the order).
    pub fn confirm(&self, order_uid: &str) {
        if self.confirms.try_send(order_uid.to_string()).is_err() {
            tracing::warn!(%order_uid, "reservation confirm dropped: the confirm queue is full");
        }
    }
}

fn unavailable(reason: String) -> Unavailable {
    Unavailable {
        service: SERVICE,
        reason,
    }
}

/// Drains the confirm queue in batches until every sender is gone.
async fn send_confirms(
    http: HttpClient,
    uri: Uri,
    timeout: Duration,
    mut queue: mpsc::Receiver<String>,
) {
    let mut batch = Vec::with_capacity(CONFIRM_BATCH);
    while queue.recv_many(&mut batch, CONFIRM_BATCH).await > 0 {
        // Let a few more arrive so a busy checkout path shares requests.
        if batch.len() < CONFIRM_BATCH {
            tokio::time::sleep(CONFIRM_LINGER).await;
            while batch.len() < CONFIRM_BATCH {
                match queue.try_recv() {
                    Ok(uid) => batch.push(uid),
                    Err(_) => break,
                }
            }
        }
        let body = match serde_json::to_vec(&serde_json::json!({ "order_uids": batch })) {
            Ok(body) => Bytes::from(body),
            Err(err) => {
                tracing::warn!(error = %err, "reservation confirms not encodable");
                batch.clear();
                continue;
            }
        };
        let mut attempt = 0;
        loop {
            let call = Call {
                method: Method::POST,
                uri: &uri,
                body: Some(&body),
                request_id: "reservation-confirms",
                timeout,
            };
            match http.send_with_retry(SERVICE, 2, call).await {
                Ok(reply) if reply.status.is_success() => break,
                outcome => {
                    attempt += 1;
                    let error = match outcome {
                        Ok(reply) => format!("answered {}", reply.status),
                        Err(err) => err.to_string(),
                    };
                    if attempt >= CONFIRM_ATTEMPTS {
                        tracing::warn!(orders = batch.len(), %error, "reservation confirms given up: their reservations may time out");
                        break;
                    }
                    tokio::time::sleep(super::backoff_cap(attempt)).await;
                }
            }
        }
        batch.clear();
    }
}
