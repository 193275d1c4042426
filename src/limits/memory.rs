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
        let taken =
            self.inflight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then(|| n.saturating_add(1)));
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
                bucket.adjust(reserved_tokens, used_tokens, Instant::now());
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
            bucket.adjust(tokens, 0, now);
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

/// `tpm` as a bucket of `capacity` tokens refilled at capacity per minute. Kept in exact
/// integers: the level is in token-nanoseconds-per-minute (tokens × 60·10⁹), so a refill of
/// `elapsed_ns × capacity` is exact and nothing rounds, whatever the size of `tpm`.
#[derive(Debug)]
struct TokenBucket {
    capacity: u64,
    /// `capacity` in level units.
    full: i128,
    level: i128,
    at: Instant,
}

/// Level units per token.
const UNITS_PER_TOKEN: i128 = 60_000_000_000;

fn units(tokens: u64) -> i128 {
    i128::from(tokens).saturating_mul(UNITS_PER_TOKEN)
}

fn nanos(duration: Duration) -> i128 {
    i128::try_from(duration.as_nanos()).unwrap_or(i128::MAX)
}

impl TokenBucket {
    fn full(capacity: u64, now: Instant) -> TokenBucket {
        TokenBucket { capacity, full: units(capacity), level: units(capacity), at: now }
    }

    fn refill(&mut self, now: Instant) {
        let gained = nanos(now.saturating_duration_since(self.at)).saturating_mul(i128::from(self.capacity));
        self.level = self.level.saturating_add(gained).min(self.full);
        self.at = self.at.max(now);
    }

    /// The wait until the level is back up to `level`.
    fn wait_for(&self, level: i128) -> Duration {
        let missing = level.saturating_sub(self.level).max(0);
        let ns = missing.checked_div(i128::from(self.capacity)).unwrap_or(i128::MAX);
        let ns = u64::try_from(ns).unwrap_or(u64::MAX);
        Duration::from_nanos(ns)
    }

    /// Takes `tokens` when the bucket holds them. A request larger than the whole bucket is
    /// refused with the wait until the bucket is full (it would never fit; `Limits` refuses
    /// it before asking).
    fn take(&mut self, tokens: u64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let need = units(tokens);
        if tokens > self.capacity || self.level < need {
            return Err(self.wait_for(need.min(self.full)));
        }
        self.level = self.level.saturating_sub(need);
        Ok(())
    }

    /// Trades a reservation for what was used: more used than reserved takes more, less
    /// gives back. Debt stops at one window: an upstream's absurd `usage` cannot lock the key
    /// for longer, and a give-back never fills past full.
    fn adjust(&mut self, reserved: u64, used: u64, now: Instant) {
        self.refill(now);
        let delta = units(used).saturating_sub(units(reserved));
        self.level = self.level.saturating_sub(delta).clamp(self.full.saturating_neg(), self.full);
    }

    fn window(&mut self, now: Instant) -> Window {
        self.refill(now);
        let whole = self.level.max(0).checked_div(UNITS_PER_TOKEN).unwrap_or(0);
        Window {
            limit: self.capacity,
            remaining: u64::try_from(whole).unwrap_or(0).min(self.capacity),
            reset: self.wait_for(self.full),
        }
    }
}

/// Seconds as a `Duration`: negative and NaN are zero, too large is `Duration::MAX`.
fn seconds(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX)
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing)]
mod tests {
    use proptest::prelude::*;

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

    fn period() -> Period {
        Period { per: BudgetPeriod::Day, id: 20261206, ends_at: 0 }
    }

    /// One step against a bucket: take, settle a request (reserved, used), or let time pass.
    #[derive(Debug, Clone)]
    enum Step {
        Take(u64),
        Settle(u64, u64),
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            any::<u64>().prop_map(Step::Take),
            (0u64..1000).prop_map(Step::Take),
            (any::<u64>(), any::<u64>()).prop_map(|(r, u)| Step::Settle(r, u)),
            any::<u64>().prop_map(Step::Wait),
            (0u64..120_000).prop_map(Step::Wait),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Whatever the numbers: no panic, the level stays within one window either way, a
        /// take never admits more than the bucket holds, and every wait is a valid Duration.
        #[test]
        fn token_bucket_never_admits_past_its_level(capacity in prop_oneof![1u64..10_000, any::<u64>()], steps in prop::collection::vec(step(), 1..40)) {
            let start = Instant::now();
            let mut now = start;
            let mut bucket = TokenBucket::full(capacity, now);
            let cap = i128::from(capacity) * UNITS_PER_TOKEN;
            for step in steps {
                match step {
                    Step::Take(tokens) => {
                        bucket.refill(now);
                        let before = bucket.level;
                        match bucket.take(tokens, now) {
                            Ok(()) => {
                                prop_assert!(i128::from(tokens) * UNITS_PER_TOKEN <= before, "took {tokens} from {before}");
                                prop_assert!(tokens <= capacity);
                            }
                            Err(wait) => prop_assert!(wait <= Duration::from_secs(120)),
                        }
                    }
                    Step::Settle(reserved, used) => bucket.adjust(reserved, used, now),
                    Step::Wait(ms) => now = now.checked_add(Duration::from_millis(ms)).unwrap_or(now),
                }
                prop_assert!(bucket.level >= -cap && bucket.level <= cap, "level {} of {cap}", bucket.level);
                let window = bucket.window(now);
                prop_assert!(window.remaining <= capacity);
            }
        }

