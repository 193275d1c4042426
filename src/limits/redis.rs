//! The Redis store: limits and budgets shared by every replica.
//!
//! Owns: four Lua scripts run with `EVALSHA` (loaded on first use), each atomic on the
//! server, so N replicas together admit what one would. Time inside the scripts is the
//! Redis server's `TIME`, so replicas' clocks need not agree.
//! - admit (one round trip, bounded by `state.timeout`): checks concurrency, the `tpm`
//!   bucket, the budget and the `rpm` GCRA, and only if all pass takes all four;
//! - settle (one round trip, spawned off the request): frees the place in flight and trades
//!   reserved tokens and cost for the real ones. It is idempotent per admission: the admit
//!   script records what it reserved under the admission's member id, and settling consumes
//!   that record, so a retried settlement (or one whose answer was lost) counts once;
//! - revoke (the settle script in its undo mode): an admission whose answer weir never read
//!   (the request was cancelled at the `.await`, or `state.timeout` passed) is owned by a
//!   [`Pending`] guard from before the call; dropping it revokes the admission, whether the
//!   script ran, runs later (a stalled Redis executes what was queued when it resumes) or
//!   never runs: a revoke that finds nothing leaves a tombstone the late admission obeys;
//! - renew (every [`RENEW_EVERY`], one call per key with requests in flight on this replica):
//!   pushes the leases of this replica's live admissions [`LEASE`] into the future, so leases
//!   are short (a dead replica's places free themselves within a minute) yet a long stream
//!   keeps its place;
//! - peek (read-only, for `/admin/keys/{name}/usage`).
//!
//! Keys, hash-tagged by key name so a key's state sits in one cluster slot:
//! `weir:rl:{NAME}:rpm` (GCRA theoretical arrival time, ms), `weir:rl:{NAME}:tpm` (hash
//! `level`, `at`), `weir:rl:{NAME}:inflight` (sorted set of admissions by lease expiry),
//! `weir:budget:{NAME}:PERIOD` (hash `spent`, `reserved` in nano-USD, expiring a week after
//! the period ends), and `weir:rl:{NAME}:adm:MEMBER` (hash `tokens`, `cost`: what one
//! admission holds until settled, expiring after [`HOLD`]; or `revoked`, a tombstone,
//! expiring after [`TOMBSTONE`]). Spend therefore survives a gateway restart.
//!
//! Must not: hold the request for longer than `state.timeout`, or hammer a Redis that is
//! down: after a failure the store is skipped for [`RETRY_AFTER_FAILURE`], and the outage
//! is logged once when it starts and once when it ends.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

use super::budget::Period;
use super::headers::{RateView, Window};
use super::memory::BudgetWindow;
use super::{Demand, KeyLimits, Refusal};

/// A place in flight expires this long after it was taken or last renewed, so a replica that
/// died (or lost Redis) holds a key's concurrency for at most this long.
const LEASE: Duration = Duration::from_secs(60);
/// Live admissions renew their leases this often (a few renewals fit in one lease).
const RENEW_EVERY: Duration = Duration::from_secs(20);
/// Members renewed by one script call at most.
const RENEW_BATCH: usize = 500;
/// How long a failed store is left alone before it is tried again.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Settlements run off the request path and may wait longer than admissions.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);
const SETTLE_ATTEMPTS: u32 = 3;
/// Budget hashes outlive their period by this, for `/admin` and audits.
const BUDGET_RETENTION: u64 = 7 * 86_400;
/// How long an admission's record is kept: a request settled later than this is not
/// reconciled (its reservation stays, as if it had used it).
const HOLD: Duration = Duration::from_secs(24 * 3600);
/// How long a revoke's tombstone is kept: longer than any stall after which Redis would
/// still run an admission queued before it.
const TOMBSTONE: Duration = Duration::from_secs(3600);

const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local conc, member, lease = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local limit, cost, expire_at = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])

-- Revoked before it ran (or already seen): take nothing.
if redis.call('EXISTS', KEYS[5]) == 1 then return {0, 5, 0, 0} end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if conc > 0 and redis.call('ZCARD', KEYS[3]) >= conc then return {0, 3, 1000, 0} end

