//! OpenAI's `x-ratelimit-*` response headers and `Retry-After`.
//!
//! Owns: the [`RateView`] an admission reports (limit, remaining and time to a full window,
//! for requests and for tokens) and its formatting: durations as OpenAI writes them (`20ms`,
//! `1s`, `1.5s`, `6m0s`). Must not: decide anything; it only prints what admission saw.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::wire::headers::{
    LIMIT_REQUESTS, LIMIT_TOKENS, REMAINING_REQUESTS, REMAINING_TOKENS, RESET_REQUESTS, RESET_TOKENS,
};

/// One window's state as admission left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub limit: u64,
    pub remaining: u64,
    /// Until the window is back to its full `limit`.
    pub reset: Duration,
}

/// What the rate headers show for one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateView {
    pub requests: Option<Window>,
    pub tokens: Option<Window>,
}

impl RateView {
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Some(w) = self.requests {
            put(headers, [LIMIT_REQUESTS, REMAINING_REQUESTS, RESET_REQUESTS], w);
        }
        if let Some(w) = self.tokens {
            put(headers, [LIMIT_TOKENS, REMAINING_TOKENS, RESET_TOKENS], w);
        }
    }
}

fn put(headers: &mut HeaderMap, [limit, remaining, reset]: [HeaderName; 3], w: Window) {
    headers.insert(limit, HeaderValue::from(w.limit));
    headers.insert(remaining, HeaderValue::from(w.remaining));
    if let Ok(value) = HeaderValue::from_str(&format_reset(w.reset)) {
        headers.insert(reset, value);
    }
}

/// `Retry-After`: whole seconds, rounded up, at least 1.
pub fn retry_after(wait: Duration) -> HeaderValue {
    let secs = wait.as_secs().saturating_add(u64::from(wait.subsec_nanos() > 0));
    HeaderValue::from(secs.max(1))
}

/// `0s`, `20ms`, `1s`, `1.5s`, `6m0s`, `1h2m3s` (Go's duration style, as OpenAI sends it).
pub fn format_reset(d: Duration) -> String {
    let millis = d.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let hours = millis / 3_600_000;
    let minutes = millis / 60_000 % 60;
    let seconds = seconds_text(millis % 60_000);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

/// Milliseconds within a minute as seconds with only the decimals needed.
fn seconds_text(millis: u128) -> String {
    let (whole, frac) = (millis / 1000, millis % 1000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:03}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing, reason = "tests use known small numbers")]
mod tests {
    use super::*;

    #[test]
    fn resets_read_like_openai() {
        assert_eq!(format_reset(Duration::ZERO), "0s");
        assert_eq!(format_reset(Duration::from_millis(20)), "20ms");
        assert_eq!(format_reset(Duration::from_secs(1)), "1s");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
        assert_eq!(format_reset(Duration::from_millis(61_250)), "1m1.25s");
        assert_eq!(format_reset(Duration::from_secs(3723)), "1h2m3s");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after(Duration::from_millis(1)), "1");
        assert_eq!(retry_after(Duration::from_millis(12_001)), "13");
        assert_eq!(retry_after(Duration::from_secs(12)), "12");
        assert_eq!(retry_after(Duration::ZERO), "1");
    }
}
