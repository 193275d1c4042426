//! Server: listeners, connections, the route table and every HTTP handler.
//!
//! Owns: binding sockets (`TCP_NODELAY`, deep accept backlog), handing each connection to
//! a worker thread that serves it to its end (`workers`), HTTP/1.1 and HTTP/2 (h2c and
//! TLS with ALPN, told apart before hyper reads: `protocol`) and their limits (HTTP/2 streams, windows and
//! header size; the memory budgets of request bodies being read, per connection and per
//! listener), request ids, catching panics as 500s,
//! graceful shutdown that lets in-flight requests and streams finish up to a deadline; the
//! shared [`AppState`]; the handlers (`admin`, `feedback`, `models`, and the inference
//! endpoints through `proxy`); and the one map from every error to an HTTP answer (`error`).
//! Must not: decide anything about a request's model, key or backend: the inference path is
//! `proxy`'s, the decisions are the features'.

mod admin;
pub mod error;
mod feedback;
mod listener;
mod models;
mod protocol;
mod routes;
mod send_timeout;
mod state;
mod stored;
mod workers;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

pub use listener::{Bound, Listener};
pub use routes::{admin_service, client_service};
pub use state::AppState;

use crate::runtime::tls::TlsAcceptorSource;
use crate::wire::body::{Body, BodyBudget, BodyBudgets};

/// Pending connections the kernel may queue; bursts of thousands of clients connect at once.
const ACCEPT_BACKLOG: u32 = 8192;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Drain for a loop whose owner went away without stopping it (the default `shutdown_timeout`).
const ORPHAN_DRAIN: Duration = Duration::from_secs(30);
/// Request-body bytes one connection may hold while its bodies are read (HTTP/2 multiplexes
/// many), and all connections of a listener together. A body alone is never refused by
/// these (see `BodyBudgets`); beyond them, a body is refused with 503 and `Retry-After`.
const CONNECTION_BODY_BUDGET: u64 = 32 << 20;
const SERVER_BODY_BUDGET: u64 = 256 << 20;
/// HTTP/2: streams one connection may have open, and flow-control windows small enough that
/// what a client may send ahead of weir reading it stays small (a stream's window is
/// refilled as its body is read).
const H2_MAX_STREAMS: u32 = 256;
const H2_STREAM_WINDOW: u32 = 256 << 10;
const H2_CONNECTION_WINDOW: u32 = 1 << 20;
/// Most an HTTP/1 connection buffers of what it reads (a request head must fit) and of
/// what it has yet to write; hyper's default (about 400 KiB) times thousands of open
/// connections is more than a gateway should hold.
const H1_MAX_BUFFER: usize = 64 << 10;
/// HTTP/2 header block limit (h2's default is 16 MiB per stream); HTTP/1 heads are bounded
/// by `H1_MAX_BUFFER`.
const H2_MAX_HEADER_LIST: u32 = 64 << 10;

/// Binds `addr` with `SO_REUSEADDR` and a deep backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// A request handler: one per listener, cloned into each connection.
pub trait Handler: Clone + Send + Sync + 'static {
    fn call(&self, request: Request<Incoming>) -> impl Future<Output = Response<Body>> + Send;
}

/// Accepts connections until `shutdown` carries a drain deadline, then waits up to that long
/// for the open ones to finish their in-flight requests. Each connection takes its TLS
/// config (or none: plaintext) from `tls` as it is accepted.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    tls: TlsAcceptorSource,
    handler: H,
    mut shutdown: watch::Receiver<Option<Duration>>,
) {
    let graceful = GracefulShutdown::new();
    let builders = Arc::new(protocol::Builders::new(http1_builder(), connection_builder()));
    let server_budget = Arc::new(BodyBudget::new("server", SERVER_BODY_BUDGET));
    let drain = loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            stop = shutdown.wait_for(Option::is_some) => break stop.ok().and_then(|drain| *drain).unwrap_or(ORPHAN_DRAIN),
        };
        let (stream, _peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and similar: back off briefly instead of spinning.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let budgets = BodyBudgets {
            connection: Arc::new(BodyBudget::new("connection", CONNECTION_BODY_BUDGET)),
            server: Arc::clone(&server_budget),
        };
        spawn_connection(&builders, &graceful, stream, tls.acceptor(), handler.clone(), budgets);
    };
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(?drain, "graceful shutdown deadline passed; closing remaining connections");
    }
}

fn http1_builder() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(H1_MAX_BUFFER);
    builder
}

