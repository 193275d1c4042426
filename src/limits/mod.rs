//! Limits: per-key rate limits (`rpm`, `tpm`, `concurrent`) and cost budgets.
//!
//! Owns: admission before the upstream call ([`Limits::admit`] → an [`Admission`] guard that
//! reserves one request, the estimated tokens, a place in flight and the estimated cost) and
//! reconciliation when the request ends ([`Limits::finish`], given the finished [`Record`]
//! and the guard: the reservation is traded for the real usage and cost, or released when no
//! upstream call answered). The state lives in memory ([`memory`]) or in Redis ([`redis`]), where every
//! replica shares it through one atomic script per admission and one per settlement.
//! Must not: authenticate (that is `auth`), map its errors to HTTP, or delay a request on a
//! slow store for longer than `state.timeout`.
//!
//! A key with no `rate` and no `budget` costs nothing here: no parse, no admission.
//!
//! Every number here can come from a client (`max_tokens`, `n`, prompt sizes) or an
//! upstream (`usage`, and so cost): arithmetic is checked or saturating, never wrapping, and
//! the lints below keep it so. A reservation larger than the key's `tpm` is refused outright
//! (it could never fit), and a count that is not a non-negative integer is a 400.
#![deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)]

pub mod bpe;
pub mod budget;
pub(crate) mod headers;
pub(crate) mod memory;
pub(crate) mod redis;
pub(crate) mod tokens;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use self::budget::{Clock, ClockCell, Period, nanos_to_usd, per_str, usd_to_nanos};
use self::headers::{RateView, Window, format_reset};
use self::memory::LocalKey;
use self::redis::{RedisStore, StoreDown};
use self::tokens::{Counter, Estimate};
use crate::config::{BudgetConfig, Config, FailMode, Price, RateConfig, StateStore};
use crate::telemetry::metrics::Metrics;
use crate::wire::{Endpoint, Record, Usage};

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error(
        "Rate limit reached for key `{key}` on requests per min (RPM): Limit {limit}. Please try again in {}.",
        format_reset(*retry_after)
    )]
    Requests { key: String, limit: u64, retry_after: Duration, view: RateView },
    #[error(
        "Rate limit reached for key `{key}` on tokens per min (TPM): Limit {limit}, Requested {requested}. Please try again in {}.",
        format_reset(*retry_after)
    )]
    Tokens { key: String, limit: u64, requested: u64, retry_after: Duration, view: RateView },
    #[error("Too many concurrent requests for key `{key}`: Limit {limit}. Please try again when one has finished.")]
    Concurrent { key: String, limit: u64, view: RateView },
    #[error(
        "Budget exceeded for key `{key}`: ${spent:.6} of ${usd} per {per} used, and this request may cost up to ${cost:.6}. The budget renews at the start of the next {per} (UTC), in {}.",
        format_reset(*retry_after)
    )]
    Budget { key: String, usd: f64, per: &'static str, spent: f64, cost: f64, retry_after: Duration, view: RateView },
    /// A request that could never fit the window, however long it waited (OpenAI's wording).
    #[error(
        "Request too large for key `{key}` on tokens per min (TPM): Limit {limit}, Requested {requested}. The input or output tokens must be reduced in order to run successfully."
    )]
    TooLarge { key: String, limit: u64, requested: u64, view: RateView },
    /// A count the limits read (`max_tokens`, `max_completion_tokens`, `n`) is out of range.
    #[error("Invalid '{param}': {reason}")]
    Invalid { param: &'static str, reason: String },
    #[error(
        "Limits for key `{key}` cannot be checked right now: the shared state store is unreachable (state.on_error: closed)"
    )]
    Unavailable { key: String },
}

impl LimitError {
    /// The `limit` label of `weir_ratelimit_rejections_total` this refusal counts under: the
    /// config's names, as the metrics pre-register them. `None` for a bad request, which is
    /// no rate-limit rejection.
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            LimitError::Requests { .. } => Some("rpm"),
            LimitError::Tokens { .. } | LimitError::TooLarge { .. } => Some("tpm"),
            LimitError::Concurrent { .. } => Some("concurrent"),
            LimitError::Budget { .. } => Some("budget"),
            LimitError::Unavailable { .. } => Some("unavailable"),
            LimitError::Invalid { .. } => None,
        }
    }

    /// How long the client should wait before trying again (`Retry-After`); `None` when
    /// waiting does not help.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LimitError::Requests { retry_after, .. }
            | LimitError::Tokens { retry_after, .. }
            | LimitError::Budget { retry_after, .. } => Some(*retry_after),
            LimitError::Concurrent { .. } | LimitError::Unavailable { .. } => Some(Duration::from_secs(1)),
            LimitError::TooLarge { .. } | LimitError::Invalid { .. } => None,
        }
    }

    pub fn view(&self) -> Option<&RateView> {
        match self {
            LimitError::Requests { view, .. }
            | LimitError::Tokens { view, .. }
            | LimitError::TooLarge { view, .. }
            | LimitError::Concurrent { view, .. }
            | LimitError::Budget { view, .. } => Some(view),
            LimitError::Unavailable { .. } | LimitError::Invalid { .. } => None,
        }
    }
}

