//! Plain-HTTP/1.1 upstream connections driven by the request's own task.
//!
//! hyper_util's pooled client runs each upstream connection as a task of its own and hands
//! every response head and body chunk across a channel, a task wake-up each. Here the
//! connection is polled by whoever holds it — the request while it waits for headers, then
//! the response body as it streams — so a chunk goes from the upstream socket to the
//! client socket in one task. Used for `http://` backends (vLLM, Ollama, local servers, where
//! weir's overhead matters most); `https://` backends keep hyper_util's client for TLS and
//! HTTP/2.
//!
//! Idle connections are kept per thread: a socket belongs to the I/O driver of the worker
//! thread that opened it (see `server::workers`), and used from another worker every
//! readiness event would cross cores. A thread takes its own idle connections first and
//! another thread's only before opening a new one.
//!
//! An idle connection is not polled; before reuse it gets one poll with a no-op waker so
//! that a close the upstream sent meanwhile is noticed, and a request that fails on a reused
//! connection before any answer is sent again once on a fresh one.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::Body as _;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

type Connection = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// Idle connections kept per backend and thread; more are closed when they finish.
const MAX_IDLE: usize = 1024;
/// Idle lists per backend; threads beyond this many share them (still correct, only the
/// wake-ups of a shared connection may cross cores).
const SLOTS: usize = 64;

/// Slots handed out so far, one per thread that used a pool.
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's idle list, assigned on first use.
    static SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SLOTS;
}

fn this_threads_slot() -> usize {
    SLOT.with(|slot| *slot)
}

/// Slots some thread has been given, this one's included.
fn slots_in_use() -> usize {
    let _ = this_threads_slot();
    NEXT_SLOT.load(Ordering::Relaxed).min(SLOTS)
}
/// An idle connection older than this is closed rather than reused (upstreams commonly
/// drop idle keep-alive connections after a minute or two anyway).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug)]
pub struct H1Pool {
    /// `host:port`, resolved on each connect (DNS changes are followed).
    authority: String,
    connect_timeout: Duration,
    /// Per thread ([`SLOTS`]), newest last.
    idle: Box<[Mutex<Vec<Conn>>]>,
}

/// One upstream connection: the request sender and the connection future that does its I/O.
pub struct Conn {
    send: http1::SendRequest<Full<Bytes>>,
    io: Pin<Box<Connection>>,
    /// When the connection last went idle.
    idle_since: Instant,
    /// The idle list of the thread that opened it.
    home: usize,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Conn")
    }
}

/// Why a pooled exchange failed; `connect` tells a refused or timed-out connect apart.
#[derive(Debug)]
pub struct PoolError {
    pub connect: bool,
    pub detail: String,
}

impl H1Pool {
    pub fn new(authority: String, connect_timeout: Duration) -> H1Pool {
        let idle = (0..SLOTS).map(|_| Mutex::new(Vec::new())).collect();
        H1Pool { authority, connect_timeout, idle }
    }

    /// Sends one request and returns the response head with the connection that carries its
    /// body. `request` is called again if a reused connection turns out to be dead.
    pub async fn send(
        self: &Arc<Self>,
        request: impl Fn() -> Request<Full<Bytes>>,
    ) -> Result<(http::Response<Incoming>, PooledConn), PoolError> {
        if let Some(conn) = self.take_idle() {
            match exchange(conn, request()).await {
                Ok((response, conn)) => return Ok((response, self.wrap(conn))),
                // The upstream closed the reused connection before answering: it did not
                // process the request, so sending it again on a fresh connection is safe.
                Err(unanswered) if unanswered.never_processed => {}
                Err(unanswered) => return Err(unanswered.into()),
            }
        }
        let conn = self.connect().await?;
        match exchange(conn, request()).await {
            Ok((response, conn)) => Ok((response, self.wrap(conn))),
            Err(unanswered) => Err(unanswered.into()),
        }
    }

    fn wrap(self: &Arc<Self>, conn: Conn) -> PooledConn {
        PooledConn { conn: Some(conn), pool: Arc::clone(self) }
    }

