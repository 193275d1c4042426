//! Live experiments: the counts each arm's metric gathers as requests finish and feedback
//! arrives, the traffic shares the router reads, and the decision (and promotion) drawn
//! from them.
//!
//! Owns: [`Experiments`] (one per config snapshot; an experiment whose model, metric and
//! variants are unchanged carries its counts across reloads), the [`Allocation`] each
//! experiment's route reads lock-free, and the refresh task: every [`REFRESH`] it flushes
//! the observations gathered since the last one (to Redis when `state.store` is Redis),
//! reads the totals back, recomputes Thompson shares, decides, and promotes a winner when
//! `stop.promote` is set. So feedback moves the shares within a second.
//! Must not: do I/O or anything slow on the request path — observing is a short lock on a
//! vector of sums; the task does the rest.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use super::analysis::{self, Analysis};
use super::moments::Moments;
use super::store::{RedisCounts, Shared};
use super::thompson::{self, Posterior};
use crate::config::{Config, ExperimentConfig, Metric, StateStore, Strategy};
use crate::wire::record::id_hash;
use crate::wire::{Outcome, Record};

/// How often counts are flushed and shares recomputed.
pub const REFRESH: Duration = Duration::from_millis(250);
/// Weights are shares in parts per million.
const PPM: f64 = 1_000_000.0;
/// Requests remembered for feedback: this many, for this long.
const SERVED_CAPACITY: u64 = 200_000;
const SERVED_TTL: Duration = Duration::from_secs(24 * 3600);

/// The live experiments of one snapshot.
#[derive(Debug)]
pub struct Experiments {
    by_name: HashMap<String, Arc<Experiment>>,
    /// Request id hash → the arm that answered, for feedback-scored experiments.
    served: Arc<moka::sync::Cache<u64, Arc<Served>>>,
    redis: Option<Arc<RedisCounts>>,
    /// Stops the refresh task when the snapshot goes.
    _task: Option<TaskGuard>,
}

/// One experiment.
#[derive(Debug)]
pub struct Experiment {
    pub config: ExperimentConfig,
    /// The model's variants, in the order the model first names them.
    pub variants: Vec<String>,
    counts: Arc<Counts>,
    allocation: Arc<Allocation>,
    /// The latest figures, for `/admin/experiments` and metrics.
    view: ArcSwapOption<Analysis>,
}

/// The arm that answered a request of a feedback-scored experiment.
#[derive(Debug)]
struct Served {
    experiment: Arc<Experiment>,
    arm: usize,
    /// Hash of the key that made the request; only it (or the admin token) may score it.
    owner: Option<u64>,
    /// Only a request's first feedback counts (a reviewer's correction goes to the datasets).
    counted: AtomicBool,
}

impl Served {
    fn may_score(&self, caller: Option<&str>) -> bool {
        caller.is_none_or(|key| self.owner == Some(id_hash(key)))
    }
}

/// What an experiment has seen, carried across reloads.
#[derive(Debug, Default)]
struct Counts {
    /// Observations not yet flushed to the store.
    pending: Mutex<Vec<Moments>>,
    /// The totals as last known (this process's, or Redis's plus what is pending).
    totals: Mutex<Vec<Moments>>,
    promoted: Mutex<Option<String>>,
    promotions: AtomicU64,
    /// Last store failure was logged (so an outage is logged once).
    store_down: AtomicBool,
}

/// Traffic weights a route reads per request: shares in parts per million by variant (the
/// model's order). Inactive while the split is the targets' own weights.
#[derive(Debug)]
pub struct Allocation {
    pub variants: Vec<String>,
    weights: Vec<AtomicU64>,
    active: AtomicBool,
}

impl Allocation {
    fn new(variants: Vec<String>) -> Allocation {
        let weights = variants.iter().map(|_| AtomicU64::new(0)).collect();
        Allocation { variants, weights, active: AtomicBool::new(false) }
    }

    /// The weight of variant `i`, `None` while the targets' weights apply.
    pub fn weight(&self, i: usize) -> Option<u64> {
        if !self.active.load(Ordering::Relaxed) {
            return None;
        }
        self.weights.get(i).map(|w| w.load(Ordering::Relaxed))
    }

    fn set(&self, shares: &[f64]) {
        for (weight, share) in self.weights.iter().zip(shares) {
            weight.store((share.clamp(0.0, 1.0) * PPM).round() as u64, Ordering::Relaxed);
        }
        self.active.store(true, Ordering::Relaxed);
    }
}

