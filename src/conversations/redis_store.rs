//! Stored responses in Redis: `weir:responses:v1:{id}` → the stored JSON, expiring with
//! `PX` after the TTL.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Semaphore;

use super::StoreError;

const PREFIX: &str = "weir:responses:v1:";
/// Writes in flight at once; past that a write waits for none and is dropped (logged).
const MAX_PENDING_WRITES: usize = 256;
/// A write slower than this is abandoned.
const SET_TIMEOUT: Duration = Duration::from_secs(2);

pub struct RedisStore {
    url: String,
    timeout: Duration,
    connection: OnceLock<Result<ConnectionManager, String>>,
    writes: Arc<Semaphore>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("url", &redact(&self.url)).finish()
    }
}

impl RedisStore {
    pub fn new(url: &str, timeout: Duration) -> RedisStore {
        RedisStore {
            url: url.to_owned(),
            timeout,
            connection: OnceLock::new(),
            writes: Arc::new(Semaphore::new(MAX_PENDING_WRITES)),
        }
    }

    fn connection(&self) -> Result<ConnectionManager, StoreError> {
        self.connection
            .get_or_init(|| {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_millis(500)))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1);
                redis::Client::open(self.url.as_str())
                    .and_then(|client| ConnectionManager::new_lazy_with_config(client, config))
                    .map_err(|err| err.to_string())
            })
            .clone()
            .map_err(StoreError::Unavailable)
    }

    pub async fn get(&self, id: &str) -> Result<Option<Bytes>, StoreError> {
        let mut connection = self.connection()?;
        let command = redis::cmd("GET").arg(format!("{PREFIX}{id}")).clone();
        match tokio::time::timeout(self.timeout, command.query_async::<Option<Vec<u8>>>(&mut connection)).await {
            Ok(Ok(found)) => Ok(found.map(Bytes::from)),
            Ok(Err(err)) => Err(StoreError::Unavailable(err.to_string())),
            Err(_) => Err(StoreError::Unavailable(format!("no answer within {:?}", self.timeout))),
        }
    }

    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let mut connection = self.connection()?;
        let command = redis::cmd("DEL").arg(format!("{PREFIX}{id}")).clone();
        match tokio::time::timeout(self.timeout, command.query_async::<u64>(&mut connection)).await {
            Ok(Ok(deleted)) => Ok(deleted > 0),
            Ok(Err(err)) => Err(StoreError::Unavailable(err.to_string())),
            Err(_) => Err(StoreError::Unavailable(format!("no answer within {:?}", self.timeout))),
        }
    }

    pub fn put(&self, id: &str, bytes: Vec<u8>, ttl: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let Ok(permit) = Arc::clone(&self.writes).try_acquire_owned() else {
            tracing::warn!(id, "state.store: too many response writes pending; response not stored");
            return;
        };
        let mut connection = match self.connection() {
            Ok(connection) => connection,
            Err(err) => {
                tracing::warn!(id, error = %err, "state.store: response not stored");
                return;
            }
        };
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let command = redis::cmd("SET").arg(format!("{PREFIX}{id}")).arg(bytes).arg("PX").arg(millis).clone();
        let id = id.to_owned();
        runtime.spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(SET_TIMEOUT, command.query_async::<()>(&mut connection)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(id, error = %err, "state.store: response not stored"),
                Err(_) => tracing::warn!(id, "state.store: storing the response timed out"),
            }
        });
    }
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}
