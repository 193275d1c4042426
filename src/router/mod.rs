//! Router: which target serves a request for a public model.
//!
//! Owns: a model's targets resolved to live backends, and the choice among them.
//! Today the choice is weighted random; sticky assignment, pinning, health and the
//! retry/fallback loop belong here too as they are built.
//! Must not: send anything upstream (that is `backends`) or know about keys.

use std::sync::Arc;

use crate::backends::BackendRuntime;
use crate::config::ModelConfig;

/// A public model with its targets resolved against the snapshot's backends.
#[derive(Debug)]
pub struct ModelRoute {
    pub config: ModelConfig,
    pub targets: Vec<Target>,
    total_weight: u64,
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
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("the model `{model}` does not exist")]
    UnknownModel { model: String },
}

impl ModelRoute {
    pub fn new(config: ModelConfig, targets: Vec<Target>) -> ModelRoute {
        let total_weight = targets.iter().map(|t| u64::from(t.weight)).sum();
        ModelRoute { config, targets, total_weight }
    }

    /// Picks a target by weight. Validation guarantees at least one target and a positive
    /// total weight.
    pub fn pick(&self) -> &Target {
        if self.targets.len() == 1 || self.total_weight == 0 {
            return &self.targets[0];
        }
        let mut point = rand::random_range(0..self.total_weight);
        for target in &self.targets {
            let weight = u64::from(target.weight);
            if point < weight {
                return target;
            }
            point -= weight;
        }
        &self.targets[self.targets.len() - 1]
    }
}