local level = 0
if tpm > 0 then
  local b = redis.call('HMGET', KEYS[2], 'level', 'at')
  level = tonumber(b[1]) or tpm
  local at = tonumber(b[2]) or now
  level = math.min(tpm, level + math.max(0, now - at) * tpm / 60000)
  local need = math.min(tokens, tpm)
  if level < need then return {0, 2, math.ceil((need - level) * 60000 / tpm), 0} end
end

if limit >= 0 then
  local b = redis.call('HMGET', KEYS[4], 'spent', 'reserved')
  local spent, reserved = tonumber(b[1]) or 0, tonumber(b[2]) or 0
  if spent + reserved >= limit or spent + reserved + cost > limit then return {0, 4, 0, spent} end
end

local tat = now
if rpm > 0 then
  local interval = 60000 / rpm
  tat = math.max(tonumber(redis.call('GET', KEYS[1])) or now, now)
  local allow_at = tat + interval - 60000
  if allow_at > now then return {0, 1, math.ceil(allow_at - now), 0} end
  tat = tat + interval
  redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil(tat - now) + 1000)
end

redis.call('ZADD', KEYS[3], now + lease, member)
redis.call('PEXPIRE', KEYS[3], lease)
redis.call('HSET', KEYS[5], 'tokens', ARGV[3], 'cost', ARGV[8])
redis.call('PEXPIRE', KEYS[5], ARGV[10])
if tpm > 0 then
  level = level - tokens
  redis.call('HSET', KEYS[2], 'level', tostring(level), 'at', now)
  redis.call('PEXPIRE', KEYS[2], 120000)
end
if limit >= 0 and cost > 0 then
  redis.call('HINCRBY', KEYS[4], 'reserved', ARGV[8])
  redis.call('EXPIREAT', KEYS[4], expire_at)
end
local rpm_remaining, rpm_reset = 0, 0
if rpm > 0 then
  local interval = 60000 / rpm
  rpm_remaining = math.floor((now + 60000 - tat) / interval)
  rpm_reset = math.ceil(tat - now)
end
local tpm_remaining, tpm_reset = 0, 0
if tpm > 0 then
  tpm_remaining = math.floor(math.max(level, 0))
  tpm_reset = math.ceil((tpm - level) * 60000 / tpm)
end
return {1, rpm_remaining, rpm_reset, tpm_remaining, tpm_reset}
";

const SETTLE: &str = r"
-- KEYS: tpm, inflight, budget, admission record, rpm.
-- ARGV: tpm, used tokens, member, spent, budget expiry, revoke (1/0), rpm, hold ms.
local held = redis.call('HMGET', KEYS[4], 'tokens', 'cost')
redis.call('ZREM', KEYS[2], ARGV[3])
if not held[1] then
  -- Settled already, or revoked before the admission ran: leave a tombstone for it.
  if ARGV[6] == '1' then
    redis.call('HSET', KEYS[4], 'revoked', 1)
    redis.call('PEXPIRE', KEYS[4], ARGV[8])
  end
  return 0
end
redis.call('DEL', KEYS[4])
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[4], 'revoked', 1)
  redis.call('PEXPIRE', KEYS[4], ARGV[8])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tpm = tonumber(ARGV[1])
local delta = tonumber(ARGV[2]) - (tonumber(held[1]) or 0)
if tpm > 0 and delta ~= 0 then
  local b = redis.call('HMGET', KEYS[1], 'level', 'at')
  local level = tonumber(b[1]) or tpm
  local at = tonumber(b[2]) or now
  level = math.min(tpm, level + math.max(0, now - at) * tpm / 60000)
  -- Debt from an answer that used more than reserved is bounded by one window.
  level = math.max(-tpm, math.min(tpm, level - delta))
  redis.call('HSET', KEYS[1], 'level', tostring(level), 'at', now)
  redis.call('PEXPIRE', KEYS[1], 120000)
end
local rpm = tonumber(ARGV[7])
if ARGV[6] == '1' and rpm > 0 then
  -- An admission nobody used gives its request back to the GCRA.
  local tat = tonumber(redis.call('GET', KEYS[5]))
  local ttl = redis.call('PTTL', KEYS[5])
  if tat and ttl > 0 then
    redis.call('SET', KEYS[5], tostring(tat - 60000 / rpm), 'PX', ttl)
  end