/// The variants of a model in the order its targets first name them (the router's order).
pub fn variants_of(targets: &[crate::config::TargetConfig]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for target in targets {
        if !names.contains(&target.variant) {
            names.push(target.variant.clone());
        }
    }
    names
}

impl Experiments {
    /// The experiments of `config`, carrying counts from `previous` where the experiment's
    /// model, metric and variants are unchanged. Starts the refresh task when there is a
    /// runtime to run it.
    pub fn build(config: &Config, previous: Option<&Experiments>) -> Experiments {
        let mut by_name = HashMap::new();
        for (name, settings) in &config.experiments {
            let Some(model) = config.models.get(&settings.model) else { continue };
            let variants = variants_of(&model.targets);
            let carried = previous.and_then(|p| p.by_name.get(name)).filter(|old| {
                old.variants == variants && old.config.metric == settings.metric && old.config.model == settings.model
            });
            let counts = match carried {
                Some(old) => Arc::clone(&old.counts),
                None => Arc::new(Counts {
                    pending: Mutex::new(vec![Moments::default(); variants.len()]),
                    totals: Mutex::new(vec![Moments::default(); variants.len()]),
                    ..Counts::default()
                }),
            };
            let experiment = Experiment {
                config: settings.clone(),
                variants: variants.clone(),
                counts,
                allocation: Arc::new(Allocation::new(variants)),
                view: ArcSwapOption::empty(),
            };
            experiment.recompute(None);
            by_name.insert(name.clone(), Arc::new(experiment));
        }
        let redis = match &config.state.store {
            StateStore::Memory => None,
            StateStore::Redis(url) => Some(match previous.and_then(|p| p.redis.as_ref()) {
                Some(old) if old.same_url(url) => Arc::clone(old),
                _ => Arc::new(RedisCounts::new(url)),
            }),
        };
        let served = previous.map_or_else(
            || Arc::new(moka::sync::Cache::builder().max_capacity(SERVED_CAPACITY).time_to_live(SERVED_TTL).build()),
            |p| Arc::clone(&p.served),
        );
        let mut experiments = Experiments { by_name, served, redis, _task: None };
        experiments._task = experiments.spawn_refresh();
        experiments
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The allocation the route of `model`'s experiment reads, if it has one.
    pub fn allocation(&self, experiment: Option<&str>) -> Option<Arc<Allocation>> {
        self.by_name.get(experiment?).map(|e| Arc::clone(&e.allocation))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Experiment>> {
        self.by_name.get(name)
    }

    /// Every experiment, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Experiment>> {
        let mut all: Vec<&Arc<Experiment>> = self.by_name.values().collect();
        all.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        all.into_iter()
    }

    /// The tap: a finished request of an experiment's model adds its metric to its arm.
    pub fn observe(&self, record: &Record) {
        let Some(experiment) = record.experiment.as_deref().and_then(|name| self.by_name.get(name)) else { return };
        let Some(arm) = experiment.variants.iter().position(|v| *v == record.variant) else { return };
        if record.outcome == Outcome::ClientGone {
            return;
        }
        let succeeded = record.outcome == Outcome::Completed && (200..400).contains(&record.status);
        let value = match experiment.config.metric {
            // Counted when feedback comes (see `answering`).
            Metric::Feedback => return,
            Metric::Success => Some(if succeeded { 1.0 } else { 0.0 }),
            Metric::Latency => succeeded.then_some(record.duration.as_secs_f64() * 1000.0),
            Metric::Cost => record.cost_usd.filter(|_| succeeded),
        };
        if let Some(value) = value {
            experiment.add(arm, value);
        }
    }

    /// Called when an answer's headers go out: a feedback-scored experiment remembers which
    /// arm answered (and for which key, `owner`), so feedback can be posted as soon as the
    /// client has the answer.
    pub fn answering(&self, record: &Record, owner: Option<&str>) {
        let Some(experiment) = record.experiment.as_deref().and_then(|name| self.by_name.get(name)) else { return };
        if experiment.config.metric != Metric::Feedback || !(200..300).contains(&record.status) {
            return;
        }
        if let Some(arm) = experiment.variants.iter().position(|v| *v == record.variant) {
            let owner = owner.map(id_hash);
            let served = Served { experiment: Arc::clone(experiment), arm, owner, counted: AtomicBool::new(false) };
            self.served.insert(id_hash(&record.request_id), Arc::new(served));
        }
    }

    /// Whether `request_id` is a recent request of a feedback-scored experiment that `caller`
    /// (a key's owner name, `None` for the admin token) may score: the key that made it.
    pub fn knows(&self, request_id: &str, caller: Option<&str>) -> bool {
        self.served.get(&id_hash(request_id)).is_some_and(|served| served.may_score(caller))
    }

    /// Feedback on a request from `caller`: its score counts for the arm that answered, once
    /// per request. Returns whether an experiment counted it.
    pub fn feedback(&self, request_id: &str, caller: Option<&str>, score: f64) -> bool {
        let Some(served) = self.served.get(&id_hash(request_id)) else { return false };
        if !served.may_score(caller) || served.counted.swap(true, Ordering::Relaxed) {
            return false;
        }
        served.experiment.add(served.arm, score);
        true
    }

    fn spawn_refresh(&self) -> Option<TaskGuard> {
        if self.by_name.is_empty() {
            return None;
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let experiments: Vec<Weak<Experiment>> = self.by_name.values().map(Arc::downgrade).collect();
        let redis = self.redis.clone();
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = Arc::clone(&stop);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stopped.notified() => return,
                }
                let mut alive = false;
                for experiment in &experiments {
                    let Some(experiment) = experiment.upgrade() else { continue };
                    alive = true;
                    experiment.refresh(redis.as_deref()).await;
                }
                if !alive {
                    return;
                }
            }
        });
        Some(TaskGuard(stop))
    }
}

