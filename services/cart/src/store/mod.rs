//! Where carts live: one [`CartStore`] trait, two implementations.
//!
//! - [`memory`]: a sharded map in this process (the default; lost on restart, not shared).
//! - [`redis`]: a hash per cart in Redis, each transition one Lua script, so carts and the
//!   checkout state machine are shared by every cart instance and survive restarts.
//!
//! Both implement the same state machine (see [`crate::carts`]) and pass the same behavioural
//! tests (`tests/store.rs`).

pub mod memory;
pub mod redis;

use crate::carts::{CartView, CheckoutTicket, StoreError};
use common::store::StoreKind;

pub use memory::MemoryCartStore;
pub use redis::RedisCartStore;

#[async_trait::async_trait]
pub trait CartStore: Send + Sync {
    /// Which store this is, for the start-up log.
    fn kind(&self) -> StoreKind;

    /// A new open cart; ids are 1, 2, 3… across every instance sharing the store.
    async fn create(&self, customer_id: i32) -> Result<i32, StoreError>;

    async fn exists(&self, cart_id: i32) -> Result<bool, StoreError>;

    /// Whose cart this is (its `customer_id`); `None` if there is no such cart. Asked before a
    /// customer's credential may touch it.
    async fn owner(&self, cart_id: i32) -> Result<Option<i32>, StoreError>;

    async fn view(&self, cart_id: i32) -> Result<CartView, StoreError>;

    /// Adds `quantity` of a product (adding to what is there). Only an open cart whose items
    /// are not frozen changes.
    async fn add_item(
        &self,
        cart_id: i32,
        product_id: i32,
        quantity: i32,
    ) -> Result<(), StoreError>;

    /// Sets the quantity (≥ 1) of a product already in the cart; `ItemNotFound` if it is not.
    /// The same guards as `add_item`: only an open cart whose items are not frozen changes.
    async fn set_quantity(
        &self,
        cart_id: i32,
        product_id: i32,
        quantity: i32,
    ) -> Result<(), StoreError>;

    /// Removes a product from the cart; `ItemNotFound` if it is not there. The same guards as
    /// `add_item`.
    async fn remove_item(&self, cart_id: i32, product_id: i32) -> Result<(), StoreError>;

    /// Takes the cart for checkout: `open → checking_out` (or takes over a hold whose lease
    /// ran out). Exactly one concurrent caller wins; the others get `CheckoutInProgress`.
    async fn begin_checkout(&self, cart_id: i32) -> Result<CheckoutTicket, StoreError>;

    /// The broker confirmed the ticket's order: `checking_out → checked_out`. Holds even for a
    /// ticket whose lease ran out (the order *was* placed); a no-op once the cart is checked out.
    async fn complete_checkout(&self, ticket: &CheckoutTicket) -> Result<(), StoreError>;

    /// The checkout failed: the cart is open again, keeping its pending order. `published`
    /// says a publish was attempted (its fate unknown), which freezes the items. A no-op unless
    /// the ticket still holds the cart.
    async fn abort_checkout(
        &self,
        ticket: &CheckoutTicket,
        published: bool,
    ) -> Result<(), StoreError>;

    /// `/ready`: is the store reachable?
    async fn check(&self) -> Result<(), String>;
}
