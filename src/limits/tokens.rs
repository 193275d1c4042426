//! Token estimates made before a request is admitted.
//!
//! Owns: counting a request's prompt tokens and the completion tokens it may ask for, so
//! that `tpm` and budgets can reserve before the backend reports real `usage`.
//!
//! - OpenAI-family model names (`gpt-4o*`, `gpt-4.1*`, `gpt-5*`, `o1*`, `o3*`, `gpt-4*`,
//!   `gpt-3.5*`, `text-embedding-*`, ... as `tiktoken` maps them) are counted with the real
//!   BPE (`o200k_base` or `cl100k_base`). The BPE tables take a moment to build, so they are
//!   built once on a blocking thread ([`warm`]); until ready, the fallback is used.
//! - Any other model, and any single text over [`BPE_TEXT_LIMIT`] bytes (to bound the CPU a
//!   request can cost), uses the fallback: UTF-8 bytes / 4, rounded up.
//! - Chat: each message costs its text plus [`PER_MESSAGE`] tokens of framing, plus
//!   [`REPLY_PRIMING`] once; tool definitions and tool calls are counted as their JSON text;
//!   a non-text content part (an image, audio) counts [`PER_MEDIA_PART`].
//! - Completion: `max_completion_tokens`, else `max_tokens`, else the configured default,
//!   times `n`. Embeddings have none.
//!
//! Must not: block (no BPE build on async threads) or fail: bad input gives a rough count.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tiktoken_rs::CoreBPE;
use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};

use crate::wire::Endpoint;

pub const PER_MESSAGE: u64 = 3;
pub const REPLY_PRIMING: u64 = 3;
pub const PER_MEDIA_PART: u64 = 85;
/// Longer texts are estimated with the fallback: BPE cost grows with the text.
pub const BPE_TEXT_LIMIT: usize = 64 * 1024;

static O200K: OnceLock<&'static CoreBPE> = OnceLock::new();
static CL100K: OnceLock<&'static CoreBPE> = OnceLock::new();
static WARMING: AtomicBool = AtomicBool::new(false);

/// Builds the BPE tables once, off the async threads. Harmless to call again.
pub fn warm() {
    if WARMING.swap(true, Ordering::SeqCst) {
        return;
    }
    let build = || {
        let _ = O200K.set(tiktoken_rs::o200k_base_singleton());
        let _ = CL100K.set(tiktoken_rs::cl100k_base_singleton());
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => drop(handle.spawn_blocking(build)),
        Err(_) => drop(std::thread::Builder::new().name("weir-bpe".into()).spawn(build)),
    }
}

/// How texts of one model are counted.
#[derive(Clone, Copy)]
pub enum Counter {
    Bpe(&'static CoreBPE),
    Fallback,
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Counter::Bpe(_) => "Counter::Bpe",
            Counter::Fallback => "Counter::Fallback",
        })
    }
}

impl Counter {
    /// The counter for the first of `models` that tiktoken knows, else the fallback.
    pub fn for_models<'a>(models: impl IntoIterator<Item = &'a str>) -> Counter {
        for model in models {
            let table = match get_tokenizer(model) {
                Some(Tokenizer::O200kBase | Tokenizer::O200kHarmony) => O200K.get(),
                Some(Tokenizer::Cl100kBase | Tokenizer::P50kBase | Tokenizer::P50kEdit | Tokenizer::R50kBase) => {
                    CL100K.get()
                }
                Some(Tokenizer::Gpt2) => CL100K.get(),
                None => continue,
            };
            return table.map_or(Counter::Fallback, |bpe| Counter::Bpe(bpe));
        }
        Counter::Fallback
    }

    pub fn count(&self, text: &str) -> u64 {
        match self {
            Counter::Bpe(bpe) if text.len() <= BPE_TEXT_LIMIT => bpe.encode_ordinary(text).len() as u64,
            _ => fallback(text),
        }
    }
}

/// UTF-8 bytes / 4, rounded up.
pub fn fallback(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// A request's token estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Estimate {
    pub prompt: u64,
    pub completion: u64,
}

impl Estimate {
    pub fn total(&self) -> u64 {
        self.prompt + self.completion
    }
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, default)]
    messages: Option<Vec<Message<'a>>>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(borrow, default)]
    functions: Option<&'a RawValue>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    n: Option<u64>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
    #[serde(borrow, default)]
    function_call: Option<&'a RawValue>,
}

