//! `weir eval run`: offline evaluation — replay a dataset's requests through a running weir
//! against one or more variants, score each answer, and summarize per variant.
//!
//! Owns: the run (items × variants, `--concurrency` calls at a time, each result appended
//! to `results.jsonl` as soon as it is scored, resume, the summary and `--fail-under`).
//! Reads the dataset through `datasets::read`; calls weir over HTTP (`client`), never its
//! internals, so it evaluates exactly what clients get.
//! Must not: hold answers in memory beyond the calls in flight; lose a scored item to an
//! interruption (each line is written and flushed when it is ready).

pub mod client;
pub mod items;
mod progress;
pub mod results;
pub mod scorer;

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;

use self::client::Client;
use self::items::Item;
use self::progress::Progress;
use self::results::{Line, ResultsError, Settings, VariantSummary};
use self::scorer::Scorer;
use crate::config::Price;
use crate::datasets::read::ReadError;

/// A run as the command line asked for it.
#[derive(Debug)]
pub struct Options {
    pub dataset: PathBuf,
    pub client: Client,
    pub model: String,
    /// Variants to pin with `x-weir-variant`; empty lets weir choose.
    pub variants: Vec<String>,
    pub scorer: Scorer,
    /// As given on the command line (recorded in `run.json`).
    pub scorer_spec: String,
    pub concurrency: usize,
    pub limit: Option<usize>,
    pub out: PathBuf,
    /// The model's price, for cost (from `--config`).
    pub price: Option<Price>,
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Dataset(#[from] ReadError),
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error("the dataset {} has no successful chat or text completions to replay", .0.display())]
    NoItems(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// How a run ended.
#[derive(Debug)]
pub struct Finished {
    pub summaries: Vec<VariantSummary>,
    /// Ctrl-C stopped it; rerunning resumes.
    pub interrupted: bool,
}

/// Runs the evaluation; `stop` ends it early (the lines written so far are kept).
pub async fn run(options: &Options, stop: impl std::future::Future<Output = ()>) -> Result<Finished, EvalError> {
    let items = items::load(&options.dataset, options.limit, &mut std::io::stderr())?;
    if items.is_empty() {
        return Err(EvalError::NoItems(options.dataset.clone()));
    }
    let settings = Settings {
        dataset: options.dataset.clone(),
        model: options.model.clone(),
        scorer: options.scorer_spec.clone(),
    };
    let mut lines = results::open(&options.out, &settings)?;
    let done = results::done(&lines);
    let variants: Vec<Option<&str>> = if options.variants.is_empty() {
        vec![None]
    } else {
        options.variants.iter().map(|v| Some(v.as_str())).collect()
    };
    let jobs: Vec<(&Item, Option<&str>)> = items
        .iter()
        .flat_map(|item| variants.iter().map(move |variant| (item, *variant)))
        .filter(|(item, variant)| !done.contains(&(item.id.clone(), variant.map(str::to_owned))))
        .collect();
    let total = (items.len() * variants.len()) as u64;
    let mut progress = Progress::new(total, total - jobs.len() as u64);

    let path = options.out.join(results::RESULTS);
    let write_error = |source| EvalError::Write { path: path.clone(), source };
    let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await.map_err(write_error)?;
    let mut answers = futures_util::stream::iter(jobs)
        .map(|(item, variant)| evaluate(options, item, variant))
        .buffer_unordered(options.concurrency.max(1));
    tokio::pin!(stop);
    let mut interrupted = false;
    loop {
        let line = tokio::select! {
            line = answers.next() => match line {
                Some(line) => line,
                None => break,
            },
            () = &mut stop => {
                interrupted = true;
                break;
            }
        };
        let mut text = serde_json::to_vec(&line).unwrap_or_default();
        text.push(b'\n');
        file.write_all(&text).await.map_err(write_error)?;
        file.flush().await.map_err(write_error)?;
        progress.advance(line.error.is_some());
        lines.push(line);
    }
    progress.finish();
    let summaries = results::summarize(&lines);
    let summary_path = options.out.join(results::SUMMARY);
    let json = serde_json::to_string_pretty(&summaries).unwrap_or_default() + "\n";
    tokio::fs::write(&summary_path, json).await.map_err(|source| EvalError::Write { path: summary_path, source })?;
    Ok(Finished { summaries, interrupted })
}

/// Asks for one item's answer from one variant and scores it.
async fn evaluate(options: &Options, item: &Item, variant: Option<&str>) -> Line {
    let answer = options.client.call(item.endpoint, &item.request(&options.model), variant).await;
    let mut line = Line {
        item: item.id.clone(),
        variant: variant.map(str::to_owned),
        served_by: answer.variant,
        status: answer.status,
        latency_ms: answer.latency_ms,
        prompt_tokens: answer.usage.map(|u| u.0),
        completion_tokens: answer.usage.map(|u| u.1),
        cost_usd: options.price.zip(answer.usage).map(|(price, (input, output))| {
            (input as f64 * price.input_per_mtok + output as f64 * price.output_per_mtok) / 1_000_000.0
        }),
        output: answer.text,
        reference: item.reference.clone(),
        score: None,
        reason: None,
        error: answer.error,
        ts: crate::datasets::record::rfc3339(std::time::SystemTime::now()),
    };
    if line.error.is_none() {
        let output = line.output.clone().unwrap_or_default();
        match options.scorer.score(item, &output, &options.client).await {
            Ok(scored) => {
                line.score = Some(scored.score);
                line.reason = scored.reason;
            }
            Err(error) => line.error = Some(error),
        }
    }
    line
}

/// Whether every variant's mean score reaches `threshold` (a variant with no score misses it).
pub fn passes(summaries: &[VariantSummary], threshold: f64) -> bool {
    !summaries.is_empty() && summaries.iter().all(|s| s.mean_score.is_some_and(|m| m >= threshold))
}

/// Per-call timeout when `--timeout` is not given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