/// Ends the refresh task when dropped.
#[derive(Debug)]
struct TaskGuard(Arc<tokio::sync::Notify>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

impl Experiment {
    fn add(&self, arm: usize, value: f64) {
        if let Ok(mut pending) = self.counts.pending.lock() {
            if let Some(slot) = pending.get_mut(arm) {
                slot.add(value);
            }
        }
    }

    /// The latest figures (shares included).
    pub fn view(&self) -> Option<Arc<Analysis>> {
        self.view.load_full()
    }

    /// Arms promoted since this experiment started counting.
    pub fn promotions(&self) -> u64 {
        self.counts.promotions.load(Ordering::Relaxed)
    }

    pub fn promoted(&self) -> Option<String> {
        self.counts.promoted.lock().ok().and_then(|p| p.clone())
    }

    /// Flushes what was observed, reads the totals, recomputes.
    async fn refresh(&self, redis: Option<&RedisCounts>) {
        let deltas = match self.counts.pending.lock() {
            Ok(mut pending) => {
                let fresh = vec![Moments::default(); self.variants.len()];
                std::mem::replace(&mut *pending, fresh)
            }
            Err(_) => return,
        };
        let proposal = self.view().and_then(|v| v.winner.clone()).filter(|_| self.config.stop.promote);
        let shared = match redis {
            None => {
                if let Ok(mut totals) = self.counts.totals.lock() {
                    for (total, delta) in totals.iter_mut().zip(&deltas) {
                        *total = total.merge(*delta);
                    }
                }
                Shared { totals: Vec::new(), promoted: proposal }
            }
            Some(redis) => {
                let key = format!("weir:exp:{{{}}}:{}", self.config.name, self.config.metric.as_str());
                match redis.exchange(&key, &self.variants, &deltas, proposal.as_deref()).await {
                    Ok(shared) => {
                        if self.counts.store_down.swap(false, Ordering::Relaxed) {
                            tracing::info!(experiment = %self.config.name, "experiments: the Redis state store answers again");
                        }
                        shared
                    }
                    Err(err) => {
                        if !self.counts.store_down.swap(true, Ordering::Relaxed) {
                            tracing::warn!(experiment = %self.config.name, %err, "experiments: cannot reach the Redis state store; counting locally until it answers");
                        }
                        // Keep the observations for the next flush; allocate from what is known.
                        if let Ok(mut pending) = self.counts.pending.lock() {
                            for (slot, delta) in pending.iter_mut().zip(&deltas) {
                                *slot = slot.merge(*delta);
                            }
                        }
                        Shared { totals: Vec::new(), promoted: None }
                    }
                }
            }
        };
        if !shared.totals.is_empty() {
            if let Ok(mut totals) = self.counts.totals.lock() {
                *totals = shared.totals;
            }
        }
        self.recompute(shared.promoted);
    }

    /// Recomputes the figures, the shares and (when a winner is named) the promotion.
    fn recompute(&self, promoted: Option<String>) {
        let totals = self.counts.totals.lock().map(|t| t.clone()).unwrap_or_default();
        if let Some(winner) = promoted.filter(|w| self.variants.contains(w)) {
            self.promote(winner);
        }
        let arms: Vec<(String, Moments)> = self.variants.iter().cloned().zip(totals.iter().copied()).collect();
        let mut analysis = analysis::analyze(&arms, &self.config.control, self.config.metric, &self.config.stop);
        let shares = match self.promoted() {
            Some(winner) => {
                let shares: Vec<f64> = self.variants.iter().map(|v| if *v == winner { 1.0 } else { 0.0 }).collect();
                self.allocation.set(&shares);
                Some(shares)
            }
            None if self.config.strategy == Strategy::Thompson => {
                let posterior = if self.config.metric.bounded() { Posterior::Beta } else { Posterior::Normal };
                let shares = thompson::shares(&totals, posterior, analysis.direction, self.config.min_share);
                self.allocation.set(&shares);
                Some(shares)
            }
            None => None,
        };
        if let Some(shares) = shares {
            for (arm, share) in analysis.arms.iter_mut().zip(shares) {
                arm.share = Some(share);
            }
        }
        self.view.store(Some(Arc::new(analysis)));
    }

    fn promote(&self, winner: String) {
        let Ok(mut promoted) = self.counts.promoted.lock() else { return };
        if promoted.as_deref() == Some(winner.as_str()) {
            return;
        }
        tracing::warn!(
            experiment = %self.config.name,
            model = %self.config.model,
            variant = %winner,
            "experiment decided: `{winner}` is promoted and takes all traffic"
        );
        *promoted = Some(winner);
        self.counts.promotions.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    const YAML: &str = "\
backends:
  m: { kind: mock }
models:
  chat:
    experiment: exp
    targets:
      - { backend: m, model: a, variant: control }
      - { backend: m, model: b, variant: candidate }
auth: { mode: none }
experiments:
  exp: { strategy: thompson, metric: success }
";

    fn record(variant: &str, status: u16) -> Record {
        let mut record = Record::new("req".into(), Instant::now());
        record.experiment = Some("exp".into());
        record.variant = variant.into();
        record.status = status;
        record
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_reach_the_figures_at_the_next_refresh() {
        let config = crate::config::load_str(YAML, "t.yaml", &|_| None).unwrap();
        let experiments = Experiments::build(&config, None);
        let exp = experiments.get("exp").unwrap();
        let shares: Vec<_> = exp.view().unwrap().arms.iter().map(|a| a.share).collect();
        assert_eq!(shares, vec![Some(0.5), Some(0.5)]);
        for _ in 0..50 {
            experiments.observe(&record("control", 200));
            experiments.observe(&record("candidate", 502));
        }
        tokio::time::sleep(REFRESH * 2).await;
        let view = exp.view().unwrap();
        assert_eq!((view.arms[0].samples, view.arms[1].samples), (50, 50));
        assert!(view.arms[0].share.unwrap() > 0.9, "{view:?}");
        // A reload with the same experiment keeps the counts.
        let again = Experiments::build(&config, Some(&experiments));
        assert_eq!(again.get("exp").unwrap().view().unwrap().arms[0].samples, 50);
    }

    #[test]
    fn only_the_requests_key_or_the_admin_may_score_it_and_only_once() {
        let yaml = YAML.replace("metric: success", "metric: feedback");
        let config = crate::config::load_str(&yaml, "t.yaml", &|_| None).unwrap();
        let experiments = Experiments::build(&config, None);
        let mut answered = record("candidate", 200);
        answered.request_id = "req_1".into();
        experiments.answering(&answered, Some("team"));
        assert!(experiments.knows("req_1", Some("team")) && experiments.knows("req_1", None));
        assert!(!experiments.knows("req_1", Some("other")) && !experiments.knows("req_2", None));
        assert!(!experiments.feedback("req_1", Some("other"), 1.0));
        assert!(experiments.feedback("req_1", Some("team"), 1.0));
        assert!(!experiments.feedback("req_1", None, 0.0), "counted once");
        let failed = record("control", 502);
        experiments.answering(&failed, Some("team"));
        assert!(!experiments.knows("req", Some("team")), "only answers are scored");
    }
}