/// Estimates `body` (already checked by `parse_head`) for `endpoint`.
pub fn estimate(endpoint: Endpoint, body: &[u8], counter: Counter, default_max_tokens: u64) -> Estimate {
    let Ok(body) = serde_json::from_slice::<Body<'_>>(body) else {
        // parse_head accepted it, so this is a shape we do not model: count it as text.
        return Estimate { prompt: (body.len() as u64).div_ceil(4), completion: default_max_tokens };
    };
    let mut prompt = 0;
    if let Some(messages) = &body.messages {
        prompt += REPLY_PRIMING;
        for m in messages {
            prompt += PER_MESSAGE;
            prompt += m.role.as_deref().map_or(0, |r| counter.count(r));
            prompt += m.name.as_deref().map_or(0, |n| counter.count(n) + 1);
            prompt += m.content.map_or(0, |c| content_tokens(c, counter));
            for raw in [m.tool_calls, m.function_call].into_iter().flatten() {
                prompt += counter.count(raw.get());
            }
        }
    }
    for raw in [body.tools, body.functions].into_iter().flatten() {
        prompt += counter.count(raw.get());
    }
    for raw in [body.prompt, body.input].into_iter().flatten() {
        prompt += input_tokens(raw, counter);
    }
    let completion = match endpoint {
        Endpoint::Embeddings => 0,
        Endpoint::ChatCompletions | Endpoint::Completions => {
            let per_choice = body.max_completion_tokens.or(body.max_tokens).unwrap_or(default_max_tokens);
            per_choice.saturating_mul(body.n.unwrap_or(1).max(1))
        }
    };
    Estimate { prompt, completion }
}

/// A message's `content`: a string, or an array of parts (text counted, media at a flat rate).
fn content_tokens(raw: &RawValue, counter: Counter) -> u64 {
    let text = raw.get();
    if text.starts_with('"') {
        return serde_json::from_str::<Cow<'_, str>>(text).map_or_else(|_| fallback(text), |s| counter.count(&s));
    }
    #[derive(Deserialize)]
    struct Part<'a> {
        #[serde(borrow, default)]
        text: Option<Cow<'a, str>>,
    }
    match serde_json::from_str::<Vec<Part<'_>>>(text) {
        Ok(parts) => parts.iter().map(|p| p.text.as_deref().map_or(PER_MEDIA_PART, |t| counter.count(t))).sum(),
        Err(_) => fallback(text),
    }
}

/// A completions `prompt` or embeddings `input`: strings, arrays of strings, or token ids.
fn input_tokens(raw: &RawValue, counter: Counter) -> u64 {
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(value) => value_tokens(&value, counter),
        Err(_) => fallback(raw.get()),
    }
}

fn value_tokens(value: &Value, counter: Counter) -> u64 {
    match value {
        Value::String(s) => counter.count(s),
        Value::Number(_) => 1,
        Value::Array(items) => items.iter().map(|v| value_tokens(v, counter)).sum(),
        Value::Null | Value::Bool(_) | Value::Object(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bpe() -> Counter {
        Counter::Bpe(tiktoken_rs::o200k_base_singleton())
    }

    #[test]
    fn chat_counts_messages_tools_and_completion() {
        let body = br#"{"model":"gpt-4o","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"hello world"},{"type":"image_url","image_url":{"url":"x"}}]}],"max_tokens":50,"n":2}"#;
        let e = estimate(Endpoint::ChatCompletions, body, bpe(), 256);
        // priming 3 + 2×3 framing + roles (1 each) + "Be brief." (3) + "hello world" (2) + image 85
        assert_eq!(e.prompt, 3 + 6 + 2 + 3 + 2 + 85);
        assert_eq!(e.completion, 100);
        let with_tools =
            br#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#;
        let plain = br#"{"messages":[{"role":"user","content":"hi"}]}"#;
        let (a, b) = (
            estimate(Endpoint::ChatCompletions, with_tools, bpe(), 7),
            estimate(Endpoint::ChatCompletions, plain, bpe(), 7),
        );
        assert!(a.prompt > b.prompt + 5, "{a:?} vs {b:?}");
        assert_eq!(b.completion, 7);
    }

    #[test]
    fn fallback_is_bytes_over_four() {
        let body = br#"{"model":"llama","prompt":["abcdefgh","abc"],"max_completion_tokens":3,"max_tokens":9}"#;
        let e = estimate(Endpoint::Completions, body, Counter::Fallback, 256);
        assert_eq!(e, Estimate { prompt: 3, completion: 3 });
        let e = estimate(Endpoint::Embeddings, br#"{"input":[1,2,3]}"#, Counter::Fallback, 256);
        assert_eq!(e, Estimate { prompt: 3, completion: 0 });
    }

    #[test]
    fn model_names_pick_their_tokenizer() {
        assert!(matches!(Counter::for_models(["my-llama"]), Counter::Fallback));
        let _ = O200K.set(tiktoken_rs::o200k_base_singleton());
        assert!(matches!(Counter::for_models(["chat", "gpt-4o-mini"]), Counter::Bpe(_)));
    }
}
