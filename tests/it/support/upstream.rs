//! An in-process OpenAI-compatible upstream on 127.0.0.1:0 whose behaviour each test sets.
//!
//! It records every request (method, path, headers, body) and counts streams that ended
//! because the client (the gateway) went away, which is how tests see cancellation.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use weir::backends::mock::Answer;
use weir::wire::Endpoint;

type UpBody = BoxBody<Bytes, std::io::Error>;

/// What the upstream does with the next requests.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// Answers like an OpenAI server with the mock model's answer planned from the request:
    /// JSON, or SSE when `stream: true`, `gap` between chunks. `take` stops after that many
    /// chunks and then does `end` instead of finishing with `[DONE]`.
    Mock { gap: Duration, take: Option<usize>, end: End },
    /// A fixed answer.
    Reply { status: u16, headers: Vec<(String, String)>, body: String },
    /// Reads the request and never answers.
    Hang,
    /// Reads the request and closes the connection without a response.
    Close,
    /// A 200 `text/event-stream` answer sent as these separate body chunks.
    Chunks(Vec<Bytes>),
    /// Waits this long after reading the request, then behaves as the inner behaviour.
    Delayed(Duration, Box<Behavior>),
}

/// How a stream cut short by `take` ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// `data: [DONE]` and a clean end (only meaningful without `take`).
    Done,
    /// The connection is aborted mid-body.
    Cut,
    /// Nothing more is sent; the body stays open until the client goes away.
    Hang,
}

impl Behavior {
    pub fn mock() -> Behavior {
        Behavior::Mock { gap: Duration::ZERO, take: None, end: End::Done }
    }

    /// Streams with `gap` between chunks.
    pub fn paced(gap: Duration) -> Behavior {
        Behavior::Mock { gap, take: None, end: End::Done }
    }

    /// Sends `n` chunks of a stream, then ends it with `end`.
    pub fn stream_then(n: usize, end: End) -> Behavior {
        Behavior::Mock { gap: Duration::from_millis(10), take: Some(n), end }
    }

    pub fn reply(status: u16, body: impl Into<String>) -> Behavior {
        Behavior::Reply { status, headers: vec![("content-type".into(), "application/json".into())], body: body.into() }
    }

    /// An OpenAI-shaped error answer.
    pub fn error(status: u16, message: &str) -> Behavior {
        let body = serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": "upstream_code"}});
        Behavior::reply(status, body.to_string())
    }

    /// The same behaviour, answering only `delay` after the request arrived (so concurrent
    /// requests overlap).
    pub fn delayed(self, delay: Duration) -> Behavior {
        Behavior::Delayed(delay, Box::new(self))
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Behavior {
        if let Behavior::Reply { headers, .. } = &mut self {
            headers.push((name.to_owned(), value.to_owned()));
        }
        self
    }
}

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("upstream request body is JSON")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Debug)]
struct Shared {
    behavior: Mutex<Behavior>,
    /// One-off behaviours for the next requests, before `behavior` applies again.
    queued: Mutex<VecDeque<Behavior>>,
    requests: Mutex<Vec<Recorded>>,
    /// Streams whose receiver went away before the stream ended.
    cancelled: AtomicUsize,
    /// Streams sent to the end.
    completed: AtomicUsize,
    /// TCP connections accepted.
    connections: AtomicUsize,
}

impl Shared {
    fn new(behavior: Behavior) -> Arc<Shared> {
        Arc::new(Shared {
            behavior: Mutex::new(behavior),
            queued: Mutex::new(VecDeque::new()),
            requests: Mutex::new(Vec::new()),
            cancelled: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
        })
    }
}

/// The running upstream; its accept loop lives as long as the test's runtime.
#[derive(Debug, Clone)]
pub struct MockUpstream {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    /// Set when it serves HTTPS: the PEM file of its (self-signed) certificate, for the
    /// backend's `ca_file`.
    tls: Option<Arc<TlsFiles>>,
}

/// How an HTTPS upstream sends its JSON answers and which protocols it offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// HTTP/1.1 with `Content-Length`.
    Length,
    /// HTTP/1.1 with `Transfer-Encoding: chunked`.
    Chunked,
    /// HTTP/2 (ALPN `h2`).
    Http2,
}

