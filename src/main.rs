//! The `weir` command line: `serve`, `check`, `key hash`.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    /// Validate a config file and list every problem as PATH:LINE:COL: message.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Virtual key helpers.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
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
    }
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
            for inactive in &config.inactive {
                eprintln!("warning: {inactive}");
            }
            println!(
                "{}: ok ({} backends, {} models, {} keys)",
                path.display(),
                config.backends.len(),
                config.models.len(),
                config.keys.len()
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
