//! The cart domain: what a cart is, the checkout state machine's states and errors, and what a
//! store hands out. Where carts are kept is [`crate::store`]'s business.
//!
//! A cart moves `open → checking_out → checked_out`. `checking_out` is a *hold* with a lease:
//! one checkout owns the cart (its [`CheckoutTicket::holder`]) until it completes, aborts, or the
//! lease runs out (the process holding it died); then another checkout may take the cart over,
//! placing the same pending order. The pending order (`order_id`, `order_uid`, `created_at`) is
//! kept across failed attempts, so a retry publishes the same order, which the warehouse
//! deduplicates. Once a publish may have happened and its fate is unknown (a failed publish, or
//! a hold whose holder vanished) the items are frozen: the message in the queue may carry them.

use common::messaging::{OrderItem, OrderMessage};
use common::store::StoreUnavailable;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CartStatus {
    Open,
    /// A checkout holds the cart: the card is being authorized or the order published.
    CheckingOut,
    CheckedOut,
}

impl CartStatus {
    /// The name stored in Redis and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::CheckingOut => "checking_out",
            Self::CheckedOut => "checked_out",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(Self::Open),
            "checking_out" => Some(Self::CheckingOut),
            "checked_out" => Some(Self::CheckedOut),
            _ => None,
        }
    }
}

/// What `GET /shopping-carts/{id}` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CartView {
    pub shopping_cart_id: i32,
    pub customer_id: i32,
    pub status: CartStatus,
    pub items: Vec<LineItem>,
    pub order_id: Option<i32>,
}

/// An item of a cart or an order as the API shows (and the order store keeps) it. The same
/// shape as the order message's [`OrderItem`] today, but its own type: the HTTP views and the
/// message on the wire can each change without the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    pub product_id: i32,
    pub quantity: i32,
}

impl From<&OrderItem> for LineItem {
    fn from(item: &OrderItem) -> Self {
        Self {
            product_id: item.product_id,
            quantity: item.quantity,
        }
    }
}

impl From<&LineItem> for OrderItem {
    fn from(item: &LineItem) -> Self {
        Self {
            product_id: item.product_id,
            quantity: item.quantity,
        }
    }
}

/// An order message's items as the API shows them.
pub fn line_items(items: &[OrderItem]) -> Vec<LineItem> {
    items.iter().map(LineItem::from).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CartError {
    #[error("shopping cart {0} not found")]
    NotFound(i32),
    #[error("shopping cart {cart_id} is already checked out (order {order_id})")]
    AlreadyCheckedOut { cart_id: i32, order_id: i32 },
    #[error("shopping cart {0} is being checked out")]
    CheckoutInProgress(i32),
    #[error(
        "shopping cart {0} has an order awaiting confirmation; its items can no longer change"
    )]
    OrderPending(i32),
    #[error("shopping cart {0} is empty")]
    Empty(i32),
    #[error("product {product_id} is not in shopping cart {cart_id}")]
    ItemNotFound { cart_id: i32, product_id: i32 },
    #[error("quantity of product {product_id} would exceed {max}", max = i32::MAX)]
    QuantityOverflow { product_id: i32 },
    #[error("no id left in the int32 range for a new {0}")]
    IdsExhausted(&'static str),
}

/// A store call's failure: the domain said no, or the store could not be asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Cart(#[from] CartError),
    #[error(transparent)]
    Unavailable(#[from] StoreUnavailable),
}

/// A cart held for checkout: the order to place, and the token that proves the hold. Hand it
/// back with `complete_checkout` or `abort_checkout`.
#[derive(Debug, Clone)]
pub struct CheckoutTicket {
    pub cart_id: i32,
    /// Random per attempt; a stale attempt (its lease ran out and another took the cart over)
    /// can no longer release the cart.
    pub holder: u64,
    pub order: OrderMessage,
}

/// How long a store keeps things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// An untouched cart is forgotten this long after its last change (for a checked-out cart:
    /// after its checkout).
    pub cart_ttl: Duration,
    /// How long a checkout holds a cart before another checkout may take it over.
    pub checkout_lease: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self {
            cart_ttl: Duration::from_secs(7 * 24 * 3600),
            checkout_lease: Duration::from_secs(30),
        }
    }
}

/// A cart's items (product id → quantity) as the API lists them: by product id.
pub fn line_items_of<'a>(items: impl IntoIterator<Item = (&'a i32, &'a i32)>) -> Vec<LineItem> {
    items
        .into_iter()
        .map(|(&product_id, &quantity)| LineItem {
            product_id,
            quantity,
        })
        .collect()
}

/// A cart's items as the order message lists them: by product id.
pub fn items_of<'a>(items: impl IntoIterator<Item = (&'a i32, &'a i32)>) -> Vec<OrderItem> {
    items
        .into_iter()
        .map(|(&product_id, &quantity)| OrderItem {
            product_id,
            quantity,
        })
        .collect()
}
