//! The cart domain: carts, their items, and the checkout state machine.
//!
//! Carts live in a sharded map; every state transition happens under that cart's shard lock and
//! never across an `.await`, so two requests for one cart are serialised and requests for
//! different carts are not.

use common::messaging::{OrderItem, OrderMessage};
use dashmap::DashMap;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, Ordering};
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CartStatus {
    Open,
    /// A checkout holds the cart: the card is being authorized or the order published.
    CheckingOut,
    CheckedOut,
}

/// The order a checkout is trying to place. It survives a failed attempt so that a retry
/// publishes the same `order_id` and `order_uid`.
#[derive(Debug, Clone)]
struct PendingOrder {
    order_id: i32,
    order_uid: String,
    created_at: OffsetDateTime,
    /// A publish was attempted and its fate is unknown to us (say, the confirm timed out):
    /// the message may be in the queue, so the items must not change any more.
    publish_attempted: bool,
}

#[derive(Debug, Clone)]
struct Cart {
    customer_id: i32,
    items: BTreeMap<i32, i32>,
    status: CartStatus,
    pending: Option<PendingOrder>,
    order_id: Option<i32>,
}

impl Cart {
    /// Only an open cart may change or start a checkout.
    fn ensure_open(&self, cart_id: i32) -> Result<(), CartError> {
        match self.status {
            CartStatus::Open => Ok(()),
            CartStatus::CheckingOut => Err(CartError::CheckoutInProgress(cart_id)),
            CartStatus::CheckedOut => Err(CartError::AlreadyCheckedOut {
                cart_id,
                order_id: self.order_id.unwrap_or_default(),
            }),
        }
    }
}

/// What `GET /shopping-carts/{id}` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CartView {
    pub shopping_cart_id: i32,
    pub customer_id: i32,
    pub status: CartStatus,
    pub items: Vec<OrderItem>,
    pub order_id: Option<i32>,
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
    #[error("quantity of product {product_id} would exceed {max}", max = i32::MAX)]
    QuantityOverflow { product_id: i32 },
    #[error("no id left in the int32 range for a new {0}")]
    IdsExhausted(&'static str),
}

/// A cart held for checkout: the order to place. Hand it back with
/// [`CartStore::complete_checkout`] or [`CartStore::abort_checkout`].
#[derive(Debug, Clone)]
pub struct CheckoutTicket {
    pub cart_id: i32,
    pub order: OrderMessage,
}

#[derive(Debug, Default)]
pub struct CartStore {
    carts: DashMap<i32, Cart>,
    last_cart_id: AtomicI32,
    last_order_id: AtomicI32,
}

fn next_id(counter: &AtomicI32, what: &'static str) -> Result<i32, CartError> {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
            last.checked_add(1)
        })
        .map(|last| last + 1)
        .map_err(|_| CartError::IdsExhausted(what))
}

impl CartStore {
    pub fn create(&self, customer_id: i32) -> Result<i32, CartError> {
        let id = next_id(&self.last_cart_id, "shopping cart")?;
        self.carts.insert(
            id,
            Cart {
                customer_id,
                items: BTreeMap::new(),
                status: CartStatus::Open,
                pending: None,
                order_id: None,
            },
        );
        Ok(id)
    }

    pub fn exists(&self, cart_id: i32) -> bool {
        self.carts.contains_key(&cart_id)
    }

    pub fn view(&self, cart_id: i32) -> Result<CartView, CartError> {
        let cart = self
            .carts
            .get(&cart_id)
            .ok_or(CartError::NotFound(cart_id))?;
        Ok(CartView {
            shopping_cart_id: cart_id,
            customer_id: cart.customer_id,
            status: cart.status,
            items: items_of(&cart.items),
            order_id: cart.order_id,
        })
    }

    /// Adds `quantity` of a product (adding to what is there).
    pub fn add_item(&self, cart_id: i32, product_id: i32, quantity: i32) -> Result<(), CartError> {
        let mut cart = self
            .carts
            .get_mut(&cart_id)
            .ok_or(CartError::NotFound(cart_id))?;
        cart.ensure_open(cart_id)?;
        if cart.pending.as_ref().is_some_and(|p| p.publish_attempted) {
            return Err(CartError::OrderPending(cart_id));
        }
        let current = cart.items.get(&product_id).copied().unwrap_or(0);
        let total = current
            .checked_add(quantity)
            .ok_or(CartError::QuantityOverflow { product_id })?;
        cart.items.insert(product_id, total);
        Ok(())
    }

