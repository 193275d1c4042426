//! The floor of weir's stack: the least an HTTP/1 reverse proxy built on hyper 1 and tokio
//! can do, for `benches/load` to measure beside weir and nginx in the same run.
//!
//! One single-threaded runtime per core, as weir's workers; hyper's HTTP/1 server with the
//! settings weir uses, and per client connection one upstream connection from hyper's HTTP/1
//! client, opened on first use and kept. Each request is forwarded as it came (its body
//! streamed, its headers untouched) and the answer streamed back as it came. No routing,
//! no parsing, no pool, no limits, no records: whatever weir-plain costs beyond this is
//! weir's own code; whatever this costs beyond nginx is the stack's (hyper, tokio, the
//! allocator).
//!
//! `cargo build --release --example hyper_floor`, then
//! `hyper_floor LISTEN_ADDR UPSTREAM_ADDR` (it prints `listening` once it accepts).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::LocalSet;

type Body = http_body_util::Either<Incoming, http_body_util::Empty<bytes::Bytes>>;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = || std::io::Error::other("usage: hyper_floor LISTEN_ADDR UPSTREAM_ADDR");
    let listen: SocketAddr = args.next().and_then(|a| a.parse().ok()).ok_or_else(usage)?;
    let upstream: SocketAddr = args.next().and_then(|a| a.parse().ok()).ok_or_else(usage)?;
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let listener = listener.try_clone()?;
            Ok(std::thread::spawn(move || worker(listener, upstream)))
        })
        .collect::<std::io::Result<_>>()?;
    println!("listening");
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}

/// One worker: accepts from the shared socket and serves its connections on this thread.
fn worker(listener: std::net::TcpListener, upstream: SocketAddr) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::from_std(listener)?;
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio::task::spawn_local(serve(stream, upstream));
        }
    })
}

/// Serves one client connection with weir's HTTP/1 server settings.
async fn serve(stream: TcpStream, upstream: SocketAddr) {
    let sender: Rc<RefCell<Option<SendRequest<Body>>>> = Rc::default();
    let service = service_fn(move |request: Request<Incoming>| forward(Rc::clone(&sender), upstream, request));
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Sends `request` on the connection's upstream connection (opened when it has none) and
/// answers with the upstream's response as it comes.
async fn forward(
    slot: Rc<RefCell<Option<SendRequest<Body>>>>,
    upstream: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Body>, hyper::Error> {
    let mut taken = slot.borrow_mut().take();
    if let Some(sender) = &mut taken
        && sender.ready().await.is_err()
    {
        taken = None;
    }
    let mut sender = match taken {
        Some(sender) => sender,
        None => match connect(upstream).await {
            Some(sender) => sender,
            None => return Ok(bad_gateway()),
        },
    };
    let answer = sender.send_request(request.map(Body::Left));
    *slot.borrow_mut() = Some(sender);
    Ok(answer.await?.map(Body::Left))
}

async fn connect(upstream: SocketAddr) -> Option<SendRequest<Body>> {
    let stream = TcpStream::connect(upstream).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::task::spawn_local(connection);
    Some(sender)
}

fn bad_gateway() -> Response<Body> {
    let mut response = Response::new(Body::Right(http_body_util::Empty::new()));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}
