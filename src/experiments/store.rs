//! Where an experiment's counts live: this process (`state.store: memory`) or Redis, so that
//! every replica allocates from the same figures.
//!
//! Owns: the Redis side — one hash per experiment and metric, `weir:exp:{NAME}:METRIC`, with
//! fields `VARIANT:n`, `VARIANT:sum`, `VARIANT:sq` (`HINCRBY`/`HINCRBYFLOAT`, so replicas only
//! ever add) and `promoted` (set once with `HSETNX`, so every replica promotes the same arm).
//! Must not: be called on the request path — only the refresh task talks to Redis, with a
//! deadline, and a failed flush keeps its deltas for the next one.

use std::sync::OnceLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::moments::Moments;

/// Deadline of one flush-and-read round trip.
const ROUND_TRIP: Duration = Duration::from_secs(1);

/// The shared counts as Redis holds them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shared {
    pub totals: Vec<Moments>,
    pub promoted: Option<String>,
}

pub struct RedisCounts {
    url: String,
    connection: OnceLock<Result<ConnectionManager, String>>,
}

impl std::fmt::Debug for RedisCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCounts").finish_non_exhaustive()
    }
}

impl RedisCounts {
    pub fn new(url: &str) -> RedisCounts {
        RedisCounts { url: url.to_owned(), connection: OnceLock::new() }
    }

    pub fn same_url(&self, url: &str) -> bool {
        self.url == url
    }

    fn manager(&self) -> Result<ConnectionManager, String> {
        let made = self.connection.get_or_init(|| {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(ROUND_TRIP))
                .set_response_timeout(Some(ROUND_TRIP))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1));
            redis::Client::open(self.url.as_str())
                .and_then(|client| ConnectionManager::new_lazy_with_config(client, config))
                .map_err(|err| err.to_string())
        });
        made.clone()
    }

    /// Adds `deltas` (by variant), proposes `promote` when given, and reads the totals back.
    pub async fn exchange(
        &self,
        key: &str,
        variants: &[String],
        deltas: &[Moments],
        promote: Option<&str>,
    ) -> Result<Shared, String> {
        let mut connection = self.manager()?;
        let mut pipe = redis::pipe();
        for (variant, delta) in variants.iter().zip(deltas) {
            if delta.n == 0 {
                continue;
            }
            pipe.cmd("HINCRBY").arg(key).arg(format!("{variant}:n")).arg(delta.n).ignore();
            pipe.cmd("HINCRBYFLOAT").arg(key).arg(format!("{variant}:sum")).arg(delta.sum).ignore();
            pipe.cmd("HINCRBYFLOAT").arg(key).arg(format!("{variant}:sq")).arg(delta.sum_sq).ignore();
        }
        if let Some(winner) = promote {
            pipe.cmd("HSETNX").arg(key).arg("promoted").arg(winner).ignore();
        }
        pipe.cmd("HGETALL").arg(key);
        let call = pipe.query_async::<(std::collections::HashMap<String, String>,)>(&mut connection);
        let (fields,) = match tokio::time::timeout(ROUND_TRIP, call).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(err)) => return Err(err.to_string()),
            Err(_) => return Err(format!("no answer within {ROUND_TRIP:?}")),
        };
        let number = |variant: &str, field: &str| {
            fields.get(&format!("{variant}:{field}")).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        };
        let totals = variants
            .iter()
            .map(|v| Moments {
                n: fields.get(&format!("{v}:n")).and_then(|n| n.parse().ok()).unwrap_or(0),
                sum: number(v, "sum"),
                sum_sq: number(v, "sq"),
            })
            .collect();
        Ok(Shared { totals, promoted: fields.get("promoted").cloned() })
    }
}