/// A request to admit, as limits see it.
#[derive(Debug, Clone)]
pub struct AdmitRequest<'a, M> {
    /// The virtual key's name.
    pub key: &'a str,
    pub endpoint: Endpoint,
    /// The names the prompt's tokens may be counted for, best first: the public model, then
    /// each target's upstream model (the first one tiktoken knows picks the tokenizer).
    pub models: M,
    /// The model's `price`, for the estimated cost of a budgeted key.
    pub price: Option<Price>,
    /// The client's body; parsed only when tokens or cost matter.
    pub body: &'a [u8],
}

/// What one request asks of its key's limits.
#[derive(Debug, Clone, Copy, Default)]
pub struct Demand {
    /// Tokens to reserve in the `tpm` window: estimated prompt plus allowed completion.
    pub tokens: u64,
    /// Estimated cost in nano-USD.
    pub cost: i64,
    pub budget: Option<BudgetDemand>,
}

#[derive(Debug, Clone, Copy)]
pub struct BudgetDemand {
    pub period: Period,
    /// The budget in nano-USD.
    pub limit: i64,
}

/// A request whose demand cannot be reserved at all.
#[derive(Debug)]
enum BadDemand {
    Count(tokens::BadCount),
    TooLarge { limit: u64, requested: u64 },
}

/// Why a store refused; [`Limits::admit`] turns it into a [`LimitError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Requests {
        wait: Duration,
    },
    Tokens {
        wait: Duration,
    },
    Concurrent,
    /// `spent`: nano-USD already spent this period.
    Budget {
        spent: i64,
    },
}

/// One configured key's limits and counters.
#[derive(Debug)]
pub struct KeyLimits {
    pub name: String,
    pub rate: RateConfig,
    pub budget: Option<BudgetConfig>,
    local: Arc<LocalKey>,
    totals: Arc<Totals>,
}

impl KeyLimits {
    fn limited(&self) -> bool {
        self.rate != RateConfig::default() || self.budget.is_some()
    }

    fn needs_estimate(&self) -> bool {
        self.rate.tpm.is_some() || self.budget.is_some()
    }
}

/// What a key used since this process started (or since the key was added).
#[derive(Debug)]
struct Totals {
    since: SystemTime,
    requests: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    cost_nanos: AtomicI64,
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
            since: SystemTime::now(),
            requests: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            cost_nanos: AtomicI64::new(0),
        }
    }
}

/// The limits of one snapshot. Counters live in `Arc`s carried from the previous snapshot,
/// so a reload keeps them for keys that still exist.
#[derive(Debug)]
pub struct Limits {
    keys: HashMap<String, Arc<KeyLimits>>,
    redis: Option<Arc<RedisStore>>,
    on_error: FailMode,
    default_max_tokens: u64,
    clock: Arc<ClockCell>,
}

impl Limits {
    pub fn build(config: &Config, previous: Option<&Limits>) -> Limits {
        let mut keys = HashMap::with_capacity(config.keys.len());
        for key in &config.keys {
            let old = previous.and_then(|p| p.keys.get(&key.name));
            let limits = KeyLimits {
                name: key.name.clone(),
                rate: key.rate,
                budget: key.budget,
                local: LocalKey::carry(key.rate, old.map(|o| &o.local)),
                totals: old.map_or_else(Arc::default, |o| Arc::clone(&o.totals)),
            };
            keys.insert(key.name.clone(), Arc::new(limits));
        }
        if keys.values().any(|k| k.needs_estimate()) {
            // Each public model counts with the table of its name or its targets' models.
            tokens::warm(config.models.iter().map(|(name, model)| {
                std::iter::once(name.as_str()).chain(model.targets.iter().map(|t| t.model.as_str()))
            }));
        }
        let redis = match &config.state.store {
            StateStore::Memory => None,
            StateStore::Redis(url) => Some(match previous.and_then(|p| p.redis.as_ref()) {
                Some(old) if old.same_as(url, config.state.timeout) => Arc::clone(old),
                _ => Arc::new(RedisStore::new(url, config.state.timeout)),
            }),
        };
        Limits {
            keys,
            redis,
            on_error: config.state.on_error,
            default_max_tokens: config.state.default_max_tokens,
            clock: previous.map_or_else(Arc::default, |p| Arc::clone(&p.clock)),
        }
    }

