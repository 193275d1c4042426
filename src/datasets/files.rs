//! Dataset file names: `YYYY-MM-DD.jsonl`, then `YYYY-MM-DD.1.jsonl`, `YYYY-MM-DD.2.jsonl`, ...
//! when a day's file is rotated by size. Shared by the writer and the readers (export,
//! report), so both agree on the order of records.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Days since 1970-01-01 (UTC) of `time`.
pub fn day_of(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400)
}

/// `YYYY-MM-DD` of a day number (proleptic Gregorian, Howard Hinnant's `civil_from_days`).
pub fn date_of_day(day: u64) -> String {
    let z = day as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The file of `date`'s `index`-th rotation (0: the day's first file).
pub fn file_name(date: &str, index: u32) -> String {
    if index == 0 { format!("{date}.jsonl") } else { format!("{date}.{index}.jsonl") }
}

/// `(date, index)` of a dataset file name; `None` for anything else.
pub fn parse_file_name(name: &str) -> Option<(String, u32)> {
    let stem = name.strip_suffix(".jsonl")?;
    let (date, index) = match stem.split_once('.') {
        Some((date, index)) => (date, index.parse::<u32>().ok()?),
        None => (stem, 0),
    };
    let b = date.as_bytes();
    let shaped = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    shaped.then(|| (date.to_owned(), index))
}

/// The dataset files in `dir`, oldest first (by date, then rotation index).
pub fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(key) = name.to_str().and_then(parse_file_name) else { continue };
        if entry.file_type()?.is_file() {
            files.push((key, entry.path()));
        }
    }
    files.sort();
    Ok(files.into_iter().map(|(_, path)| path).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_from_day_numbers() {
        assert_eq!(date_of_day(0), "1970-01-01");
        assert_eq!(date_of_day(11_016), "2000-02-29");
        assert_eq!(date_of_day(20_420), "2025-11-28");
        let now = SystemTime::now();
        let expected = humantime::format_rfc3339(now).to_string();
        assert_eq!(date_of_day(day_of(now)), expected[..10]);
    }

    #[test]
    fn names_round_trip_and_sort_numerically() {
        assert_eq!(file_name("2026-11-28", 0), "2026-11-28.jsonl");
        assert_eq!(file_name("2026-11-28", 12), "2026-11-28.12.jsonl");
        assert_eq!(parse_file_name("2026-11-28.12.jsonl"), Some(("2026-11-28".into(), 12)));
        assert_eq!(parse_file_name("2026-11-28.jsonl"), Some(("2026-11-28".into(), 0)));
        for bad in ["notes.jsonl", "2026-11-28.x.jsonl", "2026-11-28.json", "2026_11_28.jsonl"] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        for name in ["2026-11-28.10.jsonl", "2026-11-28.2.jsonl", "2026-11-27.jsonl", "2026-11-28.jsonl", "x.txt"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let names: Vec<String> =
            list(dir.path()).unwrap().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["2026-11-27.jsonl", "2026-11-28.jsonl", "2026-11-28.2.jsonl", "2026-11-28.10.jsonl"]);
    }
}
