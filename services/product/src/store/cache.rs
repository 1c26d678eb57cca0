//! A bounded cache of found products' JSON, in front of a shared store.
//!
//! The rule that keeps it correct across instances: products are immutable once created, so a
//! cached product is never stale; and only products that were *found* are cached. "Not found" is
//! never remembered, because another instance may create that id the next moment, and a miss
//! always asks the store.

use bytes::Bytes;
use dashmap::DashMap;

#[derive(Debug)]
pub struct JsonCache {
    entries: DashMap<i32, Bytes>,
    capacity: usize,
}

impl JsonCache {
    /// A cache of at most about `capacity` products (0 disables it).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: DashMap::new(),
            capacity,
        }
    }

    pub fn get(&self, id: i32) -> Option<Bytes> {
        self.entries.get(&id).map(|json| json.clone())
    }

    /// Remembers a product that exists. When full, an arbitrary entry makes room: any product
    /// may be dropped, since the store still has it. (Concurrent inserts may overshoot the
    /// capacity by a few entries; the bound is on memory, not an exact count.)
    pub fn insert(&self, id: i32, json: Bytes) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&id) {
            let victim = self.entries.iter().next().map(|entry| *entry.key());
            if let Some(victim) = victim {
                self.entries.remove(&victim);
            }
        }
        self.entries.insert(id, json);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_capacity_bounds_the_entries() {
        let cache = JsonCache::new(10);
        for id in 1..=1000 {
            cache.insert(id, Bytes::from(id.to_string()));
            assert_eq!(cache.get(id), Some(Bytes::from(id.to_string())));
        }
        assert_eq!(cache.len(), 10);
    }

    #[test]
    fn a_zero_capacity_caches_nothing() {
        let cache = JsonCache::new(0);
        cache.insert(1, Bytes::from_static(b"{}"));
        assert!(cache.is_empty());
        assert_eq!(cache.get(1), None);
    }
}
