//! Token usage as upstreams report it, read without building a tree.
//!
//! Owns: [`Usage`] (OpenAI's `usage`, cached prompt tokens included) and reading it out of a
//! captured JSON or SSE answer ([`usage_only`]), the cheap path when nothing needs the whole
//! answer.
//! Must not: price usage (that is the model's `price`) or decide what it is charged to.

use serde::Deserialize;

/// Token counts as the backend reported them (OpenAI's `usage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// `usage.prompt_tokens_details.cached_tokens`: part of `prompt_tokens`.
    pub cached_tokens: u64,
    /// Prompt tokens written to the provider's prompt cache (Anthropic's
    /// `cache_creation_input_tokens`; weir's `prompt_tokens_details.cache_write_tokens` on
    /// chat): part of `prompt_tokens`.
    pub cache_write_tokens: u64,
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
    #[serde(default)]
    cache_write_tokens: Option<u64>,
}

impl From<RawUsage> for Usage {
    fn from(raw: RawUsage) -> Usage {
        Usage {
            prompt_tokens: raw.prompt_tokens,
            completion_tokens: raw.completion_tokens,
            cached_tokens: raw.prompt_tokens_details.as_ref().and_then(|d| d.cached_tokens).unwrap_or(0),
            cache_write_tokens: raw.prompt_tokens_details.and_then(|d| d.cache_write_tokens).unwrap_or(0),
        }
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
