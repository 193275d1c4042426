//! Per-target health: passive outlier detection and ejection, as Envoy does it.
//!
//! Owns: each target's in-flight count (for least-loaded choice), its failure counters, and
//! its ejection state; the [`Health`] table that carries all of this across config reloads.
//! Must not: pick targets or send anything; it only hears how attempts went.
//!
//! A target is ejected when [`CONSECUTIVE_FAILURES`] attempts in a row fail, or when at least
//! [`RATIO_MIN_REQUESTS`] attempts in the current [`RATIO_WINDOW`] fail at [`FAILURE_RATIO`]
//! or more. It stays out for [`BASE_EJECTION`] × 2^(times ejected before), capped at
//! [`MAX_EJECTION`]; the count is forgotten once the target has stayed healthy for
//! [`MAX_EJECTION`]. When the time is up it is half-open: exactly one request (the probe) may
//! use it; success puts it back in rotation, failure ejects it again for longer. A rate-limited
//! answer with a retry hint ejects it for exactly the hinted time, then probes the same way.
//!
//! Failures are 5xx answers, 429s without a hint, connection failures, timeouts, protocol
//! errors and streams that break mid-way. A 4xx answer means the backend is up and counts as
//! success; a local `max_inflight` refusal counts as nothing.
//!
//! The success path touches only atomics; the mutex is taken on failures and while a target
//! is out, and never across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Failed attempts in a row that eject a target.
pub const CONSECUTIVE_FAILURES: u32 = 5;
/// Share of failed attempts in one window that ejects a target...
pub const FAILURE_RATIO: f64 = 0.5;
/// ...once the window has seen at least this many attempts.
pub const RATIO_MIN_REQUESTS: u32 = 20;
/// Length of the window the failure ratio is measured over.
pub const RATIO_WINDOW: Duration = Duration::from_secs(10);
/// First ejection's length; each further one in a row doubles it.
pub const BASE_EJECTION: Duration = Duration::from_secs(10);
/// Longest ejection, and how long a target must stay healthy to be forgiven its past ones.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Health of every target of a snapshot, keyed by upstream (backend name, base URL, model):
/// two public models that send to the same upstream model share one record.
#[derive(Debug, Default)]
pub struct Health {
    targets: HashMap<HealthKey, Arc<TargetHealth>>,
}

type HealthKey = (String, String, String);

/// One upstream's health record; shared by every snapshot and request that uses it.
#[derive(Debug)]
pub struct TargetHealth {
    backend: String,
    model: String,
    inflight: AtomicUsize,
    /// `false` while in rotation: the one load the hot path makes. `true` while ejected or
    /// half-open; `state` says which.
    out: AtomicBool,
    consecutive: AtomicU32,
    /// Attempts in the current ratio window (successes counted without the lock).
    window_requests: AtomicU32,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    window_start: Instant,
    window_failures: u32,
    /// Set while ejected; past it the target is half-open.
    ejected_until: Option<Instant>,
    /// A half-open target's probe is in flight.
    probing: bool,
    /// Ejections in a row, for the growing interval.
    ejections: u32,
    last_restored: Option<Instant>,
    /// The current ejection is the upstream's own rate limit (clients are told to wait).
    rate_limited: bool,
}

/// Whether a target may take a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Ready,
    /// Half-open: the next request would be its probe.
    Probe,
    Out,
}

/// How one attempt went, as far as health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The upstream answered (2xx, or a 4xx that is the client's problem).
    Success,
    /// The attempt says nothing about the upstream (weir's own `max_inflight`).
    Neutral,
    Failure,
    /// The upstream asked for this much quiet.
    RateLimited(Duration),
}

/// One attempt's hold on a target: counts it in flight until dropped, and carries the probe
/// right when the target is half-open. Kept until the response body ends.
#[derive(Debug)]
pub struct InFlight {
    health: Arc<TargetHealth>,
    probe: bool,
}

// === impl Health ===

impl Health {
    /// The health table for a new snapshot: records of upstreams that `previous` already
    /// knew are carried over (state and in-flight counts survive a reload); the rest start
    /// healthy. Records of upstreams no longer used are dropped with the old snapshot.
    pub fn carry(previous: Option<&Health>) -> HealthBuilder<'_> {
        HealthBuilder { previous, health: Health::default() }
    }
}

pub struct HealthBuilder<'a> {
    previous: Option<&'a Health>,
    health: Health,
}

impl HealthBuilder<'_> {
    pub fn record(&mut self, backend: &str, base_url: &str, model: &str) -> Arc<TargetHealth> {
        let key = (backend.to_owned(), base_url.to_owned(), model.to_owned());
        if let Some(found) = self.health.targets.get(&key) {
            return Arc::clone(found);
        }
        let record = self
            .previous
            .and_then(|p| p.targets.get(&key))
            .map_or_else(|| Arc::new(TargetHealth::new(backend, model)), Arc::clone);
        self.health.targets.insert(key, Arc::clone(&record));
        record
    }

    pub fn build(self) -> Health {
        self.health
    }
}

// === impl TargetHealth ===

impl TargetHealth {
    pub fn new(backend: &str, model: &str) -> TargetHealth {
        TargetHealth {
            backend: backend.to_owned(),
            model: model.to_owned(),
            inflight: AtomicUsize::new(0),
            out: AtomicBool::new(false),
            consecutive: AtomicU32::new(0),
            window_requests: AtomicU32::new(0),
            state: Mutex::new(State {
                window_start: Instant::now(),
                window_failures: 0,
                ejected_until: None,
                probing: false,
                ejections: 0,
                last_restored: None,
                rate_limited: false,
            }),
        }
    }

