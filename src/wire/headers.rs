//! Every header name weir reads or writes besides the standard ones, in one place.
//!
//! Owns: the names as constants (a `&str` name is parsed on every use, which showed in
//! profiles of the request path): weir's own (SPEC §3), OpenAI's rate-limit headers that weir
//! sends and reads back from upstreams, and W3C trace context.
//! Must not: hold behaviour beyond formatting a value (each name's meaning lives with the
//! module that acts on it).

use http::HeaderName;

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
