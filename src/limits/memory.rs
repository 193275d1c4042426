//! Per-process limit state for one key: the `memory` store, and the fallback of the Redis one.
//!
//! Owns: a `governor` GCRA limiter for `rpm` (burst = rpm, one request back every 60/rpm s),
//! a token bucket for `tpm` (capacity tpm, refilled continuously over a minute, reserved by
//! the estimate and corrected by the real usage, so it may go into debt), an atomic count of
//! requests in flight, and the spend of the current budget period.
//! Must not: hold a lock across an `.await` (none of this is async) or hold one for longer
//! than a few arithmetic operations.
//!
//! Admission takes the reversible parts first (concurrency, tokens, budget) and the GCRA cell
//! last, undoing the others when the GCRA refuses, so a refused request consumes nothing.
//!
//! Bounds: the bucket never admits more than its level (a request larger than the whole
//! bucket is refused: `Limits` turns that into OpenAI's "Request too large"), its debt from
//! answers that used more than reserved stops at one window (`-capacity`), counts saturate,
//! and every wait is a `Duration` built without a panic, however large the numbers.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use super::budget::Period;
use super::headers::{RateView, Window};
use super::{BudgetDemand, Demand, Refusal};
use crate::config::RateConfig;

type Gcra = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

const MINUTE: Duration = Duration::from_secs(60);

/// One key's local state. Rebuilt when the key's `rate` changes on reload; the in-flight
/// count and the budget window are carried over even then.
#[derive(Debug)]
pub struct LocalKey {
    rate: RateConfig,
    rpm: Option<Gcra>,
    windows: Mutex<Windows>,
    inflight: Arc<AtomicU64>,
    budget: Arc<Mutex<BudgetWindow>>,
}

#[derive(Debug)]
struct Windows {
    tokens: Option<TokenBucket>,
    /// What the GCRA said last, to show the requests window on answers it did not decide.
    rpm_remaining: u64,
    rpm_seen: Instant,
}

/// Spend of one budget period, in nano-USD.
#[derive(Debug, Default, Clone, Copy)]
pub struct BudgetWindow {
    pub period: u32,
    pub spent: i64,
    pub reserved: i64,
}

/// A key's window values, for `/admin/keys/{name}/usage`.
#[derive(Debug, Clone, Copy)]
pub struct LocalUsage {
    pub view: RateView,
    pub inflight: u64,
    pub budget: BudgetWindow,
}

