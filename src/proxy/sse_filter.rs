//! Takes the usage-only chunk out of a stream whose usage weir asked for on the client's
//! behalf (see `RequestHead::injects_usage`).
//!
//! With `stream_options.include_usage`, OpenAI-compatible servers end a chat stream with one
//! extra event, `{"choices":[], "usage":{...}}`, and add `"usage":null` as the last field of
//! every other chunk. A client that did not ask for usage must see neither: the usage event
//! is dropped and a trailing `,"usage":null` taken out of the others, so the client gets the
//! bytes it would have got without the option. Chunks with neither pass as the same `Bytes`
//! (no copy). The filter works on whole events: the tail of an event split across chunks
//! waits for its end, which costs the client nothing (an SSE client cannot act on half an
//! event).
//! Must not: change anything else in an event, hold more than one partial event (and no
//! event longer than [`MAX_EVENT`]: the stream ends with an error instead), or look at a
//! byte twice while an event is arriving.

use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

/// Longest event the filter holds while waiting for its end.
pub const MAX_EVENT: usize = 1024 * 1024;

/// An upstream event that outgrew [`MAX_EVENT`] before it ended.
#[derive(Debug, thiserror::Error)]
#[error("an SSE event longer than {MAX_EVENT} bytes")]
pub struct EventTooLong;

#[derive(Debug, Default)]
pub struct UsageChunkFilter {
    /// The start of an event whose end has not arrived yet.
    partial: BytesMut,
}

impl UsageChunkFilter {
    /// What of `chunk` goes to the client now (possibly empty).
    pub fn filter(&mut self, chunk: Bytes) -> Result<Bytes, EventTooLong> {
        if self.partial.is_empty() {
            let end = complete_prefix(&chunk);
            if end < chunk.len() {
                self.hold(&chunk[end..])?;
            }
            return Ok(drop_usage_events(chunk.slice(..end)));
        }
        // Only the new bytes (and the two before them, where a boundary may straddle the
        // chunks) can hold the end of the pending event.
        let searched_from = self.partial.len().saturating_sub(2);
        self.hold(&chunk)?;
        match complete_prefix(&self.partial[searched_from..]) {
            0 => Ok(Bytes::new()),
            end => Ok(drop_usage_events(self.partial.split_to(searched_from + end).freeze())),
        }
    }

    fn hold(&mut self, bytes: &[u8]) -> Result<(), EventTooLong> {
        if self.partial.len() + bytes.len() > MAX_EVENT {
            self.partial = BytesMut::new();
            return Err(EventTooLong);
        }
        self.partial.extend_from_slice(bytes);
        Ok(())
    }

    /// At the end of the stream: whatever partial event is left, unless it is the usage one.
    pub fn finish(&mut self) -> Bytes {
        let rest = self.partial.split().freeze();
        let blank = blank_prefix(&rest);
        if is_usage_only(&rest[blank..]) { rest.slice(..blank) } else { rest }
    }
}

/// Length of the part of `data` that ends on an event boundary (a blank line).
fn complete_prefix(data: &[u8]) -> usize {
    let lf = memmem::rfind(data, b"\n\n").map_or(0, |i| i + 2);
    let crlf = memmem::rfind(data, b"\n\r\n").map_or(0, |i| i + 3);
    lf.max(crlf)
}

fn drop_usage_events(complete: Bytes) -> Bytes {
    let candidate = names_empty_choices(&complete) || memmem::find(&complete, NULL_USAGE).is_some();
    if !candidate {
        return complete;
    }
    let mut out = BytesMut::with_capacity(complete.len());
    let mut rest = &complete[..];
    while !rest.is_empty() {
        let end = next_boundary(rest);
        let (event, tail) = rest.split_at(end);
        let (blank_lines, event) = event.split_at(blank_prefix(event));
        out.extend_from_slice(blank_lines);
        if !is_usage_only(event) {
            push_without_null_usage(&mut out, event);
        }
        rest = tail;
    }
    out.freeze()
}

const NULL_USAGE: &[u8] = b",\"usage\":null";

/// Length of the blank lines (CR and LF) an event starts with. A third line end after an
/// event's blank line starts the next event here but may end a chunk's complete part; kept
/// whatever happens to the event, it leaves the output independent of where chunks end.
fn blank_prefix(event: &[u8]) -> usize {
    event.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count()
}

/// Copies `event` without a `,"usage":null` that closes its JSON (followed by `}` and the end
/// of the line); one anywhere else is part of something else and stays.
fn push_without_null_usage(out: &mut BytesMut, event: &[u8]) {
    let mut at = 0;
    for found in memmem::find_iter(event, NULL_USAGE) {
        let after = &event[found + NULL_USAGE.len()..];
        if after.starts_with(b"}\n") || after.starts_with(b"}\r") {
            out.extend_from_slice(&event[at..found]);
            at = found + NULL_USAGE.len();
        }
    }
    out.extend_from_slice(&event[at..]);
}

/// Length of the first event of `data`, its blank line included.
fn next_boundary(data: &[u8]) -> usize {
    let lf = memmem::find(data, b"\n\n").map(|i| i + 2);
    let crlf = memmem::find(data, b"\n\r\n").map(|i| i + 3);
    match (lf, crlf) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => data.len(),
    }
}

