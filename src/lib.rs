//! weir: an OpenAI-compatible inference gateway.
//!
//! The modules are floors, and every import points down:
//!
//! ```text
//! top        gateway (lifecycle) · server (listeners, handlers, the error map) · proxy (the request path)
//!            · eval (`weir eval run`, a client of a running weir)
//!            · fuzzing (re-exported entry points for fuzz targets and corpus tests)
//! runtime    runtime: snapshot, live state, TLS, reload
//! taps       telemetry (metrics, traces) · datasets       ← read one finished `wire::Record`
//! features   auth · limits · cache · prompts · router → backends · router → experiments (shares,
//!            decisions) · conversations (stored responses)
//! config     config: raw → validated → typed
//! ground     wire: endpoint, request head, bodies, headers, trace context, capture, usage, record
//!            apis: the Responses and Messages APIs as pure translations to and from chat
//! ```
//!
//! A request: `server` accepts it and hands it to `proxy`, which authenticates (`auth`),
//! reads and parses it once (`wire`), admits it against its key's limits (`limits`), looks
//! the cache up (`cache`), renders its prompt for the target (`prompts`), picks a target and calls it (`router` → `backends`), and streams
//! the answer back. When the answer ends, the request's guards are released and every tap
//! reads the same finished record.

pub mod apis;
pub mod auth;
pub mod backends;
pub(crate) mod cache;
pub mod config;
pub mod conversations;
pub mod datasets;
pub mod eval;
pub mod experiments;
pub mod fuzzing;
pub mod gateway;
pub mod limits;
pub mod prompts;
pub(crate) mod proxy;
pub mod router;
pub(crate) mod runtime;
pub(crate) mod server;
pub mod telemetry;
pub mod wire;

pub use gateway::{Gateway, StartError};

/// Installs rustls's process-wide crypto provider (ring). Idempotent; call before any TLS.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
