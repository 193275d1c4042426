//! Datasets: every finished request (and every feedback) recorded as JSONL for evaluation
//! and fine-tuning, plus the offline tools that read those files back.
//!
//! Owns: the live sinks of a config snapshot ([`Datasets`]: filter, sample, redaction and a
//! writer each), the tap that takes a finished request's [`Record`], the bounded index of
//! recent request ids that `POST /v1/feedback` checks (its handler is the server's), and the
//! CLI's `dataset export` and `experiment report` (`export`, `report`, reading through `read`).
//! Must not: block or slow a request — the tap copies a few handles and `try_send`s; JSON,
//! redaction and file I/O happen on each dataset's own writer thread.
//!
//! Across reloads a writer whose dataset keeps its name, `dir` and `max_file_size` is carried
//! over (its thread, queue and open file keep going); filters, sampling and redaction are
//! rebuilt from the new config. A dropped writer finishes its queue, fsyncs and stops once the
//! last snapshot using it is gone.

pub mod export;
pub(crate) mod feedback;
mod files;
mod filter;
pub(crate) mod preference;
pub(crate) mod read;
mod recent;
pub(crate) mod record;
pub(crate) mod redact;
pub mod report;
pub(crate) mod stats;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

pub use files::{date_of_day, day_of, file_name, parse_file_name};
pub use read::PromptFilter;
pub use record::Source;
pub use writer::{FLUSH_INTERVAL, QUEUE_BYTES, QUEUE_CAPACITY};

use self::filter::Facts;
use self::recent::RecentRequests;
use self::redact::Redactor;
use self::writer::{Job, Writer};
use crate::config::{DatasetConfig, MAX_DATASETS};
use crate::telemetry::metrics::Metrics;
use crate::wire::Record;
use crate::wire::record::id_hash;

/// Request ids remembered for feedback: the last this many, for at most this long (see
/// `recent`).
pub const FEEDBACK_WINDOW_REQUESTS: u64 = 200_000;
pub const FEEDBACK_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The live dataset sinks of one config snapshot.
#[derive(Debug)]
pub struct Datasets {
    sinks: Vec<Sink>,
    recent: Arc<RecentRequests>,
}

#[derive(Debug)]
struct Sink {
    config: DatasetConfig,
    redactor: Arc<Redactor>,
    writer: Arc<Writer>,
}

/// The datasets a finished request goes to, as bits by sink position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Selection(u64);

impl Selection {
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn contains(self, i: usize) -> bool {
        i < MAX_DATASETS && self.0 & (1 << i) != 0
    }
}

impl Datasets {
    /// Sinks for `configs`, reusing `previous`'s writers where the dataset is unchanged.
    pub fn build(configs: &[DatasetConfig], previous: Option<&Datasets>, metrics: &Arc<Metrics>) -> Datasets {
        let mut sinks = Vec::with_capacity(configs.len());
        for config in configs.iter().take(MAX_DATASETS) {
            let reusable = previous
                .and_then(|p| p.sinks.iter().find(|s| s.config.name == config.name))
                .filter(|s| s.writer.dir == config.dir && s.writer.max_file_size == config.max_file_size);
            let writer = match reusable {
                Some(sink) => Arc::clone(&sink.writer),
                None => match Writer::spawn(
                    &config.name,
                    &config.dir,
                    config.max_file_size,
                    (QUEUE_CAPACITY, QUEUE_BYTES),
                    Arc::clone(metrics),
                ) {
                    Ok(writer) => Arc::new(writer),
                    Err(err) => {
                        tracing::error!(dataset = %config.name, %err, "cannot start the dataset writer; dataset disabled");
                        continue;
                    }
                },
            };
            let redactor = Arc::new(Redactor::new(&config.name, &config.redact));
            sinks.push(Sink { config: config.clone(), redactor, writer });
        }
        let recent = previous.map_or_else(|| Arc::new(RecentRequests::new()), |p| Arc::clone(&p.recent));
        Datasets { sinks, recent }
    }

    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Which datasets take this request (filters and sampling), decided when its answer or
    /// refusal is about to go out, before the answer is read back, so that only recorded
    /// requests pay for assembly.
    ///
    /// It also remembers the request for feedback, in one step: its id, the key that made it
    /// (`owner`, see `KeyTable::owner`: feedback is then taken from that key or the admin;
    /// a request refused before authentication has none, so only the admin may) and, once
    /// routed, who served it (so feedback can be counted per variant). Feedback may follow
    /// at once: the client has not seen the id before this.
    pub fn select(&self, record: &Record, owner: Option<&str>) -> Selection {
        if self.sinks.is_empty() {
            return Selection::default();
        }
        self.recent.remember(&record.request_id, owner.map(id_hash), &record.model, &record.variant);
        let facts = Facts { model: &record.model, variant: &record.variant, key: &record.key, status: record.status };
        let mut bits = 0u64;
        for (i, sink) in self.sinks.iter().enumerate() {
            if filter::takes(&sink.config, facts) {
                bits |= 1 << i;
            }
        }
        Selection(bits)
    }

    /// The tap: queues the finished request to each selected dataset without waiting.
    pub fn record(&self, record: &Record, selection: Selection) {
        if selection.is_empty() {
            return;
        }
        let source = Arc::new(Source::from_record(record));
        for (i, sink) in self.sinks.iter().enumerate() {
            if selection.contains(i) {
                sink.writer.offer(Job::Record { source: Arc::clone(&source), redactor: Arc::clone(&sink.redactor) });
            }
        }
    }