    /// Replaces the wall clock budgets read (tests cross period boundaries with this).
    pub fn set_clock(&self, clock: Box<dyn Clock>) {
        self.clock.set(clock);
    }

    /// Admits one request, reserving what it may use; `None` when its key has no limits.
    pub async fn admit<'a, M: Iterator<Item = &'a str>>(
        &self,
        metrics: &Metrics,
        request: AdmitRequest<'a, M>,
    ) -> Result<Option<Admission>, LimitError> {
        let Some(limits) = self.keys.get(request.key).filter(|k| k.limited()) else { return Ok(None) };
        let result = match self.demand(limits, request) {
            Ok(demand) => self.admit_demand(metrics, limits, &demand).await,
            Err(BadDemand::Count(bad)) => Err(LimitError::Invalid { param: bad.param, reason: bad.reason }),
            Err(BadDemand::TooLarge { limit, requested }) => {
                Err(LimitError::TooLarge { key: limits.name.clone(), limit, requested, view: limits.local.view() })
            }
        };
        result
            .inspect_err(|err| {
                if let Some(limit) = err.limit() {
                    metrics.ratelimit_rejection(&limits.name, limit);
                }
            })
            .map(Some)
    }

    fn demand<'a, M: Iterator<Item = &'a str>>(
        &self,
        limits: &KeyLimits,
        request: AdmitRequest<'a, M>,
    ) -> Result<Demand, BadDemand> {
        if !limits.needs_estimate() {
            return Ok(Demand::default());
        }
        let counter = Counter::for_models(request.models);
        let estimate = tokens::estimate(request.endpoint, request.body, counter, self.default_max_tokens)
            .map_err(BadDemand::Count)?;
        // A reservation larger than the whole window would never fit: refused now, so no
        // store ever holds more than `tpm` for one request.
        if let Some(tpm) = limits.rate.tpm
            && estimate.total() > tpm
        {
            return Err(BadDemand::TooLarge { limit: tpm, requested: estimate.total() });
        }
        let budget = limits
            .budget
            .map(|b| BudgetDemand { period: Period::at(b.per, self.clock.now()), limit: usd_to_nanos(b.usd) });
        let cost = match (budget, request.price) {
            (Some(_), Some(price)) => usd_to_nanos(price.cost(&estimate_usage(estimate))),
            _ => 0,
        };
        Ok(Demand { tokens: estimate.total(), cost, budget })
    }

    async fn admit_demand(
        &self,
        metrics: &Metrics,
        limits: &Arc<KeyLimits>,
        demand: &Demand,
    ) -> Result<Admission, LimitError> {
        let mut via = Via::Local;
        let result = match &self.redis {
            None => limits.local.admit(demand),
            Some(redis) => {
                let member = format!("{:016x}", rand::random::<u64>());
                match redis.admit(limits, demand, &member).await {
                    Ok(result) => {
                        via = Via::Redis { store: Arc::clone(redis), member };
                        result
                    }
                    Err(StoreDown) if self.on_error == FailMode::Open => {
                        metrics.state_store_error("fallback");
                        limits.local.admit(demand)
                    }
                    Err(StoreDown) => {
                        metrics.state_store_error("rejected");
                        return Err(LimitError::Unavailable { key: limits.name.clone() });
                    }
                }
            }
        };
        match result {
            Ok(view) => Ok(Admission {
                key: Arc::clone(limits),
                via,
                tokens: demand.tokens,
                cost: demand.cost,
                period: demand.budget.map(|b| b.period),
                view,
                settled: false,
            }),
            Err(refusal) => Err(self.refused(limits, demand, refusal, &via)),
        }
    }