    /// This thread's most recently used idle connection that is still open, else another
    /// thread's.
    fn take_idle(&self) -> Option<Conn> {
        let own = this_threads_slot();
        let slots = slots_in_use();
        (0..slots).find_map(|step| self.take_idle_from(&self.idle[(own + step) % slots]))
    }

    fn take_idle_from(&self, idle: &Mutex<Vec<Conn>>) -> Option<Conn> {
        loop {
            let mut conn = idle.lock().ok()?.pop()?;
            if expired(conn.idle_since, Instant::now()) {
                continue;
            }
            let mut cx = Context::from_waker(Waker::noop());
            // Ready means the upstream closed it (or it failed) while idle.
            if conn.io.as_mut().poll(&mut cx).is_pending() && conn.send.is_ready() {
                return Some(conn);
            }
        }
    }

    async fn connect(&self) -> Result<Conn, PoolError> {
        let connect_error = |detail: String| PoolError { connect: true, detail };
        let stream = tokio::time::timeout(self.connect_timeout, connect_any(&self.authority))
            .await
            .map_err(|_| connect_error(format!("connect to {} timed out", self.authority)))?
            .map_err(|err| connect_error(format!("connect to {}: {err}", self.authority)))?;
        let _ = stream.set_nodelay(true);
        let (send, io) = http1::Builder::new()
            .max_buf_size(super::client::HTTP1_MAX_BUFFER)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|err| connect_error(super::transport::error_chain(&err)))?;
        Ok(Conn { send, io: Box::pin(io), idle_since: Instant::now(), home: this_threads_slot() })
    }

    /// Returns a connection to its thread's idle list, newest last, and closes the ones idle too
    /// long (they sit at the front), so sockets the upstream closed do not pile up.
    fn put_back(&self, mut conn: Conn) {
        let now = Instant::now();
        conn.idle_since = now;
        if let Ok(mut idle) = self.idle[conn.home].lock() {
            let stale = idle.iter().take_while(|c| expired(c.idle_since, now)).count();
            idle.drain(..stale);
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
    }
}

/// Whether a connection idle since `idle_since` has been idle too long to reuse at `now`.
fn expired(idle_since: Instant, now: Instant) -> bool {
    now.duration_since(idle_since) > IDLE_TIMEOUT
}

/// A reused keep-alive connection that the upstream had already closed (or closed as the
/// request arrived): hyper saw no response at all.
fn closed_before_answer(err: &hyper::Error) -> bool {
    if err.is_canceled() || err.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
            return matches!(io.kind(), ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof);
        }
        source = inner.source();
    }
    false
}

async fn connect_any(authority: &str) -> std::io::Result<TcpStream> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host(authority).await? {
        match connect_addr(addr).await {
            Ok(stream) => return Ok(stream),
            Err(err) => last_error = Some(err),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other(format!("{authority} resolves to no address"))))
}

async fn connect_addr(addr: SocketAddr) -> std::io::Result<TcpStream> {
    TcpStream::connect(addr).await
}

/// Why an exchange got no answer.
#[derive(Debug)]
struct Unanswered {
    detail: String,
    /// The upstream closed the connection without an answer before it could have acted on
    /// the request, so sending it again cannot do anything twice.
    never_processed: bool,
}

impl From<hyper::Error> for Unanswered {
    fn from(err: hyper::Error) -> Unanswered {
        Unanswered { never_processed: closed_before_answer(&err), detail: super::transport::error_chain(&err) }
    }
}

impl From<Unanswered> for PoolError {
    fn from(unanswered: Unanswered) -> PoolError {
        PoolError { connect: false, detail: unanswered.detail }
    }
}

