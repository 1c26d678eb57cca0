//! Reservations and stock levels: what the rules work on.

use super::Item;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Where a reservation stands. `held` and `confirmed` hold stock in `reserved`; `released` gave
/// it back to `on_hand`; `committed` sold it. Only `held` is ever released by the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Held,
    Confirmed,
    Released,
    Committed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Confirmed => "confirmed",
            Self::Released => "released",
            Self::Committed => "committed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "held" => Some(Self::Held),
            "confirmed" => Some(Self::Confirmed),
            "released" => Some(Self::Released),
            "committed" => Some(Self::Committed),
            _ => None,
        }
    }
}

/// One checkout's hold on stock, under its order uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub order_uid: String,
    pub status: Status,
    /// Normalised: one line per product, sorted by product id.
    pub items: Vec<Item>,
    pub created_at: OffsetDateTime,
    /// When the status last changed; for a `held` reservation, since when it is held (what the
    /// timeout counts from).
    pub updated_at: OffsetDateTime,
}

#[derive(Serialize)]
struct Summary<'a> {
    order_uid: &'a str,
    status: Status,
    items: &'a [Item],
}

#[derive(Serialize)]
struct Detail<'a> {
    order_uid: &'a str,
    status: Status,
    items: &'a [Item],
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
}

impl Reservation {
    /// `{order_uid, status, items}`: the answer to a reserve or a release.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::to_value(Summary {
            order_uid: &self.order_uid,
            status: self.status,
            items: &self.items,
        })
        .unwrap_or_default()
    }

    /// `{order_uid, status, items, created_at, updated_at}`: the answer to a `GET`.
    pub fn detail(&self) -> serde_json::Value {
        serde_json::to_value(Detail {
            order_uid: &self.order_uid,
            status: self.status,
            items: &self.items,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
        .unwrap_or_default()
    }
}

/// The current time at PostgreSQL's precision (microseconds), so both stores answer alike.
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap_or(now)
}

/// One product's stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    pub on_hand: i64,
    pub reserved: i64,
    pub sold: i64,
    pub oversold: i64,
    /// Initial stock plus every adjustment: what `on_hand + reserved + sold` always adds up to.
    pub received: i64,
}

impl Levels {
    pub fn new(stock: i64) -> Self {
        Self {
            on_hand: stock,
            reserved: 0,
            sold: 0,
            oversold: 0,
            received: stock,
        }
    }

    /// The invariant.
    pub fn is_balanced(&self) -> bool {
        self.on_hand >= 0
            && self.reserved >= 0
            && self.sold >= 0
            && self.oversold >= 0
            && self.on_hand + self.reserved + self.sold == self.received
    }

    /// `GET /products/{id}/stock`.
    pub fn public_view(&self, product_id: i32) -> serde_json::Value {
        serde_json::json!({ "product_id": product_id, "quantity_on_hand": self.on_hand })
    }

    /// `GET /internal/products/{id}/stock`.
    pub fn internal_view(&self, product_id: i32) -> serde_json::Value {
        serde_json::json!({
            "product_id": product_id,
            "quantity_on_hand": self.on_hand,
            "reserved": self.reserved,
            "sold": self.sold,
            "oversold": self.oversold,
        })
    }
}
