//! Wire: what weir reads back out of OpenAI-shaped answers, after they have streamed by.
//!
//! Owns: the bounded [`Capture`] of a response's bytes (a tap: it keeps `Bytes` handles,
//! never copies or delays a chunk), and turning a captured answer — JSON or SSE — into one
//! [`Assembled`] OpenAI JSON response with its [`Usage`] and finish reasons. Cache fill,
//! datasets, limit reconciliation, metrics and traces all read the same assembly.
//! Must not: sit on the hot path before the last byte (assembly runs when the exchange
//! finishes), or change what the client receives.

mod assemble;

use bytes::Bytes;
use serde::Deserialize;

pub use assemble::assemble;

/// Token counts as the backend reported them (OpenAI's `usage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// `usage.prompt_tokens_details.cached_tokens`: part of `prompt_tokens`.
    pub cached_tokens: u64,
}

impl Usage {
    /// Saturating: the counts are an upstream's word.
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// The serde shape of OpenAI's `usage` object.
#[derive(Debug, Deserialize)]
pub(crate) struct RawUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<RawPromptDetails>,
}

#[derive(Debug, Deserialize)]
struct RawPromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl From<RawUsage> for Usage {
    fn from(raw: RawUsage) -> Usage {
        Usage {
            prompt_tokens: raw.prompt_tokens,
            completion_tokens: raw.completion_tokens,
            cached_tokens: raw.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0),
        }
    }
}

/// A complete answer read back from the wire, always in the non-streamed JSON shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Assembled {
    /// `chat.completion`, `text_completion` or the embeddings list, as a JSON value. A
    /// streamed answer is folded into the shape the same request would have got unstreamed.
    pub body: serde_json::Value,
    pub usage: Option<Usage>,
    /// One per choice, in choice order (`stop`, `length`, `tool_calls`, ...).
    pub finish_reasons: Vec<String>,
    /// The `model` the upstream named in its answer.
    pub response_model: Option<String>,
    /// Whether a streamed answer ended with `data: [DONE]` (always true for JSON).
    pub complete: bool,
}

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

/// Only the usage of a captured answer: cheaper than [`assemble`] when nothing else is
/// wanted (JSON is scanned without building a tree; SSE is read from its last events).
pub fn usage_only(bytes: &[u8], sse: bool) -> Option<Usage> {
    if !sse {
        #[derive(Deserialize)]
        struct UsageOnly {
            usage: Option<RawUsage>,
        }
        return serde_json::from_slice::<UsageOnly>(bytes).ok()?.usage.map(Usage::from);
    }
    // The usage chunk is the last data event before `[DONE]`; look at the tail only.
    let text = std::str::from_utf8(bytes).ok()?;
    for line in text.lines().rev().take(8) {
        let Some(data) = line.strip_prefix("data:").map(str::trim_start) else { continue };
        if !data.contains("\"usage\"") {
            continue;
        }
        #[derive(Deserialize)]
        struct UsageChunk {
            usage: Option<RawUsage>,
        }
        if let Ok(UsageChunk { usage: Some(usage) }) = serde_json::from_str::<UsageChunk>(data) {
            return Some(usage.into());
        }
    }
    None
}
