//! The compiled, immutable state one request runs against.
//!
//! A [`Snapshot`] is built from a validated [`Config`]: backends with their HTTP clients,
//! model routes resolved to those backends, the key table. The live one sits in an
//! `ArcSwap` (see [`super::Runtime`]); a request loads it once and keeps that `Arc` to the
//! end, so a reload is a swap and in-flight requests finish on the config they started with.
//!
//! Owns: [`Snapshot::build`], carrying from the previous snapshot what still exists (pools,
//! health, counters, cache, writers). Must not: be changed once built.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use crate::auth::KeyTable;
use crate::backends::{BackendBuildError, BackendRuntime};
use crate::cache::Cache;
use crate::config::{Config, SourceInfo, TargetConfig};
use crate::config::{StateConfig, StateStore};
use crate::conversations::Conversations;
use crate::datasets::Datasets;
use crate::experiments::Experiments;
use crate::limits::Limits;
use crate::router::{Health, HealthBuilder, ModelRoute, RouteError, Target};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::trace::Tracer;

#[derive(Debug)]
pub struct Snapshot {
    pub config: Config,
    pub backends: HashMap<String, Arc<BackendRuntime>>,
    pub models: HashMap<String, ModelRoute>,
    pub keys: KeyTable,
    /// Carried from `previous` while the `cache` section is unchanged, so entries survive.
    pub cache: Arc<Cache>,
    /// Rate limits and budgets; counters carried from the previous snapshot by key name.
    pub limits: Limits,
    /// Process-wide: carried from snapshot to snapshot so counters survive reloads.
    pub metrics: Arc<Metrics>,
    /// Span export, when `telemetry.otlp` is set; carried while its config is unchanged.
    pub tracer: Option<Arc<Tracer>>,
    /// Per-upstream health and in-flight counts, carried over for upstreams that remain.
    pub health: Health,
    /// Dataset sinks; writers of unchanged datasets are carried from `previous`.
    pub datasets: Datasets,
    /// Live experiments; counts of unchanged experiments are carried from `previous`.
    pub experiments: Experiments,
    /// Stored Responses API responses; carried while `state` keeps its store and bounds.
    pub conversations: Arc<Conversations>,
    pub loaded_at: SystemTime,
    /// Where the config came from, its hash and masked view; set by whoever loaded it.
    pub source: Arc<SourceInfo>,
}

impl Snapshot {
    /// Builds live state for `config`. Backends whose settings are unchanged from
    /// `previous` keep its connection pools and in-flight counters.
    pub fn build(config: Config, previous: Option<&Snapshot>) -> Result<Snapshot, BackendBuildError> {
        let mut backends = HashMap::with_capacity(config.backends.len());
        for (name, backend) in &config.backends {
            let old = previous.and_then(|p| p.backends.get(name));
            let runtime = match old {
                Some(old) if old.config == *backend => Arc::clone(old),
                _ => Arc::new(BackendRuntime::build(backend.clone(), old.map(Arc::as_ref))?),
            };
            backends.insert(name.clone(), runtime);
        }
        let experiments = Experiments::build(&config, previous.map(|p| &p.experiments));
        let mut health = Health::carry(previous.map(|p| &p.health));
        let mut models = HashMap::with_capacity(config.models.len());
        for (name, model) in &config.models {
            let mut resolve = |targets: &[TargetConfig]| -> Result<Vec<Target>, BackendBuildError> {
                targets.iter().map(|t| resolve_target(name, t, &backends, &mut health)).collect()
            };
            let targets = resolve(&model.targets)?;
            let fallbacks = resolve(&model.fallbacks)?;
            let allocation = experiments.allocation(model.experiment.as_deref());
            models.insert(name.clone(), ModelRoute::new(model.clone(), targets, fallbacks, allocation));
        }
        let health = health.build();
        let keys = KeyTable::new(config.auth, config.keys.clone());
        let limits = Limits::build(&config, previous.map(|p| &p.limits));
        let metrics = previous.map_or_else(|| Arc::new(Metrics::new()), |p| Arc::clone(&p.metrics));
        metrics.register_config(&config, backends.iter().map(|(name, b)| (name.clone(), b.active())).collect());
        metrics.watch_experiments(experiments.iter().cloned().collect());
        let tracer = Tracer::carry_or_build(&config.telemetry, previous.and_then(|p| p.tracer.as_ref()));
        let datasets = Datasets::build(&config.datasets, previous.map(|p| &p.datasets), &metrics);
        let cache = match previous {
            Some(p) if p.config.cache == config.cache => Arc::clone(&p.cache),
            _ => Arc::new(Cache::new(&config.cache)),
        };
        let conversations = match previous {
            Some(p) if same_response_store(&p.config.state, &config.state) => Arc::clone(&p.conversations),
            _ => Arc::new(conversations_for(&config.state)),
        };
        let source = Arc::new(SourceInfo::in_memory());
        Ok(Snapshot {
            config,
            backends,
            models,
            keys,
            cache,
            limits,
            metrics,
            tracer,
            health,
            datasets,
            experiments,
            conversations,
            loaded_at: SystemTime::now(),
            source,
        })
    }

    pub fn route(&self, model: &str) -> Result<&ModelRoute, RouteError> {
        self.models.get(model).ok_or_else(|| RouteError::UnknownModel { model: model.to_owned() })
    }
}

fn same_response_store(old: &StateConfig, new: &StateConfig) -> bool {
    old.store == new.store
        && old.timeout == new.timeout
        && old.responses_ttl == new.responses_ttl
        && old.responses_max_size == new.responses_max_size
}

fn conversations_for(state: &StateConfig) -> Conversations {
    match &state.store {
        StateStore::Memory => Conversations::memory(state.responses_ttl, state.responses_max_size),
        StateStore::Redis(url) => Conversations::redis(url, state.responses_ttl, state.timeout),
    }
}

/// A config target bound to its live backend and its health record.
fn resolve_target(
    model: &str,
    target: &TargetConfig,
    backends: &HashMap<String, Arc<BackendRuntime>>,
    health: &mut HealthBuilder<'_>,
) -> Result<Target, BackendBuildError> {
    // Validation already checked the name; this keeps a hand-built Config honest.
    let backend = backends.get(&target.backend).ok_or_else(|| BackendBuildError::UnknownBackend {
        model: model.to_owned(),
        backend: target.backend.clone(),
    })?;
    Ok(Target {
        health: health.record(&target.backend, &backend.config.base_url, &target.model),
        backend: Arc::clone(backend),
        model: target.model.clone(),
        variant: target.variant.clone(),
        weight: target.weight,
        params: target.params.clone(),
    })
}
