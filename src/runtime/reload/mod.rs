//! Config hot reload: one path for every trigger (a file change, `SIGHUP`,
//! `POST /admin/reload`).
//!
//! Owns: reading the source again and validating it fully, building the next [`Snapshot`]
//! from the live one (which carries connection pools, metrics and the other state of what
//! still exists), the TLS certificate change a config brings, the atomic swap, one reload
//! at a time, logging and counting each outcome; the file watcher (`watch`) and the
//! `/admin/config` view (`view`). Listeners that a new address moves are bound and started
//! by the [`Host`] (the server), before anything else changes.
//! Must not: touch the request path or name the server. Requests load the live snapshot
//! once and keep it, so in-flight ones finish on the config they started with; nothing here
//! is held while a request waits.

mod view;
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::tls::{ActiveTls, TlsError, TlsFiles};
use super::{Runtime, Snapshot};
use crate::backends::BackendBuildError;
use crate::config::{ConfigError, ConfigSource, TlsConfig, prompt_files};

pub use view::{config_view, outcome_json};
pub use watch::FileWatcher;
pub use watch::start as watch_files;

/// What asked for a reload; a label in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The config file or a TLS file changed on disk.
    File,
    /// `SIGHUP`.
    Signal,
    /// `POST /admin/reload`.
    Admin,
    /// [`crate::Gateway::reload`], from code embedding the gateway.
    Api,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::File => "file",
            Trigger::Signal => "sighup",
            Trigger::Admin => "admin",
            Trigger::Api => "api",
        }
    }
}

/// A reload that left a working config active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new config, certificate or listener is in use.
    Applied,
    /// The file's bytes and the TLS files are as they were: nothing to do.
    Unchanged,
}

impl ReloadOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadOutcome::Applied => "applied",
            ReloadOutcome::Unchanged => "unchanged",
        }
    }
}

/// Why a reload was rejected; the config that was active stays active.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file cannot be read or is not a valid config; each problem is placed.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error("server.tls: {0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Backend(#[from] BackendBuildError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("this gateway was started from a config built in code, not read from a file: there is nothing to reload")]
    NoSource,
    #[error("the reload task failed: {0}")]
    Internal(String),
}

impl ReloadError {
    /// One line per problem; config problems as `PATH:LINE:COL: message`.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ReloadError::Invalid(err) => err.problems.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// What serves the live state: the runtime it holds, and the listeners a reload may move.
/// The server implements it; the reload path and the file watcher only call through it.
pub trait Host: Send + Sync + Sized + 'static {
    /// A socket bound for a listener, not yet accepting.
    type Bound: Send;

    fn runtime(&self) -> &Runtime;

    /// The client and admin addresses as configured for the running listeners.
    fn configured_addrs(&self) -> (SocketAddr, SocketAddr);

    /// Binds a listener's socket for `addr` (a busy port rejects the reload).
    fn bind(addr: SocketAddr) -> std::io::Result<Self::Bound>;

    /// Starts accepting on the newly bound sockets and stops the listeners they replace;
    /// those get `drain` to finish their open requests.
    fn move_listeners(self: &Arc<Self>, client: Option<Self::Bound>, admin: Option<Self::Bound>, drain: Duration);
}

/// The reload state the gateway keeps: where the config comes from, and the lock that lets
/// one reload run at a time (request handlers never take it).
#[derive(Debug)]
pub struct Reloader {
    source: Option<ConfigSource>,
    serial: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// `None`: the config was handed over in code and cannot be read again.
    pub fn new(source: Option<ConfigSource>) -> Reloader {
        Reloader { source, serial: tokio::sync::Mutex::new(()) }
    }

    pub fn source(&self) -> Option<&ConfigSource> {
        self.source.as_ref()
    }

    /// Waits for a running reload and keeps others out while the guard lives (shutdown).
    pub async fn exclusive(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.serial.lock().await
    }
}

/// Reads the source again and, if it is valid and differs from the active config, makes it
/// the active one. A rejected config is logged with its problems, counted, and changes
/// nothing.
pub async fn reload<H: Host>(host: &Arc<H>, trigger: Trigger) -> Result<ReloadOutcome, ReloadError> {
    let _one_at_a_time = host.runtime().reloader().exclusive().await;
    let old = host.runtime().snapshot();
    let result = attempt(host, &old).await;
    report(&old, trigger, &result);
    result
}

/// What a valid source changes. `None` fields keep what is active.
struct Next {
    snapshot: Option<Snapshot>,
    tls: TlsChange,
}

enum TlsChange {
    Keep,
    Off,
    Use(ActiveTls),
}

