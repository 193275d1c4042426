//! The compiled, immutable state one request runs against.
//!
//! A [`Snapshot`] is built from a validated [`Config`]: backends with their HTTP clients,
//! model routes resolved to those backends, the key table. The live one sits in an
//! `ArcSwap` (see [`crate::gateway`]); a request loads it once and keeps that `Arc` to the
//! end, so a reload is a swap and in-flight requests finish on the config they started with.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use crate::auth::KeyTable;
use crate::backends::{BackendBuildError, BackendRuntime};
use crate::config::Config;
use crate::datasets::Datasets;
use crate::router::{ModelRoute, RouteError, Target};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::trace::Tracer;

#[derive(Debug)]
pub struct Snapshot {
    pub config: Config,
    pub backends: HashMap<String, Arc<BackendRuntime>>,
    pub models: HashMap<String, ModelRoute>,
    pub keys: KeyTable,
    /// Process-wide: carried from snapshot to snapshot so counters survive reloads.
    pub metrics: Arc<Metrics>,
    /// Span export, when `telemetry.otlp` is set; carried while its config is unchanged.
    pub tracer: Option<Arc<Tracer>>,
    /// Dataset sinks; writers of unchanged datasets are carried from `previous`.
    pub datasets: Datasets,
    pub loaded_at: SystemTime,
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
        let mut models = HashMap::with_capacity(config.models.len());
        for (name, model) in &config.models {
            let mut targets = Vec::with_capacity(model.targets.len());
            for t in &model.targets {
                // Validation already checked the name; this keeps a hand-built Config honest.
                let backend = backends.get(&t.backend).ok_or_else(|| BackendBuildError::UnknownBackend {
                    model: name.clone(),
                    backend: t.backend.clone(),
                })?;
                targets.push(Target {
                    backend: Arc::clone(backend),
                    model: t.model.clone(),
                    variant: t.variant.clone(),
                    weight: t.weight,
                });
            }
            models.insert(name.clone(), ModelRoute::new(model.clone(), targets));
        }
        let keys = KeyTable::new(config.auth, config.keys.clone());
        let metrics = previous.map_or_else(|| Arc::new(Metrics::new()), |p| Arc::clone(&p.metrics));
        metrics.register_config(&config, backends.iter().map(|(name, b)| (name.clone(), b.active())).collect());
        let tracer = Tracer::carry_or_build(&config.telemetry, previous.and_then(|p| p.tracer.as_ref()));
        let datasets = Datasets::build(&config.datasets, previous.map(|p| &p.datasets), &metrics);
        Ok(Snapshot { config, backends, models, keys, metrics, tracer, datasets, loaded_at: SystemTime::now() })
    }

    pub fn route(&self, model: &str) -> Result<&ModelRoute, RouteError> {
        self.models.get(model).ok_or_else(|| RouteError::UnknownModel { model: model.to_owned() })
    }
}
