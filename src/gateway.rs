//! The running gateway: live state, listeners, and their lifecycle.
//!
//! [`Gateway::start`] builds the first [`Snapshot`], binds the client and admin ports and
//! spawns their accept loops; [`Gateway::shutdown`] stops accepting, marks the gateway not
//! ready and drains in-flight requests up to `server.shutdown_timeout`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backends::BackendBuildError;
use crate::config::Config;
use crate::server::{self, TlsError};
use crate::snapshot::Snapshot;

/// How long shutdown waits for queued spans to be exported.
const TRACE_FLUSH: Duration = Duration::from_secs(5);
/// How long shutdown waits for dataset writers to flush their queues.
const DATASET_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// State shared by every connection.
pub struct AppState {
    live: ArcSwap<Snapshot>,
    ready: AtomicBool,
}

impl AppState {
    pub fn new(snapshot: Snapshot) -> AppState {
        AppState { live: ArcSwap::from_pointee(snapshot), ready: AtomicBool::new(true) }
    }

    /// The current snapshot; a request takes it once and keeps it to the end.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.load_full()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
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
    addr: SocketAddr,
    admin_addr: SocketAddr,
    /// Stops the client port; the admin port stops only after the client drain, so
    /// `/readyz` keeps answering 503 to load balancers while requests finish.
    stop_client: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    client_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
    drain: Duration,
}

impl Gateway {
    /// Builds live state from `config` and starts serving. Port 0 in either address picks a
    /// free port; [`Gateway::addr`] tells which.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        let listen = config.server.listen;
        let admin_listen = config.server.admin_listen;
        let drain = config.server.shutdown_timeout;
        let tls = match &config.server.tls {
            Some(tls) => Some(server::TlsAcceptorSource::new(server::load_tls(tls)?)),
            None => None,
        };
        for inactive in &config.inactive {
            tracing::warn!("{inactive}");
        }
        let state = Arc::new(AppState::new(Snapshot::build(config, None)?));

        let client = server::bind(listen).map_err(|source| StartError::Bind { addr: listen, source })?;
        let admin = server::bind(admin_listen).map_err(|source| StartError::Bind { addr: admin_listen, source })?;
        let addr = client.local_addr().map_err(|source| StartError::Bind { addr: listen, source })?;
        let admin_addr = admin.local_addr().map_err(|source| StartError::Bind { addr: admin_listen, source })?;

        let (stop_client, client_stopped) = watch::channel(false);
        let (stop_admin, admin_stopped) = watch::channel(false);
        let client_service = server::client_service(Arc::clone(&state));
        let client_task = tokio::spawn(server::serve(client, tls, client_service, client_stopped, drain));
        let admin_service = server::admin_service(Arc::clone(&state));
        let admin_task = tokio::spawn(server::serve(admin, None, admin_service, admin_stopped, drain));
        tracing::info!(%addr, %admin_addr, "weir is serving");
        Ok(Gateway { state, addr, admin_addr, stop_client, stop_admin, client_task, admin_task, drain })
    }

    /// The client port's bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Stops accepting, reports not ready, and waits for in-flight requests (streams
    /// included) to finish, at most `server.shutdown_timeout`.
    pub async fn shutdown(self) {
        self.state.ready.store(false, Ordering::Relaxed);
        let _ = self.stop_client.send(true);
        // Each loop bounds its own drain; the margin only guards against a stuck task.
        let margin = self.drain + Duration::from_secs(1);
        let _ = tokio::time::timeout(margin, self.client_task).await;
        let _ = self.stop_admin.send(true);
        let _ = tokio::time::timeout(margin, self.admin_task).await;
        if let Some(tracer) = &self.state.snapshot().tracer {
            tracer.flush(TRACE_FLUSH).await;
        }
        // After the drain: every record accepted so far reaches the disk.
        self.state.snapshot().datasets.close(DATASET_CLOSE_TIMEOUT).await;
        tracing::info!("weir stopped");
    }

    /// Serves until SIGTERM or ctrl-c, then shuts down gracefully.
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        tracing::info!(drain = ?self.drain, "shutdown signal received; draining in-flight requests");
        self.shutdown().await;
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; ctrl-c only");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
