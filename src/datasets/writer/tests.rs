use std::sync::atomic::Ordering;

use super::*;

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

fn today() -> String {
    files::date_of_day(files::day_of(SystemTime::now()))
}

fn files_at(dir: &Path, max_file_size: u64) -> (Files, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    (Files::new("d", dir, max_file_size, Arc::clone(&counts), Arc::new(Metrics::new())), counts)
}

fn written(counts: &Counts) -> (u64, u64) {
    (counts.written.load(Ordering::Relaxed), counts.dropped.load(Ordering::Relaxed))
}

#[test]
fn files_rotate_by_size_and_keep_whole_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (mut files, counts) = files_at(dir.path(), 100);
    let line = |i: usize| format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "x".repeat(30));
    for i in 0..7 {
        files.append(line(i).as_bytes());
    }
    files.close();
    assert_eq!(written(&counts), (7, 0));
    let date = today();
    let names: Vec<_> = files::list(dir.path()).unwrap();
    // 43-byte lines, 100-byte files: two lines per file.
    assert_eq!(names.len(), 4, "{names:?}");
    assert_eq!(names[0], dir.path().join(format!("{date}.jsonl")));
    assert_eq!(names[3], dir.path().join(format!("{date}.3.jsonl")));
    let all: Vec<String> = names.iter().flat_map(|p| lines(p)).collect();
    assert_eq!(all, (0..7).map(|i| line(i).trim_end().to_owned()).collect::<Vec<_>>());
}

#[test]
fn reopening_continues_the_last_file_and_ends_a_torn_line() {
    let dir = tempfile::tempdir().unwrap();
    let date = today();
    std::fs::write(dir.path().join(format!("{date}.jsonl")), "{\"a\":1}\n").unwrap();
    std::fs::write(dir.path().join(format!("{date}.1.jsonl")), "{\"a\":2}\n{\"torn\":").unwrap();
    let (mut files, _) = files_at(dir.path(), 1 << 20);
    files.append(b"{\"a\":3}\n");
    files.close();
    assert_eq!(lines(&dir.path().join(format!("{date}.1.jsonl"))), ["{\"a\":2}", "{\"torn\":", "{\"a\":3}"]);
}

/// A full disk: writes fail with ENOSPC. The records are dropped, not counted as written.
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_counts_records_as_dropped() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/dev/full", dir.path().join(format!("{}.jsonl", today()))).unwrap();
    let (mut files, counts) = files_at(dir.path(), 1 << 20);
    for _ in 0..5 {
        files.append(b"{\"a\":1}\n");
    }
    files.flush();
    assert_eq!(written(&counts), (0, 5));
    files.append(b"{\"a\":2}\n");
    files.close();
    assert_eq!(written(&counts), (0, 6));
}

/// The directory is replaced (or removed) while the writer runs: the open file reaches
/// nobody, so the next batch goes to the path again instead of being counted as written.
#[test]
fn a_replaced_directory_is_written_again_from_its_path() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ds");
    let (mut files, counts) = files_at(&dir, 1 << 20);
    files.append(b"{\"a\":1}\n");
    files.flush();
    std::fs::rename(&dir, root.path().join("ds.old")).unwrap();
    std::fs::create_dir(&dir).unwrap();
    files.append(b"{\"a\":2}\n");
    files.flush();
    std::fs::remove_dir_all(&dir).unwrap();
    files.append(b"{\"a\":3}\n");
    files.close();
    assert_eq!(written(&counts), (3, 0));
    let name = format!("{}.jsonl", today());
    assert_eq!(lines(&root.path().join("ds.old").join(&name)), ["{\"a\":1}"]);
    assert_eq!(lines(&dir.join(&name)), ["{\"a\":3}"], "recreated after removal");
}

fn queue(capacity: usize, max_bytes: usize) -> (Writer, Receiver<Queued>) {
    let (tx, rx) = mpsc::sync_channel(capacity);
    let writer = Writer {
        name: "d".into(),
        dir: PathBuf::from("unused"),
        max_file_size: 1,
        tx,
        held: Arc::new(Held { bytes: AtomicUsize::new(0), max: max_bytes }),
        thread: Mutex::new(None),
        counts: Arc::default(),
        metrics: Arc::new(Metrics::new()),
    };
    (writer, rx)
}

#[test]
fn a_full_queue_drops_and_counts() {
    let (writer, rx) = queue(2, usize::MAX);
    let value = Arc::new(serde_json::json!({"type": "feedback"}));
    let offered: Vec<bool> =
        (0..5).map(|_| writer.offer(Job::Feedback { value: Arc::clone(&value), redactor: Arc::default() })).collect();
    assert_eq!(offered, [true, true, false, false, false]);
    assert_eq!(writer.counts().dropped.load(Ordering::Relaxed), 3);
    drop(rx);
    assert!(!writer.offer(Job::Feedback { value, redactor: Arc::default() }), "closed queue drops too");
    assert_eq!(writer.counts().dropped.load(Ordering::Relaxed), 4);
}

#[test]
fn the_queue_is_bounded_in_bytes() {
    let big = Arc::new(serde_json::json!({"comment": "x".repeat(10_000)}));
    let weight = value_weight(&big);
    assert!(weight > 10_000 && weight < 11_000, "{weight}");
    let (writer, rx) = queue(1000, 3 * weight);
    let offer = || writer.offer(Job::Feedback { value: Arc::clone(&big), redactor: Arc::default() });
    let offered: Vec<bool> = (0..5).map(|_| offer()).collect();
    assert_eq!(offered, [true, true, true, false, false]);
    assert_eq!(writer.queued_bytes(), 3 * weight);
    assert_eq!(writer.counts().dropped.load(Ordering::Relaxed), 2);
    // The thread taking one frees its bytes for the next.
    let queued = rx.try_recv().unwrap();
    writer.held.release(queued.weight);
    assert!(offer());
    // One record larger than the whole budget still goes through an empty queue.
    let (writer, _rx) = queue(1000, 10);
    assert!(writer.offer(Job::Feedback { value: Arc::clone(&big), redactor: Arc::default() }));
    assert!(!writer.offer(Job::Feedback { value: big, redactor: Arc::default() }));
}

#[test]
fn close_writes_everything_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let writer = Writer::spawn("d", dir.path(), 1 << 20, (1000, usize::MAX), Arc::new(Metrics::new())).unwrap();
    for i in 0..500 {
        let value = Arc::new(serde_json::json!({"type": "feedback", "request_id": format!("r{i}")}));
        assert!(writer.offer(Job::Feedback { value, redactor: Arc::default() }));
    }
    writer.close();
    assert_eq!(writer.counts().written.load(Ordering::Relaxed), 500);
    assert_eq!(writer.queued_bytes(), 0, "every byte given back");
    let files = files::list(dir.path()).unwrap();
    assert_eq!(lines(&files[0]).len(), 500);
    assert!(!writer.offer(Job::Close));
}
