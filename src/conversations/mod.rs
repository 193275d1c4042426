//! Conversations: stored Responses API responses (`store: true`), for
//! `GET`/`DELETE /v1/responses/{id}` and `previous_response_id`.
//!
//! Owns: [`Stored`] (a response object, the conversation items it ends, and the key that
//! owns it), the store behind `state.store` (memory: a moka cache bounded in bytes by
//! `state.responses_max_size`; Redis: one key per response, so any replica can continue it),
//! the TTL (`state.responses_ttl`), and ownership: another key's response is not found.
//! Must not: translate or read answers (that is `apis`), or block: Redis calls have the
//! `state.timeout` deadline, and writes run off the request task.

mod redis_store;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use redis_store::RedisStore;

/// Bookkeeping per stored response beyond its bytes.
const ENTRY_OVERHEAD: usize = 128;

/// One stored response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    /// The virtual key's name that made it (empty without keys).
    pub owner: String,
    /// The response object, as `GET /v1/responses/{id}` returns it.
    pub response: Value,
    /// Every item of the conversation up to and including this response's output, oldest
    /// first: what `previous_response_id` continues from.
    pub items: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the response store (Redis) is unavailable: {0}")]
    Unavailable(String),
}

/// Where stored responses live.
pub struct Conversations {
    backend: Backend,
    ttl: Duration,
}

enum Backend {
    Memory(moka::sync::Cache<String, Arc<Bytes>>),
    Redis(RedisStore),
}

impl std::fmt::Debug for Conversations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.backend {
            Backend::Memory(cache) => format!("memory ({} responses)", cache.entry_count()),
            Backend::Redis(store) => format!("{store:?}"),
        };
        f.debug_struct("Conversations").field("store", &kind).field("ttl", &self.ttl).finish()
    }
}

impl Conversations {
    /// In memory, at most `max_bytes` of stored responses (least recently used go first).
    pub fn memory(ttl: Duration, max_bytes: u64) -> Conversations {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|id: &String, bytes: &Arc<Bytes>| {
                u32::try_from(id.len() + bytes.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
            })
            .time_to_live(ttl)
            .build();
        Conversations { backend: Backend::Memory(cache), ttl }
    }

    /// In Redis at `url`, each call bounded by `timeout`.
    pub fn redis(url: &str, ttl: Duration, timeout: Duration) -> Conversations {
        Conversations { backend: Backend::Redis(RedisStore::new(url, timeout)), ttl }
    }

    /// The response `id` if it exists and `owner` owns it.
    pub async fn get(&self, id: &str, owner: &str) -> Result<Option<Stored>, StoreError> {
        let bytes = match &self.backend {
            Backend::Memory(cache) => cache.get(id).map(|b| Bytes::clone(&b)),
            Backend::Redis(store) => store.get(id).await?,
        };
        let Some(bytes) = bytes else { return Ok(None) };
        let stored = serde_json::from_slice::<Stored>(&bytes).ok();
        Ok(stored.filter(|s| s.owner == owner))
    }

    /// Keeps `stored` under `id` for the TTL. Memory inserts at once; Redis writes in the
    /// background (a failure is logged: the answer has been served already).
    pub fn put(&self, id: &str, stored: &Stored) {
        let Ok(bytes) = serde_json::to_vec(stored) else { return };
        match &self.backend {
            Backend::Memory(cache) => cache.insert(id.to_owned(), Arc::new(Bytes::from(bytes))),
            Backend::Redis(store) => store.put(id, bytes, self.ttl),
        }
    }

    /// Deletes the response `id` if `owner` owns it; whether there was one to delete.
    pub async fn delete(&self, id: &str, owner: &str) -> Result<bool, StoreError> {
        if self.get(id, owner).await?.is_none() {
            return Ok(false);
        }
        match &self.backend {
            Backend::Memory(cache) => Ok(cache.remove(id).is_some()),
            Backend::Redis(store) => store.delete(id).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn stored(owner: &str) -> Stored {
        Stored {
            owner: owner.into(),
            response: json!({"id": "resp_1"}),
            items: vec![json!({"role": "user", "content": "hi"})],
        }
    }

    #[tokio::test]
    async fn a_response_belongs_to_the_key_that_made_it() {
        let store = Conversations::memory(Duration::from_secs(60), 1 << 20);
        store.put("resp_1", &stored("team-a"));
        assert_eq!(store.get("resp_1", "team-a").await.unwrap(), Some(stored("team-a")));
        assert_eq!(store.get("resp_1", "team-b").await.unwrap(), None);
        assert!(!store.delete("resp_1", "team-b").await.unwrap());
        assert!(store.delete("resp_1", "team-a").await.unwrap());
        assert_eq!(store.get("resp_1", "team-a").await.unwrap(), None);
    }

    #[tokio::test]
    async fn memory_is_bounded_in_bytes() {
        let store = Conversations::memory(Duration::from_secs(60), 64 * 1024);
        let big = Stored { owner: String::new(), response: json!({"text": "x".repeat(4096)}), items: Vec::new() };
        for i in 0..100 {
            store.put(&format!("resp_{i}"), &big);
        }
        let Backend::Memory(cache) = &store.backend else { unreachable!() };
        cache.run_pending_tasks();
        assert!(cache.weighted_size() <= 64 * 1024, "{}", cache.weighted_size());
    }
}