    /// Takes the cart for checkout: `open → checking_out`. Exactly one concurrent caller wins.
    pub fn begin_checkout(&self, cart_id: i32) -> Result<CheckoutTicket, CartError> {
        let mut cart = self
            .carts
            .get_mut(&cart_id)
            .ok_or(CartError::NotFound(cart_id))?;
        cart.ensure_open(cart_id)?;
        if cart.items.is_empty() {
            return Err(CartError::Empty(cart_id));
        }
        let pending = match &cart.pending {
            Some(pending) => pending.clone(),
            None => {
                let pending = PendingOrder {
                    order_id: next_id(&self.last_order_id, "order")?,
                    order_uid: OrderMessage::new_uid(),
                    created_at: OffsetDateTime::now_utc(),
                    publish_attempted: false,
                };
                cart.pending = Some(pending.clone());
                pending
            }
        };
        cart.status = CartStatus::CheckingOut;
        Ok(CheckoutTicket {
            cart_id,
            order: OrderMessage {
                order_uid: pending.order_uid,
                order_id: pending.order_id,
                shopping_cart_id: cart_id,
                customer_id: cart.customer_id,
                items: items_of(&cart.items),
                created_at: pending.created_at,
            },
        })
    }

    /// Records that the order is about to be published: from here on its fate may be unknown.
    pub fn mark_publishing(&self, cart_id: i32) {
        if let Some(mut cart) = self.carts.get_mut(&cart_id) {
            if let Some(pending) = cart.pending.as_mut() {
                pending.publish_attempted = true;
            }
        }
    }

    /// The broker confirmed the order: `checking_out → checked_out`.
    pub fn complete_checkout(&self, cart_id: i32) {
        if let Some(mut cart) = self.carts.get_mut(&cart_id) {
            cart.order_id = cart.pending.take().map(|p| p.order_id);
            cart.status = CartStatus::CheckedOut;
        }
    }

    /// The checkout failed (declined, a dependency down): the cart is open again, keeping its
    /// pending order so a retry places the same one.
    pub fn abort_checkout(&self, cart_id: i32) {
        if let Some(mut cart) = self.carts.get_mut(&cart_id) {
            if cart.status == CartStatus::CheckingOut {
                cart.status = CartStatus::Open;
            }
        }
    }
}

fn items_of(items: &BTreeMap<i32, i32>) -> Vec<OrderItem> {
    items
        .iter()
        .map(|(&product_id, &quantity)| OrderItem {
            product_id,
            quantity,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_accumulate_and_overflow_is_refused() {
        let store = CartStore::default();
        let id = store.create(5).unwrap();
        store.add_item(id, 3, 2).unwrap();
        store.add_item(id, 3, 5).unwrap();
        store.add_item(id, 1, 1).unwrap();
        let view = store.view(id).unwrap();
        assert_eq!(
            view.items,
            vec![
                OrderItem {
                    product_id: 1,
                    quantity: 1
                },
                OrderItem {
                    product_id: 3,
                    quantity: 7
                }
            ]
        );
        assert_eq!(
            store.add_item(id, 3, i32::MAX),
            Err(CartError::QuantityOverflow { product_id: 3 })
        );
    }

    #[test]
    fn only_one_checkout_wins_and_a_checked_out_cart_is_closed() {
        let store = CartStore::default();
        let id = store.create(1).unwrap();
        assert_eq!(store.begin_checkout(id).unwrap_err(), CartError::Empty(id));
        store.add_item(id, 1, 1).unwrap();
        let ticket = store.begin_checkout(id).unwrap();
        assert_eq!(
            store.begin_checkout(id).unwrap_err(),
            CartError::CheckoutInProgress(id)
        );
        assert_eq!(
            store.add_item(id, 1, 1).unwrap_err(),
            CartError::CheckoutInProgress(id)
        );
        store.complete_checkout(id);
        let order_id = ticket.order.order_id;
        assert_eq!(
            store.begin_checkout(id).unwrap_err(),
            CartError::AlreadyCheckedOut {
                cart_id: id,
                order_id
            }
        );
        assert!(matches!(
            store.add_item(id, 2, 1),
            Err(CartError::AlreadyCheckedOut { .. })
        ));
        assert_eq!(store.view(id).unwrap().order_id, Some(order_id));
    }

    #[test]
    fn a_retry_after_a_failed_publish_reuses_the_order_and_freezes_the_items() {
        let store = CartStore::default();
        let id = store.create(1).unwrap();
        store.add_item(id, 1, 1).unwrap();
        let first = store.begin_checkout(id).unwrap();
        // Declined before publishing: the cart may still change, the order id is kept.
        store.abort_checkout(id);
        store.add_item(id, 2, 1).unwrap();
        let second = store.begin_checkout(id).unwrap();
        assert_eq!(second.order.order_uid, first.order.order_uid);
        assert_eq!(second.order.items.len(), 2);
        // The publish's fate is unknown: the same message must be retried unchanged.
        store.mark_publishing(id);
        store.abort_checkout(id);
        assert_eq!(
            store.add_item(id, 3, 1).unwrap_err(),
            CartError::OrderPending(id)
        );
        let third = store.begin_checkout(id).unwrap();
        assert_eq!(third.order, second.order);
    }
}
