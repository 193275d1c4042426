//! The shared store (`cache.store: redis://...`): entries shared between replicas.
//!
//! The in-memory store stays in front; this is asked only on a local miss, with a tight
//! timeout, and filled off the request path by spawned writes (a bounded number at once;
//! past that a write is skipped — it is a cache). Redis being slow or down makes lookups
//! misses and is logged at most once per interval; it never fails or delays a request by
//! more than the lookup timeout.
//! Must not: block, retry on the request path, or let a Redis error reach a client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::key::CacheKey;
use super::store::Entry;

/// Every key weir writes starts with this; the version changes if the format does.
const PREFIX: &str = "weir:cache:v1:";
/// A lookup slower than this counts as a miss.
const GET_TIMEOUT: Duration = Duration::from_millis(100);
/// A fill slower than this is abandoned.
const SET_TIMEOUT: Duration = Duration::from_secs(1);
/// Fills in flight at once; more are dropped.
const MAX_PENDING_WRITES: usize = 64;
/// At most one warning about Redis per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(30);

pub struct SharedStore {
    url: String,
    /// Built on first use, inside the runtime (the manager spawns its own tasks).
    connection: OnceLock<Option<ConnectionManager>>,
    writes: Arc<Semaphore>,
    /// Milliseconds since the epoch of the last warning.
    last_warning: AtomicU64,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore").field("url", &redact(&self.url)).finish()
    }
}

/// What is stored besides the body, as one JSON line before it.
#[derive(Serialize, Deserialize)]
struct Meta {
    backend: String,
    variant: String,
    /// When the entry expires, in milliseconds since the epoch (so a replica reading it
    /// keeps it locally only for what is left).
    expires_ms: u64,
}

impl SharedStore {
    pub fn new(url: &str) -> SharedStore {
        SharedStore {
            url: url.to_owned(),
            connection: OnceLock::new(),
            writes: Arc::new(Semaphore::new(MAX_PENDING_WRITES)),
            last_warning: AtomicU64::new(0),
        }
    }

    fn connection(&self) -> Option<ConnectionManager> {
        self.connection
            .get_or_init(|| {
                let client = match redis::Client::open(self.url.as_str()) {
                    Ok(client) => client,
                    Err(err) => {
                        tracing::warn!(url = %redact(&self.url), error = %err, "cache.store: invalid Redis URL; the shared store is off");
                        return None;
                    }
                };
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_millis(500)))
                    .set_response_timeout(Some(Duration::from_millis(500)))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(2));
                match ConnectionManager::new_lazy_with_config(client, config) {
                    Ok(manager) => Some(manager),
                    Err(err) => {
                        tracing::warn!(url = %redact(&self.url), error = %err, "cache.store: cannot use Redis; the shared store is off");
                        None
                    }
                }
            })
            .clone()
    }

    /// The entry for `key`, if Redis has it and answers in time.
    pub async fn get(&self, key: &CacheKey) -> Option<Entry> {
        let mut connection = self.connection()?;
        let command = redis::cmd("GET").arg(redis_key(key)).clone();
        let lookup = command.query_async::<Option<Vec<u8>>>(&mut connection);
        match tokio::time::timeout(GET_TIMEOUT, lookup).await {
            Ok(Ok(Some(bytes))) => decode(bytes),
            Ok(Ok(None)) => None,
            Ok(Err(err)) => {
                self.warn(&err.to_string());
                None
            }
            Err(_) => {
                self.warn(&format!("lookup took longer than {GET_TIMEOUT:?}"));
                None
            }
        }
    }

    /// Stores `entry` in the background; skipped when too many writes are pending.
    pub fn put(&self, key: &CacheKey, entry: &Entry) {
        // Exchanges can finish while the runtime shuts down; a fill then is simply skipped.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let Ok(permit) = Arc::clone(&self.writes).try_acquire_owned() else { return };
        let Some(mut connection) = self.connection() else { return };
        let millis = u64::try_from(entry.ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let Some(value) = encode(entry) else { return };
        let command = redis::cmd("SET").arg(redis_key(key)).arg(value).arg("PX").arg(millis).clone();
        runtime.spawn(async move {
            let _permit = permit;
            let result = tokio::time::timeout(SET_TIMEOUT, command.query_async::<()>(&mut connection)).await;
            if let Ok(Err(err)) = result {
                // Lookups warn (rate-limited) when Redis is down; a failed fill is only detail.
                tracing::debug!(error = %err, "cache.store: fill failed");
            }
        });
    }

    fn warn(&self, detail: &str) {
        let now = epoch_ms();
        let last = self.last_warning.load(Ordering::Relaxed);
        let interval = u64::try_from(WARN_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(last) < interval {
            return;
        }
        if self.last_warning.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            tracing::warn!(url = %redact(&self.url), error = detail, "cache.store: Redis unavailable; serving lookups as misses");
        }
    }
}

fn redis_key(key: &CacheKey) -> String {
    format!("{PREFIX}{}", key.hex())
}

fn epoch_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn encode(entry: &Entry) -> Option<Vec<u8>> {
    let ttl = u64::try_from(entry.ttl.as_millis()).unwrap_or(u64::MAX);
    let meta = Meta {
        backend: entry.backend.clone(),
        variant: entry.variant.clone(),
        expires_ms: epoch_ms().saturating_add(ttl),
    };
    let mut out = serde_json::to_vec(&meta).ok()?;
    out.push(b'\n');
    out.extend_from_slice(&entry.body);
    Some(out)
}

fn decode(bytes: Vec<u8>) -> Option<Entry> {
    let newline = bytes.iter().position(|b| *b == b'\n')?;
    let meta: Meta = serde_json::from_slice(&bytes[..newline]).ok()?;
    let left = meta.expires_ms.checked_sub(epoch_ms()).filter(|ms| *ms > 0)?;
    let body = Bytes::from(bytes).slice(newline + 1..);
    Some(Entry { body, backend: meta.backend, variant: meta.variant, ttl: Duration::from_millis(left) })
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_the_round_trip() {
        let entry = Entry {
            body: Bytes::from_static(b"{\"a\":\n1}"),
            backend: "up".into(),
            variant: "control".into(),
            ttl: Duration::from_secs(60),
        };
        let back = decode(encode(&entry).unwrap()).unwrap();
        assert_eq!(back.body, entry.body);
        assert_eq!((back.backend.as_str(), back.variant.as_str()), ("up", "control"));
        assert!(back.ttl <= entry.ttl && back.ttl > Duration::from_secs(50));
    }

    #[test]
    fn expired_or_garbled_entries_are_misses() {
        let expired = br#"{"backend":"b","variant":"v","expires_ms":1}
{}"#;
        assert!(decode(expired.to_vec()).is_none());
        assert!(decode(b"no newline".to_vec()).is_none());
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(redact("redis://user:secret@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }
}
