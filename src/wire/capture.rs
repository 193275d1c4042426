//! The bounded capture of an answer as it streams to the client.
//!
//! Owns: [`Capture`], a tap that keeps what the taps will need of an answer, bounded in the
//! bytes it actually holds: the whole answer copied into one compact buffer (up to
//! [`CAPTURE_LIMIT`]) when a tap needs its exact bytes; a stream folded into its answer as
//! it passes (its text, not its events) when the taps need only the answer; or, for a
//! stream nobody reads back, only the usage event, found as the chunks pass.
//! Must not: keep a chunk's `Bytes` handle (it keeps the whole read buffer it was cut from
//! alive, which is many times the chunk for a stream's small events), delay a chunk, or grow
//! past its limit.

use bytes::Bytes;
use memchr::memmem;

use super::assemble::{Assembled, SseAssembler, assemble, assemble_owned};
use super::lines::Lines;
use super::summary::AnswerSummary;
use super::usage::{Usage, usage_only};

/// Largest answer kept for reading back (usage, cache fill, datasets): the bytes of an
/// answer kept whole, or the text of a stream folded as it passes. Past this the capture
/// lets go and the request is recorded without usage or body.
pub const CAPTURE_LIMIT: usize = 4 * 1024 * 1024;
/// Longest SSE line the usage scan keeps while looking for the usage event; a usage event is
/// a few hundred bytes, so longer lines are skipped rather than held.
const USAGE_LINE_LIMIT: usize = 64 * 1024;

#[derive(Debug)]
pub struct Capture {
    kept: Kept,
    limit: usize,
    overflowed: bool,
}

#[derive(Debug)]
enum Kept {
    /// Every byte, copied.
    Whole(Vec<u8>),
    /// A stream, folded into its answer as it passes.
    Assembling(Box<SseAssembler>),
    /// A stream's usage event only.
    Usage(UsageScan),
}

/// Finds the last `data:` line of an SSE stream that carries a usage object, holding at most
/// one partial line.
#[derive(Debug)]
struct UsageScan {
    /// Lines longer than [`USAGE_LINE_LIMIT`] are skipped.
    lines: Lines,
    /// The last usage line seen.
    usage_line: Option<Vec<u8>>,
}

impl Capture {
    /// Keeps the whole answer, up to `limit` bytes.
    pub fn whole(limit: usize) -> Capture {
        Capture { kept: Kept::Whole(Vec::new()), limit, overflowed: false }
    }

    /// Keeps a stream's answer, folded as it passes; up to `limit` bytes of answer held.
    pub fn assembling(limit: usize) -> Capture {
        Capture { kept: Kept::Assembling(Box::default()), limit, overflowed: false }
    }

    /// Keeps only what usage needs: a stream's usage event; a JSON answer whole (its usage is
    /// one field of one object), up to `limit` bytes.
    pub fn usage_only(sse: bool, limit: usize) -> Capture {
        if !sse {
            return Capture::whole(limit);
        }
        Capture { kept: Kept::Usage(UsageScan::new()), limit, overflowed: false }
    }

    /// Observes one chunk on its way to the client.
    pub fn push(&mut self, chunk: &[u8]) {
        match &mut self.kept {
            Kept::Whole(buf) => {
                if self.overflowed {
                    return;
                }
                if buf.len() + chunk.len() > self.limit {
                    self.overflowed = true;
                    *buf = Vec::new();
                    return;
                }
                buf.extend_from_slice(chunk);
            }
            Kept::Assembling(assembler) => {
                if self.overflowed {
                    return;
                }
                assembler.push(chunk);
                if assembler.held() > self.limit {
                    self.overflowed = true;
                    **assembler = SseAssembler::default();
                }
            }
            Kept::Usage(scan) => scan.push(chunk),
        }
    }

    /// Whether the answer outgrew the limit (and nothing of it is kept).
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// The captured answer; `None` when it overflowed or only usage was kept.
    pub fn as_slice(&self) -> Option<&[u8]> {
        match &self.kept {
            Kept::Whole(buf) if !self.overflowed => Some(buf),
            _ => None,
        }
    }

    /// The captured answer as a buffer of its own (a copy).
    pub fn bytes(&self) -> Option<Bytes> {
        self.as_slice().map(Bytes::copy_from_slice)
    }

    /// Reads the captured answer back; `None` when it overflowed, only usage was kept, or it
    /// is not OpenAI-shaped.
    pub fn assemble(self, sse: bool) -> Option<Assembled> {
        match self.kept {
            _ if self.overflowed => None,
            Kept::Whole(buf) => assemble_owned(buf, sse),
            Kept::Assembling(assembler) => assembler.finish(),
            Kept::Usage(_) => None,
        }
    }

    /// [`Capture::assemble`] of a stream, leaving the capture as it is (a copy of the text).
    pub fn assembled_stream(&self) -> Option<Assembled> {
        match &self.kept {
            _ if self.overflowed => None,
            Kept::Whole(buf) => assemble(buf, true),
            Kept::Assembling(assembler) => SseAssembler::clone(assembler).finish(),
            Kept::Usage(_) => None,
        }
    }

