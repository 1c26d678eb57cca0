//! Carts in a sharded map in this process: the default store, for a quick start and tests.
//!
//! Every transition happens under that cart's shard lock and never across an `.await`, so two
//! requests for one cart are serialised and requests for different carts are not. Expiry is
//! checked on access (an expired cart is gone) and a background sweep frees the memory.

use super::CartStore;
use crate::carts::{
    items_of, line_items_of, CartError, CartStatus, CartView, CheckoutTicket, Lifetimes, StoreError,
};
use common::messaging::OrderMessage;
use common::store::StoreKind;
use dashmap::DashMap;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// The order a checkout is trying to place. It survives a failed attempt so that a retry
/// publishes the same `order_id` and `order_uid`.
#[derive(Debug, Clone)]
struct PendingOrder {
    order_id: i32,
    order_uid: String,
    created_at: OffsetDateTime,
    /// A publish may have happened and its fate is unknown to us: the message may be in the
    /// queue, so the items must not change any more.
    publish_attempted: bool,
}

#[derive(Debug, Clone)]
struct Cart {
    customer_id: i32,
    items: BTreeMap<i32, i32>,
    status: CartStatus,
    pending: Option<PendingOrder>,
    order_id: Option<i32>,
    /// The checkout holding the cart, and until when (meaningful in `checking_out` only).
    holder: u64,
    lease_until: Instant,
    expires_at: Instant,
}

impl Cart {
    /// Only an open cart, or one whose hold has lapsed, may start a checkout.
    fn ensure_takeable(&self, cart_id: i32, now: Instant) -> Result<(), CartError> {
        match self.status {
            CartStatus::Open => Ok(()),
            CartStatus::CheckingOut if self.lease_until <= now => Ok(()),
            CartStatus::CheckingOut => Err(CartError::CheckoutInProgress(cart_id)),
            CartStatus::CheckedOut => Err(CartError::AlreadyCheckedOut {
                cart_id,
                order_id: self.order_id.unwrap_or_default(),
            }),
        }
    }

    /// Only an open cart whose items are not frozen may change its items.
    fn ensure_editable(&self, cart_id: i32, now: Instant) -> Result<(), CartError> {
        self.ensure_takeable(cart_id, now)?;
        // A lapsed hold counts as a publish of unknown fate, like a failed one.
        let lapsed = self.status == CartStatus::CheckingOut;
        if lapsed || self.pending.as_ref().is_some_and(|p| p.publish_attempted) {
            return Err(CartError::OrderPending(cart_id));
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct MemoryCartStore {
    carts: DashMap<i32, Cart>,
    last_cart_id: AtomicI32,
    last_order_id: AtomicI32,
    lifetimes: Lifetimes,
}

fn next_id(counter: &AtomicI32, what: &'static str) -> Result<i32, CartError> {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
            last.checked_add(1)
        })
        .map(|last| last + 1)
        .map_err(|_| CartError::IdsExhausted(what))
}

impl MemoryCartStore {
    pub fn new(lifetimes: Lifetimes) -> Self {
        Self {
            carts: DashMap::new(),
            last_cart_id: AtomicI32::new(0),
            last_order_id: AtomicI32::new(0),
            lifetimes,
        }
    }

    /// Runs `change` on a live cart under its shard lock; an expired cart is removed and is
    /// `NotFound`.
    fn with_cart<T>(
        &self,
        cart_id: i32,
        change: impl FnOnce(&mut Cart, Instant) -> Result<T, CartError>,
    ) -> Result<T, CartError> {
        let now = Instant::now();
        match self.carts.get_mut(&cart_id) {
            None => return Err(CartError::NotFound(cart_id)),
            Some(mut cart) if cart.expires_at > now => return change(&mut cart, now),
            // The shard lock is released at the end of this statement, before removing.
            Some(_) => {}
        }
        self.carts
            .remove_if(&cart_id, |_, cart| cart.expires_at <= now);
        Err(CartError::NotFound(cart_id))
    }

    /// Drops the expired carts.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.carts.retain(|_, cart| cart.expires_at > now);
    }

    /// Sweeps every `min(cart TTL, 60 s)` for as long as the store lives.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        let every = self
            .lifetimes
            .cart_ttl
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                match store.upgrade() {
                    Some(store) => store.sweep(),
                    None => return,
                }
            }
        });
    }

    fn begin(&self, cart_id: i32) -> Result<CheckoutTicket, CartError> {
        let lifetimes = self.lifetimes;
        self.with_cart(cart_id, |cart, now| {
            cart.ensure_takeable(cart_id, now)?;
            if cart.items.is_empty() {
                return Err(CartError::Empty(cart_id));
            }
            let pending = match cart.pending.as_mut() {
                Some(pending) => {
                    // Taking over a lapsed hold: its holder may have published.
                    if cart.status == CartStatus::CheckingOut {
                        pending.publish_attempted = true;
                    }
                    pending.clone()
                }
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
            let holder = rand::random::<u64>();
            cart.status = CartStatus::CheckingOut;
            cart.holder = holder;
            cart.lease_until = now + lifetimes.checkout_lease;
            cart.expires_at = now + lifetimes.cart_ttl;
            Ok(CheckoutTicket {
                cart_id,
                holder,
                order: OrderMessage {
                    order_uid: pending.order_uid,
                    order_id: pending.order_id,
                    shopping_cart_id: cart_id,
                    customer_id: cart.customer_id,
                    items: items_of(&cart.items),
                    created_at: pending.created_at,
                },
            })
        })
    }
}

