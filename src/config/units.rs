//! Durations (`250ms`, `30s`, `1m30s`) and sizes (`512`, `10KiB`, `8MiB`, `10MB`) as written in
//! the config. Errors are complete, lowercase-first messages naming the bad text.

use std::time::Duration;

const DURATION_HINT: &str = "expected a number and unit such as 250ms, 30s, 10m";
const SIZE_HINT: &str = "expected a byte count such as 512, 10KiB, 8MiB, 1GiB or 10MB";

/// Parses a duration with a unit: `250ms`, `30s`, `10m`, `1h`, `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let invalid = || format!("invalid duration `{text}`: {DURATION_HINT}");
    // humantime takes a bare number as an error too, but say so plainly, and it must never
    // see a sign: a negative duration is always a mistake.
    if trimmed.is_empty() || trimmed.starts_with(['-', '+']) || trimmed.chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        return Err(invalid());
    }
    humantime::parse_duration(trimmed).map_err(|_| invalid())
}

/// Parses a size in bytes: a plain number, or a number and a unit (`KiB`, `MiB`, `GiB`, `TiB`
/// are powers of 1024; `KB`, `MB`, `GB`, `TB` powers of 1000; `B`). Units ignore case.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let invalid = || format!("invalid size `{text}`: {SIZE_HINT}");
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    if digits.is_empty() {
        return Err(invalid());
    }
    let multiplier: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "tb" | "t" => 1_000_000_000_000,
        "kib" | "ki" => 1 << 10,
        "mib" | "mi" => 1 << 20,
        "gib" | "gi" => 1 << 30,
        "tib" | "ti" => 1 << 40,
        _ => return Err(invalid()),
    };
    let number: u64 = digits.parse().map_err(|_| format!("invalid size `{text}`: too large"))?;
    number.checked_mul(multiplier).ok_or_else(|| format!("invalid size `{text}`: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration(" 2s "), Ok(Duration::from_secs(2)));
        for bad in ["", " ", "30", "1.5", "-5s", "+5s", "10x", "s", "ms30"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(
            parse_duration("10x").unwrap_err(),
            "invalid duration `10x`: expected a number and unit such as 250ms, 30s, 10m"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("10KiB"), Ok(10 * 1024));
        assert_eq!(parse_size("8MiB"), Ok(8 * 1024 * 1024));
        assert_eq!(parse_size("8mib"), Ok(8 * 1024 * 1024));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("10KB"), Ok(10_000));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("10 MB"), Ok(10_000_000));
        assert_eq!(parse_size("7B"), Ok(7));
        for bad in ["", "MiB", "-1", "1.5MiB", "10XB", "ten", "10 MiB extra", "99999999999999999999", "20000000TiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
