//! Validation: a parsed [`Document`] becomes a typed [`Config`], or every problem found.
//!
//! Owns: the entry point [`validate`], the problem collector [`Cx`] and the assembly of a
//! [`Config`] from the checks of each section (one file per concern). Never stops at the first
//! problem: a value of the wrong type is reported, swapped for a neutral placeholder and
//! deserialization retried, and problems that placeholder would cause are not reported.
//! Must not: read files (TLS certificates, datasets) or touch the network.

mod backends;
mod cache;
mod datasets;
mod deserialize;
mod experiments;
mod keys;
mod models;
mod params;
mod schema;
mod server;
mod state;
mod store;
mod telemetry;
mod values;

use std::collections::BTreeMap;

use super::raw::RawConfig;
use super::yaml::{Document, Pos};
use super::{Config, ConfigError, ModelConfig, Problem};

/// Checks `doc` against the schema and rules of SPEC §2.
pub fn validate(doc: &Document, origin: &str) -> Result<Config, ConfigError> {
    let mut cx = Cx { doc, problems: Vec::new(), dropped: Vec::new() };
    let mut problems = Vec::new();
    let config = cx.deserialize().map(|raw| {
        // Type problems are kept apart: the filter below is only for their echoes.
        problems = std::mem::take(&mut cx.problems);
        let config = cx.config(&raw);
        let dropped = std::mem::take(&mut cx.dropped);
        cx.problems.retain(|(path, _, _)| !dropped.iter().any(|d| is_within(path, d)));
        config
    });
    problems.append(&mut cx.problems);
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => {
            problems.sort_by_key(|(_, pos, _)| (pos.line, pos.col));
            let problems = problems
                .into_iter()
                .map(|(_, pos, message)| Problem { origin: origin.to_string(), line: pos.line, col: pos.col, message })
                .collect();
            Err(ConfigError { problems })
        }
    }
}

/// Whether `path` is `ancestor` or lies below it.
fn is_within(path: &str, ancestor: &str) -> bool {
    path.strip_prefix(ancestor).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// The validation pass's state: the document, and every problem found so far.
struct Cx<'a> {
    doc: &'a Document,
    /// `(path, position, message)`.
    problems: Vec<(String, Pos, String)>,
    /// Paths whose value had the wrong type and was replaced by a placeholder.
    dropped: Vec<String>,
}

// === impl Cx ===

impl Cx<'_> {
    /// Reports a problem at the value of `path`.
    fn err(&mut self, path: &str, message: impl Into<String>) {
        let pos = self.doc.value_pos(path);
        self.problems.push((path.to_string(), pos, message.into()));
    }

    /// Reports a problem at the key introducing `path` (for something missing from a mapping).
    fn key_err(&mut self, path: &str, message: impl Into<String>) {
        let pos = self.doc.key_pos(path);
        self.problems.push((path.to_string(), pos, message.into()));
    }

    /// Reports a problem about `path` at an explicit place.
    fn err_at(&mut self, path: &str, pos: Pos, message: impl Into<String>) {
        self.problems.push((path.to_string(), pos, message.into()));
    }

    /// Runs the checks of every section and assembles the typed config.
    fn config(&mut self, raw: &RawConfig) -> Config {
        let server = self.server(&raw.server);
        let backends = raw.backends.iter().map(|(name, b)| (name.clone(), self.backend(name, b))).collect();
        let models: BTreeMap<String, ModelConfig> =
            raw.models.iter().map(|(name, m)| (name.clone(), self.model(name, m, raw))).collect();
        let keys = self.keys(raw);
        let auth = self.auth(raw);
        let telemetry = self.telemetry(raw.telemetry.as_ref());
        let cache = self.cache(raw);
        let state = self.state(raw);
        let datasets = self.datasets(raw);
        let experiments = self.experiments(raw, &models);
        Config { server, backends, models, keys, auth, telemetry, cache, state, datasets, experiments }
    }
}

#[cfg(test)]
mod tests;
