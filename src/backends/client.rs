//! The pooled upstream HTTP client and the body type every backend answers with.

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http_body::Body as _;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// One per backend: keep-alive pool, HTTP/2 where ALPN offers it, rustls.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Most an upstream HTTP/1 connection buffers of what it reads (and of a response head).
/// hyper grows a connection's read buffer up to about 400 KiB while an upstream sends
/// faster than the client reads; thousands of open streams cannot each afford that.
pub const HTTP1_MAX_BUFFER: usize = 64 * 1024;

/// Builds a client whose connections use `TCP_NODELAY` (no Nagle delay on small SSE
/// writes) and give up connecting after `connect`; `ca_file` adds trusted CA certificates.
pub fn build_client(connect: Duration, ca_file: Option<&Path>) -> std::io::Result<HttpClient> {
    build(connect, ca_file, false)
}

/// A client that speaks only HTTP/2: prior knowledge over `http://`, ALPN `h2` over
/// `https://` (gRPC, as OTLP trace export uses it).
pub fn build_h2_client(connect: Duration) -> std::io::Result<HttpClient> {
    build(connect, None, true)
}

fn build(connect: Duration, ca_file: Option<&Path>, http2_only: bool) -> std::io::Result<HttpClient> {
    let tls = match ca_file {
        None => tls_client_config().as_ref().clone(),
        Some(path) => with_ca_file(path)?,
    };
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .http1_max_buf_size(HTTP1_MAX_BUFFER)
        .http2_only(http2_only)
        .build(https))
}

/// The platform's roots plus the CA certificates in the PEM file at `path`.
fn with_ca_file(path: &Path) -> std::io::Result<rustls::ClientConfig> {
    let pem = std::fs::read(path)?;
    let mut roots = platform_roots();
    let mut added = 0;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert?).map_err(std::io::Error::other)?;
        added += 1;
    }
    if added == 0 {
        return Err(std::io::Error::other("no PEM certificate in the file"));
    }
    Ok(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
}

/// The platform's trust roots; the bundled Mozilla roots when the platform has none.
fn platform_roots() -> rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                tracing::warn!("no platform TLS roots found; using the bundled Mozilla roots");
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            roots
        })
        .clone()
}

/// The platform's trust roots, read once per process; the bundled Mozilla roots when the
/// platform has none (minimal containers).
fn tls_client_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let config = rustls::ClientConfig::builder().with_root_certificates(platform_roots()).with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// A backend's answer body: the upstream's bytes, or chunks a built-in backend makes.
pub enum UpstreamBody {
    Http(Incoming),
    /// A body whose connection this body drives itself (see `pool`).
    Pooled(Incoming, super::pool::PooledConn),
    Generated(Pin<Box<dyn Stream<Item = Bytes> + Send>>),
    Full(Option<Bytes>),
    /// A provider's answer turned into OpenAI's shape as it streams (see `anthropic`), so the
    /// proxy and every tap downstream see OpenAI bytes.
    Translated(Box<super::anthropic::TranslatedBody>),
}

/// Why a body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Transport(#[from] hyper::Error),
    /// The upstream's answer could not be translated, or was itself an error event.
    #[error("{0}")]
    Translate(String),
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpstreamBody::Http(_) => "UpstreamBody::Http",
            UpstreamBody::Pooled(..) => "UpstreamBody::Pooled",
            UpstreamBody::Generated(_) => "UpstreamBody::Generated",
            UpstreamBody::Full(_) => "UpstreamBody::Full",
            UpstreamBody::Translated(_) => "UpstreamBody::Translated",
        })
    }
}

impl UpstreamBody {
    /// Next data chunk; trailers and empty frames are skipped.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        match self {
            UpstreamBody::Http(incoming) => loop {
                match std::task::ready!(Pin::new(&mut *incoming).poll_frame(cx)) {
                    None => return Poll::Ready(None),
                    Some(Err(err)) => return Poll::Ready(Some(Err(err.into()))),
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) if !data.is_empty() => return Poll::Ready(Some(Ok(data))),
                        _ => continue,
                    },
                }
            },
            UpstreamBody::Pooled(body, conn) => {
                super::pool::poll_body_chunk(body, conn, cx).map(|chunk| chunk.map(|r| r.map_err(BodyError::from)))
            }
            UpstreamBody::Generated(stream) => stream.as_mut().poll_next(cx).map(|chunk| chunk.map(Ok)),
            UpstreamBody::Full(bytes) => Poll::Ready(bytes.take().map(Ok)),
            UpstreamBody::Translated(body) => body.poll_chunk(cx),
        }
    }

    /// Reads at most `limit` bytes (used for error bodies, which are small and needed whole).
    pub async fn read_bounded(mut self, limit: usize) -> Result<Bytes, BodyError> {
        let mut collected = bytes::BytesMut::new();
        while let Some(chunk) = std::future::poll_fn(|cx| self.poll_chunk(cx)).await {
            let chunk = chunk?;
            let room = limit.saturating_sub(collected.len());
            collected.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if collected.len() >= limit {
                break;
            }
        }
        Ok(collected.freeze())
    }
}