        /// A key's GCRA, bucket, concurrency and budget together, at (nearly) one instant:
        /// what is admitted never adds up past any limit, for any u64 limits and demands.
        #[test]
        fn local_admission_never_passes_a_limit(
            rpm in prop_oneof![1u64..50, any::<u64>()],
            tpm in prop_oneof![1u64..10_000, any::<u64>()],
            concurrent in prop_oneof![0u64..50, any::<u64>()],
            budget in prop_oneof![0i64..10_000, 0i64..=i64::MAX],
            demands in prop::collection::vec((prop_oneof![0u64..2_000, any::<u64>()], prop_oneof![0i64..2_000, 0i64..=i64::MAX]), 1..60),
        ) {
            let key = LocalKey::carry(RateConfig { rpm: Some(rpm), tpm: Some(tpm), concurrent: Some(concurrent) }, None);
            let p = period();
            let started = std::time::Instant::now();
            let (mut admitted, mut tokens, mut cost) = (0u64, 0u128, 0i128);
            for (t, c) in demands {
                let demand = Demand { tokens: t, cost: c, budget: Some(BudgetDemand { period: p, limit: budget }) };
                if let Ok(view) = key.admit(&demand) {
                    admitted += 1;
                    tokens += u128::from(t);
                    cost += i128::from(c);
                    let _ = view.requests.map(|w| w.reset);
                }
            }
            // The GCRA gives one request back every 60/rpm s of real time.
            let regained = (started.elapsed().as_secs_f64() * rpm as f64 / 60.0).ceil() as u64;
            let burst = rpm.min(u64::from(u32::MAX));
            prop_assert!(admitted <= burst.saturating_add(regained), "{admitted} admitted, rpm {rpm}");
            prop_assert!(admitted <= concurrent, "{admitted} admitted, concurrent {concurrent}");
            prop_assert!(tokens <= u128::from(tpm), "{tokens} tokens admitted, tpm {tpm}");
            prop_assert!(cost <= i128::from(budget), "{cost} reserved, budget {budget}");
            prop_assert_eq!(key.inflight.load(Ordering::SeqCst), admitted);
            for _ in 0..admitted {
                key.settle(0, u64::MAX, Some(p), i64::MAX, i64::MAX);
            }
            prop_assert_eq!(key.inflight.load(Ordering::SeqCst), 0);
            let usage = key.usage(Some(p));
            prop_assert!(usage.budget.reserved >= 0);
            // More settles than admissions cannot wrap the count round.
            key.settle(0, 0, None, 0, 0);
            prop_assert_eq!(key.inflight.load(Ordering::SeqCst), 0);
        }

        /// Budget alone: reserved spend never passes the limit, settles never panic.
        #[test]
        fn budget_reservations_stay_within_the_limit(
            limit in 0i64..=i64::MAX,
            spent in 0i64..=i64::MAX,
            costs in prop::collection::vec(0i64..=i64::MAX, 1..30),
        ) {
            let key = LocalKey::carry(RateConfig::default(), None);
            let p = period();
            key.settle_budget(p, 0, 0);
            key.reserve_budget(BudgetDemand { period: p, limit }, 0).ok();
            key.settle_budget(p, 0, spent);
            let mut reserved = 0i128;
            for cost in costs {
                if key.reserve_budget(BudgetDemand { period: p, limit }, cost).is_ok() {
                    reserved += i128::from(cost);
                }
            }
            let window = key.usage(Some(p)).budget;
            prop_assert!(i128::from(window.spent.min(limit)) + reserved <= i128::from(limit) || reserved == 0);
            prop_assert_eq!(i128::from(window.reserved), reserved);
        }
    }

    #[test]
    fn huge_waits_are_durations_not_panics() {
        assert_eq!(seconds(f64::INFINITY), Duration::MAX);
        assert_eq!(seconds(f64::NAN), Duration::ZERO);
        assert_eq!(seconds(-1.0), Duration::ZERO);
        assert_eq!(seconds(1e30), Duration::MAX);
        let now = Instant::now();
        let mut bucket = TokenBucket::full(1, now);
        bucket.adjust(0, u64::MAX, now);
        assert_eq!(bucket.level, -UNITS_PER_TOKEN, "debt stops at one window");
        assert_eq!(bucket.take(u64::MAX, now), Err(Duration::from_secs(120)));
        let mut huge = TokenBucket::full(u64::MAX, now);
        assert!(huge.take(u64::MAX, now).is_ok());
        assert!(huge.take(1, now).is_err());
        assert_eq!(crate::limits::headers::retry_after(Duration::MAX), u64::MAX.to_string().as_str());
        assert!(!crate::limits::headers::format_reset(Duration::MAX).is_empty());
    }
}
