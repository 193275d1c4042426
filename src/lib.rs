//! weir: an OpenAI-compatible inference gateway.
//!
//! The request path, module by module:
//! `server` (listeners, routes, errors) → `auth` (virtual keys) → `proxy` (parse once,
//! pick, forward, stream back) → `router` (which target) → `backends` (one upstream call).
//! `limits` admits each request of a limited key and settles it when it ends.
//! `prompts` renders a request's versioned prompt into the messages sent upstream.
//! `config` reads and validates the file; `snapshot` compiles it into the live state that
//! `gateway` holds in an `ArcSwap`; `reload` swaps it when the file changes; `telemetry` owns
//! logs.

pub mod auth;
pub mod backends;
pub mod cache;
pub mod config;
pub mod datasets;
pub mod gateway;
pub mod headers;
pub mod limits;
pub mod prompts;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod telemetry;
pub mod wire;

pub use gateway::{Gateway, StartError};

/// Installs rustls's process-wide crypto provider (ring). Idempotent; call before any TLS.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
