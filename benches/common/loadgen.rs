//! The closed-loop load generator shared by the benches: N keep-alive connections, each
//! sending its next request as soon as the previous answer's last byte arrived.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use serde_json::{Value, json};
use tokio::sync::Barrier;

use super::{ClientConn, ms, percentile};

/// What counts as a good answer.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// Status 200 and exactly this many body bytes (byte-exact pass-through).
    Bytes(usize),
    /// Status 200 and a non-empty body (answers weir composes itself, e.g. cache replays).
    Ok,
}

impl Expect {
    fn accepts(self, bytes: usize) -> bool {
        match self {
            Expect::Bytes(n) => bytes == n,
            Expect::Ok => bytes > 0,
        }
    }
}

/// Samples of one or more rounds against one target.
#[derive(Debug, Default)]
pub struct Samples {
    /// Every request sent, answered or not, in time or late: what the target saw (and should
    /// have recorded, when it records every request).
    pub sent: u64,
    pub requests: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    pub totals: Vec<Duration>,
    pub firsts: Vec<Duration>,
}

impl Samples {
    pub fn merge(&mut self, other: Samples) {
        self.sent += other.sent;
        self.requests += other.requests;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.elapsed += other.elapsed;
        self.totals.extend(other.totals);
        self.firsts.extend(other.firsts);
    }

    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn summary(&mut self) -> Summary {
        self.totals.sort_unstable();
        self.firsts.sort_unstable();
        Summary {
            requests: self.requests,
            errors: self.errors,
            rps: self.rps(),
            p50: percentile(&self.totals, 0.50),
            p99: percentile(&self.totals, 0.99),
            ttfb_p50: percentile(&self.firsts, 0.50),
            ttfb_p99: percentile(&self.firsts, 0.99),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub ttfb_p50: Duration,
    pub ttfb_p99: Duration,
}

impl Summary {
    pub fn to_json(self) -> Value {
        json!({
            "requests": self.requests,
            "errors": self.errors,
            "rps": round(self.rps, 1),
            "p50_ms": round(ms(self.p50), 3),
            "p99_ms": round(ms(self.p99), 3),
            "ttfb_p50_ms": round(ms(self.ttfb_p50), 3),
            "ttfb_p99_ms": round(ms(self.ttfb_p99), 3),
        })
    }
}

pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// One kind of request a round sends.
#[derive(Debug, Clone)]
pub struct Load {
    pub path: &'static str,
    pub body: Bytes,
    pub expect: Expect,
    /// Sent with every request (e.g. `Authorization`).
    pub headers: HeaderMap,
    /// When set, every request's body gets its own counter here, so no two bodies of the run
    /// are the same (a response cache misses every time); else `body` is sent as is.
    pub unique: Option<CounterSlot>,
}

impl Load {
    /// A chat request whose answer must be byte-exact `expected` bytes.
    pub fn chat(body: Bytes, expected: usize) -> Load {
        Load { path: super::CHAT_PATH, body, expect: Expect::Bytes(expected), headers: HeaderMap::new(), unique: None }
    }

    /// This load with a body unique in the run for every request (same length, same answer
    /// from the mock upstream, which ignores the content): see [`CounterSlot::UNIQUE_WORD`].
    pub fn unique(mut self) -> Load {
        self.unique = Some(CounterSlot::find(&self.body, CounterSlot::UNIQUE_WORD));
        self
    }

    /// These headers on every request.
    pub fn with_headers(mut self, headers: HeaderMap) -> Load {
        self.headers = headers;
        self
    }

    /// The body of the next request.
    pub fn next_body(&self) -> Bytes {
        match self.unique {
            Some(slot) => slot.fill(&self.body),
            None => self.body.clone(),
        }
    }
}

/// Numbers the unique bodies of the whole run (all targets, all rounds): a cache that
/// outlives a round must not see a body again.
static NEXT_UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A fixed-width place in a request body that [`CounterSlot::fill`] overwrites with the next
/// value of a run-wide counter, so the body stays valid JSON of the same length.
#[derive(Debug, Clone, Copy)]
pub struct CounterSlot {
    offset: usize,
    width: usize,
}

impl CounterSlot {
    /// The word of the bench request's system message that gets the counter. Not the `user`
    /// field: weir's cache key leaves `user` out (any end user gets the same answer). Letters,
    /// not digits, so redaction sees no phone number in it.
    pub const UNIQUE_WORD: &'static str = "infrastructure";

    /// The slot where `word` is in `body`; panics unless it is there exactly once.
    pub fn find(body: &[u8], word: &str) -> CounterSlot {
        let at: Vec<usize> =
            body.windows(word.len()).enumerate().filter(|(_, w)| *w == word.as_bytes()).map(|(i, _)| i).collect();
        assert_eq!(at.len(), 1, "{word:?} must be in the request body exactly once");
        CounterSlot { offset: at[0], width: word.len() }
    }

    /// `template` with the slot holding the next counter value, in base 26 (`a`-`z`),
    /// zero-padded (`a`) to the slot's width.
    pub fn fill(self, template: &[u8]) -> Bytes {
        let mut n = NEXT_UNIQUE.fetch_add(1, Ordering::Relaxed);
        let mut body = template.to_vec();
        for byte in body[self.offset..self.offset + self.width].iter_mut().rev() {
            *byte = b'a' + (n % 26) as u8;
            n /= 26;
        }
        Bytes::from(body)
    }
}

/// One closed-loop round: `connections` keep-alive connections each send the load's body
/// back-to-back for `duration`. Only requests that finished within `duration` count.
pub async fn run_round(addr: SocketAddr, load: &Load, connections: usize, duration: Duration) -> Samples {
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(connect_retrying(addr, &load.headers).await);
    }
    let barrier = Arc::new(Barrier::new(connections + 1));
    let mut tasks = Vec::with_capacity(connections);
    for conn in conns {
        let barrier = Arc::clone(&barrier);
        let load = load.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            drive(conn, addr, load, Instant::now() + duration).await
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut samples = Samples::default();
    for task in tasks {
        samples.merge(task.await.expect("load task panicked"));
    }
    samples.elapsed = duration.min(started.elapsed());
    samples
}

pub async fn connect_retrying(addr: SocketAddr, headers: &HeaderMap) -> ClientConn {
    let mut last = None;
    for _ in 0..50 {
        match ClientConn::connect_with(addr, headers.clone()).await {
            Ok(conn) => return conn,
            Err(err) => last = Some(err),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot connect to {addr}: {}", last.map(|e| e.to_string()).unwrap_or_default());
}

pub async fn drive(mut conn: ClientConn, addr: SocketAddr, load: Load, deadline: Instant) -> Samples {
    let mut samples =
        Samples { totals: Vec::with_capacity(4096), firsts: Vec::with_capacity(4096), ..Samples::default() };
    while Instant::now() < deadline {
        samples.sent += 1;
        match conn.post(load.path, load.next_body()).await {
            Ok(exchange) if load.expect.accepts(exchange.bytes) => {
                if Instant::now() <= deadline {
                    samples.requests += 1;
                    samples.totals.push(exchange.total);
                    samples.firsts.push(exchange.first_byte);
                }
            }
            Ok(exchange) => {
                samples.errors += 1;
                samples
                    .first_error
                    .get_or_insert_with(|| format!("body of {} bytes, expected {:?}", exchange.bytes, load.expect));
            }
            Err(err) => {
                samples.errors += 1;
                samples.first_error.get_or_insert_with(|| err.to_string());
                // The connection may be gone; start a fresh one.
                match ClientConn::connect_with(addr, load.headers.clone()).await {
                    Ok(fresh) => conn = fresh,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }
    }
    samples
}

/// CPU time (user + system) of `pid` so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after_name` starts at field 3.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / 100.0))
}

/// CPU time of `pid` and its children (nginx: the master and its workers).
pub fn tree_cpu_time(pid: u32) -> Option<Duration> {
    let own = cpu_time(pid)?;
    Some(children(pid).into_iter().filter_map(cpu_time).fold(own, |sum, cpu| sum + cpu))
}

/// The processes whose parent is `pid` (from `/proc/*/stat`).
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| parent(*child) == Some(pid))
        .collect()
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 4 of stat(5); the name (field 2) may hold spaces, so count from its `)`.
    stat[stat.rfind(')')? + 2..].split_whitespace().nth(1)?.parse().ok()
}
