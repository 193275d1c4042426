//! `prompts_dir`: one YAML file per prompt, its name (less `.yaml` or `.yml`) the prompt's id.
//!
//! Owns: resolving the directory (relative to the config file's directory), listing and
//! reading its prompt files within bounds, parsing each verbatim (no `${VAR}` expansion: a
//! prompt must not read the environment), and the fingerprint of the files' bytes that tells
//! a reload whether a prompt changed.
//! Must not: judge the prompts themselves; that is `validate`'s job.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Problem;
use super::yaml::{self, Document};

/// Most prompt files one directory may hold.
pub const MAX_FILES: usize = 10_000;

/// Largest prompt file read.
pub const MAX_FILE_SIZE: u64 = 1 << 20;

/// The prompt files of `prompts_dir`, parsed.
#[derive(Debug, Clone)]
pub struct PromptFiles {
    pub dir: PathBuf,
    /// In file name order.
    pub files: Vec<PromptFile>,
    /// See [`fingerprint`].
    pub hash: String,
}

/// One parsed prompt file.
#[derive(Debug, Clone)]
pub struct PromptFile {
    /// The file name less its extension.
    pub id: String,
    /// The file's path, as problems name it.
    pub origin: String,
    /// The file's document placed at `prompts.<id>`, positions those of the file.
    pub doc: Document,
}

/// Where `prompts_dir` points: relative paths start at the config file's directory (`base`),
/// or the working directory for a config that is not a file.
pub fn resolve(dir: &str, base: Option<&Path>) -> PathBuf {
    let dir = Path::new(dir.trim());
    match base {
        Some(base) if dir.is_relative() => base.join(dir),
        _ => dir.to_path_buf(),
    }
}

/// Reads the `prompts_dir` that `doc` (the config, from `origin`) names, if any. Problems are
/// placed in the config (a directory that cannot be listed) or in the prompt file at fault.
/// Blocking.
pub fn read(doc: &Document, origin: &str, base: Option<&Path>) -> (Option<PromptFiles>, Vec<Problem>) {
    // A `prompts_dir` that is not a string is reported by validation.
    let Some(Value::String(text)) = doc.root.get("prompts_dir") else { return (None, Vec::new()) };
    if text.trim().is_empty() {
        return (None, Vec::new());
    }
    let dir = resolve(text, base);
    let at_config = |message: String| {
        let pos = doc.value_pos("prompts_dir");
        Problem { origin: origin.to_string(), line: pos.line, col: pos.col, message }
    };
    let paths = match list(&dir) {
        Ok(paths) => paths,
        Err(message) => return (None, vec![at_config(format!("`prompts_dir` {}: {message}", dir.display()))]),
    };
    let mut problems = Vec::new();
    let mut files = Vec::with_capacity(paths.len());
    let mut hasher = Sha256::new();
    for (id, path) in paths {
        let origin = path.display().to_string();
        let at_start = |message: String| Problem { origin: origin.clone(), line: 1, col: 1, message };
        let bytes = match read_bounded(&path) {
            Ok(bytes) => bytes,
            Err(message) => {
                problems.push(at_start(message));
                continue;
            }
        };
        hash_file(&mut hasher, &path, &bytes);
        let Ok(text) = std::str::from_utf8(&bytes) else {
            problems.push(at_start("the file is not UTF-8 text".into()));
            continue;
        };
        match yaml::parse_verbatim(text, &origin) {
            Ok(doc) => files.push(PromptFile { doc: doc.nested(&["prompts", &id]), id, origin }),
            Err(err) => problems.extend(err.problems),
        }
    }
    let hash = format!("sha256:{}", hex::encode(hasher.finalize()));
    (Some(PromptFiles { dir, files, hash }), problems)
}

/// The hash [`read`] would give the files of `dir` now; `None` when it cannot be listed.
/// Cheaper than reading: nothing is parsed. Blocking.
pub fn fingerprint(dir: &Path) -> Option<String> {
    let mut hasher = Sha256::new();
    for (_, path) in list(dir).ok()? {
        // An unreadable file hashes as empty; reading it for real reports the problem.
        let bytes = read_bounded(&path).unwrap_or_default();
        hash_file(&mut hasher, &path, &bytes);
    }
    Some(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// `(id, path)` of each prompt file in `dir`, by name: `*.yaml` and `*.yml`, not hidden
/// (editors' swap files, Kubernetes' `..data`).
fn list(dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|err| format!("cannot list the directory: {err}"))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|err| format!("cannot list the directory: {err}"))?;
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(id) = name.strip_suffix(".yaml").or_else(|| name.strip_suffix(".yml")) else { continue };
        // Follows symlinks (a mounted ConfigMap's files are links).
        if name.starts_with('.') || !path.is_file() {
            continue;
        }
        if found.len() >= MAX_FILES {
            return Err(format!("more than {MAX_FILES} prompt files"));
        }
        found.push((id.to_string(), path));
    }
    found.sort();
    Ok(found)
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let size = std::fs::metadata(path).map_err(|err| format!("cannot read file: {err}"))?.len();
    if size > MAX_FILE_SIZE {
        return Err(format!("prompt file of {size} bytes is larger than the {MAX_FILE_SIZE} bytes allowed"));
    }
    std::fs::read(path).map_err(|err| format!("cannot read file: {err}"))
}

fn hash_file(hasher: &mut Sha256, path: &Path, bytes: &[u8]) {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    hasher.update((name.len() as u64).to_le_bytes());
    hasher.update(name.as_bytes());
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_dirs_start_at_the_config_directory() {
        assert_eq!(resolve("prompts/", Some(Path::new("/etc/weir"))), PathBuf::from("/etc/weir/prompts/"));
        assert_eq!(resolve("/srv/prompts", Some(Path::new("/etc/weir"))), PathBuf::from("/srv/prompts"));
        assert_eq!(resolve("prompts", None), PathBuf::from("prompts"));
    }

    #[test]
    fn lists_yaml_files_by_name_and_fingerprints_their_bytes() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("b.yml"), "versions: {}\n")?;
        std::fs::write(dir.path().join("a.yaml"), "versions: {}\n")?;
        std::fs::write(dir.path().join(".a.yaml.swp"), "x")?;
        std::fs::write(dir.path().join("notes.txt"), "x")?;
        let ids: Vec<String> = list(dir.path())?.into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["a", "b"]);
        let before = fingerprint(dir.path());
        std::fs::write(dir.path().join("notes.txt"), "changed")?;
        assert_eq!(fingerprint(dir.path()), before, "other files do not count");
        std::fs::write(dir.path().join("a.yaml"), "versions: { v1: {} }\n")?;
        assert_ne!(fingerprint(dir.path()), before);
        Ok(())
    }
}
