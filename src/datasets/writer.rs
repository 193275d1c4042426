//! One dataset's writer: a dedicated thread behind a queue bounded in records and in bytes,
//! appending JSONL.
//!
//! Owns: the queue (a request's task only ever offers: a full queue — [`QUEUE_CAPACITY`]
//! records or [`QUEUE_BYTES`] of request and answer held — drops the record and counts it,
//! never waits), the thread that builds, redacts and writes lines, batched writes committed
//! every [`FLUSH_INTERVAL`] (or [`BUFFER_SIZE`]) so a crash loses little, rotation by size and
//! by UTC day with an fsync of the finished file, and the final flush and fsync on close.
//! A record counts as `written` only once its batch is in the file, and only if that file is
//! still the one its path names: a failed write (full disk, removed or replaced directory)
//! counts the batch as `dropped`, and a file no longer at its path is reopened from the path
//! before a batch goes into it.
//! Must not: block a request or write on an async worker thread (files are blocking I/O).

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::files;
use super::record::{Source, feedback_line, value_weight};
use super::redact::Redactor;
use crate::telemetry::metrics::Metrics;

/// Records waiting for the disk at most, per dataset.
pub const QUEUE_CAPACITY: usize = 8192;
/// Bytes of requests and answers waiting for the disk at most, per dataset. A record larger
/// than this on its own is still taken when the queue is empty.
pub const QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Longest time an accepted record waits before its batch is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// A batch this large is written without waiting for the interval.
pub const BUFFER_SIZE: usize = 256 * 1024;
/// Pause between drains while records keep coming (a full queue takes ~8192 / rate to fill:
/// at 5 ms that is 1.6M records/s).
const BUSY_PAUSE: Duration = Duration::from_millis(5);

/// Work for a writer thread.
pub enum Job {
    Record {
        source: Arc<Source>,
        redactor: Arc<Redactor>,
    },
    Feedback {
        value: Arc<Value>,
        redactor: Arc<Redactor>,
    },
    /// Flush, fsync and stop.
    Close,
}

impl Job {
    /// Roughly the bytes this job keeps alive while it waits.
    fn weight(&self) -> usize {
        match self {
            Job::Record { source, .. } => source.weight(),
            Job::Feedback { value, .. } => value_weight(value),
            Job::Close => 0,
        }
    }
}

/// A job in the queue with the bytes it was counted for.
struct Queued {
    job: Job,
    weight: usize,
}

/// Counts since the writer started, for tests and logs (`/metrics` has the same counts).
#[derive(Debug, Default)]
pub struct Counts {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
}

/// What the queue holds, in bytes, shared by the offering side and the thread.
#[derive(Debug)]
struct Held {
    bytes: AtomicUsize,
    max: usize,
}

impl Held {
    /// Takes `weight` bytes of the budget; an empty queue takes any one record.
    fn reserve(&self, weight: usize) -> bool {
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                let total = held.saturating_add(weight);
                (held == 0 || total <= self.max).then_some(total)
            })
            .is_ok()
    }

    fn release(&self, weight: usize) {
        let _ = self.bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| Some(held.saturating_sub(weight)));
    }
}

/// The queue end of a dataset's writer thread.
#[derive(Debug)]
pub struct Writer {
    pub name: String,
    pub dir: PathBuf,
    pub max_file_size: u64,
    tx: SyncSender<Queued>,
    held: Arc<Held>,
    thread: Mutex<Option<JoinHandle<()>>>,
    counts: Arc<Counts>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued").field("weight", &self.weight).finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the writer thread for `dir`, its queue bounded by `capacity` records and
    /// `max_bytes`. The directory is created on the first write.
    pub fn spawn(
        name: &str,
        dir: &Path,
        max_file_size: u64,
        (capacity, max_bytes): (usize, usize),
        metrics: Arc<Metrics>,
    ) -> io::Result<Writer> {
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        let counts = Arc::new(Counts::default());
        let held = Arc::new(Held { bytes: AtomicUsize::new(0), max: max_bytes });
        let mut files = Files::new(name, dir, max_file_size, Arc::clone(&counts), Arc::clone(&metrics));
        let thread_held = Arc::clone(&held);
        let thread = std::thread::Builder::new()
            .name(format!("weir-dataset-{name}"))
            .spawn(move || run(rx, &mut files, &thread_held))?;
        Ok(Writer {
            name: name.to_owned(),
            dir: dir.to_owned(),
            max_file_size,
            tx,
            held,
            thread: Mutex::new(Some(thread)),
            counts,
            metrics,
        })
    }

