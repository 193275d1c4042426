//! One dataset's writer: a dedicated thread behind a bounded queue, appending JSONL.
//!
//! Owns: the queue (a request's task only ever `try_send`s: a full queue drops the record and
//! counts it, never waits), the thread that builds, redacts and writes lines, buffered
//! writes flushed every [`FLUSH_INTERVAL`] so a crash loses little, rotation by size and by
//! UTC day with an fsync of the finished file, and the final flush and fsync on close.
//! Must not: block a request or write on an async worker thread (files are blocking I/O).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::files;
use super::record::{Source, feedback_line};
use super::redact::Redactor;
use crate::telemetry::metrics::Metrics;

/// Records waiting for the disk at most, per dataset.
pub const QUEUE_CAPACITY: usize = 8192;
/// Longest time an accepted record stays in the buffer.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
const BUFFER_SIZE: usize = 256 * 1024;
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

/// Counts since the writer started, for tests and logs (`/metrics` has the same counts).
#[derive(Debug, Default)]
pub struct Counts {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
}

/// The queue end of a dataset's writer thread.
#[derive(Debug)]
pub struct Writer {
    pub name: String,
    pub dir: PathBuf,
    pub max_file_size: u64,
    tx: SyncSender<Job>,
    thread: Mutex<Option<JoinHandle<()>>>,
    counts: Arc<Counts>,
    metrics: Arc<Metrics>,
}

impl Writer {
    /// Starts the writer thread for `dir`. The directory is created on the first write.
    pub fn spawn(
        name: &str,
        dir: &Path,
        max_file_size: u64,
        capacity: usize,
        metrics: Arc<Metrics>,
    ) -> io::Result<Writer> {
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        let counts = Arc::new(Counts::default());
        let mut files = Files::new(name, dir, max_file_size);
        let (thread_counts, thread_metrics) = (Arc::clone(&counts), Arc::clone(&metrics));
        let thread = std::thread::Builder::new()
            .name(format!("weir-dataset-{name}"))
            .spawn(move || run(rx, &mut files, &thread_counts, &thread_metrics))?;
        Ok(Writer {
            name: name.to_owned(),
            dir: dir.to_owned(),
            max_file_size,
            tx,
            thread: Mutex::new(Some(thread)),
            counts,
            metrics,
        })
    }

    /// Queues `job` without waiting; a full (or closed) queue drops it and counts the drop.
    pub fn offer(&self, job: Job) -> bool {
        match self.tx.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                if !matches!(job, Job::Close) {
                    self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                    self.metrics.dataset_record(&self.name, false);
                }
                false
            }
        }
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Blocking: asks the thread to flush, fsync and stop after the jobs already queued,
    /// and waits for it. Later offers are dropped and counted.
    pub fn close(&self) {
        let _ = self.tx.send(Job::Close);
        let thread = self.thread.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!(dataset = %self.name, "dataset writer thread failed");
        }
    }
}