#[derive(Debug)]
struct TlsFiles {
    _dir: tempfile::TempDir,
    ca: std::path::PathBuf,
}

impl MockUpstream {
    pub async fn start(behavior: Behavior) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock upstream");
        let addr = listener.local_addr().expect("mock upstream address");
        let shared = Shared::new(behavior);
        let accept_shared = Arc::clone(&shared);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                accept_shared.connections.fetch_add(1, Ordering::SeqCst);
                let shared = Arc::clone(&accept_shared);
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(Arc::clone(&shared), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        MockUpstream { addr, shared, tls: None }
    }

    /// The same upstream over HTTPS with a fresh self-signed certificate for `127.0.0.1`:
    /// JSON answers with `Content-Length` or chunked, or everything over HTTP/2.
    pub async fn start_tls(behavior: Behavior, mode: TlsMode) -> MockUpstream {
        crate::support::init();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock upstream");
        let addr = listener.local_addr().expect("mock upstream address");
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("self-signed cert");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("upstream-ca.pem");
        std::fs::write(&ca, certified.cert.pem()).expect("write cert");
        let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).expect("key der");
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .expect("server tls config");
        config.alpn_protocols = match mode {
            TlsMode::Http2 => vec![b"h2".to_vec()],
            TlsMode::Length | TlsMode::Chunked => vec![b"http/1.1".to_vec()],
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let shared = Shared::new(behavior);
        let accept_shared = Arc::clone(&shared);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                accept_shared.connections.fetch_add(1, Ordering::SeqCst);
                let shared = Arc::clone(&accept_shared);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else { return };
                    let chunked = mode == TlsMode::Chunked;
                    let service = service_fn(move |request| {
                        let shared = Arc::clone(&shared);
                        async move {
                            let response = handle(shared, request).await?;
                            Ok::<_, std::io::Error>(if chunked { unsized_body(response) } else { response })
                        }
                    });
                    let io = TokioIo::new(stream);
                    let _ = match mode {
                        TlsMode::Http2 => {
                            hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                                .serve_connection(io, service)
                                .await
                        }
                        TlsMode::Length | TlsMode::Chunked => {
                            hyper::server::conn::http1::Builder::new().serve_connection(io, service).await
                        }
                    };
                });
            }
        });
        MockUpstream { addr, shared, tls: Some(Arc::new(TlsFiles { _dir: dir, ca })) }
    }

    /// The base URL to put in a backend's `base_url`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/v1", self.addr)
    }

    /// The upstream's certificate, for the backend's `ca_file` (HTTPS upstreams only).
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.tls.as_ref().map(|tls| tls.ca.as_path())
    }

    pub fn set(&self, behavior: Behavior) {
        *self.shared.behavior.lock().expect("behavior lock") = behavior;
    }

    /// The next request (after any queued before) gets `behavior`; then the standing one
    /// applies again. How tests make an upstream fail once.
    pub fn queue(&self, behavior: Behavior) {
        self.shared.queued.lock().expect("queue lock").push_back(behavior);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().expect("requests lock").clone()
    }

    /// The only request received; fails the test if there were more or none.
    pub fn only_request(&self) -> Recorded {
        let requests = self.requests();
        assert_eq!(requests.len(), 1, "expected exactly one upstream request, got {requests:#?}");
        requests.into_iter().next().expect("one request")
    }

    pub fn cancelled(&self) -> usize {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    /// TCP connections the upstream accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    pub fn completed(&self) -> usize {
        self.shared.completed.load(Ordering::SeqCst)
    }
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Result<Response<UpBody>, std::io::Error> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map_err(std::io::Error::other)?.to_bytes();
    let recorded = Recorded {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body: body.clone(),
    };
    shared.requests.lock().expect("requests lock").push(recorded.clone());
    let queued = shared.queued.lock().expect("queue lock").pop_front();
    let mut behavior = queued.unwrap_or_else(|| shared.behavior.lock().expect("behavior lock").clone());
    while let Behavior::Delayed(delay, inner) = behavior {
        tokio::time::sleep(delay).await;
        behavior = *inner;
    }
    match behavior {
        Behavior::Reply { status, headers, body } => {
            let mut response = Response::new(full(body));
            *response.status_mut() = StatusCode::from_u16(status).expect("valid status");
            for (name, value) in headers {
                response.headers_mut().append(
                    http::HeaderName::try_from(name).expect("header name"),
                    http::HeaderValue::try_from(value).expect("header value"),
                );
            }
            Ok(response)
        }
        Behavior::Hang => {
            std::future::pending::<()>().await;
            unreachable!("pending never resolves")
        }
        // An error from the service makes hyper drop the connection without answering.
        Behavior::Close => Err(std::io::Error::other("closing without a response")),
        Behavior::Mock { gap, take, end } => Ok(mock_answer(&shared, &recorded, gap, take, end)),
        Behavior::Chunks(chunks) => Ok(chunked(chunks)),
        Behavior::Delayed(..) => unreachable!("unwrapped above"),
    }
}