impl LocalKey {
    /// State for `rate`, reusing `previous` whole when its rate is the same.
    pub fn carry(rate: RateConfig, previous: Option<&Arc<LocalKey>>) -> Arc<LocalKey> {
        if let Some(previous) = previous.filter(|p| p.rate == rate) {
            return Arc::clone(previous);
        }
        let rpm = rate.rpm.map(|rpm| {
            let burst = NonZeroU32::new(u32::try_from(rpm).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
            RateLimiter::direct(Quota::per_minute(burst)).with_middleware::<StateInformationMiddleware>()
        });
        let now = Instant::now();
        let tokens = rate.tpm.map(|tpm| TokenBucket::full(tpm, now));
        LocalKey {
            rate,
            rpm,
            windows: Mutex::new(Windows { tokens, rpm_remaining: rate.rpm.unwrap_or(0), rpm_seen: now }),
            inflight: previous.map_or_else(Arc::default, |p| Arc::clone(&p.inflight)),
            budget: previous.map_or_else(Arc::default, |p| Arc::clone(&p.budget)),
        }
        .into()
    }

    /// Admits `demand` or says which limit refused it; on success everything is reserved.
    pub fn admit(&self, demand: &Demand) -> Result<RateView, Refusal> {
        let max = self.rate.concurrent.unwrap_or(u64::MAX);
        let taken = self.inflight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then(|| n.saturating_add(1)));
        if taken.is_err() {
            return Err(Refusal::Concurrent);
        }
        let now = Instant::now();
        let mut windows = self.windows();
        if let Some(bucket) = &mut windows.tokens
            && let Err(wait) = bucket.take(demand.tokens, now)
        {
            drop(windows);
            self.release();
            return Err(Refusal::Tokens { wait });
        }
        if let Some(budget) = demand.budget
            && let Err(refusal) = self.reserve_budget(budget, demand.cost)
        {
            windows.give_back(demand.tokens, now);
            drop(windows);
            self.release();
            return Err(refusal);
        }
        if let Some(gcra) = &self.rpm {
            match gcra.check() {
                Ok(state) => {
                    windows.rpm_remaining = u64::from(state.remaining_burst_capacity());
                    windows.rpm_seen = now;
                }
                Err(not_until) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    windows.rpm_remaining = 0;
                    windows.rpm_seen = now;
                    windows.give_back(demand.tokens, now);
                    drop(windows);
                    if let Some(budget) = demand.budget {
                        self.settle_budget(budget.period, demand.cost, 0);
                    }
                    self.release();
                    return Err(Refusal::Requests { wait });
                }
            }
        }
        Ok(windows.view(&self.rate, now))
    }

    /// The request is over: frees its place and trades the reservation for what it used.
    pub fn settle(&self, reserved_tokens: u64, used_tokens: u64, period: Option<Period>, reserved: i64, spent: i64) {
        self.release();
        if reserved_tokens != used_tokens {
            let mut windows = self.windows();
            if let Some(bucket) = &mut windows.tokens {
                bucket.adjust(used_tokens as f64 - reserved_tokens as f64, Instant::now());
            }
        }
        if let Some(period) = period {
            self.settle_budget(period, reserved, spent);
        }
    }

    /// Frees one place in flight (never below zero, so a stray release cannot wrap).
    fn release(&self) {
        let _ = self.inflight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(1)));
    }

    /// The rate headers as they stand, without taking anything.
    pub fn view(&self) -> RateView {
        self.windows().view(&self.rate, Instant::now())
    }

    pub fn usage(&self, period: Option<Period>) -> LocalUsage {
        let mut budget = *self.budget_window();
        if period.is_some_and(|p| p.id != budget.period) {
            budget = BudgetWindow { period: period.map_or(0, |p| p.id), spent: 0, reserved: 0 };
        }
        LocalUsage { view: self.view(), inflight: self.inflight.load(Ordering::Acquire), budget }
    }

    fn reserve_budget(&self, BudgetDemand { period, limit }: BudgetDemand, cost: i64) -> Result<(), Refusal> {
        let mut window = self.budget_window();
        if window.period != period.id {
            *window = BudgetWindow { period: period.id, spent: 0, reserved: 0 };
        }
        let committed = window.spent.saturating_add(window.reserved);
        if committed >= limit || committed.saturating_add(cost) > limit {
            return Err(Refusal::Budget { spent: window.spent });
        }
        window.reserved = window.reserved.saturating_add(cost);
        Ok(())
    }

    /// Spend from a closed period is dropped with it: the new period starts from nothing.
    fn settle_budget(&self, period: Period, reserved: i64, spent: i64) {
        let mut window = self.budget_window();
        if window.period == period.id {
            window.reserved = window.reserved.saturating_sub(reserved).max(0);
            window.spent = window.spent.saturating_add(spent);
        }
    }

    fn windows(&self) -> MutexGuard<'_, Windows> {
        // A panic while holding this lock cannot leave the arithmetic half done in a way
        // worse than a lost update, so a poisoned lock is used as is.
        self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn budget_window(&self) -> MutexGuard<'_, BudgetWindow> {
        self.budget.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Windows {
    fn give_back(&mut self, tokens: u64, now: Instant) {
        if let Some(bucket) = &mut self.tokens {
            bucket.adjust(-(tokens as f64), now);
        }
    }

    fn view(&mut self, rate: &RateConfig, now: Instant) -> RateView {
        let requests = rate.rpm.map(|rpm| {
            let interval = MINUTE.as_secs_f64() / rpm as f64;
            let regained = (now.duration_since(self.rpm_seen).as_secs_f64() / interval) as u64;
            let remaining = self.rpm_remaining.saturating_add(regained).min(rpm);
            Window { limit: rpm, remaining, reset: seconds(rpm.saturating_sub(remaining) as f64 * interval) }
        });
        let tokens = self.tokens.as_mut().map(|bucket| bucket.window(now));
        RateView { requests, tokens }
    }
}

/// `tpm` as a bucket of `capacity` tokens refilled at capacity per minute.
#[derive(Debug)]
struct TokenBucket {
    capacity: f64,
    level: f64,
    at: Instant,
}

impl TokenBucket {
    fn full(capacity: u64, now: Instant) -> TokenBucket {
        TokenBucket { capacity: capacity as f64, level: capacity as f64, at: now }
    }

