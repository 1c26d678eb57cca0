//! Idempotency keys in this process, next to the in-memory carts: a claim or an answer per key
//! in a sharded map, each step under the key's shard lock. Expiry is checked on access and a
//! background sweep frees the memory.

use super::{Claim, ClaimToken, Fingerprint, IdempotencyStore, StoredResponse};
use common::store::StoreUnavailable;
use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug)]
enum Entry {
    Claimed {
        token: ClaimToken,
        until: Instant,
    },
    Done {
        response: StoredResponse,
        until: Instant,
    },
}

impl Entry {
    fn until(&self) -> Instant {
        match self {
            Self::Claimed { until, .. } | Self::Done { until, .. } => *until,
        }
    }
}

#[derive(Debug, Default)]
pub struct MemoryIdempotencyStore {
    entries: DashMap<String, Entry>,
}

/// How often the sweeper runs.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

impl MemoryIdempotencyStore {
    /// Drops expired answers and lapsed claims.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.entries.retain(|_, entry| entry.until() > now);
    }

    /// How many keys are held (claimed or answered), expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sweeps every minute for as long as the store lives.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(SWEEP_EVERY);
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
}

#[async_trait::async_trait]
impl IdempotencyStore for MemoryIdempotencyStore {
    async fn claim(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreUnavailable> {
        let now = Instant::now();
        let token = ClaimToken {
            id: rand::random(),
            fingerprint: *fingerprint,
        };
        let claimed = Entry::Claimed {
            token: token.clone(),
            until: now + lease,
        };
        match self.entries.entry(key.to_string()) {
            MapEntry::Occupied(mut held) => match held.get() {
                Entry::Claimed { token, until } if *until > now => Ok(Claim::InFlight {
                    fingerprint: token.fingerprint,
                }),
                Entry::Done { response, until } if *until > now => {
                    Ok(Claim::Done(response.clone()))
                }
                // Lapsed or expired: as good as absent.
                _ => {
                    held.insert(claimed);
                    Ok(Claim::Claimed(token))
                }
            },
            MapEntry::Vacant(free) => {
                free.insert(claimed);
                Ok(Claim::Claimed(token))
            }
        }
    }

    async fn complete(
        &self,
        key: &str,
        token: &ClaimToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<bool, StoreUnavailable> {
        let now = Instant::now();
        let Some(mut entry) = self.entries.get_mut(key) else {
            return Ok(false);
        };
        let ours = matches!(&*entry, Entry::Claimed { token: held, until } if held == token && *until > now);
        if ours {
            *entry = Entry::Done {
                response: response.clone(),
                until: now + ttl,
            };
        }
        Ok(ours)
    }

    async fn release(&self, key: &str, token: &ClaimToken) -> Result<bool, StoreUnavailable> {
        Ok(self
            .entries
            .remove_if(
                key,
                |_, entry| matches!(entry, Entry::Claimed { token: held, .. } if held == token),
            )
            .is_some())
    }
}