/// Sends `request` on `conn`, driving the connection until the response head arrives.
async fn exchange(
    mut conn: Conn,
    request: Request<Full<Bytes>>,
) -> Result<(http::Response<Incoming>, Conn), Unanswered> {
    let mut response = std::pin::pin!(conn.send.send_request(request));
    let io = &mut conn.io;
    let answered = std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = response.as_mut().poll(cx) {
            return Poll::Ready(Some(result));
        }
        match io.as_mut().poll(cx) {
            // The connection ended; the answer may have come with its last read.
            Poll::Ready(_) => Poll::Ready(match response.as_mut().poll(cx) {
                Poll::Ready(result) => Some(result),
                Poll::Pending => None,
            }),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    match answered {
        Some(Ok(response)) => Ok((response, conn)),
        Some(Err(err)) => Err(err.into()),
        None => {
            // The connection ended cleanly before it took the request: an idle keep-alive
            // connection the upstream closed just as it was reused. hyper fails a queued
            // request when the connection errs, but after a clean close the request waits in
            // the connection's queue until the connection is dropped (waiting here for it
            // would wait until the first-byte timeout). Dropping it fails the request with
            // hyper's own reason (canceled: never sent).
            drop(conn);
            match response.await {
                Err(err) => Err(err.into()),
                // A dropped connection answers nothing; should hyper ever, the answer has no
                // connection left to read its body from.
                Ok(_) => Err(Unanswered { detail: "upstream connection closed".into(), never_processed: false }),
            }
        }
    }
}

/// A connection lent to one response body; it returns to the pool when the body has been
/// read to the end, and is closed if the body is dropped early.
#[derive(Debug)]
pub struct PooledConn {
    conn: Option<Conn>,
    pool: Arc<H1Pool>,
}

impl PooledConn {
    /// Drives the connection's I/O; call before polling the body it feeds.
    pub fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(conn) = &mut self.conn
            && conn.io.as_mut().poll(cx).is_ready()
        {
            // Closed or failed: the body sees the end or the error itself.
            self.conn = None;
        }
    }

    /// The body was read to its end: the connection may serve the next request.
    pub fn release(&mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        // One more poll lets the dispatcher settle into its idle, ready state.
        let mut cx = Context::from_waker(Waker::noop());
        if conn.io.as_mut().poll(&mut cx).is_pending() && conn.send.is_ready() {
            self.pool.put_back(conn);
        }
    }
}

/// Polls `body` for its next data chunk while driving `conn`.
pub fn poll_body_chunk(
    body: &mut Incoming,
    conn: &mut PooledConn,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Bytes, hyper::Error>>> {
    loop {
        conn.drive(cx);
        match std::task::ready!(Pin::new(&mut *body).poll_frame(cx)) {
            None => {
                conn.release();
                return Poll::Ready(None);
            }
            Some(Err(err)) => return Poll::Ready(Some(Err(err))),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => {
                    if body.is_end_stream() {
                        conn.release();
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                _ => continue,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that closes an idle keep-alive connection just as weir reuses it: the
    /// connection ends cleanly before taking the request. The request must fail at once as
    /// never sent (so the pool sends it again on a fresh connection), not wait in the dead
    /// connection's queue until the first-byte timeout.
    #[tokio::test]
    async fn a_connection_closed_before_taking_the_request_fails_it_at_once_as_never_sent() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Arc::new(H1Pool::new(listener.local_addr().unwrap().to_string(), Duration::from_secs(2)));
        let request =
            || Request::post("http://upstream/v1/chat/completions").body(Full::new(Bytes::from_static(b"{}")));
        let upstream = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await.unwrap();
            socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").await.unwrap();
            socket
        });
        // One whole exchange leaves the connection idle in the pool.
        let (mut response, mut lent) = pool.send(|| request().unwrap()).await.unwrap();
        while std::future::poll_fn(|cx| poll_body_chunk(response.body_mut(), &mut lent, cx)).await.is_some() {}
        let conn = pool.take_idle().expect("the connection went back to the pool, alive");
        // The upstream closes it just after weir judged it alive, before the request is queued.
        drop(upstream.await.unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let outcome = tokio::time::timeout(Duration::from_secs(10), exchange(conn, request().unwrap()))
            .await
            .expect("the request waited in a closed connection's queue");
        let unanswered = outcome.expect_err("a closed connection answered");
        assert!(unanswered.never_processed, "{unanswered:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_expire_after_the_idle_timeout() {
        let idle_since = Instant::now();
        tokio::time::advance(IDLE_TIMEOUT).await;
        assert!(!expired(idle_since, Instant::now()), "reusable up to the timeout");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(expired(idle_since, Instant::now()), "closed past it");
    }
}