/// The spellings of an empty `choices` that upstreams send. Only an event with one of them
/// counts as the usage event, so the quick scan above and the parse below agree on every
/// event, however the stream was cut into chunks (`"choices" : [ ]` passes everywhere).
const EMPTY_CHOICES: [&[u8]; 2] = [b"\"choices\":[]", b"\"choices\": []"];

fn names_empty_choices(bytes: &[u8]) -> bool {
    EMPTY_CHOICES.iter().any(|spelling| memmem::find(bytes, spelling).is_some())
}

/// An event whose data is a chunk with no choices and a usage object.
fn is_usage_only(event: &[u8]) -> bool {
    if !names_empty_choices(event) {
        return false;
    }
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(default)]
        choices: Option<Vec<IgnoredAny>>,
        #[serde(borrow, default)]
        usage: Option<&'a RawValue>,
    }
    let Ok(text) = std::str::from_utf8(event) else { return false };
    let data: String = text
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect::<Vec<_>>()
        .join("\n");
    match serde_json::from_str::<Probe<'_>>(&data) {
        Ok(probe) => probe.choices.is_some_and(|c| c.is_empty()) && probe.usage.is_some_and(|u| u.get() != "null"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
    const CHUNK_NULL: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n";
    const USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    fn run(chunks: &[&str]) -> String {
        let mut filter = UsageChunkFilter::default();
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend_from_slice(&filter.filter(Bytes::copy_from_slice(chunk.as_bytes())).unwrap());
        }
        out.extend_from_slice(&filter.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn usage_event_is_dropped_and_the_rest_kept() {
        assert_eq!(run(&[CHUNK, CHUNK, USAGE, DONE]), format!("{CHUNK}{CHUNK}{DONE}"));
        assert_eq!(run(&[&format!("{CHUNK}{USAGE}{DONE}")]), format!("{CHUNK}{DONE}"));
    }

    #[test]
    fn null_usage_fields_are_taken_out() {
        assert_eq!(run(&[CHUNK_NULL, CHUNK_NULL, USAGE, DONE]), format!("{CHUNK}{CHUNK}{DONE}"));
        let inner = "data: {\"choices\":[{\"x\":{\"a\":1,\"usage\":null}}]}\n\n";
        assert_eq!(run(&[inner]), inner, "only the closing field goes");
    }

    #[test]
    fn events_split_anywhere_are_reassembled() {
        let all = format!("{CHUNK}{USAGE}{DONE}");
        for cut in 1..all.len() {
            let (a, b) = all.split_at(cut);
            assert_eq!(run(&[a, b]), format!("{CHUNK}{DONE}"), "cut at {cut}");
        }
    }

    #[test]
    fn whole_chunks_without_usage_pass_without_copy() {
        let mut filter = UsageChunkFilter::default();
        let chunk = Bytes::from_static(CHUNK.as_bytes());
        assert_eq!(filter.filter(chunk.clone()).unwrap().as_ptr(), chunk.as_ptr());
    }

    #[test]
    fn an_event_that_never_ends_is_refused_at_the_limit() {
        let mut filter = UsageChunkFilter::default();
        let piece = Bytes::from(vec![b'x'; 64 * 1024]);
        assert!(filter.filter(Bytes::from_static(b"data: ")).unwrap().is_empty());
        let mut held = 6;
        while let Ok(out) = filter.filter(piece.clone()) {
            assert!(out.is_empty(), "nothing goes out before the event ends");
            held += piece.len();
            assert!(held <= MAX_EVENT);
        }
        assert!(filter.partial.is_empty(), "the held bytes are let go");
    }

    #[test]
    fn a_long_event_split_in_many_chunks_comes_out_whole() {
        let long = format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n", "y".repeat(100_000));
        let chunks: Vec<&str> = long.as_bytes().chunks(1000).map(|c| std::str::from_utf8(c).unwrap()).collect();
        let mut all = chunks.clone();
        all.push(DONE);
        assert_eq!(run(&all), format!("{long}{DONE}"));
    }

    #[test]
    fn only_the_usual_spelling_is_the_usage_event_wherever_the_chunks_end() {
        let odd = "data: {\"choices\" : [],\"usage\":{\"prompt_tokens\":1}}\n\n";
        assert_eq!(run(&[odd, USAGE, DONE]), format!("{odd}{DONE}"));
        assert_eq!(run(&[&format!("{odd}{USAGE}{DONE}")]), format!("{odd}{DONE}"));
        assert_eq!(run(&[odd.trim_end()]), odd.trim_end());
    }

    #[test]
    fn blank_lines_before_the_usage_event_stay_wherever_the_chunks_end() {
        let extra = format!("{CHUNK}\n");
        let want = format!("{CHUNK}\n{DONE}");
        assert_eq!(run(&[&extra, USAGE, DONE]), want);
        assert_eq!(run(&[&format!("{extra}{USAGE}{DONE}")]), want);
        assert_eq!(run(&[&extra, USAGE.trim_end()]), format!("{CHUNK}\n"));
    }

    #[test]
    fn crlf_events_and_a_missing_final_blank_line() {
        let usage = USAGE.replace("\n\n", "\r\n\r\n");
        assert_eq!(run(&[CHUNK, &usage, "data: [DONE]"]), format!("{CHUNK}data: [DONE]"));
        assert_eq!(run(&[CHUNK, USAGE.trim_end()]), CHUNK);
    }
}