end
local reserved, spent, expire_at = tonumber(held[2]) or 0, tonumber(ARGV[4]), tonumber(ARGV[5])
if expire_at > 0 and (reserved ~= 0 or spent ~= 0) then
  if reserved ~= 0 and redis.call('HINCRBY', KEYS[3], 'reserved', '-' .. held[2]) < 0 then
    redis.call('HSET', KEYS[3], 'reserved', 0)
  end
  if spent ~= 0 then
    -- An upstream's absurd usage saturates the spend instead of failing the script.
    local current = tonumber(redis.call('HGET', KEYS[3], 'spent')) or 0
    if current + spent >= 9.2e18 then
      redis.call('HSET', KEYS[3], 'spent', '9200000000000000000')
    else
      redis.call('HINCRBY', KEYS[3], 'spent', ARGV[4])
    end
  end
  redis.call('EXPIREAT', KEYS[3], expire_at)
end
return 1
";

const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], lease)
return 1
";

const PEEK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local rpm_remaining, rpm_reset = rpm, 0
if rpm > 0 then
  local interval = 60000 / rpm
  local tat = math.max(tonumber(redis.call('GET', KEYS[1])) or now, now)
  rpm_remaining = math.min(rpm, math.floor((now + 60000 - tat) / interval))
  rpm_reset = math.ceil(tat - now)
end
local level, tpm_reset = tpm, 0
if tpm > 0 then
  local b = redis.call('HMGET', KEYS[2], 'level', 'at')
  level = tonumber(b[1]) or tpm
  local at = tonumber(b[2]) or now
  level = math.min(tpm, level + math.max(0, now - at) * tpm / 60000)
  tpm_reset = math.ceil((tpm - level) * 60000 / tpm)
end
local inflight = redis.call('ZCOUNT', KEYS[3], now, '+inf')
local b = redis.call('HMGET', KEYS[4], 'spent', 'reserved')
return {rpm_remaining, rpm_reset, math.floor(math.max(level, 0)), tpm_reset, inflight, tonumber(b[1]) or 0, tonumber(b[2]) or 0}
";

/// The store could not answer in time (down, unreachable, or too slow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreDown;

/// What a finished request hands back to the store. What it reserved is read from the
/// store's record of the admission, so a settlement applies at most once.
#[derive(Debug)]
pub struct Settlement {
    pub member: String,
    pub used_tokens: u64,
    pub period: Option<Period>,
    pub spent: i64,
    /// Undo an admission nobody used (its request is given back too) and leave a tombstone.
    pub revoke: bool,
}

/// An admission sent to Redis whose answer has not been read yet. Made before the call is
/// awaited; unless [`Pending::answered`] is called, dropping it (the request's future was
/// cancelled, or `state.timeout` passed) revokes the admission, so whatever the script did,
/// does later, or never does, the request holds nothing in Redis afterwards.
#[derive(Debug)]
pub struct Pending {
    store: Arc<RedisStore>,
    key: Arc<KeyLimits>,
    member: String,
    period: Option<Period>,
    armed: bool,
}

impl Pending {
    /// The script's answer was read: from here the [`super::Admission`] (or nothing, for a
    /// refusal) owns what it took.
    fn answered(mut self) {
        self.armed = false;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let settlement = Settlement {
            member: std::mem::take(&mut self.member),
            used_tokens: 0,
            period: self.period,
            spent: 0,
            revoke: true,
        };
        self.store.settle(&self.key, settlement);
    }
}

/// A key's windows as Redis holds them.
#[derive(Debug)]
pub struct RemoteUsage {
    pub view: RateView,
    pub inflight: u64,
    pub budget: BudgetWindow,
}

#[derive(Debug)]
pub struct RedisStore {
    url: String,
    timeout: Duration,
    /// Created on first use (it needs the runtime); `Err` when the URL is unusable.
    connection: OnceLock<Result<ConnectionManager, String>>,
    admit: Script,
    settle: Script,
    renew: Script,
    peek: Script,
    /// Lease length and renewal period (constants, shortened in tests).
    lease: Duration,
    renew_every: Duration,
    /// This replica's live admissions: in-flight key → members, renewed until settled.
    live: Mutex<HashMap<String, HashSet<String>>>,
    renewing: AtomicBool,
    epoch: Instant,
    /// Milliseconds after `epoch` before which the store is not tried.
    skip_until: AtomicU64,
    down: AtomicBool,
}

impl RedisStore {
    pub fn new(url: &str, timeout: Duration) -> RedisStore {
        RedisStore::with_lease(url, timeout, LEASE, RENEW_EVERY)
    }

