//! What every connection shares: the live runtime, and the listeners serving it.
//!
//! Owns: [`AppState`], the runtime (snapshot, readiness, TLS, reload lock) plus the accept
//! loops of the client and admin ports, and moving those loops when a reload changes an
//! address (as the runtime's [`Host`]).
//! Must not: hold its lock across an `.await` (it guards plain field swaps only).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{Bound, Listener, admin_service, client_service};
use crate::runtime::reload::{Host, Reloader};
use crate::runtime::tls::TlsAcceptorSource;
use crate::runtime::{Runtime, Snapshot};

/// State shared by every connection.
pub struct AppState {
    runtime: Runtime,
    /// Held only to swap fields, never across an `.await`.
    ports: Mutex<Ports>,
}

/// The accept loops. `None` once shutdown took them.
#[derive(Default)]
pub struct Ports {
    pub client: Option<Listener>,
    pub admin: Option<Listener>,
    /// Bound addresses, kept after shutdown for the gateway's `addr`.
    pub addrs: Option<(SocketAddr, SocketAddr)>,
    /// Loops a reload replaced, still draining their connections.
    pub retired: Vec<JoinHandle<()>>,
    /// Set by shutdown: a reload finishing late must not start listening again.
    pub stopped: bool,
}

impl AppState {
    /// Live state with no listeners, no TLS, and a config that cannot be reloaded.
    pub fn new(snapshot: Snapshot) -> AppState {
        AppState::with(snapshot, TlsAcceptorSource::default(), Reloader::new(None))
    }

    pub fn with(snapshot: Snapshot, tls: TlsAcceptorSource, reloader: Reloader) -> AppState {
        AppState { runtime: Runtime::new(snapshot, tls, reloader), ports: Mutex::default() }
    }

    /// The current snapshot; a request takes it once and keeps it to the end.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.runtime.snapshot()
    }

    pub fn is_ready(&self) -> bool {
        self.runtime.is_ready()
    }

    /// The bound client and admin addresses.
    pub fn bound_addrs(&self) -> (SocketAddr, SocketAddr) {
        let config = &self.snapshot().config.server;
        self.ports().addrs.unwrap_or((config.listen, config.admin_listen))
    }

    pub fn ports(&self) -> MutexGuard<'_, Ports> {
        // The lock guards plain field swaps that cannot leave Ports half-updated.
        self.ports.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Host for AppState {
    type Bound = Bound;

    fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    fn configured_addrs(&self) -> (SocketAddr, SocketAddr) {
        let ports = self.ports();
        let config = &self.snapshot().config.server;
        let client = ports.client.as_ref().map_or(config.listen, |l| l.configured);
        let admin = ports.admin.as_ref().map_or(config.admin_listen, |l| l.configured);
        (client, admin)
    }

    fn bind(addr: SocketAddr) -> std::io::Result<Bound> {
        Bound::bind(addr)
    }

    fn move_listeners(self: &Arc<Self>, client: Option<Bound>, admin: Option<Bound>, drain: Duration) {
        // Held while starting: spawning does not wait, and shutdown cannot slip in between.
        let mut ports = self.ports();
        if ports.stopped {
            return;
        }
        let tls = self.runtime.tls().clone();
        let client = client.map(|bound| Listener::start(bound, tls, client_service(Arc::clone(self))));
        let admin =
            admin.map(|bound| Listener::start(bound, TlsAcceptorSource::default(), admin_service(Arc::clone(self))));
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
}
