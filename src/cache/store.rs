//! The in-process store: a moka cache weighed in bytes of stored answers, each entry living
//! for its model's `cache.ttl`.
//!
//! Owns: [`Entry`] (what one cached answer holds) and the size bound (`cache.max_size`).
//! Must not: decide what is cacheable (the fill, given the finished record, does) or talk to Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hashbrown::DefaultHashBuilder;
use moka::Expiry;

use super::key::CacheKey;

/// Memory per entry beyond its body, counted into its weight so that `max_size` bounds what
/// the store really holds: moka's entry, its deque and timer nodes and the key's `Arc`, this
/// [`Entry`] and its strings, and the body's allocation rounding. Measured with jemalloc's
/// allocated-bytes counter over 20,000 inserts: 459–504 bytes for bodies of 100 B to 2 KiB.
const ENTRY_OVERHEAD: usize = 512;

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

/// Bounded by the entries' weights; expired entries are never returned. Expiry is decided on
/// tokio's clock (so tests can run it on a paused one); moka's own per-entry expiry only
/// frees their memory.
pub struct Store {
    /// Keys are SHA-256 digests already; foldhash (seeded at random, so no one can aim
    /// keys at one bucket) spreads them at a fraction of SipHash's cost, paid on every
    /// lookup, insert and rehash.
    entries: moka::sync::Cache<CacheKey, Stored, DefaultHashBuilder>,
}

/// An entry and the moment it stops being served.
#[derive(Clone)]
struct Stored {
    entry: Arc<Entry>,
    expires: tokio::time::Instant,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("entries", &self.entries.entry_count()).finish()
    }
}

struct PerEntryTtl;

impl Expiry<CacheKey, Stored> for PerEntryTtl {
    fn expire_after_create(&self, _key: &CacheKey, stored: &Stored, _now: Instant) -> Option<Duration> {
        Some(stored.entry.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        stored: &Stored,
        _now: Instant,
        _remaining: Option<Duration>,
    ) -> Option<Duration> {
        Some(stored.entry.ttl)
    }
}

/// Entries a store of `max_size` bytes is sized for up front: a full store of typical
/// answers (about 1 KiB), up to 16,384. Growing the map one doubling at a time while it
/// fills, and again as evictions leave tombstones, cost about 8% of a request's CPU in the
/// production bench (every request a miss, 8 MiB store). The cap keeps what an idle store
/// costs small: sized for 65,536 entries, moka's map took 14 MiB before a single insert.
fn expected_entries(max_size: u64) -> usize {
    usize::try_from(max_size / 1024).unwrap_or(usize::MAX).clamp(1024, 16_384)
}

impl Store {
    pub fn new(max_size: u64) -> Store {
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_size)
            .initial_capacity(expected_entries(max_size))
            .weigher(|_key: &CacheKey, stored: &Stored| stored.entry.weight())
            .expire_after(PerEntryTtl)
            .build_with_hasher(DefaultHashBuilder::default());
        Store { entries }
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let stored = self.entries.get(key)?;
        (tokio::time::Instant::now() < stored.expires).then_some(stored.entry)
    }

    pub fn insert(&self, key: CacheKey, entry: Arc<Entry>) {
        let expires = tokio::time::Instant::now() + entry.ttl;
        self.entries.insert(key, Stored { entry, expires });
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

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_ttl() {
        let store = Store::new(10_000);
        store.insert(CacheKey([1; 32]), entry(10, Duration::from_millis(30)));
        assert!(store.get(&CacheKey([1; 32])).is_some());
        tokio::time::advance(Duration::from_millis(29)).await;
        assert!(store.get(&CacheKey([1; 32])).is_some(), "still within its ttl");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(store.get(&CacheKey([1; 32])).is_none(), "expired at exactly its ttl");
    }
}