    fn refused(&self, limits: &KeyLimits, demand: &Demand, refusal: Refusal, via: &Via) -> LimitError {
        // The headers of a refusal show the windows as they stand; a Redis refusal shows the
        // limits with nothing to spare in the window that refused.
        let mut view = match via {
            Via::Local => limits.local.view(),
            Via::Redis { .. } => RateView {
                requests: limits.rate.rpm.map(|rpm| Window { limit: rpm, remaining: rpm, reset: Duration::ZERO }),
                tokens: limits.rate.tpm.map(|tpm| Window { limit: tpm, remaining: tpm, reset: Duration::ZERO }),
            },
        };
        let key = limits.name.clone();
        match refusal {
            Refusal::Requests { wait } => {
                let limit = limits.rate.rpm.unwrap_or(0);
                if let Some(w) = &mut view.requests {
                    w.remaining = 0;
                    w.reset = w.reset.max(wait);
                }
                LimitError::Requests { key, limit, retry_after: wait, view }
            }
            Refusal::Tokens { wait } => {
                let limit = limits.rate.tpm.unwrap_or(0);
                if let Some(w) = &mut view.tokens {
                    w.remaining = w.remaining.min(demand.tokens.saturating_sub(1));
                    w.reset = w.reset.max(wait);
                }
                LimitError::Tokens { key, limit, requested: demand.tokens, retry_after: wait, view }
            }
            Refusal::Concurrent => LimitError::Concurrent { key, limit: limits.rate.concurrent.unwrap_or(0), view },
            Refusal::Budget { spent } => {
                let (usd, per) = limits.budget.map_or((0.0, "month"), |b| (b.usd, per_str(b.per)));
                let retry_after = demand.budget.map_or(Duration::ZERO, |b| b.period.remaining(self.clock.now()));
                LimitError::Budget {
                    key,
                    usd,
                    per,
                    spent: nanos_to_usd(spent),
                    cost: nanos_to_usd(demand.cost),
                    retry_after,
                    view,
                }
            }
        }
    }

    /// When a request has finished: counts the key's totals and settles its admission.
    pub fn finish(&self, record: &Record, admission: Option<Admission>) {
        if let Some(limits) = self.keys.get(&record.key) {
            let totals = &limits.totals;
            add_saturating(&totals.requests, 1);
            if let Some(usage) = record.usage {
                add_saturating(&totals.prompt_tokens, usage.prompt_tokens);
                add_saturating(&totals.completion_tokens, usage.completion_tokens);
            }
            if let Some(cost) = record.cost_usd {
                let nanos = usd_to_nanos(cost);
                let _ = totals
                    .cost_nanos
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_add(nanos)));
            }
        }
        let Some(admission) = admission else { return };
        // Without reported usage, an answer that came back keeps its estimate (we cannot
        // know better); one that never reached a backend, or was refused by it, used nothing.
        let answered = !record.attempts.is_empty() && (200..300).contains(&record.status);
        let tokens = match record.usage {
            Some(usage) => usage.total(),
            None if answered => admission.tokens,
            None => 0,
        };
        let cost = match record.cost_usd {
            Some(cost) => usd_to_nanos(cost),
            None if answered => admission.cost,
            None => 0,
        };
        admission.settle(tokens, cost);
    }

    /// `GET /admin/keys/{name}/usage`: `None` for a key not in the config.
    pub async fn usage(&self, name: &str) -> Option<Value> {
        let limits = self.keys.get(name)?;
        let period = limits.budget.map(|b| Period::at(b.per, self.clock.now()));
        let mut store = if self.redis.is_some() { "redis" } else { "memory" };
        let mut local = limits.local.usage(period);
        if let Some(redis) = &self.redis {
            match redis.usage(limits, period).await {
                Ok(remote) => {
                    local.view = remote.view;
                    local.inflight = remote.inflight;
                    local.budget = remote.budget;
                }
                Err(StoreDown) => store = "redis (unreachable: showing this replica's fallback counters)",
            }
        }
        let window = |w: Option<Window>| {
            w.map(|w| json!({"limit": w.limit, "remaining": w.remaining, "used": w.limit.saturating_sub(w.remaining), "reset": format_reset(w.reset)}))
        };
        let budget = match (limits.budget, period) {
            (Some(b), Some(p)) => {
                let spent = nanos_to_usd(local.budget.spent);
                json!({
                    "usd": b.usd, "per": per_str(b.per), "period": p.label(),
                    "spent_usd": spent, "reserved_usd": nanos_to_usd(local.budget.reserved),
                    "remaining_usd": (b.usd - spent).max(0.0),
                    "resets_in": format_reset(p.remaining(self.clock.now())),
                })
            }
            _ => Value::Null,
        };
        let totals = &limits.totals;
        Some(json!({
            "key": limits.name,
            "store": store,
            "limits": {
                "rpm": limits.rate.rpm, "tpm": limits.rate.tpm, "concurrent": limits.rate.concurrent,
                "budget": limits.budget.map(|b| json!({"usd": b.usd, "per": per_str(b.per)})),
            },
            "requests": window(local.view.requests),
            "tokens": window(local.view.tokens),
            "concurrent": {"limit": limits.rate.concurrent, "in_flight": local.inflight},
            "budget": budget,
            "totals": {
                "since": totals.since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                "requests": totals.requests.load(Ordering::Relaxed),
                "prompt_tokens": totals.prompt_tokens.load(Ordering::Relaxed),
                "completion_tokens": totals.completion_tokens.load(Ordering::Relaxed),
                "cost_usd": nanos_to_usd(totals.cost_nanos.load(Ordering::Relaxed)),
            },
        }))
    }
}

