//! The `weir` command line: `serve`, `check`, `key hash`, `dataset export`, `experiment report`,
//! `eval run`, `prompt list`, `prompt render`.

mod prompt_cli;

use std::io::{Read as _, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weir::datasets::{export, report};
use weir::telemetry::{self, LogFormat};

/// jemalloc: the request path allocates many small, short-lived buffers across the worker
/// threads, where glibc malloc spent a tenth of the gateway's CPU; jemalloc is as fast as
/// mimalloc here while keeping RSS low with thousands of open streams.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc returns freed pages to the system on its decay clock (10 s) only while something
/// allocates; a background thread does it on time, so memory freed after a burst (thousands
/// of streams whose clients left: 87 MiB back to 31 MiB within ten seconds, measured) does not
/// stay resident while the gateway idles.
///
/// Freed pages are kept for reuse [`DIRTY_DECAY_MS`] instead of jemalloc's 10 s: under a
/// steady load, ten seconds of churn (cache evictions, finished requests' buffers) stayed
/// resident as 10–13 MiB that nothing was reusing (production bench at 64 connections, this
/// setting alone: peak RSS 71 → 58 MiB); the purging runs on the background thread, not on requests.
fn purge_freed_memory_in_background() {
    #[cfg(feature = "jemalloc")]
    {
        if let Err(err) = tikv_jemalloc_ctl::background_thread::write(true) {
            tracing::warn!(%err, "jemalloc background purging unavailable; freed memory is returned only as weir allocates");
        }
        shorten_dirty_decay();
    }
}

/// How long jemalloc keeps freed pages for reuse before returning them.
#[cfg(feature = "jemalloc")]
const DIRTY_DECAY_MS: isize = 1000;

/// Sets [`DIRTY_DECAY_MS`] for arenas made from now on and for those that exist already.
#[cfg(feature = "jemalloc")]
fn shorten_dirty_decay() {
    use tikv_jemalloc_ctl::{Access as _, AsName as _};
    if let Err(err) = b"arenas.dirty_decay_ms\0".name().write(DIRTY_DECAY_MS) {
        tracing::warn!(%err, "jemalloc decay time not set; freed memory is returned after 10 s");
        return;
    }
    let arenas = tikv_jemalloc_ctl::arenas::narenas::read().unwrap_or(0);
    for arena in 0..arenas {
        // Arenas not yet in use refuse the setting; they get the default just set.
        let name = format!("arena.{arena}.dirty_decay_ms\0");
        let _ = name.as_bytes().name().write(DIRTY_DECAY_MS);
    }
}

#[derive(Parser)]
#[command(name = "weir", version, about = "An OpenAI-compatible inference gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log line format on stderr (filter with RUST_LOG, default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (SIGTERM or ctrl-c drains and stops it, SIGHUP reloads the config).
    Serve {
        /// Config file; default `config/weir.yaml`, else a built-in local config. The file is
        /// reloaded when it changes, on SIGHUP and on `POST /admin/reload`.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a config file (and its prompt files, each template rendered with its declared
    /// defaults) and list every problem as PATH:LINE:COL: message.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Virtual key helpers.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Recorded evaluation datasets.
    Dataset {
        #[command(subcommand)]
        command: DatasetCommand,
    },
    /// A/B experiments over the recorded datasets.
    Experiment {
        #[command(subcommand)]
        command: ExperimentCommand,
    },
    /// Offline evaluation through a running weir.
    Eval {
        #[command(subcommand)]
        command: EvalCommand,
    },
    /// Versioned prompts of a config.
    Prompt {
        #[command(subcommand)]
        command: prompt_cli::PromptCommand,
    },
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Replay a dataset's requests through a running weir against one or more variants,
    /// score each answer, write one JSONL line per item and a summary per variant.
    /// Rerunning with the same --out resumes; exit code 1 when --fail-under is missed.
    Run(EvalArgs),
}

#[derive(clap::Args)]
struct EvalArgs {
    /// The dataset's `dir`: its successful chat and text completions are the items.
    #[arg(long)]
    dataset: PathBuf,
    /// The running weir's base URL, with or without `/v1` (http://127.0.0.1:8080).
    #[arg(long)]
    target: String,
    /// The public model to ask (each item's `model` is replaced by it).
    #[arg(long)]
    model: String,
    /// API key (default: $WEIR_API_KEY, then $OPENAI_API_KEY).
    #[arg(long)]
    api_key: Option<String>,
    /// A variant to pin with x-weir-variant; repeat for several. Without it weir chooses.
    #[arg(long = "variant")]
    variants: Vec<String>,
    /// exact | contains | regex:PATTERN | json-schema:FILE | judge:MODEL
    #[arg(long)]
    scorer: String,
    /// The judge's prompt ({{input}}, {{reference}}, {{output}}) instead of the shipped rubric.
    #[arg(long)]
    judge_rubric: Option<PathBuf>,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Only the first N items.
    #[arg(long)]
    limit: Option<usize>,
    /// Output directory (results.jsonl, run.json, summary.json).
    #[arg(long, default_value = "eval-out")]
    out: PathBuf,
    /// Exit with 1 unless every variant's mean score is at least this.
    #[arg(long)]
    fail_under: Option<f64>,
    /// weir config file to price answers with the model's `price`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Per-call timeout (humantime: 30s, 2m).
    #[arg(long, default_value = "120s")]
    timeout: String,
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// Write fine-tuning (openai-chat) or eval JSONL from a dataset directory, joined with
    /// feedback (a request's last score wins). Damaged lines are skipped with a warning.
    Export {
        /// The dataset's `dir`.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Only this public model.
        #[arg(long)]
        model: Option<String>,
        /// Only this variant.
        #[arg(long)]
        variant: Option<String>,
        /// Only requests that rendered this prompt: ID or ID@VERSION.
        #[arg(long, value_name = "ID[@VERSION]")]
        prompt: Option<String>,
        /// Only requests with feedback scored at least this (0 to 1).
        #[arg(long)]
        min_score: Option<f64>,
        /// Only requests from this time on: 2026-11-28T12:00:00Z, 2026-11-28 or a duration back (24h).
        #[arg(long)]
        since: Option<String>,
        /// `dpo` only: the least feedback score difference that makes a pair (0 to 1, default 0.5).
        #[arg(long)]
        min_margin: Option<f64>,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    /// OpenAI fine-tuning chat format: {"messages": [...], "tools"?: [...]}.
    OpenaiChat,
    /// {"input", "ideal"?, "output", "metadata"}.
    Eval,
    /// OpenAI preference fine-tuning pairs: {"input", "preferred_output", "non_preferred_output"}.
    Dpo,
}

#[derive(Subcommand)]
enum ExperimentCommand {
    /// Per-variant requests, errors, latency and TTFT percentiles, tokens, cost, mean feedback
    /// with a 95% CI, Welch's t-test against the control (fixed-horizon), and the always-valid
    /// interval and decision the live gateway computes (may be read at any time).
    Report {
        /// The dataset's `dir`.
        #[arg(long)]
        dir: PathBuf,
        /// Only this experiment.
        #[arg(long)]
        experiment: Option<String>,
        /// Only requests that rendered this prompt: ID or ID@VERSION.
        #[arg(long, value_name = "ID[@VERSION]")]
        prompt: Option<String>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
        /// A weir config: each experiment's metric and `stop` rule from its `experiments:` entry.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The always-valid comparison's metric (default: the config's, else feedback).
        #[arg(long, value_enum)]
        metric: Option<MetricArg>,
        /// Its confidence (default: the config's, else 0.95).
        #[arg(long)]
        confidence: Option<f64>,
        /// Samples per arm before a decision (default: the config's, else 200).
        #[arg(long)]
        min_samples: Option<u64>,
        /// Differences within ±margin are `equivalent` (default: the config's, else by metric).
        #[arg(long)]
        margin: Option<f64>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MetricArg {
    Feedback,
    Success,
    Latency,
    Cost,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    Table,
    Json,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Read a key on stdin and print the `sha256:` form to put in `keys[].key`.
    Hash,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config, cli.log_format),
        Command::Check { config } => check(&config),
        Command::Key { command: KeyCommand::Hash } => key_hash(),
        Command::Dataset {
            command: DatasetCommand::Export { dir, format, model, variant, prompt, min_score, since, min_margin, out },
        } => {
            let format = match format {
                ExportFormat::OpenaiChat => export::Format::OpenAiChat,
                ExportFormat::Eval => export::Format::Eval,
                ExportFormat::Dpo => export::Format::Dpo,
            };
            let prompt = match prompt_filter(prompt.as_deref()) {
                Ok(prompt) => prompt,
                Err(code) => return code,
            };
            let options = ExportOptions { model, variant, min_score, since, min_margin, prompt };
            dataset_export(&dir, format, options, out.as_deref())
        }
        Command::Experiment {
            command:
                ExperimentCommand::Report {
                    dir,
                    experiment,
                    prompt,
                    format,
                    config,
                    metric,
                    confidence,
                    min_samples,
                    margin,
                },
        } => {
            let prompt = match prompt_filter(prompt.as_deref()) {
                Ok(prompt) => prompt,
                Err(code) => return code,
            };
            let overrides = SequentialFlags { config, metric, confidence, min_samples, margin };
            experiment_report(&dir, experiment.as_deref(), prompt.as_ref(), format, overrides)
        }
        Command::Eval { command: EvalCommand::Run(args) } => eval_run(args),
        Command::Prompt { command } => prompt_cli::run(command),
    }
}

/// `--prompt ID[@VERSION]`, or the exit code of a malformed one.
fn prompt_filter(text: Option<&str>) -> Result<Option<weir::datasets::PromptFilter>, ExitCode> {
    text.map(weir::datasets::PromptFilter::parse).transpose().map_err(|err| {
        eprintln!("weir: --prompt: {err}");
        ExitCode::FAILURE
    })
}

fn eval_run(args: EvalArgs) -> ExitCode {
    weir::install_crypto_provider();
    let fail_under = args.fail_under;
    let options = match eval_options(args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("weir: {message}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("weir: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let stop = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let finished = match runtime.block_on(weir::eval::run(&options, stop)) {
        Ok(finished) => finished,
        Err(err) => {
            eprintln!("weir: {err}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", weir::eval::results::table(&finished.summaries));
    eprintln!("results: {}", options.out.join(weir::eval::results::RESULTS).display());
    if finished.interrupted {
        eprintln!("weir: interrupted; run the same command again to resume");
        return ExitCode::from(130);
    }
    match fail_under {
        Some(threshold) if !weir::eval::passes(&finished.summaries, threshold) => {
            eprintln!("weir: a variant's mean score is below --fail-under {threshold}");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

fn eval_options(args: EvalArgs) -> Result<weir::eval::Options, String> {
    if args.fail_under.is_some_and(|f| !(0.0..=1.0).contains(&f)) {
        return Err("--fail-under must be between 0 and 1".into());
    }
    if args.concurrency == 0 || args.concurrency > 1024 {
        return Err("--concurrency must be from 1 to 1024".into());
    }
    let timeout = humantime::parse_duration(&args.timeout).map_err(|err| format!("--timeout: {err}"))?;
    let key =
        args.api_key.or_else(|| std::env::var("WEIR_API_KEY").ok()).or_else(|| std::env::var("OPENAI_API_KEY").ok());
    let client = weir::eval::client::Client::new(&args.target, key, timeout).map_err(|err| err.to_string())?;
    let scorer = weir::eval::scorer::Scorer::parse(&args.scorer, args.judge_rubric.as_deref())
        .map_err(|err| format!("--scorer: {err}"))?;
    let price = match &args.config {
        Some(path) => {
            let config = weir::config::load_file(path).map_err(|err| err.to_string())?;
            let model = config.models.get(&args.model);
            let model = model.ok_or_else(|| format!("{} has no model `{}`", path.display(), args.model))?;
            model.price
        }
        None => None,
    };
    Ok(weir::eval::Options {
        dataset: args.dataset,
        client,
        model: args.model,
        variants: args.variants,
        scorer,
        scorer_spec: args.scorer,
        concurrency: args.concurrency,
        limit: args.limit,
        out: args.out,
        price,
    })
}

/// `dataset export`'s selection flags as given.
struct ExportOptions {
    model: Option<String>,
    variant: Option<String>,
    min_score: Option<f64>,
    since: Option<String>,
    min_margin: Option<f64>,
    prompt: Option<weir::datasets::PromptFilter>,
}

fn dataset_export(dir: &Path, format: export::Format, flags: ExportOptions, out: Option<&Path>) -> ExitCode {
    let ExportOptions { model, variant, min_score, since, min_margin, prompt } = flags;
    if min_score.is_some_and(|s| !(0.0..=1.0).contains(&s)) {
        eprintln!("weir: --min-score must be between 0 and 1");
        return ExitCode::FAILURE;
    }
    if min_margin.is_some_and(|m| !(0.0..=1.0).contains(&m)) {
        eprintln!("weir: --min-margin must be between 0 and 1");
        return ExitCode::FAILURE;
    }
    let dpo = format == export::Format::Dpo;
    if min_margin.is_some() && !dpo {
        eprintln!("weir: --min-margin applies to --format dpo only");
        return ExitCode::FAILURE;
    }
    if min_score.is_some() && dpo {
        eprintln!("weir: --min-score does not apply to --format dpo (pairs need low scores too; use --min-margin)");
        return ExitCode::FAILURE;
    }
    let since = match since.as_deref().map(|s| export::parse_since(s, std::time::SystemTime::now())).transpose() {
        Ok(since) => since,
        Err(err) => {
            eprintln!("weir: --since: {err}");
            return ExitCode::FAILURE;
        }
    };
    let options = export::Options { model, variant, min_score, since, min_margin, prompt };
    let mut sink: Box<dyn Write> = match out {
        Some(path) => match std::fs::File::create(path) {
            Ok(file) => Box::new(std::io::BufWriter::new(file)),
            Err(err) => {
                eprintln!("weir: cannot create {}: {err}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    match export::export(dir, format, &options, &mut sink, &mut std::io::stderr()) {
        Ok(summary) => {
            let what = if dpo { "pairs" } else { "records" };
            eprintln!("exported {} {what} ({} damaged lines skipped)", summary.exported, summary.skipped);
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("weir: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `experiment report`'s always-valid settings as given.
struct SequentialFlags {
    config: Option<PathBuf>,
    metric: Option<MetricArg>,
    confidence: Option<f64>,
    min_samples: Option<u64>,
    margin: Option<f64>,
}

/// Each experiment's metric and stopping rule: flags, else its config entry, else defaults.
fn sequential_settings(flags: SequentialFlags) -> Result<impl Fn(&str) -> report::Sequential, String> {
    use weir::config::Metric;
    if flags.confidence.is_some_and(|c| !(c > 0.5 && c < 1.0)) {
        return Err("--confidence must be above 0.5 and below 1".into());
    }
    if flags.min_samples.is_some_and(|n| n < 2) {
        return Err("--min-samples must be at least 2".into());
    }
    if flags.margin.is_some_and(|m| !(m.is_finite() && m >= 0.0)) {
        return Err("--margin must be a number ≥ 0".into());
    }
    let experiments = match &flags.config {
        Some(path) => weir::config::load_file(path).map_err(|err| err.to_string())?.experiments,
        None => Default::default(),
    };
    let metric = flags.metric.map(|m| match m {
        MetricArg::Feedback => Metric::Feedback,
        MetricArg::Success => Metric::Success,
        MetricArg::Latency => Metric::Latency,
        MetricArg::Cost => Metric::Cost,
    });
    Ok(move |name: &str| {
        let mut settings = match experiments.get(name) {
            Some(e) => report::Sequential { metric: e.metric, stop: e.stop },
            None => report::Sequential::default(),
        };
        if let Some(metric) = metric {
            settings.metric = metric;
            settings.stop.margin = metric.default_margin();
        }
        settings.stop.confidence = flags.confidence.unwrap_or(settings.stop.confidence);
        settings.stop.min_samples = flags.min_samples.unwrap_or(settings.stop.min_samples);
        settings.stop.margin = flags.margin.unwrap_or(settings.stop.margin);
        settings
    })
}

fn experiment_report(
    dir: &Path,
    experiment: Option<&str>,
    prompt: Option<&weir::datasets::PromptFilter>,
    format: ReportFormat,
    flags: SequentialFlags,
) -> ExitCode {
    let sequential = match sequential_settings(flags) {
        Ok(sequential) => sequential,
        Err(err) => {
            eprintln!("weir: {err}");
            return ExitCode::FAILURE;
        }
    };
    let report = match report::report(dir, experiment, prompt, &sequential, &mut std::io::stderr()) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("weir: {err}");
            return ExitCode::FAILURE;
        }
    };
    let text = match format {
        ReportFormat::Table => report::table(&report),
        ReportFormat::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => json + "\n",
            Err(err) => {
                eprintln!("weir: {err}");
                return ExitCode::FAILURE;
            }
        },
    };
    let mut stdout = std::io::stdout().lock();
    if stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn serve(path: Option<PathBuf>, log_format: LogFormat) -> ExitCode {
    let _guard = telemetry::init_logging(log_format);
    weir::install_crypto_provider();
    raise_fd_limit();
    purge_freed_memory_in_background();
    let source = weir::config::ConfigSource::for_serve(path.as_deref());
    let loaded = match source.load() {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("weir: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let signals = weir::gateway::Signals::install();
        match weir::Gateway::start_from(source, loaded).await {
            Ok(gateway) => {
                gateway.run_until(signals).await;
                ExitCode::SUCCESS
            }
            Err(err) => {
                tracing::error!("{err}");
                eprintln!("weir: {err}");
                ExitCode::FAILURE
            }
        }
    })
}

fn check(path: &std::path::Path) -> ExitCode {
    match weir::config::load_file(path) {
        Ok(config) => {
            println!(
                "{}: ok ({} backends, {} models, {} keys, {} prompts)",
                path.display(),
                config.backends.len(),
                config.models.len(),
                config.keys.len(),
                config.prompts.by_id.len()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}

fn key_hash() -> ExitCode {
    let mut input = String::new();
    if let Err(err) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("weir: cannot read stdin: {err}");
        return ExitCode::FAILURE;
    }
    let key = input.trim_end_matches(['\n', '\r']);
    if key.is_empty() {
        eprintln!("weir: no key on stdin");
        return ExitCode::FAILURE;
    }
    println!("{}", weir::auth::hash_key(key));
    ExitCode::SUCCESS
}

/// Each proxied stream holds two sockets; the default soft limit (often 1024) would cap a
/// gateway at a few hundred streams, so raise it to the hard limit.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "file descriptor limit"),
        Err(err) => tracing::warn!(error = %err, "cannot raise the file descriptor limit"),
    }
}
