//! Lines out of bytes that arrive in pieces.
//!
//! Owns: [`Lines`], which hands over each line a chunk completes and holds at most one
//! unfinished line, bounded by a limit past which that line is skipped whole.
//! Must not: interpret the lines (the SSE readers built on it do).

use memchr::memchr;

#[derive(Debug, Clone)]
pub struct Lines {
    /// The start of a line whose end has not arrived yet (empty while skipping a long one).
    pub(super) partial: Vec<u8>,
    /// The current line outgrew `limit`: it is ignored up to its end.
    skipping: bool,
    limit: usize,
}

impl Lines {
    /// Holds at most `limit` bytes of an unfinished line.
    pub fn new(limit: usize) -> Lines {
        Lines { partial: Vec::new(), skipping: false, limit }
    }

    /// Calls `on_line` with each line `chunk` completes, without its `\n`.
    pub fn push(&mut self, mut chunk: &[u8], on_line: &mut impl FnMut(&[u8])) {
        while let Some(end) = memchr(b'\n', chunk) {
            let (line, rest) = chunk.split_at(end);
            if self.skipping {
                self.skipping = false;
            } else if self.partial.is_empty() {
                on_line(line);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                on_line(&whole);
                whole.clear();
                self.partial = whole;
            }
            chunk = rest.get(1..).unwrap_or_default();
        }
        if self.skipping || chunk.is_empty() {
            return;
        }
        if self.partial.len().saturating_add(chunk.len()) > self.limit {
            self.partial.clear();
            self.skipping = true;
            return;
        }
        self.partial.extend_from_slice(chunk);
    }

    /// The unfinished line so far.
    pub fn unfinished(&self) -> &[u8] {
        &self.partial
    }

    /// Takes the unfinished line (the last one of a body that ended without a `\n`).
    pub fn take_unfinished(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.partial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(pieces: &[&[u8]], limit: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
        let mut lines = Lines::new(limit);
        let mut seen = Vec::new();
        for piece in pieces {
            lines.push(piece, &mut |line| seen.push(line.to_vec()));
        }
        (seen, lines.take_unfinished())
    }

    #[test]
    fn lines_split_anywhere_come_out_whole() {
        let (seen, rest) = lines_of(&[b"ab", b"c\nd", b"\n\nef"], 100);
        assert_eq!(seen, [b"abc".to_vec(), b"d".to_vec(), Vec::new()]);
        assert_eq!(rest, b"ef");
    }

    #[test]
    fn a_line_past_the_limit_is_skipped_whole() {
        let (seen, rest) = lines_of(&[b"12345", b"678\nok\n"], 4);
        assert_eq!(seen, [b"ok".to_vec()]);
        assert!(rest.is_empty());
    }
}