/// Totals stop at the top instead of wrapping round to small numbers (upstreams report usage).
fn add_saturating(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_add(n)));
}

fn estimate_usage(estimate: Estimate) -> Usage {
    Usage {
        prompt_tokens: estimate.prompt,
        completion_tokens: estimate.completion,
        cached_tokens: 0,
        cache_write_tokens: 0,
    }
}

/// Where an admission's reservation was made, so it is settled there.
#[derive(Debug)]
enum Via {
    Local,
    Redis { store: Arc<RedisStore>, member: String },
}

/// A request's reservation, held by the request path. Settled exactly once: by
/// [`Limits::finish`] with what the request used, or on drop with nothing used, so its place
/// in flight is always freed.
#[derive(Debug)]
pub struct Admission {
    key: Arc<KeyLimits>,
    via: Via,
    tokens: u64,
    cost: i64,
    period: Option<Period>,
    /// The rate headers for this response.
    pub view: RateView,
    settled: bool,
}

impl Admission {
    fn settle(mut self, tokens: u64, cost: i64) {
        self.settle_once(tokens, cost);
    }

    fn settle_once(&mut self, tokens: u64, cost: i64) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        match &mut self.via {
            Via::Local => self.key.local.settle(self.tokens, tokens, self.period, self.cost, cost),
            Via::Redis { store, member } => {
                let settlement = redis::Settlement {
                    member: std::mem::take(member),
                    used_tokens: tokens,
                    period: self.period,
                    spent: cost,
                    revoke: false,
                };
                store.settle(&self.key, settlement);
            }
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.settle_once(0, 0);
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing, reason = "tests use known small numbers")]
mod tests {
    use super::*;

    fn config(rate: &str) -> Config {
        let yaml = format!(
            "backends:\n  m: {{ kind: mock }}\nmodels:\n  m: {{ targets: [ {{ backend: m, model: m }} ] }}\n\
             keys:\n  - {{ name: a, key: \"{}\", rate: {rate} }}\n  - {{ name: b, key: \"{}\" }}\n\
             state: {{ store: memory, on_error: closed, default_max_tokens: 16 }}\n",
            crate::auth::hash_key("ka"),
            crate::auth::hash_key("kb"),
        );
        match crate::config::load_str(&yaml, "t.yaml", &|_| None) {
            Ok(config) => config,
            Err(err) => panic!("{err}"),
        }
    }

    #[test]
    fn reload_keeps_counters_and_rebuilds_only_changed_rates() {
        let first = Limits::build(&config("{ rpm: 5 }"), None);
        assert_eq!(first.default_max_tokens, 16);
        assert_eq!(first.on_error, FailMode::Closed);
        assert!(first.keys["a"].limited() && !first.keys["b"].limited());
        let same = Limits::build(&config("{ rpm: 5 }"), Some(&first));
        assert!(Arc::ptr_eq(&first.keys["a"].local, &same.keys["a"].local));
        assert!(Arc::ptr_eq(&first.keys["a"].totals, &same.keys["a"].totals));
        assert!(Arc::ptr_eq(&first.clock, &same.clock));
        let changed = Limits::build(&config("{ rpm: 6 }"), Some(&same));
        assert!(!Arc::ptr_eq(&same.keys["a"].local, &changed.keys["a"].local));
        assert!(Arc::ptr_eq(&same.keys["a"].totals, &changed.keys["a"].totals));
        // In-flight counts and spend go on across the rebuild.
        let admitted = same.keys["a"].local.admit(&Demand::default());
        assert!(admitted.is_ok());
        assert_eq!(changed.keys["a"].local.usage(None).inflight, 1);
    }
}
