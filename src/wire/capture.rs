//! The bounded capture of an answer as it streams to the client.
//!
//! Owns: [`Capture`], a tap that keeps what the taps will need of an answer, bounded in the
//! bytes it actually holds: the whole answer copied into one compact buffer (up to
//! [`CAPTURE_LIMIT`]) when a tap reads it back, or, for a stream nobody reads back, only the
//! usage event, found as the chunks pass.
//! Must not: keep a chunk's `Bytes` handle (it keeps the whole read buffer it was cut from
//! alive, which is many times the chunk for a stream's small events), delay a chunk, or grow
//! past its limit.

use bytes::Bytes;
use memchr::{memchr, memmem};

use super::assemble::{Assembled, assemble};
use super::usage::{Usage, usage_only};

/// Largest answer kept for reading back (usage, cache fill, datasets). Past this the
/// capture lets go and the request is recorded without usage or body.
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
    /// A stream's usage event only.
    Usage(UsageScan),
}

/// Finds the last `data:` line of an SSE stream that carries a usage object, holding at most
/// one partial line.
#[derive(Debug, Default)]
struct UsageScan {
    /// The start of a line whose end has not arrived yet (empty while skipping a long one).
    partial: Vec<u8>,
    /// The current line outgrew [`USAGE_LINE_LIMIT`]: ignore it up to its end.
    skipping: bool,
    /// The last usage line seen.
    usage_line: Option<Vec<u8>>,
}

impl Capture {
    /// Keeps the whole answer, up to `limit` bytes.
    pub fn whole(limit: usize) -> Capture {
        Capture { kept: Kept::Whole(Vec::new()), limit, overflowed: false }
    }

    /// Keeps only what usage needs: a stream's usage event; a JSON answer whole (its usage is
    /// one field of one object), up to `limit` bytes.
    pub fn usage_only(sse: bool, limit: usize) -> Capture {
        if !sse {
            return Capture::whole(limit);
        }
        Capture { kept: Kept::Usage(UsageScan::default()), limit, overflowed: false }
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
    pub fn assemble(&self, sse: bool) -> Option<Assembled> {
        assemble(self.as_slice()?, sse)
    }

    /// The answer's usage, when it reported one.
    pub fn usage(&self, sse: bool) -> Option<Usage> {
        match &self.kept {
            Kept::Whole(buf) if !self.overflowed => usage_only(buf, sse),
            Kept::Whole(_) => None,
            Kept::Usage(scan) => usage_only(scan.usage_line.as_deref()?, true),
        }
    }
}

impl UsageScan {
    fn push(&mut self, mut chunk: &[u8]) {
        while let Some(end) = memchr(b'\n', chunk) {
            let (line, rest) = chunk.split_at(end);
            if self.skipping {
                self.skipping = false;
            } else if self.partial.is_empty() {
                self.line(line);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.line(&whole);
                whole.clear();
                self.partial = whole;
            }
            chunk = &rest[1..];
        }
        if self.skipping || chunk.is_empty() {
            return;
        }
        if self.partial.len() + chunk.len() > USAGE_LINE_LIMIT {
            self.partial.clear();
            self.skipping = true;
            return;
        }
        self.partial.extend_from_slice(chunk);
    }

    /// Keeps `line` if it is a data line with a usage object (not the `"usage":null` that
    /// every chunk of a stream with `include_usage` carries).
    fn line(&mut self, line: &[u8]) {
        if !line.starts_with(b"data:") {
            return;
        }
        let Some(at) = memmem::find(line, b"\"usage\"") else { return };
        let value = line[at + 7..].iter().find(|b| !matches!(b, b' ' | b':'));
        if value == Some(&b'{') {
            let mut kept = self.usage_line.take().unwrap_or_default();
            kept.clear();
            kept.extend_from_slice(line);
            kept.push(b'\n');
            self.usage_line = Some(kept);
        }
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
        assert!(scan.partial.capacity() <= 2 * USAGE_LINE_LIMIT, "{}", scan.partial.capacity());
        capture.push(b"\n\n");
        capture.push(STREAM.as_bytes());
        assert_eq!(capture.usage(true).map(|u| u.prompt_tokens), Some(7), "a long line is skipped, not fatal");
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