async fn attempt<H: Host>(host: &Arc<H>, old: &Arc<Snapshot>) -> Result<ReloadOutcome, ReloadError> {
    let state = host.runtime();
    let source = state.reloader().source().cloned().ok_or(ReloadError::NoSource)?;
    let active_tls = state.tls().current();
    let previous = Arc::clone(old);
    // Reading files, parsing PEM and building HTTP clients (native root certificates) block.
    let prepared = tokio::task::spawn_blocking(move || prepare(&source, &previous, active_tls.as_deref()))
        .await
        .map_err(|err| ReloadError::Internal(err.to_string()))??;
    let Some(Next { snapshot, tls }) = prepared else { return Ok(ReloadOutcome::Unchanged) };

    // Bind moved listeners before anything changes, so a busy port rejects the whole reload.
    let server = &snapshot.as_ref().map_or(&old.config, |s| &s.config).server;
    let (listen, admin_listen, drain) = (server.listen, server.admin_listen, server.shutdown_timeout);
    let (client_now, admin_now) = host.configured_addrs();
    let client = bind_if_moved::<H>(client_now, listen)?;
    let admin = bind_if_moved::<H>(admin_now, admin_listen)?;

    match tls {
        TlsChange::Keep => {}
        TlsChange::Off => state.tls().set(None),
        TlsChange::Use(active) => state.tls().set(Some(active)),
    }
    if let Some(snapshot) = snapshot {
        state.publish(snapshot);
    }
    host.move_listeners(client, admin, drain);
    Ok(ReloadOutcome::Applied)
}

/// The blocking half: read, compare, validate, load certificates, build the snapshot.
/// `Ok(None)` when nothing changed.
fn prepare(source: &ConfigSource, old: &Snapshot, active_tls: Option<&ActiveTls>) -> Result<Option<Next>, ReloadError> {
    let text = source.read()?;
    if old.source.hash.as_deref() == Some(text.hash.as_str()) && prompt_files_unchanged(old) {
        // Same config; a certificate renewed in place still counts.
        let tls = plan_tls(old.config.server.tls.as_ref(), active_tls)?;
        return Ok(match tls {
            TlsChange::Keep => None,
            tls => Some(Next { snapshot: None, tls }),
        });
    }
    let loaded = text.load(&|name| std::env::var(name).ok())?;
    let tls = plan_tls(loaded.config.server.tls.as_ref(), active_tls)?;
    let mut snapshot = Snapshot::build(loaded.config, Some(old))?;
    snapshot.source = loaded.info;
    Ok(Some(Next { snapshot: Some(snapshot), tls }))
}

/// Whether the files of the active `prompts_dir` are byte for byte those it was built from.
fn prompt_files_unchanged(old: &Snapshot) -> bool {
    match (&old.config.prompts.dir, &old.config.prompts.files_hash) {
        (Some(dir), Some(hash)) => prompt_files::fingerprint(dir).as_deref() == Some(hash.as_str()),
        _ => true,
    }
}

/// Reads the TLS files the config names and builds a new acceptor only if they differ from
/// the active one's.
fn plan_tls(wanted: Option<&TlsConfig>, active: Option<&ActiveTls>) -> Result<TlsChange, TlsError> {
    let Some(wanted) = wanted else {
        return Ok(if active.is_some() { TlsChange::Off } else { TlsChange::Keep });
    };
    let files = TlsFiles::read(wanted)?;
    if active.is_some_and(|active| files.matches(active)) {
        return Ok(TlsChange::Keep);
    }
    Ok(TlsChange::Use(files.build()?))
}

fn bind_if_moved<H: Host>(current: SocketAddr, wanted: SocketAddr) -> Result<Option<H::Bound>, ReloadError> {
    if current == wanted {
        return Ok(None);
    }
    H::bind(wanted).map(Some).map_err(|source| ReloadError::Bind { addr: wanted, source })
}

/// One log line per outcome (per problem when rejected) and `weir_config_reloads_total`.
fn report(old: &Snapshot, trigger: Trigger, result: &Result<ReloadOutcome, ReloadError>) {
    let trigger = trigger.as_str();
    match result {
        Ok(ReloadOutcome::Applied) => {
            old.metrics.config_reload(true);
            tracing::info!(trigger, "config reloaded");
        }
        // A file event that changed nothing (a touch, an editor's save without edits) is no
        // reload at all; an explicit request that found nothing new still succeeded.
        Ok(ReloadOutcome::Unchanged) if trigger == Trigger::File.as_str() => {
            tracing::debug!(trigger, "config files changed on disk but their content did not");
        }
        Ok(ReloadOutcome::Unchanged) => {
            old.metrics.config_reload(true);
            tracing::info!(trigger, "config reload: nothing changed");
        }
        Err(err) => {
            old.metrics.config_reload(false);
            for problem in err.problems() {
                tracing::error!(trigger, "config reload rejected, the active config stays: {problem}");
            }
        }
    }
}