    /// Whether `request_id` went through this gateway recently (see [`FEEDBACK_WINDOW`]) and
    /// `caller` may send feedback for it: the key that made it, or the admin.
    pub fn knows(&self, request_id: &str, caller: Caller<'_>) -> bool {
        self.recent.get(request_id).is_some_and(|entry| match caller {
            Caller::Admin => true,
            Caller::Key(key) => entry.made_by(id_hash(key)),
        })
    }

    /// The public model and variant that served `request_id`, once it was routed.
    pub fn served_by(&self, request_id: &str) -> Option<Arc<ServedBy>> {
        self.recent.get(request_id).and_then(|entry| entry.served)
    }

    /// Appends a feedback line to every dataset; returns how many queued it.
    pub fn feedback(&self, feedback: Value) -> usize {
        let value = Arc::new(feedback);
        self.sinks
            .iter()
            .filter(|sink| {
                sink.writer.offer(Job::Feedback { value: Arc::clone(&value), redactor: Arc::clone(&sink.redactor) })
            })
            .count()
    }

    /// `(written, dropped)` of a dataset's writer since it started.
    pub fn counts(&self, name: &str) -> Option<(u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        let sink = self.sinks.iter().find(|s| s.config.name == name)?;
        let counts = sink.writer.counts();
        Some((counts.written.load(Relaxed), counts.dropped.load(Relaxed)))
    }

    /// Flushes and fsyncs every record queued so far and stops the writers, waiting at most
    /// `timeout`. Records offered afterwards are dropped and counted.
    pub async fn close(&self, timeout: Duration) {
        let writers: Vec<Arc<Writer>> = self.sinks.iter().map(|s| Arc::clone(&s.writer)).collect();
        if writers.is_empty() {
            return;
        }
        let closing = tokio::task::spawn_blocking(move || writers.iter().for_each(|w| w.close()));
        if tokio::time::timeout(timeout, closing).await.is_err() {
            tracing::warn!(?timeout, "dataset writers did not finish in time; some records may be lost");
        }
    }
}

/// Who sends feedback: a client (by its key's config name, see `KeyTable::owner`), or the
/// holder of the admin token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    Key(&'a str),
    Admin,
}

/// Which public model and variant answered a request (names from the config).
#[derive(Debug)]
pub struct ServedBy {
    pub model: String,
    pub variant: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatasetFilter;
    use crate::wire::request_id;

    fn config(name: &str, dir: &std::path::Path, sample: f64) -> DatasetConfig {
        DatasetConfig {
            name: name.into(),
            dir: dir.to_owned(),
            sample,
            filter: DatasetFilter::default(),
            redact: Vec::new(),
            max_file_size: 1 << 20,
        }
    }

    #[test]
    fn unchanged_writers_and_recent_ids_survive_a_rebuild() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let metrics = Arc::new(Metrics::new());
        let first = Datasets::build(&[config("a", a.path(), 1.0), config("b", b.path(), 1.0)], None, &metrics);
        let (one, two) = (request_id::mint(), request_id::mint());
        first.select(&record(&one), Some("team"));
        // `a` changes only its sampling (writer kept); `b` moves (new writer).
        let moved = tempfile::tempdir().unwrap();
        let second =
            Datasets::build(&[config("a", a.path(), 0.5), config("b", moved.path(), 1.0)], Some(&first), &metrics);
        assert!(Arc::ptr_eq(&first.sinks[0].writer, &second.sinks[0].writer));
        assert!(!Arc::ptr_eq(&first.sinks[1].writer, &second.sinks[1].writer));
        assert_eq!(second.sinks[0].config.sample, 0.5);
        assert!(second.knows(&one, Caller::Key("team")));
        assert!(!second.knows(&two, Caller::Key("team")));
    }

    #[test]
    fn without_datasets_nothing_is_remembered() {
        let none = Datasets::build(&[], None, &Arc::new(Metrics::new()));
        let id = request_id::mint();
        none.select(&record(&id), Some("team"));
        assert!(none.is_empty() && !none.knows(&id, Caller::Admin));
    }

    #[test]
    fn feedback_is_taken_from_the_requests_key_or_the_admin() {
        let dir = tempfile::tempdir().unwrap();
        let datasets = Datasets::build(&[config("a", dir.path(), 1.0)], None, &Arc::new(Metrics::new()));
        let (refused, answered, unseen) = (request_id::mint(), request_id::mint(), request_id::mint());
        // Refused before its key was known: only the admin may.
        datasets.select(&record(&refused), None);
        assert!(!datasets.knows(&refused, Caller::Key("anonymous")));
        assert!(datasets.knows(&refused, Caller::Admin));
        assert!(datasets.served_by(&refused).is_none());
        let mut served = record(&answered);
        (served.model, served.variant) = ("chat".into(), "a".into());
        datasets.select(&served, Some("team"));
        assert!(datasets.knows(&answered, Caller::Key("team")));
        assert!(!datasets.knows(&answered, Caller::Key("other")));
        assert!(datasets.knows(&answered, Caller::Admin));
        assert_eq!(datasets.served_by(&answered).unwrap().variant, "a");
        // An id never seen is unknown to everyone, the admin included.
        assert!(!datasets.knows(&unseen, Caller::Admin));
    }

    fn record(request_id: &str) -> Record {
        Record::new(request_id.to_owned(), std::time::Instant::now())
    }
}
