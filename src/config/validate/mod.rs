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
mod prompts;
mod schema;
mod server;
mod state;
mod store;
mod telemetry;
mod values;

use std::collections::{BTreeMap, BTreeSet};

use super::prompt_files::PromptFiles;
use super::raw::RawConfig;
use super::yaml::{Document, Pos};
use super::{Config, ConfigError, ModelConfig, Problem, PromptConfig, PromptsConfig};

/// Checks `doc` against the schema and rules of SPEC §2, with the prompt files read from its
/// `prompts_dir` (each problem placed in its own file).
pub fn validate(doc: &Document, origin: &str, files: Option<&PromptFiles>) -> Result<Config, ConfigError> {
    let mut file_problems = Vec::new();
    let mut from_files = Vec::new();
    let mut failed = BTreeSet::new();
    for file in files.map_or(&[][..], |files| &files.files) {
        let (prompt, mut problems) = check(&file.doc, &file.origin, BTreeSet::new(), |cx, raw| {
            raw.prompts.get(&file.id).and_then(|prompt| cx.prompt(&file.id, prompt, &file.origin))
        });
        file_problems.append(&mut problems);
        match prompt.flatten() {
            Some(prompt) => from_files.push(prompt),
            None => {
                failed.insert(file.id.clone());
            }
        }
    }
    let (config, mut problems) = check(doc, origin, failed, |cx, raw| cx.config(raw, files, from_files));
    problems.append(&mut file_problems);
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(ConfigError { problems }),
    }
}

/// Deserializes `doc` and runs `body` over it, collecting every problem placed in `origin`.
fn check<T>(
    doc: &Document,
    origin: &str,
    failed_prompts: BTreeSet<String>,
    body: impl FnOnce(&mut Cx<'_>, &RawConfig) -> T,
) -> (Option<T>, Vec<Problem>) {
    let mut cx = Cx {
        doc,
        origin,
        problems: Vec::new(),
        dropped: Vec::new(),
        prompts: PromptsConfig::default(),
        failed_prompts,
    };
    let mut problems = Vec::new();
    let value = cx.deserialize().map(|raw| {
        // Type problems are kept apart: the filter below is only for their echoes.
        problems = std::mem::take(&mut cx.problems);
        let value = body(&mut cx, &raw);
        let dropped = std::mem::take(&mut cx.dropped);
        cx.problems.retain(|(path, _, _)| !dropped.iter().any(|d| is_within(path, d)));
        value
    });
    problems.append(&mut cx.problems);
    problems.sort_by_key(|(_, pos, _)| (pos.line, pos.col));
    let problems = problems
        .into_iter()
        .map(|(_, pos, message)| Problem { origin: origin.to_string(), line: pos.line, col: pos.col, message })
        .collect();
    (value, problems)
}

/// Whether `path` is `ancestor` or lies below it.
fn is_within(path: &str, ancestor: &str) -> bool {
    path.strip_prefix(ancestor).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// The validation pass's state: the document, and every problem found so far.
struct Cx<'a> {
    doc: &'a Document,
    /// The document's file, as problems and prompts name it.
    origin: &'a str,
    /// `(path, position, message)`.
    problems: Vec<(String, Pos, String)>,
    /// Paths whose value had the wrong type and was replaced by a placeholder.
    dropped: Vec<String>,
    /// The valid prompts, once [`Cx::prompts`] ran; targets refer to them.
    prompts: PromptsConfig,
    /// Ids of prompts reported invalid: a target naming one is not reported again.
    failed_prompts: BTreeSet<String>,
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
    fn config(&mut self, raw: &RawConfig, files: Option<&PromptFiles>, from_files: Vec<PromptConfig>) -> Config {
        self.prompts(raw, files, from_files);
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
        let prompts = std::mem::take(&mut self.prompts);
        Config { server, backends, models, keys, auth, telemetry, cache, state, datasets, experiments, prompts }
    }
}

#[cfg(test)]
mod tests;