    fn refill(&mut self, now: Instant) {
        let per_sec = self.capacity / MINUTE.as_secs_f64();
        self.level = (self.level + now.duration_since(self.at).as_secs_f64() * per_sec).min(self.capacity);
        self.at = now;
    }

    /// Takes `tokens` when the bucket holds them. A request larger than the whole bucket is
    /// refused with the wait until the bucket is full (it would never fit; `Limits` refuses
    /// it before asking).
    fn take(&mut self, tokens: u64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let need = tokens as f64;
        if self.level < need || need > self.capacity {
            let per_sec = self.capacity / MINUTE.as_secs_f64();
            return Err(seconds((need.min(self.capacity) - self.level) / per_sec));
        }
        self.level -= need;
        Ok(())
    }

    /// Positive `delta` takes more (the answer used more than reserved), negative gives back.
    /// Debt stops at one window: an upstream's absurd `usage` cannot lock the key for longer.
    fn adjust(&mut self, delta: f64, now: Instant) {
        self.refill(now);
        self.level = (self.level - delta).clamp(-self.capacity, self.capacity);
    }

    fn window(&mut self, now: Instant) -> Window {
        self.refill(now);
        let per_sec = self.capacity / MINUTE.as_secs_f64();
        Window {
            limit: self.capacity as u64,
            remaining: self.level.max(0.0) as u64,
            reset: seconds((self.capacity - self.level).max(0.0) / per_sec),
        }
    }
}

/// Seconds as a `Duration`: negative and NaN are zero, too large is `Duration::MAX`.
fn seconds(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BudgetPeriod;

    fn demand(tokens: u64) -> Demand {
        Demand { tokens, cost: 0, budget: None }
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_refill_over_a_minute_and_follow_real_usage() {
        let key = LocalKey::carry(RateConfig { tpm: Some(600), ..RateConfig::default() }, None);
        assert!(key.admit(&demand(500)).is_ok());
        assert!(matches!(key.admit(&demand(200)), Err(Refusal::Tokens { .. })));
        // The answer used 100, not 500: 400 come back.
        key.settle(500, 100, None, 0, 0);
        let view = key.admit(&demand(200)).unwrap();
        assert_eq!(view.tokens.unwrap().remaining, 300);
        key.settle(200, 200, None, 0, 0);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(key.view().tokens.unwrap().remaining, 600);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_released_by_settle() {
        let key = LocalKey::carry(RateConfig { concurrent: Some(2), ..RateConfig::default() }, None);
        assert!(key.admit(&demand(0)).is_ok());
        assert!(key.admit(&demand(0)).is_ok());
        assert!(matches!(key.admit(&demand(0)), Err(Refusal::Concurrent)));
        key.settle(0, 0, None, 0, 0);
        assert!(key.admit(&demand(0)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn refused_requests_take_nothing() {
        let key = LocalKey::carry(RateConfig { rpm: Some(1), tpm: Some(100), concurrent: Some(5) }, None);
        assert!(key.admit(&demand(10)).is_ok());
        assert!(matches!(key.admit(&demand(10)), Err(Refusal::Requests { .. })));
        assert_eq!(key.inflight.load(Ordering::SeqCst), 1);
        assert_eq!(key.view().tokens.unwrap().remaining, 90);
    }

    #[tokio::test(start_paused = true)]
    async fn budget_reserves_then_spends_per_period() {
        let key = LocalKey::carry(RateConfig::default(), None);
        let p = Period { per: BudgetPeriod::Day, id: 20261128, ends_at: 0 };
        let d = Demand { tokens: 0, cost: 600, budget: Some(BudgetDemand { period: p, limit: 1000 }) };
        assert!(key.admit(&d).is_ok());
        // 600 reserved: another 600 could overspend.
        assert!(matches!(key.admit(&d), Err(Refusal::Budget { spent: 0 })));
        key.settle(0, 0, Some(p), 600, 300);
        assert!(key.admit(&d).is_ok());
        key.settle(0, 0, Some(p), 600, 700);
        assert!(matches!(key.admit(&Demand { cost: 0, ..d }), Err(Refusal::Budget { spent: 1000 })));
        let next = Period { id: 20261129, ..p };
        assert!(key.admit(&Demand { budget: Some(BudgetDemand { period: next, limit: 1000 }), ..d }).is_ok());
    }
}
