//! One accept loop on one address, as the gateway runs it: bound, started, and stopped with
//! a drain. A reload that moves `listen` or `admin_listen` binds the new address first,
//! starts its loop, then stops the old one, whose open connections finish their requests.
//!
//! Owns: [`Bound`] sockets and [`Listener`] loops. Must not: serve a request itself.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Handler;
use crate::runtime::tls::TlsAcceptorSource;

/// A bound socket not yet accepting.
pub struct Bound {
    /// The address as configured: port 0 stays 0, so a reload compares like with like.
    pub configured: SocketAddr,
    pub local: SocketAddr,
    listener: TcpListener,
}

impl Bound {
    pub fn bind(configured: SocketAddr) -> std::io::Result<Bound> {
        let listener = super::bind(configured)?;
        let local = listener.local_addr()?;
        Ok(Bound { configured, local, listener })
    }
}

/// A running accept loop.
pub struct Listener {
    pub configured: SocketAddr,
    pub local: SocketAddr,
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
}

impl Listener {
    /// Starts accepting on `bound`; each connection goes to `handler`.
    pub fn start<H: Handler>(bound: Bound, tls: TlsAcceptorSource, handler: H) -> Listener {
        let (stop, stopped) = watch::channel(None);
        let Bound { configured, local, listener } = bound;
        let task = tokio::spawn(super::serve(listener, tls, handler, stopped));
        Listener { configured, local, stop, task }
    }

    /// Stops accepting now; open connections get up to `drain` to finish. The handle ends
    /// when the last one did.
    pub fn stop(self, drain: Duration) -> JoinHandle<()> {
        let _ = self.stop.send(Some(drain));
        self.task
    }
}
