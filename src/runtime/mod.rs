//! Runtime: the live state requests run against, and how it changes.
//!
//! Owns: compiling a validated config into a [`Snapshot`] (backends with their pools, routes,
//! keys, limits, cache, tracer, datasets — carrying what still exists from the previous one);
//! the live [`Runtime`] (the snapshot in an `ArcSwap`, readiness, the client port's TLS
//! acceptor); and [`reload`], the one path every trigger takes to swap them.
//! Must not: name the request path or the server. Listeners are the top floor's: a reload
//! that moves them asks its [`reload::Host`] to.

mod live;
pub mod reload;
mod snapshot;
pub mod tls;

pub use live::Runtime;
pub use snapshot::Snapshot;