    /// The answer's usage, when it reported one.
    pub fn usage(&self, sse: bool) -> Option<Usage> {
        match &self.kept {
            _ if self.overflowed => None,
            Kept::Whole(buf) => usage_only(buf, sse),
            Kept::Assembling(assembler) => assembler.usage(),
            Kept::Usage(scan) => usage_only(scan.usage_line.as_deref()?, true),
        }
    }

    /// The response model and finish reasons (for spans); `None` when only usage was kept.
    pub fn summary(&self, sse: bool) -> Option<AnswerSummary> {
        match &self.kept {
            _ if self.overflowed => None,
            Kept::Whole(buf) => Some(AnswerSummary::read(buf, sse)),
            Kept::Assembling(assembler) => Some(assembler.summary()),
            Kept::Usage(_) => None,
        }
    }
}

impl UsageScan {
    fn new() -> UsageScan {
        UsageScan { lines: Lines::new(USAGE_LINE_LIMIT), usage_line: None }
    }

    fn push(&mut self, chunk: &[u8]) {
        let UsageScan { lines, usage_line } = self;
        lines.push(chunk, &mut |line| keep_usage_line(usage_line, line));
    }
}

/// Keeps `line` in `kept` if it is a data line with a usage object (not the `"usage":null`
/// that every chunk of a stream with `include_usage` carries).
fn keep_usage_line(kept: &mut Option<Vec<u8>>, line: &[u8]) {
    if !line.starts_with(b"data:") {
        return;
    }
    let Some(at) = memmem::find(line, b"\"usage\"") else { return };
    let value = line[at + 7..].iter().find(|b| !matches!(b, b' ' | b':'));
    if value == Some(&b'{') {
        let mut buf = kept.take().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(line);
        buf.push(b'\n');
        *kept = Some(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";

    #[test]
    fn the_usage_scan_finds_usage_however_the_stream_is_split() {
        let bytes = STREAM.as_bytes();
        for split in 0..bytes.len() {
            let mut capture = Capture::usage_only(true, CAPTURE_LIMIT);
            capture.push(&bytes[..split]);
            capture.push(&bytes[split..]);
            let usage = capture.usage(true).unwrap_or_else(|| panic!("split at {split}"));
            assert_eq!((usage.prompt_tokens, usage.completion_tokens), (7, 2));
            assert!(capture.bytes().is_none(), "nothing but usage is kept");
        }
    }

    #[test]
    fn the_usage_scan_holds_no_long_line() {
        let mut capture = Capture::usage_only(true, CAPTURE_LIMIT);
        let long = vec![b'x'; 10 * USAGE_LINE_LIMIT];
        capture.push(b"data: ");
        for piece in long.chunks(1000) {
            capture.push(piece);
        }
        let Kept::Usage(scan) = &capture.kept else { panic!("usage mode") };
        assert!(scan.lines.partial.capacity() <= 2 * USAGE_LINE_LIMIT, "{}", scan.lines.partial.capacity());
        capture.push(b"\n\n");
        capture.push(STREAM.as_bytes());
        assert_eq!(capture.usage(true).map(|u| u.prompt_tokens), Some(7), "a long line is skipped, not fatal");
    }

    #[test]
    fn an_assembling_capture_holds_the_text_not_the_events() {
        let event = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ab\"},\"finish_reason\":null}]}\n\n";
        let mut capture = Capture::assembling(CAPTURE_LIMIT);
        for _ in 0..1000 {
            capture.push(event.as_bytes());
        }
        capture.push(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":1000}}\n\ndata: [DONE]\n\n",
        );
        let Kept::Assembling(assembler) = &capture.kept else { panic!("assembling") };
        assert!(std::mem::size_of_val(assembler) < 100, "boxed");
        assert_eq!(capture.usage(true).map(|u| u.completion_tokens), Some(1000));
        assert!(capture.as_slice().is_none(), "no bytes are kept");
        let answer = capture.assemble(true).unwrap();
        assert!(answer.complete);
        assert_eq!(answer.body["choices"][0]["message"]["content"].as_str().map(str::len), Some(2000));
    }

    #[test]
    fn an_assembling_capture_lets_go_past_its_limit() {
        let mut capture = Capture::assembling(10);
        capture.push(b"data: {\"choices\":[{\"delta\":{\"content\":\"0123456789\"}}]}\n\n");
        assert!(!capture.overflowed(), "ten bytes of text fit");
        capture.push(b"data: {\"choices\":[{\"delta\":{\"content\":\"!\"}}]}\n\n");
        assert!(capture.overflowed() && capture.usage(true).is_none() && capture.assemble(true).is_none());
    }

    #[test]
    fn the_whole_capture_copies_and_lets_go_past_its_limit() {
        let mut capture = Capture::whole(10);
        capture.push(b"12345");
        capture.push(b"6789");
        assert_eq!(capture.bytes().as_deref(), Some(&b"123456789"[..]));
        capture.push(b"ab");
        assert!(capture.overflowed() && capture.bytes().is_none());
    }
}
