//! W3C trace context: the client's `traceparent` read, ours generated, and the header sent
//! upstream on each attempt.
//!
//! Owns: trace and span ids and the sampling decision, made once when a request arrives
//! (a client's sampled flag wins; new traces are sampled at `sample_ratio`).
//! Must not: allocate unless tracing is on or the client sent a header.

use http::{HeaderMap, HeaderValue};

use super::headers::TRACEPARENT;

/// A request's place in a trace.
#[derive(Debug, Clone, Default)]
pub enum TraceContext {
    /// Tracing is off and the client sent no `traceparent`: nothing goes upstream.
    #[default]
    None,
    /// Tracing is off: the client's `traceparent` goes upstream as it came.
    Forward(HeaderValue),
    /// Tracing is on: weir's server span continues the client's trace (or starts one).
    Local(SpanIds),
}

/// Ids of the request's server span. Attempt spans derive theirs from `span_id` and their
/// index, so the upstream header can be written before any span exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanIds {
    pub trace_id: u128,
    pub span_id: u64,
    /// The client's span, when it sent a `traceparent`.
    pub parent: Option<u64>,
    pub sampled: bool,
}

impl TraceContext {
    /// The context of a new request. `sample_ratio` is `None` when tracing is off.
    pub fn start(headers: &HeaderMap, sample_ratio: Option<f64>) -> TraceContext {
        let header = headers.get(TRACEPARENT);
        let Some(ratio) = sample_ratio else {
            return header.map_or(TraceContext::None, |value| TraceContext::Forward(value.clone()));
        };
        let span_id = nonzero_u64(rand::random());
        let ids = match header.and_then(|value| parse(value.as_bytes())) {
            Some(parent) => {
                SpanIds { trace_id: parent.trace_id, span_id, parent: Some(parent.span_id), sampled: parent.sampled }
            }
            None => {
                let trace_id = match rand::random::<u128>() {
                    0 => 1,
                    id => id,
                };
                SpanIds { trace_id, span_id, parent: None, sampled: ratio >= 1.0 || rand::random::<f64>() < ratio }
            }
        };
        TraceContext::Local(ids)
    }

    /// Whether this request's spans are recorded.
    pub fn sampled(&self) -> bool {
        matches!(self, TraceContext::Local(ids) if ids.sampled)
    }

    /// The `traceparent` for upstream attempt number `attempt` (0-based).
    pub fn upstream_header(&self, attempt: usize) -> Option<HeaderValue> {
        match self {
            TraceContext::None => None,
            TraceContext::Forward(value) => Some(value.clone()),
            TraceContext::Local(ids) => {
                let text = encode(ids.trace_id, ids.attempt_span_id(attempt), ids.sampled);
                HeaderValue::from_bytes(&text).ok()
            }
        }
    }
}

impl SpanIds {
    /// The span id of attempt `index`: a mix of the server span's id and the index, so it
    /// is known before the attempt's span is built and differs from every other span's.
    pub fn attempt_span_id(&self, index: usize) -> u64 {
        let mut x = self.span_id ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // splitmix64's finaliser.
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        nonzero_u64(x ^ (x >> 31))
    }
}

fn nonzero_u64(x: u64) -> u64 {
    if x == 0 { 1 } else { x }
}

/// A parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

/// Parses `version-traceid-spanid-flags` per W3C Trace Context: version `ff` and all-zero
/// ids are invalid; a future version may append fields after a `-`.
pub fn parse(value: &[u8]) -> Option<Parent> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.len() < 55 || !text.is_char_boundary(55) {
        return None;
    }
    let (head, rest) = text.split_at(55);
    let version = head.get(0..2)?;
    if version == "ff" || (version == "00" && !rest.is_empty()) || (!rest.is_empty() && !rest.starts_with('-')) {
        return None;
    }
    let bytes = head.as_bytes();
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let lower_hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let (trace, span, flags) = (&head[3..35], &head[36..52], &head[53..55]);
    if !lower_hex(version) || !lower_hex(trace) || !lower_hex(span) || !lower_hex(flags) {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok().filter(|id| *id != 0)?;
    let span_id = u64::from_str_radix(span, 16).ok().filter(|id| *id != 0)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Parent { trace_id, span_id, sampled: flags & 1 == 1 })
}

/// `00-{trace_id:032x}-{span_id:016x}-{flags:02x}`, written in place: this header goes
/// upstream on every request of a traced gateway, sampled or not, and `format!` cost a
/// growing allocation and the formatter's machinery each time.
fn encode(trace_id: u128, span_id: u64, sampled: bool) -> [u8; 55] {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    // Each range is exactly twice its input's length, so encoding cannot fail.
    let _ = hex::encode_to_slice(trace_id.to_be_bytes(), &mut out[3..35]);
    let _ = hex::encode_to_slice(span_id.to_be_bytes(), &mut out[36..52]);
    let _ = hex::encode_to_slice([u8::from(sampled)], &mut out[53..55]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_w3c_example() {
        let parent = parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(parent.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parent.span_id, 0x00f067aa0ba902b7);
        assert!(parent.sampled);
        assert_eq!(
            &encode(parent.trace_id, parent.span_id, true),
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(&encode(1, 2, false), b"00-00000000000000000000000000000001-0000000000000002-00");
    }

    #[test]
    fn rejects_invalid_headers() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad}");
        }
        assert!(parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-future").is_some());
    }

    #[test]
    fn continues_the_clients_trace_and_decision() {
        let mut headers = HeaderMap::new();
        headers
            .insert(TRACEPARENT, HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"));
        let TraceContext::Local(ids) = TraceContext::start(&headers, Some(1.0)) else { panic!("local") };
        assert_eq!(ids.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(ids.parent, Some(0x00f067aa0ba902b7));
        assert!(!ids.sampled, "the client's unsampled flag wins over ratio 1");
        let up = TraceContext::Local(ids).upstream_header(0).unwrap();
        let up = parse(up.as_bytes()).unwrap();
        assert_eq!((up.trace_id, up.span_id, up.sampled), (ids.trace_id, ids.attempt_span_id(0), false));
        assert_ne!(ids.attempt_span_id(0), ids.attempt_span_id(1));
    }

    #[test]
    fn without_tracing_the_header_passes_through() {
        let mut headers = HeaderMap::new();
        assert!(matches!(TraceContext::start(&headers, None), TraceContext::None));
        headers.insert(TRACEPARENT, HeaderValue::from_static("anything"));
        let context = TraceContext::start(&headers, None);
        assert_eq!(context.upstream_header(3).unwrap(), "anything");
        assert!(!TraceContext::start(&HeaderMap::new(), Some(0.0)).sampled());
        assert!(TraceContext::start(&HeaderMap::new(), Some(1.0)).sampled());
    }
}