    /// Attempts currently in flight to this upstream (bodies still streaming included).
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    pub fn availability(&self, now: Instant) -> Availability {
        if !self.out.load(Ordering::Acquire) {
            return Availability::Ready;
        }
        let state = self.lock();
        match state.ejected_until {
            Some(until) if now < until => Availability::Out,
            _ if state.probing => Availability::Out,
            _ => Availability::Probe,
        }
    }

    /// How long until a target the upstream rate-limited is back, while it is out for that.
    pub fn rate_limited_for(&self, now: Instant) -> Option<Duration> {
        if !self.out.load(Ordering::Acquire) {
            return None;
        }
        let state = self.lock();
        let until = state.ejected_until.filter(|_| state.rate_limited)?;
        (until > now).then(|| until - now)
    }

    /// Takes a place on this target for one attempt, or `None` when it is out (ejected, or
    /// half-open with its probe already taken).
    pub fn admit(self: &Arc<Self>, now: Instant) -> Option<InFlight> {
        let probe = if self.out.load(Ordering::Acquire) {
            let mut state = self.lock();
            if !self.out.load(Ordering::Acquire) {
                false
            } else if state.probing || state.ejected_until.is_some_and(|until| now < until) {
                return None;
            } else {
                state.probing = true;
                state.ejected_until = None;
                tracing::info!(backend = %self.backend, model = %self.model, "probing an ejected target");
                true
            }
        } else {
            false
        };
        self.inflight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight { health: Arc::clone(self), probe })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every step, so a panic elsewhere cannot poison it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn success(&self, probe: bool, now: Instant) {
        self.window_requests.fetch_add(1, Ordering::Relaxed);
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        if probe {
            let mut state = self.lock();
            state.probing = false;
            state.ejected_until = None;
            state.last_restored = Some(now);
            self.reset_counters(&mut state, now);
            self.out.store(false, Ordering::Release);
            tracing::info!(backend = %self.backend, model = %self.model, "probe succeeded: target back in rotation");
        }
    }

    fn failure(&self, probe: bool, now: Instant) {
        let mut requests = self.window_requests.fetch_add(1, Ordering::Relaxed) + 1;
        let consecutive = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let mut state = self.lock();
        if probe {
            self.eject(&mut state, now, "probe failed");
            return;
        }
        if self.out.load(Ordering::Acquire) {
            // Already out: late answers of requests sent before the ejection change nothing.
            return;
        }
        if now.duration_since(state.window_start) >= RATIO_WINDOW {
            state.window_start = now;
            state.window_failures = 0;
            self.window_requests.store(1, Ordering::Relaxed);
            requests = 1;
        }
        state.window_failures += 1;
        let requests = requests.max(state.window_failures);
        if consecutive >= CONSECUTIVE_FAILURES {
            self.eject(&mut state, now, "consecutive failures");
        } else if requests >= RATIO_MIN_REQUESTS
            && f64::from(state.window_failures) >= FAILURE_RATIO * f64::from(requests)
        {
            self.eject(&mut state, now, "failure ratio");
        }
    }

    /// Ejects for the growing interval.
    fn eject(&self, state: &mut State, now: Instant, reason: &'static str) {
        if state.last_restored.is_some_and(|at| now.duration_since(at) >= MAX_EJECTION) {
            state.ejections = 0;
        }
        let factor = 1u32 << state.ejections.min(16);
        let interval = BASE_EJECTION.saturating_mul(factor).min(MAX_EJECTION);
        state.ejections = state.ejections.saturating_add(1);
        tracing::warn!(
            backend = %self.backend, model = %self.model, reason, ejections = state.ejections,
            seconds = interval.as_secs_f64(), "target ejected"
        );
        self.take_out(state, now, interval);
        state.rate_limited = false;
    }

    /// Ejects for exactly `wait`, as the upstream asked; the growing interval is untouched.
    fn rate_limited(&self, wait: Duration, now: Instant) {
        let mut state = self.lock();
        let until = now + wait;
        if state.ejected_until.is_some_and(|current| current >= until) && !state.probing {
            return;
        }
        tracing::warn!(
            backend = %self.backend, model = %self.model, seconds = wait.as_secs_f64(),
            "target rate limited upstream: out of rotation for the time it asked"
        );
        self.take_out(&mut state, now, wait);
        state.rate_limited = true;
    }

    fn take_out(&self, state: &mut State, now: Instant, interval: Duration) {
        state.ejected_until = Some(now + interval);
        state.probing = false;
        self.reset_counters(state, now);
        self.out.store(true, Ordering::Release);
    }

    fn reset_counters(&self, state: &mut State, now: Instant) {
        state.window_start = now;
        state.window_failures = 0;
        self.window_requests.store(0, Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
    }
}

// === impl InFlight ===

impl InFlight {
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Reports how the attempt went (once its headers arrived or it failed).
    pub fn verdict(&mut self, verdict: Verdict) {
        let now = Instant::now();
        let probe = std::mem::take(&mut self.probe);
        match verdict {
            Verdict::Success => self.health.success(probe, now),
            Verdict::Failure => self.health.failure(probe, now),
            Verdict::RateLimited(wait) => self.health.rate_limited(wait, now),
            Verdict::Neutral => self.release_probe(probe),
        }
    }

    /// The answer ended: a stream that broke mid-way counts against the target.
    pub fn finish(mut self, broke: bool) {
        if broke {
            self.verdict(Verdict::Failure);
        }
    }

    /// A probe that ended without a verdict (client gone, weir refused locally) lets the
    /// next request probe instead.
    fn release_probe(&self, probe: bool) {
        if probe {
            self.health.lock().probing = false;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.health.inflight.fetch_sub(1, Ordering::Relaxed);
        let probe = std::mem::take(&mut self.probe);
        self.release_probe(probe);
    }
}

#[cfg(test)]
mod tests;
