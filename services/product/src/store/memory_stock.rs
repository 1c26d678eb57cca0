//! Stock and reservations in memory: every operation takes the book's one lock, copies what it
//! touches into a [`Working`] set, runs the shared rules of [`crate::stock`], and writes back
//! only if they succeeded. One lock for every product is the simplest way to make an operation
//! on several products atomic; nothing awaits while holding it.

use super::memory::{Book, MemoryCatalog};
use super::{Reserved, StockStore};
use crate::stock::{
    self, EventTally, Item, Levels, ReleasePlan, Reservation, ReservePlan, Status, StockError,
    Working,
};
use common::messaging::OrderEvent;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

impl Book {
    /// Copies of the stock rows of `ids` that exist.
    fn rows(&self, ids: impl IntoIterator<Item = i32>) -> BTreeMap<i32, Levels> {
        ids.into_iter()
            .filter_map(|id| self.levels.get(&id).map(|levels| (id, *levels)))
            .collect()
    }

    /// Writes back what an operation changed (or nothing, if a row is out of balance).
    fn write_back(&mut self, w: &Working) -> Result<(), StockError> {
        let rows = w.changed_rows()?;
        for (id, levels) in rows {
            self.levels.insert(id, levels);
        }
        for r in w.changed_reservations() {
            if r.status == Status::Held {
                self.held.insert((r.updated_at, r.order_uid.clone()));
            }
            self.reservations.insert(r.order_uid.clone(), r.clone());
        }
        Ok(())
    }
}

fn by_uid(reservations: impl IntoIterator<Item = Reservation>) -> BTreeMap<String, Reservation> {
    reservations
        .into_iter()
        .map(|r| (r.order_uid.clone(), r))
        .collect()
}

#[async_trait::async_trait]
impl StockStore for MemoryCatalog {
    async fn levels(&self, product_id: i32) -> Result<Option<Levels>, StockError> {
        Ok(self.book().levels.get(&product_id).copied())
    }

    async fn adjust(&self, product_id: i32, delta: i64) -> Result<Levels, StockError> {
        let mut book = self.book();
        let mut w = Working::new(BTreeMap::new(), book.rows([product_id]));
        let levels = w
            .rows
            .get_mut(&product_id)
            .ok_or_else(|| StockError::ProductsNotFound(vec![product_id]))?;
        stock::adjust(levels, product_id, delta)?;
        let levels = *levels;
        book.write_back(&w)?;
        Ok(levels)
    }

    async fn reserve(&self, order_uid: &str, items: &[Item]) -> Result<Reserved, StockError> {
        let mut book = self.book();
        let existing = book.reservations.get(order_uid).cloned();
        match stock::plan_reserve(existing.as_ref(), items)? {
            ReservePlan::Current(reservation) => Ok(Reserved {
                reservation,
                created: false,
            }),
            ReservePlan::Hold => {
                let rows = book.rows(items.iter().map(|i| i.product_id));
                let mut w = Working::new(by_uid(existing.clone()), rows);
                stock::hold(&mut w.rows, items)?;
                let reservation = stock::held(existing, order_uid, items.to_vec(), stock::now());
                w.reservations
                    .insert(order_uid.to_string(), reservation.clone());
                book.write_back(&w)?;
                Ok(Reserved {
                    reservation,
                    created: true,
                })
            }
        }
    }

    async fn release(&self, order_uid: &str) -> Result<Reservation, StockError> {
        let mut book = self.book();
        let existing = book
            .reservations
            .get(order_uid)
            .cloned()
            .ok_or_else(|| StockError::ReservationNotFound(order_uid.to_string()))?;
        match stock::plan_release(&existing)? {
            ReleasePlan::Current(reservation) => Ok(reservation),
            ReleasePlan::Release => {
                let rows = book.rows(existing.items.iter().map(|i| i.product_id));
                let mut released = existing.clone();
                let mut w = Working::new(by_uid([existing]), rows);
                stock::unhold(&mut w.rows, &released.items)?;
                released.status = Status::Released;
                released.updated_at = stock::now();
                w.reservations
                    .insert(order_uid.to_string(), released.clone());
                book.write_back(&w)?;
                Ok(released)
            }
        }
    }

    async fn confirm(&self, order_uids: &[String]) -> Result<u64, StockError> {
        let mut book = self.book();
        let now = stock::now();
        let mut seen = HashSet::new();
        let mut confirmed = 0;
        for uid in order_uids {
            if !seen.insert(uid.as_str()) {
                continue;
            }
            if let Some(r) = book.reservations.get_mut(uid) {
                if r.status == Status::Held {
                    r.status = Status::Confirmed;
                    r.updated_at = now;
                    confirmed += 1;
                }
            }
        }
        Ok(confirmed)
    }

    async fn reservation(&self, order_uid: &str) -> Result<Option<Reservation>, StockError> {
        Ok(self.book().reservations.get(order_uid).cloned())
    }

    async fn expire_held(&self, ttl: Duration, limit: usize) -> Result<u64, StockError> {
        let mut book = self.book();
        let now = stock::now();
        let Some(cutoff) = time::Duration::try_from(ttl)
            .ok()
            .and_then(|ttl| now.checked_sub(ttl))
        else {
            return Ok(0);
        };
        let mut due = BTreeMap::new();
        while due.len() < limit {
            match book.held.first() {
                Some((at, _)) if *at < cutoff => {}
                _ => break,
            }
            let Some((at, uid)) = book.held.pop_first() else {
                break;
            };
            // Still held since then (not confirmed, released or held again meanwhile)?
            if let Some(r) = book.reservations.get(&uid) {
                if r.status == Status::Held && r.updated_at == at {
                    due.insert(uid, r.clone());
                }
            }
        }
        if due.is_empty() {
            return Ok(0);
        }
        let rows = book.rows(stock::product_ids(due.values()));
        let mut w = Working::new(due, rows);
        let released = stock::expire(&mut w, now)?;
        book.write_back(&w)?;
        Ok(released)
    }

    async fn apply_events(&self, events: &[OrderEvent]) -> Result<EventTally, StockError> {
        let mut book = self.book();
        let reservations = by_uid(
            events
                .iter()
                .filter_map(|e| book.reservations.get(&e.order_uid).cloned()),
        );
        let rows = book.rows(stock::product_ids(reservations.values()));
        let mut w = Working::new(reservations, rows);
        let tally = stock::apply_events(&mut w, events, stock::now())?;
        book.write_back(&w)?;
        Ok(tally)
    }
}
