//! The run's output directory: `results.jsonl` (one line per item and variant, appended as
//! answers come), `run.json` (the settings, so a resumed run cannot mix scorers or models)
//! and `summary.json`.
//!
//! Owns: resuming (items with a line and no error are not asked again; failed ones are,
//! and the last line of an item wins), the per-variant summary and its table.
//! Must not: trust the file — a torn last line (an interrupted run) is skipped.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::datasets::stats;

pub const RESULTS: &str = "results.jsonl";
pub const SETTINGS: &str = "run.json";
pub const SUMMARY: &str = "summary.json";

/// One item answered by one variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// The dataset record's `request_id`.
    pub item: String,
    /// The pinned variant (`--variant`); `null` when weir chose.
    pub variant: Option<String>,
    /// The variant that answered (`x-weir-variant`).
    pub served_by: Option<String>,
    pub status: u16,
    pub latency_ms: f64,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
    pub output: Option<String>,
    pub reference: Option<String>,
    pub score: Option<f64>,
    /// The judge's reason, or why a schema rejected the answer.
    pub reason: Option<String>,
    /// Why there is no score: the call or the scoring failed.
    pub error: Option<String>,
    pub ts: String,
}

impl Line {
    /// The row of the summary this line counts in.
    pub fn label(&self) -> &str {
        self.variant.as_deref().or(self.served_by.as_deref()).unwrap_or("-")
    }
}

/// What a run was asked to do; a resumed run must ask the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub dataset: PathBuf,
    pub model: String,
    pub scorer: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("cannot use the output directory {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{} holds a run with other settings ({previous}); resume with the same --dataset, --model and --scorer, or choose another --out",
        dir.display()
    )]
    Mismatch { dir: PathBuf, previous: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ResultsError + '_ {
    move |source| ResultsError::Io { path: path.to_owned(), source }
}

/// Prepares `dir` for `settings`: creates it, checks an earlier run's settings, and returns
/// the earlier lines (torn ones skipped).
pub fn open(dir: &Path, settings: &Settings) -> Result<Vec<Line>, ResultsError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let settings_path = dir.join(SETTINGS);
    match std::fs::read_to_string(&settings_path) {
        Ok(text) => {
            let previous: Option<Settings> = serde_json::from_str(&text).ok();
            if previous.as_ref() != Some(settings) {
                return Err(ResultsError::Mismatch { dir: dir.to_owned(), previous: text.trim().to_owned() });
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let text = serde_json::to_string_pretty(settings).unwrap_or_default();
            std::fs::write(&settings_path, text + "\n").map_err(io(&settings_path))?;
        }
        Err(err) => return Err(io(&settings_path)(err)),
    }
    let results = dir.join(RESULTS);
    let text = match std::fs::read_to_string(&results) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(io(&results)(err)),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        // End the torn line so the next one starts clean.
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new().append(true).open(&results).map_err(io(&results))?;
        file.write_all(b"\n").map_err(io(&results))?;
    }
    Ok(text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect())
}

/// `(item, pinned variant)` pairs already answered without error.
pub fn done(lines: &[Line]) -> HashSet<(String, Option<String>)> {
    let mut last: BTreeMap<(String, Option<String>), bool> = BTreeMap::new();
    for line in lines {
        last.insert((line.item.clone(), line.variant.clone()), line.error.is_none());
    }
    last.into_iter().filter(|(_, ok)| *ok).map(|(key, _)| key).collect()
}

/// One variant's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantSummary {
    pub variant: String,
    pub items: usize,
    pub scored: usize,
    pub failures: usize,
    pub mean_score: Option<f64>,
    /// Two-sided 95% t interval of the mean score (a fixed-size sample, so the classical one).
    pub ci95: Option<(f64, f64)>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Known when `--config` gave the model's price.
    pub cost_usd: Option<f64>,
}

/// The summary of every variant, the last line of each item winning.
pub fn summarize(lines: &[Line]) -> Vec<VariantSummary> {
    let mut last: BTreeMap<(&str, Option<&str>), &Line> = BTreeMap::new();
    for line in lines {
        last.insert((&line.item, line.variant.as_deref()), line);
    }
    let mut groups: BTreeMap<&str, Vec<&Line>> = BTreeMap::new();
    for line in last.into_values() {
        groups.entry(line.label()).or_default().push(line);
    }
    groups.into_iter().map(|(variant, lines)| summary(variant, &lines)).collect()
}