fn mock_answer(
    shared: &Arc<Shared>,
    request: &Recorded,
    gap: Duration,
    take: Option<usize>,
    end: End,
) -> Response<UpBody> {
    // Suffixes, so Azure's `/openai/deployments/{name}/...` paths are served too.
    let endpoint = match request.path.as_str() {
        p if p.ends_with("/chat/completions") => Endpoint::ChatCompletions,
        p if p.ends_with("/completions") => Endpoint::Completions,
        p if p.ends_with("/embeddings") => Endpoint::Embeddings,
        other => {
            let body = format!(
                r#"{{"error":{{"message":"no route {other}","type":"invalid_request_error","param":null,"code":null}}}}"#
            );
            return json_response(404, body);
        }
    };
    let json: Value = match serde_json::from_slice(&request.body) {
        Ok(json) => json,
        Err(err) => return json_response(400, format!(r#"{{"error":{{"message":"bad json: {err}"}}}}"#)),
    };
    let answer = match Answer::plan(endpoint, &json) {
        Ok(answer) => answer,
        Err(message) => return json_response(400, serde_json::json!({"error": {"message": message}}).to_string()),
    };
    let stream = json.get("stream").and_then(Value::as_bool).unwrap_or(false) && endpoint != Endpoint::Embeddings;
    if !stream {
        return json_response(200, answer.to_json());
    }
    let mut chunks = answer.to_sse_chunks();
    let end = match take {
        Some(n) => {
            chunks.truncate(n);
            end
        }
        None => End::Done,
    };
    let (tx, mut rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        for (i, chunk) in chunks.into_iter().enumerate() {
            if i > 0 && !gap.is_zero() {
                tokio::select! {
                    _ = tx.closed() => {
                        shared.cancelled.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    _ = tokio::time::sleep(gap) => {}
                }
            }
            if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                shared.cancelled.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
        match end {
            End::Done => {
                shared.completed.fetch_add(1, Ordering::SeqCst);
            }
            End::Cut => {
                let _ = tx.send(Err(std::io::Error::other("upstream cut the stream"))).await;
            }
            End::Hang => {
                tx.closed().await;
                shared.cancelled.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let mut response = Response::new(BodyExt::boxed(body));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/event-stream"));
    response.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-cache"));
    response
}

/// Sends each chunk as its own body frame, a moment apart, so they reach the gateway apart.
fn chunked(chunks: Vec<Bytes>) -> Response<UpBody> {
    let (tx, mut rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    tokio::spawn(async move {
        for chunk in chunks {
            if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let mut response = Response::new(BodyExt::boxed(body));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/event-stream"));
    response
}

/// The same response with a body whose length hyper cannot know, so it is sent chunked.
fn unsized_body(response: Response<UpBody>) -> Response<UpBody> {
    let (parts, body) = response.into_parts();
    let frames = futures_util::stream::unfold(Some(body), |body| async move {
        let mut body = body?;
        let frame = body.frame().await?;
        Some((frame, Some(body)))
    });
    Response::from_parts(parts, BodyExt::boxed(StreamBody::new(frames)))
}

fn json_response(status: u16, body: String) -> Response<UpBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = StatusCode::from_u16(status).expect("valid status");
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

fn full(body: impl Into<Bytes>) -> UpBody {
    Full::new(body.into()).map_err(|never: Infallible| match never {}).boxed()
}
