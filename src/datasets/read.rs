//! Reading a dataset directory back: its files in order, one JSON line at a time, and the
//! feedback joined by `request_id`.
//!
//! Owns: tolerance of damage — a torn or corrupt line (a crash mid-write, a hand edit) is
//! skipped with a warning naming the file and line, never fatal. Used by the CLI only, so it
//! does plain blocking I/O.
//! Feedback join: the last feedback for a request wins (its score, and its comment and
//! `ideal` when it has them), so a reviewer can correct an earlier score.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead as _, BufReader, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::files;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read dataset directory {}: {source}", dir.display())]
    Dir { dir: PathBuf, source: io::Error },
    #[error("cannot read {}: {source}", path.display())]
    File { path: PathBuf, source: io::Error },
    #[error("cannot write the output: {0}")]
    Output(io::Error),
}

/// One line of a dataset file.
pub enum Entry {
    /// A request record (SPEC §6).
    Request(Value),
    /// `{"type":"feedback",...}`: joined to requests by the `feedback` pass of this module.
    Feedback,
}

/// The joined feedback of one request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Joined {
    pub score: f64,
    pub comment: Option<String>,
    pub ideal: Option<String>,
    /// How many feedback lines named the request.
    pub count: u32,
}

/// Every request's feedback, last one winning.
pub type FeedbackMap = HashMap<String, Joined>;

/// Calls `each` for every well-formed line of every dataset file in `dir`, oldest first;
/// warns on `warn` about each line skipped. Returns how many were skipped.
pub fn for_each(
    dir: &Path,
    warn: &mut dyn Write,
    mut each: impl FnMut(Entry) -> Result<(), ReadError>,
) -> Result<usize, ReadError> {
    let paths = files::list(dir).map_err(|source| ReadError::Dir { dir: dir.to_owned(), source })?;
    let mut skipped = 0;
    for path in paths {
        let file = File::open(&path).map_err(|source| ReadError::File { path: path.clone(), source })?;
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        let mut number = 0usize;
        loop {
            line.clear();
            let read =
                reader.read_until(b'\n', &mut line).map_err(|source| ReadError::File { path: path.clone(), source })?;
            if read == 0 {
                break;
            }
            number += 1;
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Value>(text) {
                Ok(value) if value.is_object() => {
                    let feedback = value.get("type").and_then(Value::as_str) == Some("feedback");
                    each(if feedback { Entry::Feedback } else { Entry::Request(value) })?;
                }
                Ok(_) | Err(_) => {
                    skipped += 1;
                    let _ = writeln!(warn, "warning: {}:{number}: skipped a corrupt or torn line", path.display());
                }
            }
        }
    }
    Ok(skipped)
}

/// Reads only the feedback lines of `dir` (a cheap first pass: other lines are not parsed).
pub fn feedback(dir: &Path) -> Result<FeedbackMap, ReadError> {
    let paths = files::list(dir).map_err(|source| ReadError::Dir { dir: dir.to_owned(), source })?;
    let mut joined = FeedbackMap::new();
    for path in paths {
        let file = File::open(&path).map_err(|source| ReadError::File { path: path.clone(), source })?;
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let read =
                reader.read_until(b'\n', &mut line).map_err(|source| ReadError::File { path: path.clone(), source })?;
            if read == 0 {
                break;
            }
            if !contains(&line, br#""type":"feedback""#) {
                continue;
            }
            // Damaged lines are reported by the main pass; here they are just not feedback.
            let Ok(value) = serde_json::from_slice::<Value>(line.trim_ascii()) else { continue };
            if value.get("type").and_then(Value::as_str) == Some("feedback") {
                absorb(&mut joined, &value);
            }
        }
    }
    Ok(joined)
}

fn absorb(joined: &mut FeedbackMap, value: &Value) {
    let (Some(id), Some(score)) =
        (value.get("request_id").and_then(Value::as_str), value.get("score").and_then(Value::as_f64))
    else {
        return;
    };
    let entry = joined.entry(id.to_owned()).or_default();
    entry.score = score;
    entry.count += 1;
    if let Some(comment) = value.get("comment").and_then(Value::as_str) {
        entry.comment = Some(comment.to_owned());
    }
    if let Some(ideal) = value.get("ideal").and_then(Value::as_str) {
        entry.ideal = Some(ideal.to_owned());
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A record's string field, `""` when absent.
pub fn text<'v>(record: &'v Value, field: &str) -> &'v str {
    record.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// Whether a record's request was answered successfully.
pub fn succeeded(record: &Value) -> bool {
    let status = record.get("status").and_then(Value::as_u64).unwrap_or(0);
    (200..300).contains(&status) && record.get("error").is_none_or(Value::is_null)
}

/// `--prompt ID` or `--prompt ID@VERSION`: records of requests that rendered that prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptFilter {
    pub id: String,
    pub version: Option<String>,
}

impl PromptFilter {
    pub fn parse(text: &str) -> Result<PromptFilter, String> {
        let (id, version) = match text.trim().split_once('@') {
            Some((id, version)) => (id, Some(version)),
            None => (text.trim(), None),
        };
        if id.is_empty() || version.is_some_and(str::is_empty) {
            return Err(format!("`{text}` is not ID or ID@VERSION"));
        }
        Ok(PromptFilter { id: id.to_owned(), version: version.map(str::to_owned) })
    }

    /// Whether the record's `prompt` is this one.
    pub fn matches(&self, record: &Value) -> bool {
        let Some(prompt) = record.get("prompt") else { return false };
        let field = |name: &str| prompt.get(name).and_then(Value::as_str);
        field("id") == Some(self.id.as_str()) && self.version.as_deref().is_none_or(|v| field("version") == Some(v))
    }
}

#[cfg(test)]
mod prompt_filter_tests {
    use serde_json::json;

    use super::PromptFilter;

    #[test]
    fn matches_an_id_or_an_id_and_version() {
        let record = json!({"prompt": {"id": "support", "version": "v2", "variables": {}}});
        let filter = |text: &str| PromptFilter::parse(text).map(|f| f.matches(&record));
        assert_eq!(filter("support"), Ok(true));
        assert_eq!(filter("support@v2"), Ok(true));
        assert_eq!(filter("support@v1"), Ok(false));
        assert_eq!(filter("other"), Ok(false));
        assert!(PromptFilter::parse("@v1").is_err() && PromptFilter::parse("a@").is_err());
        assert_eq!(PromptFilter::parse("a").map(|f| f.matches(&json!({"model": "m"}))), Ok(false));
    }
}