    /// Queues `job` without waiting; a full (or closed) queue drops it and counts the drop.
    pub fn offer(&self, job: Job) -> bool {
        let weight = job.weight();
        let counted = !matches!(job, Job::Close);
        if !self.held.reserve(weight) {
            if counted {
                self.dropped(1);
            }
            return false;
        }
        match self.tx.try_send(Queued { job, weight }) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.held.release(weight);
                if counted {
                    self.dropped(1);
                }
                false
            }
        }
    }

    fn dropped(&self, n: u64) {
        self.counts.dropped.fetch_add(n, Ordering::Relaxed);
        self.metrics.dataset_records(&self.name, false, n);
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Bytes of records waiting in the queue.
    #[cfg(test)]
    pub fn queued_bytes(&self) -> usize {
        self.held.bytes.load(Ordering::Acquire)
    }

    /// Blocking: asks the thread to flush, fsync and stop after the jobs already queued,
    /// and waits for it. Later offers are dropped and counted.
    pub fn close(&self) {
        let _ = self.tx.send(Queued { job: Job::Close, weight: 0 });
        let thread = self.thread.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!(dataset = %self.name, "dataset writer thread failed");
        }
    }
}

fn run(rx: Receiver<Queued>, files: &mut Files, held: &Held) {
    let mut last_flush = Instant::now();
    let mut open = true;
    let take = |queued: Queued, files: &mut Files| {
        held.release(queued.weight);
        handle(queued.job, files)
    };
    while open {
        // Busy: drain what is queued, then pause instead of blocking, so senders never pay
        // for waking this thread once per record. Idle: block until the next job.
        let mut drained = 0usize;
        loop {
            match rx.try_recv() {
                Ok(queued) => {
                    drained += 1;
                    if !take(queued, files) {
                        open = false;
                        break;
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if open && drained == 0 {
            match rx.recv_timeout(FLUSH_INTERVAL) {
                Ok(queued) => open = take(queued, files),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
        } else if open {
            std::thread::sleep(BUSY_PAUSE);
        }
        if last_flush.elapsed() >= FLUSH_INTERVAL {
            files.flush();
            last_flush = Instant::now();
        }
    }
    files.close();
    // Offered after the close was asked for: not written, so counted as dropped.
    while let Ok(queued) = rx.try_recv() {
        held.release(queued.weight);
        if !matches!(queued.job, Job::Close) {
            files.count(1, false);
        }
    }
}

/// Does one job; `false` when it asked the writer to stop.
fn handle(job: Job, files: &mut Files) -> bool {
    match job {
        Job::Record { source, redactor } => {
            let line = source.line(&redactor);
            write(files, line, &source.request_id);
        }
        Job::Feedback { value, redactor } => {
            let line = feedback_line(&value, &redactor);
            let id = value.get("request_id").and_then(Value::as_str).unwrap_or_default();
            write(files, line, id);
        }
        Job::Close => return false,
    }
    true
}

fn write(files: &mut Files, line: Result<Vec<u8>, serde_json::Error>, request_id: &str) {
    match line {
        Ok(line) => files.append(&line),
        Err(err) => {
            tracing::warn!(dataset = %files.name, request_id, %err, "dataset record not serialisable; dropped");
            files.count(1, false);
        }
    }
}

/// The file being appended to.
struct Current {
    day: u64,
    date: String,
    index: u32,
    /// Bytes in the file (the pending batch not included).
    size: u64,
    file: File,
    /// Which file this is, to notice when its path leads elsewhere.
    id: Option<FileId>,
}

/// A file's identity on its filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt as _;
    Some(FileId { dev: meta.dev(), ino: meta.ino() })
}

#[cfg(not(unix))]
fn file_id(_meta: &std::fs::Metadata) -> Option<FileId> {
    None
}

impl Current {
    fn path(&self, dir: &Path) -> PathBuf {
        dir.join(files::file_name(&self.date, self.index))
    }

    /// Whether the file's path still leads to it: a removed or replaced directory (or file)
    /// leaves an open handle whose writes succeed and reach nobody.
    fn still_at_path(&self, dir: &Path) -> bool {
        match (self.id, std::fs::metadata(self.path(dir))) {
            (Some(id), Ok(meta)) => file_id(&meta) == Some(id),
            (None, Ok(_)) => true,
            (_, Err(_)) => false,
        }
    }
}

/// A dataset directory's files as the writer thread sees them, and the batch of lines
/// waiting to go into the current one.
struct Files {
    name: String,
    dir: PathBuf,
    max_file_size: u64,
    current: Option<Current>,
    pending: Vec<u8>,
    pending_records: u64,
    counts: Arc<Counts>,
    metrics: Arc<Metrics>,
    /// Whether the last attempt failed, to log a failure streak once.
    failing: bool,
}

impl Files {
    fn new(name: &str, dir: &Path, max_file_size: u64, counts: Arc<Counts>, metrics: Arc<Metrics>) -> Files {
        Files {
            name: name.to_owned(),
            dir: dir.to_owned(),
            max_file_size,
            current: None,
            pending: Vec::new(),
            pending_records: 0,
            counts,
            metrics,
            failing: false,
        }
    }

    fn count(&self, n: u64, written: bool) {
        if n == 0 {
            return;
        }
        let counter = if written { &self.counts.written } else { &self.counts.dropped };
        counter.fetch_add(n, Ordering::Relaxed);
        self.metrics.dataset_records(&self.name, written, n);
    }

    /// Adds one whole line to the batch, rotating first when the day changed or it would
    /// pass the size; a line that cannot even be placed (no file) is counted as dropped.
    fn append(&mut self, line: &[u8]) {
        if let Err(err) = self.place(line) {
            self.failed(&err, 1);
            return;
        }
        if self.pending.len() >= BUFFER_SIZE {
            self.commit();
        }
    }

    fn place(&mut self, line: &[u8]) -> io::Result<()> {
        let day = files::day_of(SystemTime::now());
        let queued = self.pending.len() as u64;
        let rotate = match &self.current {
            None => None,
            Some(c) if c.day != day => Some(None),
            Some(c) if c.size + queued > 0 && c.size + queued + line.len() as u64 > self.max_file_size => {
                Some(Some(c.index + 1))
            }
            Some(_) => None,
        };
        if let Some(next_index) = rotate {
            self.finish_current();
            if let Some(index) = next_index {
                self.current = Some(self.open(day, index)?);
            }
        }
        if self.current.is_none() {
            self.current = Some(self.open_day(day)?);
        }
        self.pending.extend_from_slice(line);
        self.pending_records += 1;
        Ok(())
    }

    /// Writes the batch; its records count as written only once the file has them.
    fn commit(&mut self) {
        let records = std::mem::take(&mut self.pending_records);
        if records == 0 {
            return;
        }
        let result = self.write_pending();
        self.pending.clear();
        match result {
            Ok(()) => {
                self.failing = false;
                self.count(records, true);
            }
            Err(err) => self.failed(&err, records),
        }
    }

    fn write_pending(&mut self) -> io::Result<()> {
        let day = self.current.as_ref().map_or_else(|| files::day_of(SystemTime::now()), |c| c.day);
        if self.current.as_ref().is_some_and(|c| !c.still_at_path(&self.dir)) {
            tracing::warn!(dataset = %self.name, dir = %self.dir.display(), "the dataset file is no longer at its path (directory removed or replaced); reopening it there");
            self.current = None;
        }
        let current = match &mut self.current {
            Some(current) => current,
            None => self.current.insert(self.open_day(day)?),
        };
        current.file.write_all(&self.pending)?;
        current.size += self.pending.len() as u64;
        Ok(())
    }

    /// `records` were lost: counted as dropped, and the next batch starts over from the
    /// directory.
    fn failed(&mut self, err: &io::Error, records: u64) {
        if !std::mem::replace(&mut self.failing, true) {
            tracing::error!(dataset = %self.name, dir = %self.dir.display(), %err, "cannot write dataset records; dropping them until writes succeed");
        }
        self.current = None;
        self.count(records, false);
    }

    /// The day's last file if it has room, else the one after it.
    fn open_day(&self, day: u64) -> io::Result<Current> {
        std::fs::create_dir_all(&self.dir)?;
        let date = files::date_of_day(day);
        let last = files::list(&self.dir)?
            .iter()
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).and_then(files::parse_file_name))
            .filter(|(d, _)| *d == date)
            .map(|(_, index)| index)
            .max()
            .unwrap_or(0);
        let current = self.open(day, last)?;
        if current.size >= self.max_file_size {
            return self.open(day, last + 1);
        }
        Ok(current)
    }

    fn open(&self, day: u64, index: u32) -> io::Result<Current> {
        std::fs::create_dir_all(&self.dir)?;
        let date = files::date_of_day(day);
        let path = self.dir.join(files::file_name(&date, index));
        let mut file = OpenOptions::new().create(true).append(true).read(true).open(&path)?;
        let meta = file.metadata()?;
        let mut size = meta.len();
        // A crash can leave a torn last line; end it so the next record starts a line of its own.
        if size > 0 && !ends_with_newline(&mut file, size)? {
            file.write_all(b"\n")?;
            size += 1;
        }
        Ok(Current { day, date, index, size, file, id: file_id(&meta) })
    }

    fn flush(&mut self) {
        self.commit();
    }

    /// Writes the batch, fsyncs the current file and lets go of it.
    fn finish_current(&mut self) {
        self.commit();
        let Some(current) = self.current.take() else { return };
        if let Err(err) = current.file.sync_all() {
            let file = files::file_name(&current.date, current.index);
            tracing::error!(dataset = %self.name, file, %err, "cannot fsync dataset file");
        }
    }

    fn close(&mut self) {
        self.finish_current();
    }
}

fn ends_with_newline(file: &mut File, size: u64) -> io::Result<bool> {
    file.seek(SeekFrom::Start(size - 1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

#[cfg(test)]
mod tests;
