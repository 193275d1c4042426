//! Router: which upstream serves a request for a public model, and what happens when it fails.
//!
//! Owns: a model's targets resolved to live backends; the variant choice (weights, sticky
//! rendezvous hashing, `x-weir-variant` pinning); least-loaded choice among a variant's
//! targets; per-target health and ejection; and the retry/fallback loop that calls backends
//! until one answers.
//! Must not: speak a provider's protocol (that is `backends`), know about keys beyond the
//! sticky value, or touch a response body after its headers: once an answer is handed back,
//! weir is committed to it.

mod dispatch;
mod health;
mod hints;
mod sticky;

use std::ops::Range;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use crate::backends::BackendRuntime;
use crate::config::{ModelConfig, Sticky};
use crate::experiments::Allocation;

pub use dispatch::{DispatchError, Dispatched, Native, Outbound, dispatch};
pub use health::{
    Availability, BASE_EJECTION, CONSECUTIVE_FAILURES, FAILURE_RATIO, Health, HealthBuilder, InFlight, MAX_EJECTION,
    RATIO_MIN_REQUESTS, RATIO_WINDOW, TargetHealth, Verdict,
};
pub use hints::{parse_go_duration, parse_retry_after, retry_hint};
pub use sticky::stable_hash;

/// A public model with its targets resolved against the snapshot's backends.
#[derive(Debug)]
pub struct ModelRoute {
    pub config: ModelConfig,
    /// Grouped by variant (variants in the order the config first names them), so each
    /// variant's targets are one contiguous range.
    pub targets: Vec<Target>,
    /// Tried in order after the chosen variant's targets gave up.
    pub fallbacks: Vec<Target>,
    variants: Vec<Variant>,
    /// The experiment's live shares (Thompson sampling or a promotion), by variant in the
    /// same order as `variants`; while inactive the targets' weights split the traffic.
    allocation: Option<Arc<Allocation>>,
}

#[derive(Debug)]
pub struct Target {
    pub backend: Arc<BackendRuntime>,
    /// The model name sent upstream.
    pub model: String,
    pub variant: String,
    pub weight: u32,
    /// Request fields filled in where the client did not set them (`params:`).
    pub params: serde_json::Map<String, serde_json::Value>,
    pub health: Arc<TargetHealth>,
}

#[derive(Debug)]
struct Variant {
    name: String,
    /// Its identity in the rendezvous hash: a stable hash of (model, variant), so the same
    /// user lands independently in different experiments.
    seed: u64,
    /// The sum of its targets' weights.
    weight: u64,
    targets: Range<usize>,
}

/// How a request asks to be placed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pick {
    /// Index of the variant `x-weir-variant` named.
    pub pinned: Option<usize>,
    /// Stable hash of the sticky value, when the model is sticky and the request has one.
    pub sticky: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("the model `{model}` does not exist")]
    UnknownModel { model: String },
    #[error("model `{model}` has no variant `{variant}` (x-weir-variant); its variants: {known}")]
    UnknownVariant { model: String, variant: String, known: String },
    #[error("every target of model `{model}` is ejected after recent failures and no fallback is available")]
    NoHealthyTarget { model: String },
    #[error("every target of model `{model}` is rate limited upstream; retry after {} s", retry_after.as_secs_f64().ceil())]
    RateLimited { model: String, retry_after: std::time::Duration },
}

// === impl ModelRoute ===

impl ModelRoute {
    pub fn new(
        config: ModelConfig,
        mut targets: Vec<Target>,
        fallbacks: Vec<Target>,
        allocation: Option<Arc<Allocation>>,
    ) -> ModelRoute {
        let mut names: Vec<&str> = Vec::new();
        for t in &config.targets {
            if !names.contains(&t.variant.as_str()) {
                names.push(&t.variant);
            }
        }
        // Stable: targets of one variant keep their config order.
        targets.sort_by_key(|t| names.iter().position(|n| *n == t.variant));
        let mut variants: Vec<Variant> = Vec::with_capacity(names.len());
        for (i, target) in targets.iter().enumerate() {
            match variants.last_mut() {
                Some(v) if v.name == target.variant => {
                    v.weight += u64::from(target.weight);
                    v.targets.end = i + 1;
                }
                _ => variants.push(Variant {
                    name: target.variant.clone(),
                    seed: stable_hash(&[config.name.as_bytes(), target.variant.as_bytes()]),
                    weight: u64::from(target.weight),
                    targets: i..i + 1,
                }),
            }
        }
        // The allocation lists the variants in the same order; anything else is ignored.
        let allocation = allocation.filter(|a| a.variants.iter().eq(variants.iter().map(|v| &v.name)));
        ModelRoute { config, targets, fallbacks, variants, allocation }
    }

