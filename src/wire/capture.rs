//! The bounded capture of an answer as it streams to the client.
//!
//! Owns: [`Capture`], a tap that keeps `Bytes` handles to the chunks (never copies or delays
//! one) up to [`CAPTURE_LIMIT`], and reading them back as one buffer or one assembly.
//! Must not: grow past its limit: past it, it lets go of everything.

use bytes::Bytes;

use super::assemble::{Assembled, assemble};

/// Largest answer kept for reading back (usage, cache fill, datasets). Past this the
/// capture lets go and the request is recorded without usage or body.
pub const CAPTURE_LIMIT: usize = 4 * 1024 * 1024;

/// Keeps a response's chunks (by reference count) up to `limit` bytes. Past the limit it
/// lets go of everything and remembers it overflowed, so memory stays bounded however long
/// the answer.
#[derive(Debug, Default)]
pub struct Capture {
    chunks: Vec<Bytes>,
    size: usize,
    limit: usize,
    overflowed: bool,
}

impl Capture {
    pub fn new(limit: usize) -> Capture {
        Capture { chunks: Vec::new(), size: 0, limit, overflowed: false }
    }

    /// Observes one chunk on its way to the client.
    pub fn push(&mut self, chunk: &Bytes) {
        if self.overflowed {
            return;
        }
        self.size += chunk.len();
        if self.size > self.limit {
            self.overflowed = true;
            self.chunks = Vec::new();
            return;
        }
        self.chunks.push(chunk.clone());
    }

    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    pub fn len(&self) -> usize {
        if self.overflowed { 0 } else { self.size }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The captured bytes as one buffer (no copy when the answer came in one chunk).
    pub fn bytes(&self) -> Option<Bytes> {
        if self.overflowed {
            return None;
        }
        match self.chunks.as_slice() {
            [] => Some(Bytes::new()),
            [one] => Some(one.clone()),
            many => {
                let mut joined = Vec::with_capacity(self.size);
                for chunk in many {
                    joined.extend_from_slice(chunk);
                }
                Some(Bytes::from(joined))
            }
        }
    }

    /// Reads the captured answer back; `None` when it overflowed or is not OpenAI-shaped.
    pub fn assemble(&self, sse: bool) -> Option<Assembled> {
        assemble(&self.bytes()?, sse)
    }
}