#[async_trait::async_trait]
impl CartStore for MemoryCartStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Memory
    }

    async fn create(&self, customer_id: i32) -> Result<i32, StoreError> {
        let id = next_id(&self.last_cart_id, "shopping cart")?;
        let now = Instant::now();
        self.carts.insert(
            id,
            Cart {
                customer_id,
                items: BTreeMap::new(),
                status: CartStatus::Open,
                pending: None,
                order_id: None,
                holder: 0,
                lease_until: now,
                expires_at: now + self.lifetimes.cart_ttl,
            },
        );
        Ok(id)
    }

    async fn exists(&self, cart_id: i32) -> Result<bool, StoreError> {
        Ok(self.with_cart(cart_id, |_, _| Ok(())).is_ok())
    }

    async fn owner(&self, cart_id: i32) -> Result<Option<i32>, StoreError> {
        Ok(self.with_cart(cart_id, |cart, _| Ok(cart.customer_id)).ok())
    }

    async fn view(&self, cart_id: i32) -> Result<CartView, StoreError> {
        Ok(self.with_cart(cart_id, |cart, _| {
            Ok(CartView {
                shopping_cart_id: cart_id,
                customer_id: cart.customer_id,
                status: cart.status,
                items: line_items_of(&cart.items),
                order_id: cart.order_id,
            })
        })?)
    }

    async fn add_item(
        &self,
        cart_id: i32,
        product_id: i32,
        quantity: i32,
    ) -> Result<(), StoreError> {
        let ttl = self.lifetimes.cart_ttl;
        Ok(self.with_cart(cart_id, |cart, now| {
            cart.ensure_editable(cart_id, now)?;
            let current = cart.items.get(&product_id).copied().unwrap_or(0);
            let total = current
                .checked_add(quantity)
                .ok_or(CartError::QuantityOverflow { product_id })?;
            cart.items.insert(product_id, total);
            cart.expires_at = now + ttl;
            Ok(())
        })?)
    }

    async fn set_quantity(
        &self,
        cart_id: i32,
        product_id: i32,
        quantity: i32,
    ) -> Result<(), StoreError> {
        let ttl = self.lifetimes.cart_ttl;
        Ok(self.with_cart(cart_id, |cart, now| {
            cart.ensure_editable(cart_id, now)?;
            let item = cart
                .items
                .get_mut(&product_id)
                .ok_or(CartError::ItemNotFound {
                    cart_id,
                    product_id,
                })?;
            *item = quantity;
            cart.expires_at = now + ttl;
            Ok(())
        })?)
    }

    async fn remove_item(&self, cart_id: i32, product_id: i32) -> Result<(), StoreError> {
        let ttl = self.lifetimes.cart_ttl;
        Ok(self.with_cart(cart_id, |cart, now| {
            cart.ensure_editable(cart_id, now)?;
            cart.items
                .remove(&product_id)
                .ok_or(CartError::ItemNotFound {
                    cart_id,
                    product_id,
                })?;
            cart.expires_at = now + ttl;
            Ok(())
        })?)
    }

    async fn begin_checkout(&self, cart_id: i32) -> Result<CheckoutTicket, StoreError> {
        Ok(self.begin(cart_id)?)
    }

    async fn complete_checkout(&self, ticket: &CheckoutTicket) -> Result<(), StoreError> {
        let ttl = self.lifetimes.cart_ttl;
        let result = self.with_cart(ticket.cart_id, |cart, now| {
            let ours = cart
                .pending
                .as_ref()
                .is_some_and(|p| p.order_uid == ticket.order.order_uid);
            if ours {
                cart.order_id = cart.pending.take().map(|p| p.order_id);
                cart.status = CartStatus::CheckedOut;
                cart.expires_at = now + ttl;
            }
            Ok(())
        });
        // A cart that expired meanwhile has nothing left to close.
        match result {
            Err(CartError::NotFound(_)) | Ok(()) => Ok(()),
            Err(other) => Err(other.into()),
        }
    }

    async fn abort_checkout(
        &self,
        ticket: &CheckoutTicket,
        published: bool,
    ) -> Result<(), StoreError> {
        let ttl = self.lifetimes.cart_ttl;
        let result = self.with_cart(ticket.cart_id, |cart, now| {
            if cart.status == CartStatus::CheckingOut && cart.holder == ticket.holder {
                cart.status = CartStatus::Open;
                if let Some(pending) = cart.pending.as_mut() {
                    pending.publish_attempted |= published;
                }
                cart.expires_at = now + ttl;
            }
            Ok(())
        });
        match result {
            Err(CartError::NotFound(_)) | Ok(()) => Ok(()),
            Err(other) => Err(other.into()),
        }
    }

    async fn check(&self) -> Result<(), String> {
        Ok(())
    }
}