    /// The names a prompt's tokens may be counted for, best first: the public name, then each
    /// target's upstream model.
    pub fn token_models(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.config.name.as_str()).chain(self.targets.iter().map(|t| t.model.as_str()))
    }

    /// The variant an `x-weir-variant` header pins, if any. An empty header pins nothing.
    pub fn pinned(&self, header: Option<&HeaderValue>) -> Result<Option<usize>, RouteError> {
        let Some(value) = header.map(HeaderValue::as_bytes).filter(|v| !v.is_empty()) else { return Ok(None) };
        match self.variants.iter().position(|v| v.name.as_bytes() == value) {
            Some(i) => Ok(Some(i)),
            None => Err(RouteError::UnknownVariant {
                model: self.config.name.clone(),
                variant: String::from_utf8_lossy(value).into_owned(),
                known: self.variants.iter().map(|v| v.name.as_str()).collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// The hash of the request's sticky value under the model's `sticky` setting: the virtual
    /// key's name, the body's `user`, or a header. `None` (random placement) when the model
    /// is not sticky, has a single variant, or the request lacks the value.
    pub fn sticky_hash(&self, key: &str, user: Option<&str>, headers: &HeaderMap) -> Option<u64> {
        if self.variants.len() < 2 {
            return None;
        }
        let value: &[u8] = match &self.config.sticky {
            Sticky::None => return None,
            Sticky::Key => key.as_bytes(),
            Sticky::User => user?.as_bytes(),
            Sticky::Header(name) => headers.get(name)?.as_bytes(),
        };
        (!value.is_empty()).then(|| stable_hash(&[value]))
    }

    /// The first target to try: the pinned or chosen variant, then its least-loaded target.
    /// `None` when that variant (or, unpinned, every variant) has nothing in rotation.
    fn choose(&self, pick: Pick, now: Instant) -> Option<(Range<usize>, usize)> {
        let variant = match pick.pinned {
            Some(i) => self.variants.get(i)?,
            None => self.choose_variant(pick.sticky, now)?,
        };
        let first = self.least_loaded(variant.targets.clone(), now)?;
        Some((variant.targets.clone(), first))
    }

    /// Weighted over the variants that have a target in rotation: rendezvous hashing for a
    /// sticky value, random otherwise. Ejected variants drop out and their share spreads
    /// over the rest by weight. The weights are the experiment's live shares when it has
    /// them (unless every variant they favour is out of rotation), else the targets'.
    fn choose_variant(&self, sticky: Option<u64>, now: Instant) -> Option<&Variant> {
        if let [only] = self.variants.as_slice() {
            return Some(only);
        }
        // Live shares apply while any variant in rotation has one.
        let live = self.allocation.as_deref().filter(|a| a.weight(0).is_some());
        let weight_of = |i: usize, v: &Variant, use_live: bool| match live {
            _ if !self.in_rotation(v.targets.clone(), now) => 0,
            Some(allocation) if use_live => allocation.weight(i).unwrap_or(0),
            _ => v.weight,
        };
        let use_live = live.is_some() && self.variants.iter().enumerate().any(|(i, v)| weight_of(i, v, true) > 0);
        let weights = || self.variants.iter().enumerate().map(move |(i, v)| weight_of(i, v, use_live));
        let index = match sticky {
            Some(key) => sticky::rendezvous(key, self.variants.iter().map(|v| v.seed).zip(weights())),
            None => sticky::weighted_random(weights().sum(), weights()),
        }?;
        self.variants.get(index)
    }

    /// When nothing could be tried: how long until the first rate-limited target is back,
    /// if rate limits (rather than failures) are what keeps them out.
    fn rate_limited_for(&self, now: Instant) -> Option<std::time::Duration> {
        self.targets.iter().chain(&self.fallbacks).filter_map(|t| t.health.rate_limited_for(now)).min()
    }

    fn in_rotation(&self, range: Range<usize>, now: Instant) -> bool {
        self.targets[range].iter().any(|t| t.health.availability(now) != Availability::Out)
    }

    /// Power of two choices: two weighted draws among the targets in rotation, and the one
    /// with fewer requests in flight per unit of weight.
    fn least_loaded(&self, range: Range<usize>, now: Instant) -> Option<usize> {
        let targets = &self.targets[range.clone()];
        if let [only] = targets {
            return (only.health.availability(now) != Availability::Out).then_some(range.start);
        }
        let weight = |t: &Target| if t.health.availability(now) != Availability::Out { u64::from(t.weight) } else { 0 };
        let total: u64 = targets.iter().map(weight).sum();
        let a = sticky::weighted_random(total, targets.iter().map(weight))?;
        let b = sticky::weighted_random(total, targets.iter().map(weight)).unwrap_or(a);
        let (ta, tb) = (&targets[a], &targets[b]);
        // inflight_a / weight_a > inflight_b / weight_b, without dividing.
        let a_busier =
            ta.health.inflight() as u128 * u128::from(tb.weight) > tb.health.inflight() as u128 * u128::from(ta.weight);
        Some(range.start + if a_busier { b } else { a })
    }
}

#[cfg(test)]
mod tests;