fn run(rx: Receiver<Job>, files: &mut Files, counts: &Counts, metrics: &Metrics) {
    let mut last_flush = Instant::now();
    let mut open = true;
    while open {
        // Busy: drain what is queued, then pause instead of blocking, so senders never pay
        // for waking this thread once per record. Idle: block until the next job.
        let mut drained = 0usize;
        loop {
            match rx.try_recv() {
                Ok(job) => {
                    drained += 1;
                    if !handle(job, files, counts, metrics) {
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
                Ok(job) => open = handle(job, files, counts, metrics),
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
    while let Ok(job) = rx.try_recv() {
        if !matches!(job, Job::Close) {
            counts.dropped.fetch_add(1, Ordering::Relaxed);
            metrics.dataset_record(&files.name, false);
        }
    }
}

/// Does one job; `false` when it asked the writer to stop.
fn handle(job: Job, files: &mut Files, counts: &Counts, metrics: &Metrics) -> bool {
    match job {
        Job::Record { source, redactor } => {
            let line = source.line(&redactor);
            write(files, line, &source.request_id, counts, metrics);
        }
        Job::Feedback { value, redactor } => {
            let line = feedback_line(&value, &redactor);
            let id = value.get("request_id").and_then(Value::as_str).unwrap_or_default();
            write(files, line, id, counts, metrics);
        }
        Job::Close => return false,
    }
    true
}

fn write(
    files: &mut Files,
    line: Result<Vec<u8>, serde_json::Error>,
    request_id: &str,
    counts: &Counts,
    metrics: &Metrics,
) {
    let written = match line {
        Ok(line) => files.append(&line),
        Err(err) => {
            tracing::warn!(dataset = %files.name, request_id, %err, "dataset record not serialisable; dropped");
            false
        }
    };
    let counter = if written { &counts.written } else { &counts.dropped };
    counter.fetch_add(1, Ordering::Relaxed);
    metrics.dataset_record(&files.name, written);
}

/// The file being appended to.
struct Current {
    day: u64,
    date: String,
    index: u32,
    size: u64,
    out: BufWriter<File>,
}

/// A dataset directory's files as the writer thread sees them.
struct Files {
    name: String,
    dir: PathBuf,
    max_file_size: u64,
    current: Option<Current>,
    /// Whether the last attempt failed, to log a failure streak once.
    failing: bool,
}

impl Files {
    fn new(name: &str, dir: &Path, max_file_size: u64) -> Files {
        Files { name: name.to_owned(), dir: dir.to_owned(), max_file_size, current: None, failing: false }
    }

    /// Appends one whole line, rotating first when the day changed or it would pass the size.
    fn append(&mut self, line: &[u8]) -> bool {
        match self.try_append(line) {
            Ok(()) => {
                self.failing = false;
                true
            }
            Err(err) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::error!(dataset = %self.name, dir = %self.dir.display(), %err, "cannot write dataset records; dropping them until writes succeed");
                }
                // Start over from the directory on the next record.
                self.current = None;
                false
            }
        }
    }

    fn try_append(&mut self, line: &[u8]) -> io::Result<()> {
        let day = files::day_of(SystemTime::now());
        let rotate = match &self.current {
            None => None,
            Some(c) if c.day != day => Some(None),
            Some(c) if c.size > 0 && c.size + line.len() as u64 > self.max_file_size => Some(Some(c.index + 1)),
            Some(_) => None,
        };
        if let Some(next_index) = rotate {
            self.finish_current();
            if let Some(index) = next_index {
                self.current = Some(self.open(day, index)?);
            }
        }
        let current = match &mut self.current {
            Some(current) => current,
            None => self.current.insert(self.open_day(day)?),
        };
        current.out.write_all(line)?;
        current.size += line.len() as u64;
        Ok(())
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
        let mut size = file.metadata()?.len();
        // A crash can leave a torn last line; end it so the next record starts a line of its own.
        if size > 0 && !ends_with_newline(&mut file, size)? {
            file.write_all(b"\n")?;
            size += 1;
        }
        Ok(Current { day, date, index, size, out: BufWriter::with_capacity(BUFFER_SIZE, file) })
    }

    fn flush(&mut self) {
        let Some(current) = &mut self.current else { return };
        if let Err(err) = current.out.flush() {
            tracing::error!(dataset = %self.name, file = %current.date, %err, "cannot flush dataset file");
            self.current = None;
        }
    }

    /// Flushes and fsyncs the current file and lets go of it.
    fn finish_current(&mut self) {
        let Some(mut current) = self.current.take() else { return };
        let synced = current.out.flush().and_then(|()| current.out.get_ref().sync_all());
        if let Err(err) = synced {
            let file = files::file_name(&current.date, current.index);
            tracing::error!(dataset = %self.name, file, %err, "cannot flush or fsync dataset file");
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
