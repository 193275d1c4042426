//! The running gateway: the top of the house, its lifecycle.
//!
//! Owns: [`Gateway::start`], which builds the first [`Snapshot`], binds the client and admin
//! ports and spawns their accept loops; the file watcher and signals that trigger a reload
//! (`runtime::reload`: it swaps the snapshot, the client port's TLS config and, when an
//! address changes, a listener: the new one accepts before the old one stops, and the old
//! one's connections finish their requests); and [`Gateway::shutdown`], which stops
//! accepting, marks the gateway not ready and drains in-flight requests up to
//! `server.shutdown_timeout`.
//! Must not: serve requests itself (that is `server` and `proxy`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::backends::BackendBuildError;
use crate::config::{Config, ConfigSource, Loaded, SourceInfo};
use crate::runtime::Snapshot;
use crate::runtime::reload::{self, FileWatcher, Host as _, ReloadError, ReloadOutcome, Reloader, Trigger};
use crate::runtime::tls::{self, TlsAcceptorSource, TlsError};
use crate::server::{AppState, Bound};

/// How long shutdown waits for queued spans to be exported.
const TRACE_FLUSH: Duration = Duration::from_secs(5);
/// How long shutdown waits for dataset writers to flush their queues.
const DATASET_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Backend(#[from] BackendBuildError),
}

pub struct Gateway {
    state: Arc<AppState>,
    /// Reloads on edits of the config and TLS files; `None` without a file.
    watcher: Option<FileWatcher>,
}

impl Gateway {
    /// Builds live state from `config` and starts serving. Port 0 in either address picks a
    /// free port; [`Gateway::addr`] tells which. A config handed over this way has no file
    /// to reload from; use [`Gateway::start_from`] for that.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        Gateway::launch(None, Loaded { config, info: Arc::new(SourceInfo::in_memory()) }).await
    }

    /// Starts serving `loaded` (read from `source` by [`ConfigSource::load`]) and reloads it
    /// when the file changes, on `SIGHUP` (in [`Gateway::run_until_signal`]) and on
    /// `POST /admin/reload`.
    pub async fn start_from(source: ConfigSource, loaded: Loaded) -> Result<Gateway, StartError> {
        Gateway::launch(Some(source), loaded).await
    }

    async fn launch(source: Option<ConfigSource>, loaded: Loaded) -> Result<Gateway, StartError> {
        let Loaded { config, info } = loaded;
        let listen = config.server.listen;
        let admin_listen = config.server.admin_listen;
        let tls = match &config.server.tls {
            Some(files) => Some(tls::load_tls(files)?),
            None => None,
        };
        let mut snapshot = Snapshot::build(config, None)?;
        snapshot.source = info;

        let client = Bound::bind(listen).map_err(|source| StartError::Bind { addr: listen, source })?;
        let admin = Bound::bind(admin_listen).map_err(|source| StartError::Bind { addr: admin_listen, source })?;
        let (addr, admin_addr) = (client.local, admin.local);
        let state = Arc::new(AppState::with(snapshot, TlsAcceptorSource::new(tls), Reloader::new(source)));
        state.move_listeners(Some(client), Some(admin), Duration::ZERO);
        let watcher = reload::watch_files(&state);
        tracing::info!(%addr, %admin_addr, "weir is serving");
        Ok(Gateway { state, watcher })
    }

    /// The client port's bound address (the current one, after a reload moved it).
    pub fn addr(&self) -> SocketAddr {
        self.state.bound_addrs().0
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.state.bound_addrs().1
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Reads the config source again and applies it if valid (see [`crate::runtime::reload`]).
    pub async fn reload(&self) -> Result<ReloadOutcome, ReloadError> {
        reload::reload(&self.state, Trigger::Api).await
    }

    /// Stops accepting, reports not ready, and waits for in-flight requests (streams
    /// included) to finish, at most `server.shutdown_timeout`.
    pub async fn shutdown(mut self) {
        drop(self.watcher.take());
        let state = Arc::clone(&self.state);
        // No reload may start a listener while the gateway stops.
        let _no_reloads = state.runtime().reloader().exclusive().await;
        state.runtime().set_ready(false);
        let drain = state.snapshot().config.server.shutdown_timeout;
        let (client, admin, retired) = {
            let mut ports = state.ports();
            ports.stopped = true;
            (ports.client.take(), ports.admin.take(), std::mem::take(&mut ports.retired))
        };
        // Each loop bounds its own drain; the margin only guards against a stuck task.
        let margin = drain + Duration::from_secs(1);
        let client = client.map(|listener| listener.stop(drain));
        let _ = tokio::time::timeout(margin, futures_util::future::join_all(client.into_iter().chain(retired))).await;
        // The admin port stops only after the client drain, so `/readyz` keeps answering 503
        // to load balancers while requests finish.
        if let Some(admin) = admin {
            let _ = tokio::time::timeout(margin, admin.stop(drain)).await;
        }
        if let Some(tracer) = &state.snapshot().tracer {
            tracer.flush(TRACE_FLUSH).await;
        }
        // After the drain: every record accepted so far reaches the disk.
        self.state.snapshot().datasets.close(DATASET_CLOSE_TIMEOUT).await;
        tracing::info!("weir stopped");
    }

    /// Serves until SIGTERM or ctrl-c, then shuts down gracefully; `SIGHUP` reloads the config.
    pub async fn run_until_signal(self) {
        self.run_until(Signals::install()).await;
    }

    /// As [`Gateway::run_until_signal`], with signal handlers installed earlier (before the
    /// gateway started, so that a `SIGHUP` during startup cannot end the process).
    pub async fn run_until(self, signals: Signals) {
        signals.wait(&self.state).await;
        let drain = self.state.snapshot().config.server.shutdown_timeout;
        tracing::info!(?drain, "shutdown signal received; draining in-flight requests");
        self.shutdown().await;
    }
}