    fn with_lease(url: &str, timeout: Duration, lease: Duration, renew_every: Duration) -> RedisStore {
        RedisStore {
            url: url.to_owned(),
            timeout,
            connection: OnceLock::new(),
            admit: Script::new(ADMIT),
            settle: Script::new(SETTLE),
            renew: Script::new(RENEW),
            peek: Script::new(PEEK),
            lease,
            renew_every,
            live: Mutex::new(HashMap::new()),
            renewing: AtomicBool::new(false),
            epoch: Instant::now(),
            skip_until: AtomicU64::new(0),
            down: AtomicBool::new(false),
        }
    }

    pub fn same_as(&self, url: &str, timeout: Duration) -> bool {
        self.url == url && self.timeout == timeout
    }

    /// Runs the admission script; `Err` when the store did not answer in time (then, as
    /// when this future is dropped before it is done, the admission is revoked).
    pub async fn admit(
        self: &Arc<Self>,
        key: &Arc<KeyLimits>,
        demand: &Demand,
        member: &str,
    ) -> Result<Result<RateView, Refusal>, StoreDown> {
        let mut connection = self.connection()?;
        let period = demand.budget.map(|b| b.period);
        let names = KeyNames::new(&key.name, period);
        let (limit, expire_at) = demand.budget.map_or((-1, 0), |b| (b.limit, budget_expiry(b.period)));
        let mut call = self.admit.prepare_invoke();
        call.key(&names.rpm).key(&names.tpm).key(&names.inflight).key(&names.budget).key(names.admission(member));
        call.arg(key.rate.rpm.unwrap_or(0)).arg(key.rate.tpm.unwrap_or(0)).arg(demand.tokens);
        call.arg(key.rate.concurrent.unwrap_or(0)).arg(member).arg(millis_u64(self.lease));
        call.arg(limit).arg(demand.cost).arg(expire_at).arg(millis_u64(HOLD));
        let pending =
            Pending { store: Arc::clone(self), key: Arc::clone(key), member: member.to_owned(), period, armed: true };
        let reply: Vec<i64> = self.run(call.invoke_async(&mut connection), self.timeout).await?;
        pending.answered();
        let at = |i: usize| reply.get(i).copied().unwrap_or(0);
        let millis = |i: usize| Duration::from_millis(u64::try_from(at(i)).unwrap_or(0));
        if at(0) == 1 {
            self.track(&names.inflight, member);
            let count = |i: usize| u64::try_from(at(i)).unwrap_or(0);
            let requests = key.rate.rpm.map(|rpm| Window { limit: rpm, remaining: count(1), reset: millis(2) });
            let tokens = key.rate.tpm.map(|tpm| Window { limit: tpm, remaining: count(3), reset: millis(4) });
            return Ok(Ok(RateView { requests, tokens }));
        }
        Ok(Err(match at(1) {
            1 => Refusal::Requests { wait: millis(2) },
            2 => Refusal::Tokens { wait: millis(2) },
            3 => Refusal::Concurrent,
            // 5: a tombstone, which only a revoke of this very member can leave.
            5 => Refusal::Concurrent,
            _ => Refusal::Budget { spent: at(3) },
        }))
    }

    /// Settles in a task of its own: the request does not wait for it. It is tried a few
    /// times, even while admissions skip the store, because a lost settlement keeps its place
    /// in flight until the lease ends; after the last try its reservation stays. Tries are
    /// safe to repeat: the script applies a member's settlement once.
    pub fn settle(self: &Arc<Self>, key: &KeyLimits, settlement: Settlement) {
        let names = KeyNames::new(&key.name, settlement.period);
        self.untrack(&names.inflight, &settlement.member);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let store = Arc::clone(self);
        let (tpm, rpm) = (key.rate.tpm.unwrap_or(0), key.rate.rpm.unwrap_or(0));
        runtime.spawn(async move {
            let expire_at = settlement.period.map_or(0, budget_expiry);
            let mut call = store.settle.prepare_invoke();
            call.key(&names.tpm).key(&names.inflight).key(&names.budget);
            call.key(names.admission(&settlement.member)).key(&names.rpm);
            call.arg(tpm).arg(settlement.used_tokens).arg(&settlement.member);
            call.arg(settlement.spent).arg(expire_at).arg(u8::from(settlement.revoke)).arg(rpm);
            call.arg(millis_u64(TOMBSTONE));
            for attempt in 0..SETTLE_ATTEMPTS {
                if attempt > 0 {
                    tokio::time::sleep(RETRY_AFTER_FAILURE).await;
                }
                let Ok(mut connection) = store.manager() else { return };
                let settled: Result<i64, StoreDown> =
                    store.run(call.invoke_async(&mut connection), SETTLE_TIMEOUT).await;
                if settled.is_ok() {
                    return;
                }
            }
            tracing::warn!(key = %names.inflight, "limits: a settlement could not reach Redis; its reservation stays");
        });
    }

