//! Reading an upstream's "come back later" hints from a rate-limited answer.
//!
//! Owns: parsing `Retry-After` (seconds or an HTTP date), OpenAI's `retry-after-ms`, and
//! `x-ratelimit-reset-requests`/`-tokens` (Go-style durations such as `6m0s`, `1s`, `20ms`)
//! into how long a target should be left alone.
//! Must not: decide what to do with the wait (that is `health`).

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName};

use crate::wire::headers::{REMAINING_REQUESTS, REMAINING_TOKENS, RESET_REQUESTS, RESET_TOKENS, RETRY_AFTER_MS};

/// A hint longer than this is treated as this: a broken header must not bench a target for days.
pub const MAX_HINT: Duration = Duration::from_secs(15 * 60);

/// How long the upstream asked us to wait, if it said. Order of trust: `retry-after-ms`
/// (OpenAI's precise form), `Retry-After`, then the reset of whichever rate-limit window is
/// exhausted (or the later of the two when the answer does not say which).
pub fn retry_hint(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let hint = text(&RETRY_AFTER_MS)
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .map(|ms| Duration::from_secs_f64(ms.min(MAX_HINT.as_secs_f64() * 1000.0) / 1000.0))
        .or_else(|| text(&http::header::RETRY_AFTER).and_then(|v| parse_retry_after(v, now)))
        .or_else(|| {
            let exhausted = |name: &HeaderName| text(name).is_some_and(|v| v == "0");
            let requests = text(&RESET_REQUESTS).and_then(parse_go_duration);
            let tokens = text(&RESET_TOKENS).and_then(parse_go_duration);
            match (exhausted(&REMAINING_REQUESTS), exhausted(&REMAINING_TOKENS)) {
                (true, false) => requests.or(tokens),
                (false, true) => tokens.or(requests),
                _ => requests.max(tokens),
            }
        })?;
    Some(hint.min(MAX_HINT))
}

/// `Retry-After`: a number of seconds (fractions tolerated) or an HTTP date; a date in the
/// past means "now" (zero).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::from_secs_f64(seconds.min(MAX_HINT.as_secs_f64())));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A Go `time.Duration` string as OpenAI sends it: `6m0s`, `1s`, `20ms`, `1.5s`, `2h3m`.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * seconds_per_unit;
    }
    (total.is_finite() && total >= 0.0).then(|| Duration::from_secs_f64(total.min(MAX_HINT.as_secs_f64())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = at(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("20", now), Some(Duration::from_secs(20)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("1.5", now), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("99999999", now), Some(MAX_HINT));
    }

    #[test]
    fn go_durations_as_openai_sends_them() {
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("1m30.25s"), Some(Duration::from_millis(90_250)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("2h"), Some(MAX_HINT));
        for bad in ["", "s", "10", "5x", "1m-2s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap())).collect()
    }

    #[test]
    fn the_most_precise_hint_wins() {
        let now = at(0);
        let h = headers(&[("retry-after-ms", "250"), ("retry-after", "1"), ("x-ratelimit-reset-requests", "6m0s")]);
        assert_eq!(retry_hint(&h, now), Some(Duration::from_millis(250)));
        let h = headers(&[("retry-after", "2"), ("x-ratelimit-reset-requests", "6m0s")]);
        assert_eq!(retry_hint(&h, now), Some(Duration::from_secs(2)));
        assert_eq!(retry_hint(&HeaderMap::new(), now), None);
    }

    #[test]
    fn the_exhausted_window_decides_the_reset() {
        let now = at(0);
        let both = [("x-ratelimit-reset-requests", "1s"), ("x-ratelimit-reset-tokens", "6m0s")];
        let mut h = headers(&both);
        assert_eq!(retry_hint(&h, now), Some(Duration::from_secs(360)), "unknown: the later one");
        h.insert(REMAINING_REQUESTS, "0".parse().unwrap());
        h.insert(REMAINING_TOKENS, "1200".parse().unwrap());
        assert_eq!(retry_hint(&h, now), Some(Duration::from_secs(1)), "requests are exhausted");
        let h = headers(&[("x-ratelimit-reset-tokens", "20ms")]);
        assert_eq!(retry_hint(&h, now), Some(Duration::from_millis(20)));
    }
}
