//! Where a config comes from, and what was read: the file's bytes, their hash, the tree.
//!
//! Owns: choosing the file `weir serve` reads ([`ConfigSource::for_serve`]), reading it (the
//! same way at start and on every reload), the SHA-256 of its bytes that tells a reload
//! whether anything changed, and the masked view `/admin/config` shows ([`SourceInfo`]).
//! Must not: keep secrets in the view (see `mask`), or touch live state.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Config, ConfigError, DEFAULT_CONFIG_PATH, EMBEDDED_DEFAULT, Problem, mask, yaml};

/// Where the config is read from, at start and on each reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file on disk, watched for changes.
    File(PathBuf),
    /// The built-in default, used when no file exists; it never changes, so reloading it
    /// finds nothing new.
    Embedded,
}

/// A config that passed validation, with the facts about where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub info: Arc<SourceInfo>,
}

/// What `/admin/config` tells about the active config.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    /// The file's path as given, `<embedded>`, or `<memory>` for a config built in code.
    pub origin: String,
    /// `sha256:` and the lowercase hex digest of the bytes read; `None` for `<memory>`.
    pub hash: Option<String>,
    /// The document as loaded (`${VAR}` expanded) with every secret masked; `Null` for
    /// `<memory>`.
    pub masked: Value,
}

impl SourceInfo {
    /// For a [`Config`] handed over in code, which has no text to hash or show.
    pub fn in_memory() -> SourceInfo {
        SourceInfo { origin: "<memory>".into(), hash: None, masked: Value::Null }
    }
}

impl ConfigSource {
    /// The source `weir serve` uses: `path` if given, else `config/weir.yaml` if it exists,
    /// else the embedded default.
    pub fn for_serve(path: Option<&Path>) -> ConfigSource {
        match path {
            Some(path) => ConfigSource::File(path.to_path_buf()),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => ConfigSource::File(DEFAULT_CONFIG_PATH.into()),
            None => ConfigSource::Embedded,
        }
    }

    /// The name problems are reported under.
    pub fn origin(&self) -> String {
        match self {
            ConfigSource::File(path) => path.display().to_string(),
            ConfigSource::Embedded => "<embedded>".into(),
        }
    }

    /// The file to watch, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ConfigSource::File(path) => Some(path),
            ConfigSource::Embedded => None,
        }
    }

    /// Reads the source's bytes. Blocking: call it off the async threads.
    pub fn read(&self) -> Result<SourceText, ConfigError> {
        let origin = self.origin();
        let bytes = match self {
            ConfigSource::File(path) => {
                std::fs::read(path).map_err(|err| ConfigError::at_start(&origin, format!("cannot read file: {err}")))?
            }
            ConfigSource::Embedded => EMBEDDED_DEFAULT.as_bytes().to_vec(),
        };
        let hash = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        let base = self.path().and_then(Path::parent).map(Path::to_path_buf);
        Ok(SourceText { origin, bytes, hash, base })
    }

    /// Reads and validates the source, expanding variables from the process environment.
    /// Blocking: call it off the async threads.
    pub fn load(&self) -> Result<Loaded, ConfigError> {
        self.read()?.load(&|name| std::env::var(name).ok())
    }
}

/// The bytes of a config as read, before validation.
#[derive(Debug, Clone)]
pub struct SourceText {
    pub origin: String,
    pub bytes: Vec<u8>,
    /// `sha256:` + hex of `bytes`.
    pub hash: String,
    /// The directory a relative `prompts_dir` starts from: the file's; `None` is the
    /// working directory.
    pub base: Option<PathBuf>,
}

impl SourceText {
    /// Parses and validates the text; `env` resolves `${VAR}` references.
    pub fn load(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Loaded, ConfigError> {
        let text = std::str::from_utf8(&self.bytes)
            .map_err(|err| ConfigError::at_start(&self.origin, format!("the file is not UTF-8 text: {err}")))?;
        let doc = yaml::parse(text, &self.origin, env)?;
        let config = super::from_document(&doc, &self.origin, self.base.as_deref())?;
        let info = SourceInfo { origin: self.origin, hash: Some(self.hash), masked: mask::masked(&doc.root) };
        Ok(Loaded { config, info: Arc::new(info) })
    }
}

impl ConfigError {
    /// One problem placed at the start of the file (it cannot be read at all).
    fn at_start(origin: &str, message: String) -> ConfigError {
        ConfigError { problems: vec![Problem { origin: origin.to_owned(), line: 1, col: 1, message }] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_sha256_of_the_bytes_and_the_view_is_masked() {
        let text = "server: { admin_token: hunter2 }\nbackends: { m: { kind: mock } }\n\
                    models: { m: { targets: [ { backend: m, model: m } ] } }\nauth: { mode: none }\n";
        let source =
            SourceText { origin: "<t>".into(), bytes: text.as_bytes().to_vec(), hash: "sha256:x".into(), base: None }
                .load(&|_| None);
        let loaded = match source {
            Ok(loaded) => loaded,
            Err(err) => unreachable!("valid config: {err}"),
        };
        assert_eq!(loaded.info.masked["server"]["admin_token"], "****");
        assert_eq!(loaded.info.masked["models"]["m"]["targets"][0]["backend"], "m");
        assert_eq!(loaded.config.server.admin_token.as_deref(), Some("hunter2"));
    }

    #[test]
    fn embedded_default_reads_and_hashes() {
        let text = ConfigSource::Embedded.read().map_err(|e| e.to_string());
        let text = text.as_ref().map(|t| (t.hash.len(), t.hash.starts_with("sha256:")));
        assert_eq!(text, Ok((7 + 64, true)));
    }

    #[test]
    fn a_missing_file_is_one_problem_at_1_1() {
        let err = ConfigSource::File("/nonexistent/weir.yaml".into()).load().err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.starts_with("/nonexistent/weir.yaml:1:1: cannot read file")));
    }
}