    /// Renews `member`'s lease until it is settled (starting the renewal task once).
    fn track(self: &Arc<Self>, inflight: &str, member: &str) {
        self.live_members().entry(inflight.to_owned()).or_default().insert(member.to_owned());
        if !self.renewing.swap(true, Ordering::AcqRel)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(renew_leases(Arc::downgrade(self), self.renew_every));
        }
    }

    fn untrack(&self, inflight: &str, member: &str) {
        let mut live = self.live_members();
        if let Some(members) = live.get_mut(inflight) {
            members.remove(member);
            if members.is_empty() {
                live.remove(inflight);
            }
        }
    }

    fn live_members(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<String>>> {
        // Only inserts and removes happen under this lock: a poisoned one is still whole.
        self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One renewal round: every live member's lease moves [`LEASE`] ahead.
    async fn renew_round(&self) {
        let batches: Vec<(String, Vec<String>)> = self
            .live_members()
            .iter()
            .flat_map(|(inflight, members)| {
                let members: Vec<String> = members.iter().cloned().collect();
                members.chunks(RENEW_BATCH).map(|chunk| (inflight.clone(), chunk.to_vec())).collect::<Vec<_>>()
            })
            .collect();
        for (inflight, members) in batches {
            let Ok(mut connection) = self.manager() else { return };
            let mut call = self.renew.prepare_invoke();
            call.key(&inflight).arg(millis_u64(self.lease));
            for member in &members {
                call.arg(member);
            }
            let renewed: Result<i64, StoreDown> = self.run(call.invoke_async(&mut connection), SETTLE_TIMEOUT).await;
            if renewed.is_err() {
                // Down: the leases run out on their own; the next round tries again.
                return;
            }
        }
    }

    pub async fn usage(&self, key: &KeyLimits, period: Option<Period>) -> Result<RemoteUsage, StoreDown> {
        let mut connection = self.connection()?;
        let names = KeyNames::new(&key.name, period);
        let mut call = self.peek.prepare_invoke();
        call.key(&names.rpm).key(&names.tpm).key(&names.inflight).key(&names.budget);
        call.arg(key.rate.rpm.unwrap_or(0)).arg(key.rate.tpm.unwrap_or(0));
        let reply: Vec<i64> = self.run(call.invoke_async(&mut connection), SETTLE_TIMEOUT).await?;
        let at = |i: usize| reply.get(i).copied().map_or(0, |v| u64::try_from(v).unwrap_or(0));
        let view = RateView {
            requests: key.rate.rpm.map(|rpm| Window {
                limit: rpm,
                remaining: at(0),
                reset: Duration::from_millis(at(1)),
            }),
            tokens: key.rate.tpm.map(|tpm| Window {
                limit: tpm,
                remaining: at(2),
                reset: Duration::from_millis(at(3)),
            }),
        };
        let nanos = |i: usize| i64::try_from(at(i)).unwrap_or(i64::MAX);
        let budget = BudgetWindow { period: period.map_or(0, |p| p.id), spent: nanos(5), reserved: nanos(6) };
        Ok(RemoteUsage { view, inflight: at(4), budget })
    }

    /// The connection for a request: none while the store is being left alone.
    fn connection(&self) -> Result<ConnectionManager, StoreDown> {
        if self.skipping() {
            return Err(StoreDown);
        }
        self.manager()
    }

    fn manager(&self) -> Result<ConnectionManager, StoreDown> {
        let made = self.connection.get_or_init(|| {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(250))))
                .set_response_timeout(Some(self.timeout.max(SETTLE_TIMEOUT)))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1));
            Client::open(self.url.as_str())
                .and_then(|client| ConnectionManager::new_lazy_with_config(client, config))
                .map_err(|err| err.to_string())
        });
        match made {
            Ok(connection) => Ok(connection.clone()),
            Err(err) => {
                self.failed(err);
                Err(StoreDown)
            }
        }
    }

    async fn run<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
        timeout: Duration,
    ) -> Result<T, StoreDown> {
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(value)) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!(store = %redact(&self.url), "limits: the Redis state store answers again; limits are shared again");
                }
                Ok(value)
            }
            Ok(Err(err)) => {
                self.failed(&err.to_string());
                Err(StoreDown)
            }
            Err(_) => {
                self.failed(&format!("no answer within {:?} (state.timeout)", timeout));
                Err(StoreDown)
            }
        }
    }

    fn skipping(&self) -> bool {
        self.elapsed_ms() < self.skip_until.load(Ordering::Relaxed)
    }

    fn failed(&self, error: &str) {
        let until = self.elapsed_ms().saturating_add(millis_u64(RETRY_AFTER_FAILURE));
        self.skip_until.store(until, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                store = %redact(&self.url), error,
                "limits: the Redis state store is unreachable; until it answers, state.on_error decides (open: each replica limits on its own counters; closed: requests of limited keys get 503)"
            );
        }
    }

    fn elapsed_ms(&self) -> u64 {
        millis_u64(self.epoch.elapsed())
    }
}