fn summary(variant: &str, lines: &[&Line]) -> VariantSummary {
    let scores: Vec<f64> = lines.iter().filter_map(|l| l.score).collect();
    let mut latency: Vec<f64> = lines.iter().filter(|l| l.error.is_none()).map(|l| l.latency_ms).collect();
    latency.sort_by(f64::total_cmp);
    let costs: Vec<f64> = lines.iter().filter_map(|l| l.cost_usd).collect();
    VariantSummary {
        variant: variant.to_owned(),
        items: lines.len(),
        scored: scores.len(),
        failures: lines.iter().filter(|l| l.error.is_some()).count(),
        mean_score: stats::mean_var(&scores).map(|(mean, _)| mean),
        ci95: stats::ci95(&scores),
        latency_p50_ms: stats::percentile(&latency, 50.0),
        latency_p95_ms: stats::percentile(&latency, 95.0),
        prompt_tokens: lines.iter().filter_map(|l| l.prompt_tokens).sum(),
        completion_tokens: lines.iter().filter_map(|l| l.completion_tokens).sum(),
        cost_usd: (!costs.is_empty()).then(|| costs.iter().sum()),
    }
}

/// The summary as an aligned text table.
pub fn table(summaries: &[VariantSummary]) -> String {
    let header = ["variant", "items", "failures", "score (95% CI)", "p50 ms", "p95 ms", "tokens in/out", "cost usd"];
    let mut rows = vec![header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()];
    let num = |v: Option<f64>, digits: usize| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"));
    for s in summaries {
        let score = match (s.mean_score, s.ci95) {
            (Some(mean), Some((lo, hi))) => format!("{mean:.3} [{lo:.3}, {hi:.3}]"),
            (Some(mean), None) => format!("{mean:.3}"),
            _ => "-".to_owned(),
        };
        rows.push(vec![
            s.variant.clone(),
            s.items.to_string(),
            s.failures.to_string(),
            score,
            num(s.latency_p50_ms, 1),
            num(s.latency_p95_ms, 1),
            format!("{}/{}", s.prompt_tokens, s.completion_tokens),
            num(s.cost_usd, 6),
        ]);
    }
    crate::datasets::report::aligned(&rows, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(item: &str, variant: Option<&str>, score: Option<f64>, error: Option<&str>) -> Line {
        Line {
            item: item.into(),
            variant: variant.map(str::to_owned),
            served_by: Some("served".into()),
            status: if error.is_some() { 502 } else { 200 },
            latency_ms: 10.0,
            prompt_tokens: Some(3),
            completion_tokens: Some(5),
            cost_usd: None,
            output: None,
            reference: None,
            score,
            reason: None,
            error: error.map(str::to_owned),
            ts: String::new(),
        }
    }

    #[test]
    fn failed_items_are_asked_again_and_the_last_line_wins() {
        let lines = [
            line("1", Some("a"), Some(1.0), None),
            line("2", Some("a"), None, Some("timed out")),
            line("2", Some("a"), Some(0.0), None),
            line("3", Some("a"), None, Some("boom")),
            line("1", None, Some(1.0), None),
        ];
        let done = done(&lines);
        assert!(done.contains(&("1".into(), Some("a".into()))) && done.contains(&("2".into(), Some("a".into()))));
        assert!(!done.contains(&("3".into(), Some("a".into()))));
        let summary = summarize(&lines);
        let a = summary.iter().find(|s| s.variant == "a").unwrap();
        assert_eq!((a.items, a.scored, a.failures, a.mean_score), (3, 2, 1, Some(0.5)));
        assert_eq!(summary.iter().find(|s| s.variant == "served").unwrap().items, 1);
    }

    #[test]
    fn a_torn_line_is_skipped_and_ended() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings { dataset: "d".into(), model: "m".into(), scorer: "exact".into() };
        assert!(open(dir.path(), &settings).unwrap().is_empty());
        let whole = serde_json::to_string(&line("1", None, Some(1.0), None)).unwrap();
        std::fs::write(dir.path().join(RESULTS), format!("{whole}\n{{\"item\":\"2\",\"varia")).unwrap();
        assert_eq!(open(dir.path(), &settings).unwrap().len(), 1);
        assert!(std::fs::read_to_string(dir.path().join(RESULTS)).unwrap().ends_with('\n'));
        let other = Settings { scorer: "contains".into(), ..settings };
        assert!(matches!(open(dir.path(), &other), Err(ResultsError::Mismatch { .. })));
    }
}
