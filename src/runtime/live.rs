//! The live state shared by every connection: the current snapshot, readiness, the client
//! port's TLS acceptor, and the reload lock.
//!
//! Owns: [`Runtime`]. A request loads the snapshot once and keeps that `Arc` to the end, so
//! a reload is a swap and in-flight requests finish on the config they started with.
//! Must not: hold a lock a request waits on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;

use super::Snapshot;
use super::reload::Reloader;
use super::tls::TlsAcceptorSource;

pub struct Runtime {
    live: ArcSwap<Snapshot>,
    ready: AtomicBool,
    /// The client port's TLS config; empty means plaintext.
    tls: TlsAcceptorSource,
    reloader: Reloader,
}

impl Runtime {
    pub fn new(snapshot: Snapshot, tls: TlsAcceptorSource, reloader: Reloader) -> Runtime {
        Runtime { live: ArcSwap::from_pointee(snapshot), ready: AtomicBool::new(true), tls, reloader }
    }

    /// The current snapshot; a request takes it once and keeps it to the end.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.load_full()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Shutdown marks the gateway not ready, so load balancers stop sending to it.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn reloader(&self) -> &Reloader {
        &self.reloader
    }

    pub fn tls(&self) -> &TlsAcceptorSource {
        &self.tls
    }

    /// Makes `snapshot` the one new requests take.
    pub(crate) fn publish(&self, snapshot: Snapshot) {
        self.live.store(Arc::new(snapshot));
    }
}