/// HTTP/2, and both protocols for a TLS connection without ALPN (HTTP/1 set as `http1_builder`).
fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(H1_MAX_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

fn spawn_connection<H: Handler>(
    builders: &Arc<protocol::Builders>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handler: H,
    budgets: BodyBudgets,
) {
    let builders = Arc::clone(builders);
    let watcher = graceful.watcher();
    // The socket moves to the worker's own I/O driver.
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(err) => return tracing::debug!(error = %err, "cannot hand the connection to a worker"),
    };
    workers::spawn_connection(async move {
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(err) => return tracing::debug!(error = %err, "cannot register the connection on its worker"),
        };
        let service = service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(budgets.clone());
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(call_catching_panics(&handler, request).await) }
        });
        // A client that stops reading must not hold its response (and the upstream behind it).
        let result = match tls {
            // Plaintext HTTP/1 is served inline: the task is as small as its connection.
            None => serve_plain(stream, &builders, service, watcher).await,
            Some(acceptor) => Box::pin(serve_tls(stream, acceptor, &builders, service, watcher)).await,
        };
        if let Err(err) = result {
            tracing::debug!(error = %err, "connection ended with an error");
        }
    });
}

type ConnectionError = Box<dyn std::error::Error + Send + Sync>;

async fn serve_plain<S>(
    stream: TcpStream,
    builders: &protocol::Builders,
    service: S,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), ConnectionError>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<ConnectionError>,
{
    let Ok(Some(protocol)) = tokio::time::timeout(HEADER_READ_TIMEOUT, protocol::sniff(&stream)).await else {
        tracing::debug!("connection closed or silent before its first request");
        return Ok(());
    };
    let stream = send_timeout::SendTimeout::new(stream, send_timeout::SEND_TIMEOUT);
    serve_io(TokioIo::new(stream), protocol, builders, service, watcher).await
}

async fn serve_tls<S>(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    builders: &protocol::Builders,
    service: S,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), ConnectionError>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<ConnectionError>,
{
    let stream = send_timeout::SendTimeout::new(stream, send_timeout::SEND_TIMEOUT);
    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return Err(format!("TLS handshake failed: {err}").into()),
        Err(_) => return Err("TLS handshake timed out".into()),
    };
    let protocol = protocol::Protocol::from_alpn(stream.get_ref().1.alpn_protocol());
    serve_io(TokioIo::new(stream), protocol, builders, service, watcher).await
}

/// Serves a connection whose protocol is known: HTTP/1 inline, anything else boxed (rarer,
/// and larger than an HTTP/1 connection, which sets the size of every connection's task).
async fn serve_io<I, S>(
    io: TokioIo<I>,
    protocol: protocol::Protocol,
    builders: &protocol::Builders,
    service: S,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), ConnectionError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<ConnectionError>,
{
    match protocol {
        protocol::Protocol::Http1 => Ok(watcher.watch(builders.http1.serve_connection(io, service)).await?),
        other => Box::pin(watcher.watch(builders.auto(other).serve_connection(io, service))).await,
    }
}

/// A panic in a handler answers 500 instead of dropping the connection without a word.
async fn call_catching_panics<H: Handler>(handler: &H, request: Request<Incoming>) -> Response<Body> {
    // Boxed: hyper keeps the service future inline in the connection's task for the
    // connection's whole life, so an inline request path (several KiB of state) would cost
    // every open connection that much even while it only streams or idles.
    match std::panic::AssertUnwindSafe(Box::pin(handler.call(request))).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned());
            tracing::error!(panic = detail.as_deref().unwrap_or("unknown"), "request handler panicked");
            error::GatewayError::Internal("the gateway hit an unexpected error".into()).to_response()
        }
    }
}

/// Convenience for handlers built from closures over shared state.
pub struct FnHandler<S, F> {
    state: Arc<S>,
    f: F,
}

impl<S, F: Clone> Clone for FnHandler<S, F> {
    fn clone(&self) -> Self {
        FnHandler { state: Arc::clone(&self.state), f: self.f.clone() }
    }
}

impl<S, F> FnHandler<S, F> {
    pub fn new(state: Arc<S>, f: F) -> Self {
        FnHandler { state, f }
    }
}

impl<S, F, Fut> Handler for FnHandler<S, F>
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send,
{
    fn call(&self, request: Request<Incoming>) -> impl Future<Output = Response<Body>> + Send {
        (self.f)(Arc::clone(&self.state), request)
    }
}
