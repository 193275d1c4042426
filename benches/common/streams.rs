//! Many streams held open at once, each on its own connection, opened at a bounded rate:
//! what the `scale` bench and `load`'s paced mode send.
//!
//! Connections are opened at `open_per_sec` with at most `max_connecting` TCP handshakes in
//! flight, which keeps the target's accept backlog from overflowing. Every stream's bytes are
//! compared with the expected answer as they arrive (nothing is kept), so a stream counts
//! only if it arrived whole and byte for byte.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Semaphore;

use super::ClientConn;
use super::loadgen::Load;

/// What to open and what each stream must deliver.
pub struct Streams {
    pub addr: SocketAddr,
    pub count: usize,
    pub open_per_sec: f64,
    pub max_connecting: usize,
    /// A stream still running this long after it started counts as hung.
    pub timeout: Duration,
    /// The request: path, body (unique per stream when the load says so) and headers.
    pub load: Load,
    /// The answer's exact bytes.
    pub expected: Bytes,
}

/// How the streams went.
#[derive(Debug, Default)]
pub struct Outcomes {
    /// Streams that arrived whole and byte-exact.
    pub ok: usize,
    /// Failed streams by kind of failure.
    pub errors: BTreeMap<String, usize>,
    /// Per good stream: request sent → last byte, and → first byte.
    pub totals: Vec<Duration>,
    pub firsts: Vec<Duration>,
    /// Most streams between their first and last byte at one time.
    pub peak_active: usize,
    pub opened: u64,
    /// Time to start every stream, and until the last one ended.
    pub ramp: Duration,
    pub wall: Duration,
}

impl Outcomes {
    pub fn error_count(&self) -> usize {
        self.errors.values().sum()
    }
}

/// Counters the stream tasks share.
#[derive(Default)]
struct Shared {
    active: AtomicUsize,
    peak_active: AtomicUsize,
    opened: AtomicU64,
}

/// Opens `spec.count` streams and waits until every one has ended.
pub async fn hold_streams(spec: &Streams) -> Outcomes {
    let shared = Arc::new(Shared::default());
    let connecting = Arc::new(Semaphore::new(spec.max_connecting));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(spec.count);
    for i in 0..spec.count {
        let at = started + Duration::from_secs_f64(i as f64 / spec.open_per_sec);
        tokio::time::sleep_until(at.into()).await;
        let permit = Arc::clone(&connecting).acquire_owned().await.expect("semaphore open");
        let (shared, load, expected) = (Arc::clone(&shared), spec.load.clone(), spec.expected.clone());
        let (addr, timeout) = (spec.addr, spec.timeout);
        tasks.push(tokio::spawn(async move {
            let attempt = async {
                let conn = ClientConn::connect_with(addr, load.headers.clone()).await;
                drop(permit);
                let conn = conn.map_err(|e| format!("connect: {e}"))?;
                shared.opened.fetch_add(1, Ordering::Relaxed);
                one_stream(conn, &load, &expected, &shared).await
            };
            match tokio::time::timeout(timeout, attempt).await {
                Err(_) => Err(format!("timed out after {timeout:?}")),
                Ok(result) => result,
            }
        }));
    }
    let ramp = started.elapsed();
    eprintln!("  all {} streams started in {:.2} s; waiting for them to end", spec.count, ramp.as_secs_f64());
    let mut outcomes = Outcomes { ramp, ..Outcomes::default() };
    for task in tasks {
        match task.await {
            Ok(Ok((total, first))) => {
                outcomes.ok += 1;
                outcomes.totals.push(total);
                outcomes.firsts.push(first);
            }
            Ok(Err(err)) => *outcomes.errors.entry(err).or_default() += 1,
            Err(join) => *outcomes.errors.entry(format!("task failed: {join}")).or_default() += 1,
        }
    }
    outcomes.wall = started.elapsed();
    outcomes.peak_active = shared.peak_active.load(Ordering::Relaxed);
    outcomes.opened = shared.opened.load(Ordering::Relaxed);
    outcomes.totals.sort_unstable();
    outcomes.firsts.sort_unstable();
    outcomes
}

/// One stream: sent, counted as active from its first byte to its last, and checked byte for
/// byte against `expected`. Returns its total and first-byte times.
async fn one_stream(
    mut conn: ClientConn,
    load: &Load,
    expected: &[u8],
    shared: &Shared,
) -> Result<(Duration, Duration), String> {
    let mut counted = false;
    let mut offset = 0;
    let mut same = true;
    let result = conn
        .post_inspected(
            load.path,
            load.next_body(),
            || {
                let now = shared.active.fetch_add(1, Ordering::Relaxed) + 1;
                shared.peak_active.fetch_max(now, Ordering::Relaxed);
                counted = true;
            },
            |data| {
                same &= expected.get(offset..offset + data.len()) == Some(data);
                offset += data.len();
            },
        )
        .await;
    if counted {
        shared.active.fetch_sub(1, Ordering::Relaxed);
    }
    let exchange = result.map_err(|e| format!("request: {e}"))?;
    if exchange.bytes != expected.len() {
        return Err(format!("incomplete stream ({} of {} bytes)", exchange.bytes, expected.len()));
    }
    if !same {
        return Err("stream bytes differ from the upstream's".into());
    }
    Ok((exchange.total, exchange.first_byte))
}