/// A gateway dropped without [`Gateway::shutdown`] still stops accepting (its connections
/// get `shutdown_timeout` to finish): the accept loops hold the state, not the other way
/// round, so nothing else would stop them.
impl Drop for Gateway {
    fn drop(&mut self) {
        let drain = self.state.snapshot().config.server.shutdown_timeout;
        let mut ports = self.state.ports();
        ports.stopped = true;
        for listener in [ports.client.take(), ports.admin.take()].into_iter().flatten() {
            drop(listener.stop(drain));
        }
    }
}

/// The process signals `weir serve` acts on: SIGTERM and ctrl-c stop it, SIGHUP reloads.
/// Installing them replaces the default actions (SIGHUP would end the process).
pub struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Registers the handlers; needs a running Tokio runtime.
    pub fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let term = signal(SignalKind::terminate())
                .inspect_err(|err| tracing::warn!(error = %err, "cannot listen for SIGTERM; ctrl-c only"))
                .ok();
            let hangup = signal(SignalKind::hangup())
                .inspect_err(
                    |err| tracing::warn!(error = %err, "cannot listen for SIGHUP; reload by file or /admin/reload"),
                )
                .ok();
            Signals { term, hangup }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Returns on SIGTERM or ctrl-c; reloads the config on each SIGHUP meanwhile.
    async fn wait(self, state: &Arc<AppState>) {
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        #[cfg(unix)]
        {
            let Signals { mut term, mut hangup } = self;
            loop {
                tokio::select! {
                    _ = &mut ctrl_c => return,
                    Some(()) = next_signal(term.as_mut()) => return,
                    Some(()) = next_signal(hangup.as_mut()) => {
                        let _ = reload::reload(state, Trigger::Signal).await;
                    }
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (self, state);
            let _ = ctrl_c.await;
        }
    }
}

/// The next delivery of `signal`; never, without one.
#[cfg(unix)]
async fn next_signal(signal: Option<&mut tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}
