//! The running gateway: live state, listeners, and their lifecycle.
//!
//! [`Gateway::start`] builds the first [`Snapshot`], binds the client and admin ports and
//! spawns their accept loops. A reload ([`crate::reload`]) swaps the snapshot, the client
//! port's TLS config and, when an address changes, a listener: the new one accepts before
//! the old one stops, and the old one's connections finish their requests.
//! [`Gateway::shutdown`] stops accepting, marks the gateway not ready and drains in-flight
//! requests up to `server.shutdown_timeout`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;

use crate::backends::BackendBuildError;
use crate::config::{Config, ConfigSource, Loaded, SourceInfo};
use crate::reload::{self, FileWatcher, ReloadError, ReloadOutcome, Reloader, Trigger};
use crate::server::{self, Bound, Listener, TlsAcceptorSource, TlsError};
use crate::snapshot::Snapshot;

/// How long shutdown waits for queued spans to be exported.
const TRACE_FLUSH: Duration = Duration::from_secs(5);
/// How long shutdown waits for dataset writers to flush their queues.
const DATASET_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// State shared by every connection.
pub struct AppState {
    live: ArcSwap<Snapshot>,
    ready: AtomicBool,
    /// The client port's TLS config; empty means plaintext.
    tls: TlsAcceptorSource,
    reloader: Reloader,
    /// Held only to swap fields, never across an `.await`.
    ports: Mutex<Ports>,
}

/// The accept loops. `None` once shutdown took them.
#[derive(Default)]
struct Ports {
    client: Option<Listener>,
    admin: Option<Listener>,
    /// Bound addresses, kept after shutdown for [`Gateway::addr`].
    addrs: Option<(SocketAddr, SocketAddr)>,
    /// Loops a reload replaced, still draining their connections.
    retired: Vec<JoinHandle<()>>,
    /// Set by shutdown: a reload finishing late must not start listening again.
    stopped: bool,
}

impl AppState {
    /// Live state with no listeners, no TLS, and a config that cannot be reloaded.
    pub fn new(snapshot: Snapshot) -> AppState {
        AppState::with(snapshot, TlsAcceptorSource::default(), Reloader::new(None))
    }

    fn with(snapshot: Snapshot, tls: TlsAcceptorSource, reloader: Reloader) -> AppState {
        AppState {
            live: ArcSwap::from_pointee(snapshot),
            ready: AtomicBool::new(true),
            tls,
            reloader,
            ports: Mutex::default(),
        }
    }

    /// The current snapshot; a request takes it once and keeps it to the end.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.load_full()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub(crate) fn reloader(&self) -> &Reloader {
        &self.reloader
    }

    pub(crate) fn tls(&self) -> &TlsAcceptorSource {
        &self.tls
    }

    /// Makes `snapshot` the one new requests take.
    pub(crate) fn publish(&self, snapshot: Snapshot) {
        self.live.store(Arc::new(snapshot));
    }

    /// The client and admin addresses as configured for the running listeners.
    pub(crate) fn configured_addrs(&self) -> (SocketAddr, SocketAddr) {
        let ports = self.ports();
        let config = &self.snapshot().config.server;
        let client = ports.client.as_ref().map_or(config.listen, |l| l.configured);
        let admin = ports.admin.as_ref().map_or(config.admin_listen, |l| l.configured);
        (client, admin)
    }

    /// The bound client and admin addresses.
    fn bound_addrs(&self) -> (SocketAddr, SocketAddr) {
        let config = &self.snapshot().config.server;
        self.ports().addrs.unwrap_or((config.listen, config.admin_listen))
    }

    /// Starts accepting on the newly bound addresses and stops the loops they replace; those
    /// get `drain` to finish their open requests.
    pub(crate) fn move_listeners(self: &Arc<Self>, client: Option<Bound>, admin: Option<Bound>, drain: Duration) {
        // Held while starting: spawning does not wait, and shutdown cannot slip in between.
        let mut ports = self.ports();
        if ports.stopped {
            return;
        }
        let client =
            client.map(|bound| Listener::start(bound, self.tls.clone(), server::client_service(Arc::clone(self))));
        let admin = admin
            .map(|bound| Listener::start(bound, TlsAcceptorSource::default(), server::admin_service(Arc::clone(self))));
        let Ports { client: client_slot, admin: admin_slot, retired, .. } = &mut *ports;
        retired.retain(|task| !task.is_finished());
        for (slot, new) in [(client_slot, client), (admin_slot, admin)] {
            let Some(new) = new else { continue };
            tracing::info!(addr = %new.local, "listening");
            if let Some(old) = slot.replace(new) {
                tracing::info!(addr = %old.local, "stopped listening; open connections finish their requests");
                retired.push(old.stop(drain));
            }
        }
        let (client, admin) = (ports.client.as_ref().map(|l| l.local), ports.admin.as_ref().map(|l| l.local));
        if let (Some(client), Some(admin)) = (client, admin) {
            ports.addrs = Some((client, admin));
        }
    }

    fn ports(&self) -> std::sync::MutexGuard<'_, Ports> {
        // The lock guards plain field swaps that cannot leave Ports half-updated.
        self.ports.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

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
            Some(tls) => Some(server::load_tls(tls)?),
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

    /// Reads the config source again and applies it if valid (see [`crate::reload`]).
    pub async fn reload(&self) -> Result<ReloadOutcome, ReloadError> {
        reload::reload(&self.state, Trigger::Api).await
    }

    /// Stops accepting, reports not ready, and waits for in-flight requests (streams
    /// included) to finish, at most `server.shutdown_timeout`.
    pub async fn shutdown(mut self) {
        drop(self.watcher.take());
        let state = Arc::clone(&self.state);
        // No reload may start a listener while the gateway stops.
        let _no_reloads = state.reloader().exclusive().await;
        state.ready.store(false, Ordering::Relaxed);
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
