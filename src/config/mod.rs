//! Config: reading `weir.yaml`, validating it, and reporting every problem with its place.
//!
//! Owns: the raw serde schema (`raw`), the YAML reader that keeps line/column positions and
//! expands `${VAR}` / `${VAR:-default}` (`yaml`), unit parsing (`units`), and the validation
//! pass that turns a `RawConfig` into a typed [`Config`] (`validate`); where the text comes
//! from and its hash (`source`), and the secret-masked view of it (`mask`); the prompt files
//! of `prompts_dir` (`prompt_files`) and the sandboxed template dialect prompts are written in
//! (`templates`).
//! Must not: name any module but `wire` (its own limits, such as the dataset count, live
//! here), open sockets, build HTTP clients or touch live state — that is the runtime's
//! snapshot build, so `weir check` stays side-effect free.

mod mask;
pub(crate) mod prompt_files;
pub(crate) mod raw;
mod source;
pub(crate) mod templates;
mod types;
mod units;
mod validate;
mod yaml;

use std::fmt;
use std::path::Path;

pub use source::{ConfigSource, Loaded, SourceInfo, SourceText};
pub use types::*;
pub use units::{parse_duration, parse_size};

/// Most datasets one config may declare (the datasets tap selects them with a 64-bit set).
pub const MAX_DATASETS: usize = 64;

/// Where `weir serve` looks when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "config/weir.yaml";

/// The config used when neither `--config` nor `config/weir.yaml` exists: local listeners,
/// no auth, model `mock` on the built-in mock backend.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.yaml");

/// One problem found in a config file, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file's path as given, or `<embedded>` / `<string>`.
    pub origin: String,
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.origin, self.line, self.col, self.message)
    }
}

/// Every problem found in one config; never empty.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// Reads and validates the file at `path`, expanding variables from the process environment.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
        problems: vec![Problem {
            origin: origin.clone(),
            line: 1,
            col: 1,
            message: format!("cannot read file: {err}"),
        }],
    })?;
    let doc = yaml::parse(&text, &origin, &|name| std::env::var(name).ok())?;
    from_document(&doc, &origin, path.parent())
}

/// Validates config text. `env` resolves `${VAR}` references (injected so tests need not
/// touch the process environment).
pub fn load_str(text: &str, origin: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let doc = yaml::parse(text, origin, env)?;
    from_document(&doc, origin, None)
}

/// Validates a parsed config together with the prompt files of its `prompts_dir` (relative
/// to `base`, else the working directory).
fn from_document(doc: &yaml::Document, origin: &str, base: Option<&Path>) -> Result<Config, ConfigError> {
    let (files, mut file_problems) = prompt_files::read(doc, origin, base);
    match validate::validate(doc, origin, files.as_ref()) {
        Ok(config) if file_problems.is_empty() => Ok(config),
        Ok(_) => Err(ConfigError { problems: file_problems }),
        Err(mut err) => {
            err.problems.append(&mut file_problems);
            Err(err)
        }
    }
}

/// The config `weir serve` uses: `path` if given, else `config/weir.yaml` if it exists,
/// else the embedded default (see [`ConfigSource::for_serve`]).
pub fn load_for_serve(path: Option<&Path>) -> Result<Config, ConfigError> {
    ConfigSource::for_serve(path).load().map(|loaded| loaded.config)
}
