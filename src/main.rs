//! The `weir` command line: `serve`, `check`, `key hash`, `dataset export`, `experiment report`,
//! `prompt list`, `prompt render`.

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
    /// Versioned prompts of a config.
    Prompt {
        #[command(subcommand)]
        command: prompt_cli::PromptCommand,
    },
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
}

#[derive(Subcommand)]
enum ExperimentCommand {
    /// Per-variant requests, errors, latency and TTFT percentiles, tokens, cost, mean feedback
    /// with a 95% CI, and Welch's t-test against the control.
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
    },
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
            command: DatasetCommand::Export { dir, format, model, variant, prompt, min_score, since, out },
        } => {
            let format = match format {
                ExportFormat::OpenaiChat => export::Format::OpenAiChat,
                ExportFormat::Eval => export::Format::Eval,
            };
            let prompt = match prompt_filter(prompt.as_deref()) {
                Ok(prompt) => prompt,
                Err(code) => return code,
            };
            let options = export::Options { model, variant, min_score, since: None, prompt };
            dataset_export(&dir, format, options, since.as_deref(), out.as_deref())
        }
        Command::Experiment { command: ExperimentCommand::Report { dir, experiment, prompt, format } } => {
            match prompt_filter(prompt.as_deref()) {
                Ok(prompt) => experiment_report(&dir, experiment.as_deref(), prompt.as_ref(), format),
                Err(code) => code,
            }
        }
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

fn dataset_export(
    dir: &Path,
    format: export::Format,
    mut options: export::Options,
    since: Option<&str>,
    out: Option<&Path>,
) -> ExitCode {
    if options.min_score.is_some_and(|s| !(0.0..=1.0).contains(&s)) {
        eprintln!("weir: --min-score must be between 0 and 1");
        return ExitCode::FAILURE;
    }
    let since = match since.map(|s| export::parse_since(s, std::time::SystemTime::now())).transpose() {
        Ok(since) => since,
        Err(err) => {
            eprintln!("weir: --since: {err}");
            return ExitCode::FAILURE;
        }
    };
    options.since = since;
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
            eprintln!("exported {} records ({} damaged lines skipped)", summary.exported, summary.skipped);
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("weir: {err}");
            ExitCode::FAILURE
        }
    }
}

fn experiment_report(
    dir: &Path,
    experiment: Option<&str>,
    prompt: Option<&weir::datasets::PromptFilter>,
    format: ReportFormat,
) -> ExitCode {
    let report = match report::report(dir, experiment, prompt, &mut std::io::stderr()) {
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
