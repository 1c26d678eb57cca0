//! Orders in this process: the default. Lost on restart and not shared between instances (run
//! one cart instance, or use PostgreSQL).

use super::{Order, OrderStatus, OrderStore, OrderStoreError};
use common::messaging::{CancelReason, OrderEvent, OrderMessage};
use common::store::StoreKind;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use time::OffsetDateTime;

#[derive(Default)]
struct Orders {
    by_id: HashMap<i32, Order>,
    id_of_uid: HashMap<String, i32>,
    /// Each customer's order ids, for newest-first listing.
    by_customer: HashMap<i32, BTreeSet<i32>>,
    /// Ids of the `pending` orders, so the settler's scan does not walk every order. Pending is
    /// short-lived (until the confirm) and rare beyond that.
    pending: BTreeSet<i32>,
}

impl Orders {
    fn insert(&mut self, order: Order) -> Result<(), OrderStoreError> {
        if let Some(existing) = self.by_id.get(&order.order_id) {
            if existing.order_uid != order.order_uid {
                return Err(OrderStoreError::IdTaken {
                    order_id: order.order_id,
                });
            }
            return Ok(());
        }
        self.id_of_uid
            .insert(order.order_uid.clone(), order.order_id);
        self.by_customer
            .entry(order.customer_id)
            .or_default()
            .insert(order.order_id);
        if order.status == OrderStatus::Pending {
            self.pending.insert(order.order_id);
        }
        self.by_id.insert(order.order_id, order);
        Ok(())
    }

    /// Moves an order to `status` (keeping the pending index right).
    fn set_status(&mut self, order_uid: &str, status: OrderStatus) -> Option<&mut Order> {
        let id = *self.id_of_uid.get(order_uid)?;
        if status != OrderStatus::Pending {
            self.pending.remove(&id);
        }
        let order = self.by_id.get_mut(&id)?;
        order.status = status;
        order.updated_at = OffsetDateTime::now_utc();
        Some(order)
    }

    fn by_uid(&mut self, order_uid: &str) -> Option<&mut Order> {
        let id = self.id_of_uid.get(order_uid)?;
        self.by_id.get_mut(id)
    }
}

/// One lock over everything: each call is a few map operations, far cheaper than the checkout's
/// network round trips, so sharding would buy nothing measurable.
#[derive(Default)]
pub struct MemoryOrderStore {
    orders: Mutex<Orders>,
}

impl MemoryOrderStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Orders> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing every order, so carry on with the data.
        self.orders
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait::async_trait]
impl OrderStore for MemoryOrderStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Memory
    }

    async fn record(
        &self,
        order: &OrderMessage,
        status: OrderStatus,
    ) -> Result<(), OrderStoreError> {
        let mut orders = self.lock();
        if orders.id_of_uid.contains_key(&order.order_uid) {
            return Ok(());
        }
        orders.insert(Order::from_message(order, status))
    }

    async fn get(&self, order_id: i32) -> Result<Option<Order>, OrderStoreError> {
        Ok(self.lock().by_id.get(&order_id).cloned())
    }

    async fn list_for_customer(
        &self,
        customer_id: i32,
        before: Option<i32>,
        limit: usize,
    ) -> Result<Vec<Order>, OrderStoreError> {
        let orders = self.lock();
        let Some(ids) = orders.by_customer.get(&customer_id) else {
            return Ok(Vec::new());
        };
        let below = before.unwrap_or(i32::MAX);
        Ok(ids
            .range(..below)
            .rev()
            .filter_map(|id| orders.by_id.get(id).cloned())
            .take(limit)
            .collect())
    }

    async fn mark_cancelling(
        &self,
        order_uid: &str,
        reason: CancelReason,
    ) -> Result<Option<Order>, OrderStoreError> {
        let mut orders = self.lock();
        let Some(order) = orders.by_uid(order_uid) else {
            return Ok(None);
        };
        if !matches!(order.status, OrderStatus::Pending | OrderStatus::Placed) {
            return Ok(Some(order.clone()));
        }
        Ok(orders
            .set_status(order_uid, OrderStatus::Cancelling)
            .map(|order| {
                order.cancel_reason = Some(reason);
                order.clone()
            }))
    }

    async fn apply_outcomes(&self, events: &[OrderEvent]) -> Result<(), OrderStoreError> {
        let mut orders = self.lock();
        for event in events {
            let status = OrderStatus::of_outcome(event.outcome);
            let current = orders
                .by_uid(&event.order_uid)
                .map(|o| (o.status, o.cancel_reason));
            if let Some((current, reason)) = current {
                if !current.is_final() {
                    if let Some(order) = orders.set_status(&event.order_uid, status) {
                        order.cancel_reason = event.reason.or(reason);
                    }
                }
            } else if let Some(message) = &event.order {
                let mut order = Order::from_message(message, status);
                order.cancel_reason = event.reason;
                // An id clash here is the counter-reset case; the event's order is the one the
                // warehouse has, but the record that exists was this store's: keep it.
                if let Err(err) = orders.insert(order) {
                    tracing::warn!(order_uid = %event.order_uid, error = %err, "outcome of an unknown order not recorded");
                }
            }
        }
        Ok(())
    }

    async fn stale_pending(
        &self,
        created_before: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<Order>, OrderStoreError> {
        let orders = self.lock();
        let mut stale: Vec<Order> = orders
            .pending
            .iter()
            .filter_map(|id| orders.by_id.get(id))
            .filter(|o| o.created_at < created_before)
            .cloned()
            .collect();
        stale.sort_by_key(|o| o.created_at);
        stale.truncate(limit);
        Ok(stale)
    }

    async fn check(&self) -> Result<(), String> {
        Ok(())
    }
}
