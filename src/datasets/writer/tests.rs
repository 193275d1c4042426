use std::sync::atomic::Ordering;

use super::*;

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

fn today() -> String {
    files::date_of_day(files::day_of(SystemTime::now()))
}

#[test]
fn files_rotate_by_size_and_keep_whole_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Files::new("d", dir.path(), 100);
    let line = |i: usize| format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "x".repeat(30));
    for i in 0..7 {
        assert!(files.append(line(i).as_bytes()));
    }
    files.close();
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
    let mut files = Files::new("d", dir.path(), 1 << 20);
    assert!(files.append(b"{\"a\":3}\n"));
    files.close();
    assert_eq!(lines(&dir.path().join(format!("{date}.1.jsonl"))), ["{\"a\":2}", "{\"torn\":", "{\"a\":3}"]);
}

#[test]
fn a_full_queue_drops_and_counts() {
    let (tx, rx) = mpsc::sync_channel(2);
    let writer = Writer {
        name: "d".into(),
        dir: PathBuf::from("unused"),
        max_file_size: 1,
        tx,
        thread: Mutex::new(None),
        counts: Arc::default(),
        metrics: Arc::new(Metrics::new()),
    };
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
fn close_writes_everything_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let writer = Writer::spawn("d", dir.path(), 1 << 20, 1000, Arc::new(Metrics::new())).unwrap();
    for i in 0..500 {
        let value = Arc::new(serde_json::json!({"type": "feedback", "request_id": format!("r{i}")}));
        assert!(writer.offer(Job::Feedback { value, redactor: Arc::default() }));
    }
    writer.close();
    assert_eq!(writer.counts().written.load(Ordering::Relaxed), 500);
    let files = files::list(dir.path()).unwrap();
    assert_eq!(lines(&files[0]).len(), 500);
    assert!(!writer.offer(Job::Close));
}
