//! Every header name weir reads or writes besides the standard ones, in one place.
//!
//! Owns: the names as constants (a `&str` name is parsed on every use, which showed in
//! profiles of the request path): weir's own (SPEC §3), OpenAI's rate-limit headers that weir
//! sends and reads back from upstreams, and W3C trace context.
//! Also: [`detach_values`], which moves header values out of the read buffer hyper parsed
//! them from.
//! Must not: hold behaviour beyond formatting or copying a value (each name's meaning lives
//! with the module that acts on it).

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue};

/// Gives `headers` values of their own, all in one new allocation. hyper's parsed header
/// values are slices of the connection's read buffer; kept while an answer streams, they
/// make the connection allocate a fresh read buffer for every read it does meanwhile.
pub fn detach_values(headers: &mut HeaderMap) {
    let total = headers.values().map(HeaderValue::len).fold(0usize, usize::saturating_add);
    let mut copy = BytesMut::with_capacity(total);
    for value in headers.values() {
        copy.extend_from_slice(value.as_bytes());
    }
    let copy = copy.freeze();
    let mut at = 0;
    // `values` and `values_mut` visit the values in the same order.
    for value in headers.values_mut() {
        let end = at + value.len();
        if let Ok(mut detached) = HeaderValue::from_maybe_shared(copy.slice(at..end)) {
            detached.set_sensitive(value.is_sensitive());
            *value = detached;
        }
        at = end;
    }
}

// === weir's own (SPEC §3) ===

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_WEIR_BACKEND: HeaderName = HeaderName::from_static("x-weir-backend");
pub const X_WEIR_VARIANT: HeaderName = HeaderName::from_static("x-weir-variant");
pub const X_WEIR_CACHE: HeaderName = HeaderName::from_static("x-weir-cache");
pub const X_WEIR_OVERHEAD_MS: HeaderName = HeaderName::from_static("x-weir-overhead-ms");
/// Tells nginx-style proxies in front of weir not to buffer a stream.
pub const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

// === OpenAI's rate-limit headers: sent with every answer, read from upstream refusals ===

pub const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
pub const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
pub const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
pub const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
pub const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
pub const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
/// OpenAI's precise `Retry-After`, in milliseconds.
pub const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");

/// Headers of a failed upstream answer that backends keep for the router's retry hint,
/// besides `Retry-After`.
pub const RETRY_HINT_HEADERS: [HeaderName; 5] =
    [RETRY_AFTER_MS, RESET_REQUESTS, RESET_TOKENS, REMAINING_REQUESTS, REMAINING_TOKENS];

// === W3C trace context ===

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// `x-weir-overhead-ms`: `1.234` (milliseconds, microsecond precision), formatted with
/// integers: float formatting showed up in profiles of the hot path.
pub fn millis_header(duration: std::time::Duration) -> http::HeaderValue {
    let micros = duration.as_micros();
    let text = format!("{}.{:03}", micros / 1000, micros % 1000);
    http::HeaderValue::try_from(text).unwrap_or(http::HeaderValue::from_static("0.000"))
}

/// Longest client `x-request-id` kept, in bytes; longer ones are cut (at a character boundary).
pub const MAX_CLIENT_REQUEST_ID: usize = 128;

/// The client's own `x-request-id`, kept as `client_request_id` beside weir's id: bounded to
/// [`MAX_CLIENT_REQUEST_ID`] bytes, control characters dropped, non-UTF-8 bytes replaced.
/// `None` when absent or nothing printable is left.
pub fn client_request_id(headers: &http::HeaderMap) -> Option<String> {
    let raw = headers.get(&X_REQUEST_ID)?.as_bytes();
    let text = String::from_utf8_lossy(&raw[..raw.len().min(4 * MAX_CLIENT_REQUEST_ID)]);
    let mut kept = String::with_capacity(text.len().min(MAX_CLIENT_REQUEST_ID));
    for c in text.trim().chars().filter(|c| !c.is_control()) {
        if kept.len() + c.len_utf8() > MAX_CLIENT_REQUEST_ID {
            break;
        }
        kept.push(c);
    }
    (!kept.is_empty()).then_some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(value: &[u8]) -> Option<String> {
        let mut headers = http::HeaderMap::new();
        headers.insert(X_REQUEST_ID, http::HeaderValue::from_bytes(value).unwrap());
        client_request_id(&headers)
    }

    #[test]
    fn client_request_ids_are_bounded_and_printable() {
        assert_eq!(id(b"trace-42"), Some("trace-42".into()));
        assert_eq!(id(b"  "), None);
        assert_eq!(id(b"a\tb"), Some("ab".into()));
        assert_eq!(id(&[b'x'; 500]).map(|s| s.len()), Some(MAX_CLIENT_REQUEST_ID));
        // obs-text bytes are not UTF-8: replaced, and the result still fits the bound.
        let lossy = id(&[0xE9; 300]).unwrap();
        assert!(lossy.len() <= MAX_CLIENT_REQUEST_ID && lossy.starts_with('\u{FFFD}'));
        assert_eq!(client_request_id(&http::HeaderMap::new()), None);
    }

    #[test]
    fn detached_values_keep_their_order_and_sensitivity() {
        let mut headers = HeaderMap::new();
        let buffer = bytes::Bytes::from_static(b"Bearer sk-1text/plainab");
        let mut auth = HeaderValue::from_maybe_shared(buffer.slice(0..11)).unwrap();
        auth.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, auth);
        headers.append(http::header::ACCEPT, HeaderValue::from_maybe_shared(buffer.slice(11..21)).unwrap());
        headers.append(http::header::ACCEPT, HeaderValue::from_maybe_shared(buffer.slice(21..23)).unwrap());
        headers.insert(X_REQUEST_ID, HeaderValue::from_static(""));
        detach_values(&mut headers);
        assert_eq!(headers[http::header::AUTHORIZATION], "Bearer sk-1");
        assert!(headers[http::header::AUTHORIZATION].is_sensitive());
        let accept: Vec<_> = headers.get_all(http::header::ACCEPT).iter().collect();
        assert_eq!(accept, ["text/plain", "ab"]);
        assert_eq!(headers[X_REQUEST_ID], "");
    }
}