fn millis_u64(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The renewal task: runs while the store exists (a reload to another store ends it).
async fn renew_leases(store: std::sync::Weak<RedisStore>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(store) = store.upgrade() else { return };
        store.renew_round().await;
    }
}

/// Redis key names for one key (and budget period).
struct KeyNames {
    /// `weir:rl:{NAME}`
    prefix: String,
    rpm: String,
    tpm: String,
    inflight: String,
    budget: String,
}

impl KeyNames {
    fn new(name: &str, period: Option<Period>) -> KeyNames {
        let budget = match period {
            Some(p) => format!("weir:budget:{{{name}}}:{}", p.label()),
            None => format!("weir:budget:{{{name}}}:none"),
        };
        let prefix = format!("weir:rl:{{{name}}}");
        KeyNames {
            rpm: format!("{prefix}:rpm"),
            tpm: format!("{prefix}:tpm"),
            inflight: format!("{prefix}:inflight"),
            budget,
            prefix,
        }
    }

    /// The record of what admission `member` holds (same hash slot as the rest).
    fn admission(&self, member: &str) -> String {
        format!("{}:adm:{member}", self.prefix)
    }
}

fn budget_expiry(period: Period) -> u64 {
    period.ends_at.saturating_add(BUDGET_RETENTION)
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let (head, tail) = (url.get(..scheme), url.get(at.saturating_add(1)..));
            format!("{}://***@{}", head.unwrap_or_default(), tail.unwrap_or_default())
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing, reason = "tests use known small numbers")]
mod tests {
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};

    use super::*;
    use crate::config::RateConfig;
    use crate::limits::memory::LocalKey;

    struct Server(Child);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A real `redis-server` on a free port; `None` (skip) when it is not installed, unless
    /// `CI=true`.
    fn redis_server() -> Option<(Server, u16)> {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let args = ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
        match Command::new("redis-server").args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
            Ok(child) => {
                let server = Server(child);
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                let deadline = Instant::now() + Duration::from_secs(10);
                while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
                    assert!(Instant::now() < deadline, "redis-server did not listen");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Some((server, port))
            }
            Err(err) if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
                panic!("redis-server is required under CI=true: {err}")
            }
            Err(err) => {
                eprintln!("SKIPPED: redis-server is not available ({err})");
                None
            }
        }
    }

    fn key(concurrent: u64) -> Arc<KeyLimits> {
        let rate = RateConfig { concurrent: Some(concurrent), ..RateConfig::default() };
        Arc::new(KeyLimits {
            name: "k".into(),
            rate,
            budget: None,
            local: LocalKey::carry(rate, None),
            totals: Arc::default(),
        })
    }

    async fn in_flight(store: &RedisStore, key: &KeyLimits) -> u64 {
        store.usage(key, None).await.unwrap().inflight
    }

    /// Leases are short: a replica that stops renewing (it died) frees its places within a
    /// lease, while a live replica's admissions keep theirs for as long as they run.
    #[tokio::test]
    async fn live_leases_are_renewed_and_dead_ones_expire() {
        let Some((_server, port)) = redis_server() else { return };
        let url = format!("redis://127.0.0.1:{port}/");
        let lease = Duration::from_millis(600);
        let live = Arc::new(RedisStore::with_lease(&url, Duration::from_secs(1), lease, Duration::from_millis(150)));
        let dead = Arc::new(RedisStore::with_lease(&url, Duration::from_secs(1), lease, Duration::from_secs(3600)));
        let key = key(2);
        let demand = Demand::default();
        assert!(live.admit(&key, &demand, "a1").await.unwrap().is_ok());
        assert!(dead.admit(&key, &demand, "b1").await.unwrap().is_ok());
        assert_eq!(live.admit(&key, &demand, "a2").await.unwrap(), Err(Refusal::Concurrent));
        assert_eq!(in_flight(&live, &key).await, 2);

        tokio::time::sleep(lease * 2).await;
        assert_eq!(in_flight(&live, &key).await, 1, "the dead replica's lease ran out, the live one was renewed");
        assert!(live.admit(&key, &demand, "a3").await.unwrap().is_ok());

        for member in ["a1", "a3"] {
            let settlement =
                Settlement { member: member.into(), used_tokens: 0, period: None, spent: 0, revoke: false };
            live.settle(&key, settlement);
        }
        assert!(live.live_members().is_empty(), "settled admissions are no longer renewed");
        let deadline = Instant::now() + Duration::from_secs(5);
        while in_flight(&live, &key).await > 0 {
            assert!(Instant::now() < deadline, "settlements did not free the places");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn budgeted() -> (Arc<KeyLimits>, Demand, Period) {
        let key = key(100);
        let period = Period { per: crate::config::BudgetPeriod::Month, id: 202612, ends_at: 1_798_761_600 };
        let demand = Demand { tokens: 0, cost: 500, budget: Some(super::super::BudgetDemand { period, limit: 1_000 }) };
        (key, demand, period)
    }

    async fn settle_and_wait(store: &Arc<RedisStore>, key: &KeyLimits, settlement: Settlement) {
        store.settle(key, settlement);
        // Settlements run in a task of their own; give it time to land.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// A settlement counts once however often it is delivered; a revoke that reaches Redis
    /// before its admission leaves a tombstone, so the late admission takes nothing; a spend
    /// past i64 saturates instead of failing the script.
    #[tokio::test]
    async fn settlements_are_idempotent_and_revokes_beat_late_admissions() {
        let Some((_server, port)) = redis_server() else { return };
        let store = Arc::new(RedisStore::new(&format!("redis://127.0.0.1:{port}/"), Duration::from_secs(1)));
        let (key, demand, period) = budgeted();
        let spend = |member: &str, spent: i64| Settlement {
            member: member.into(),
            used_tokens: 0,
            period: Some(period),
            spent,
            revoke: false,
        };
        assert!(store.admit(&key, &demand, "m1").await.unwrap().is_ok());
        for _ in 0..3 {
            settle_and_wait(&store, &key, spend("m1", 300)).await;
        }
        let budget = store.usage(&key, Some(period)).await.unwrap().budget;
        assert_eq!((budget.spent, budget.reserved), (300, 0), "settled once");

        let revoke = Settlement { revoke: true, ..spend("m2", 0) };
        settle_and_wait(&store, &key, revoke).await;
        assert_eq!(store.admit(&key, &demand, "m2").await.unwrap(), Err(Refusal::Concurrent), "tombstone");
        let usage = store.usage(&key, Some(period)).await.unwrap();
        assert_eq!((usage.inflight, usage.budget.reserved), (0, 0), "the late admission took nothing");

        assert!(store.admit(&key, &Demand { cost: 0, ..demand }, "m3").await.unwrap().is_ok());
        settle_and_wait(&store, &key, spend("m3", i64::MAX)).await;
        assert!(store.admit(&key, &Demand { cost: 0, ..demand }, "m4").await.unwrap().is_err());
        settle_and_wait(&store, &key, spend("m4", i64::MAX)).await;
        let usage = store.usage(&key, Some(period)).await.unwrap();
        assert_eq!(usage.budget.spent, 9_200_000_000_000_000_000, "saturated, not failed");
        assert_eq!(usage.inflight, 0);
    }
}
