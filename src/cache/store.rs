//! The in-process store: a moka cache weighed in bytes of stored answers, each entry living
//! for its model's `cache.ttl`.
//!
//! Owns: [`Entry`] (what one cached answer holds) and the size bound (`cache.max_size`).
//! Must not: decide what is cacheable (the exchange tap does) or talk to Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::Expiry;

use super::key::CacheKey;

/// Bookkeeping per entry beyond its body, counted into its weight so many tiny entries
/// cannot exceed the bound unnoticed.
const ENTRY_OVERHEAD: usize = 160;

/// One cached answer.
#[derive(Debug)]
pub struct Entry {
    /// The answer in the non-streamed JSON shape: for a JSON answer the upstream's bytes
    /// exactly, for a streamed one the stream assembled. Streams are replayed from it.
    pub body: Bytes,
    /// The backend and variant that produced it (reported on hits).
    pub backend: String,
    pub variant: String,
    /// How long the entry lives from its insertion into this store.
    pub ttl: Duration,
}

impl Entry {
    /// Bytes this entry costs the store.
    pub fn weight(&self) -> u32 {
        let size = self.body.len() + self.backend.len() + self.variant.len() + ENTRY_OVERHEAD;
        u32::try_from(size).unwrap_or(u32::MAX)
    }
}

/// Bounded by the entries' weights; expired entries are never returned.
pub struct Store {
    entries: moka::sync::Cache<CacheKey, Arc<Entry>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("entries", &self.entries.entry_count()).finish()
    }
}

struct PerEntryTtl;

impl Expiry<CacheKey, Arc<Entry>> for PerEntryTtl {
    fn expire_after_create(&self, _key: &CacheKey, entry: &Arc<Entry>, _now: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        entry: &Arc<Entry>,
        _now: Instant,
        _remaining: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

impl Store {
    pub fn new(max_size: u64) -> Store {
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_size)
            .weigher(|_key: &CacheKey, entry: &Arc<Entry>| entry.weight())
            .expire_after(PerEntryTtl)
            .build();
        Store { entries }
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.entries.get(key)
    }

    pub fn insert(&self, key: CacheKey, entry: Arc<Entry>) {
        self.entries.insert(key, entry);
    }

    /// `(entries, bytes)` after pending evictions have run.
    pub fn usage(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.entry_count(), self.entries.weighted_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(size: usize, ttl: Duration) -> Arc<Entry> {
        Arc::new(Entry { body: Bytes::from(vec![b'x'; size]), backend: "b".into(), variant: "v".into(), ttl })
    }

    #[test]
    fn weight_stays_under_the_bound() {
        let store = Store::new(10_000);
        for i in 0..200u8 {
            store.insert(CacheKey([i; 32]), entry(500, Duration::from_secs(60)));
        }
        let (count, bytes) = store.usage();
        assert!(bytes <= 10_000, "{bytes} bytes in {count} entries");
        assert!(count > 0 && count < 200, "{count}");
    }

    #[test]
    fn entries_expire_after_their_ttl() {
        let store = Store::new(10_000);
        store.insert(CacheKey([1; 32]), entry(10, Duration::from_millis(30)));
        assert!(store.get(&CacheKey([1; 32])).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(store.get(&CacheKey([1; 32])).is_none());
    }
}
