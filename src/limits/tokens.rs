//! Token estimates made before a request is admitted.
//!
//! Owns: counting a request's prompt tokens and the completion tokens it may ask for, so
//! that `tpm` and budgets can reserve before the backend reports real `usage`.
//!
//! - OpenAI-family model names (`gpt-4o*`, `gpt-4.1*`, `gpt-5*`, `o1*`, `o3*`, `gpt-4*`,
//!   `gpt-3.5*`, `text-embedding-*`, ... as `tiktoken` maps them) are counted with the real
//!   BPE (`o200k_base` or `cl100k_base`, kept in [`super::bpe`]'s flat tables: about
//!   5 MiB each). A table takes ~150 ms to build, so it is built once on a blocking thread
//!   ([`warm`]), and only those a configured model counts with; until ready, the fallback
//!   is used.
//! - Any other model, any single text over [`BPE_TEXT_LIMIT`] bytes, and whatever text of a
//!   request remains once [`BPE_REQUEST_LIMIT`] bytes of it have been encoded (the estimate
//!   runs on the request's task: this bounds the CPU a request can cost there), uses the
//!   fallback: UTF-8 bytes / 4, rounded up.
//! - BPE counts of recent texts are remembered ([`MEMO`], 64 KiB): a conversation's earlier
//!   turns and an application's system prompt are counted once, not on every request.
//! - Chat: each message costs its text plus [`PER_MESSAGE`] tokens of framing, plus
//!   [`REPLY_PRIMING`] once; tool definitions and tool calls are counted as their JSON text;
//!   a non-text content part (an image, audio) counts [`PER_MEDIA_PART`].
//! - Completion: `max_completion_tokens`, else `max_tokens`, else the configured default,
//!   times `n`. Embeddings have none.
//! - Sums saturate: a client's `max_tokens: 2^64-1` with `n: 4` is an enormous reservation
//!   (refused by `tpm`), never a small one by wrapping.
//!
//! Must not: block (no BPE build on async threads) or fail on text: a body of a shape not
//! modelled gives a rough count. Only the counts it reserves by (`max_tokens`,
//! `max_completion_tokens`, `n`) must be integers in range ([`BadCount`]), since guessing
//! them would reserve something other than what the upstream is asked for.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, OnceLock};

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};

use super::bpe::Bpe;
use crate::wire::Endpoint;

pub const PER_MESSAGE: u64 = 3;
pub const REPLY_PRIMING: u64 = 3;
pub const PER_MEDIA_PART: u64 = 85;
/// Longer texts are estimated with the fallback: BPE cost grows with the text.
pub const BPE_TEXT_LIMIT: usize = 64 * 1024;
/// Text bytes of one request encoded with the BPE at most; the rest is counted by bytes.
pub const BPE_REQUEST_LIMIT: usize = 256 * 1024;
/// OpenAI's range for `n`.
pub const MAX_CHOICES: u64 = 128;

static O200K: OnceLock<Bpe> = OnceLock::new();
static CL100K: OnceLock<Bpe> = OnceLock::new();
static WARMING_O200K: AtomicBool = AtomicBool::new(false);
static WARMING_CL100K: AtomicBool = AtomicBool::new(false);

/// The BPE tables weir knows. Only the ones a configured model counts with are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    O200k,
    Cl100k,
}

impl Table {
    /// The table of the first of `models` that tiktoken knows.
    fn for_models<'a>(models: impl IntoIterator<Item = &'a str>) -> Option<Table> {
        models.into_iter().find_map(|model| match get_tokenizer(model)? {
            Tokenizer::O200kBase | Tokenizer::O200kHarmony => Some(Table::O200k),
            Tokenizer::Cl100kBase
            | Tokenizer::P50kBase
            | Tokenizer::P50kEdit
            | Tokenizer::R50kBase
            | Tokenizer::Gpt2 => Some(Table::Cl100k),
        })
    }

    fn get(self) -> Option<&'static Bpe> {
        self.cell().get()
    }

    fn cell(self) -> &'static OnceLock<Bpe> {
        match self {
            Table::O200k => &O200K,
            Table::Cl100k => &CL100K,
        }
    }

    fn build(self) -> Result<Bpe, super::bpe::BuildError> {
        match self {
            Table::O200k => Bpe::o200k(),
            Table::Cl100k => Bpe::cl100k(),
        }
    }

    /// Builds the table once, off the async threads. Harmless to call again.
    fn warm(self) {
        let warming = match self {
            Table::O200k => &WARMING_O200K,
            Table::Cl100k => &WARMING_CL100K,
        };
        if warming.swap(true, Ordering::SeqCst) {
            return;
        }
        let build = move || match self.build() {
            Ok(bpe) => drop(self.cell().set(bpe)),
            Err(error) => tracing::warn!(%error, table = ?self, "BPE table not built: counting tokens by bytes"),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(build)),
            Err(_) => drop(std::thread::Builder::new().name("weir-bpe".into()).spawn(build)),
        }
    }
}

/// Builds the BPE table each model group counts with (see [`Counter::for_models`]).
pub fn warm<'a, M: IntoIterator<Item = &'a str>>(groups: impl IntoIterator<Item = M>) {
    for table in groups.into_iter().filter_map(Table::for_models) {
        table.warm();
    }
}

/// How texts of one model are counted.
#[derive(Clone, Copy)]
pub enum Counter {
    Bpe(&'static Bpe),
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
    /// The counter for the first of `models` that tiktoken knows, else the fallback (also
    /// while its table is being built).
    pub fn for_models<'a>(models: impl IntoIterator<Item = &'a str>) -> Counter {
        Table::for_models(models).and_then(Table::get).map_or(Counter::Fallback, Counter::Bpe)
    }

    pub fn count(&self, text: &str) -> u64 {
        match self {
            Counter::Bpe(bpe) if text.len() <= BPE_TEXT_LIMIT => {
                MEMO.count(bpe, text, || bpe.count(text).map_or_else(|| fallback(text), len_u64))
            }
            _ => fallback(text),
        }
    }
}

/// Slots of [`MEMO`]: 64 KiB.
const MEMO_SLOTS: usize = 8192;
/// Bits of a slot's word that hold the count (texts of up to [`BPE_TEXT_LIMIT`] bytes have
/// fewer tokens); the others hold a tag of the text's hash.
const MEMO_COUNT_BITS: u32 = 20;

/// BPE counts of texts seen recently. Chat clients resend the whole conversation every turn,
/// and most requests of an application share its system prompt and tool definitions, so
/// most texts of a request were counted before: those cost a hash instead of a BPE pass.
static MEMO: Memo = Memo { slots: [const { AtomicU64::new(0) }; MEMO_SLOTS] };

/// A direct-mapped table of `(hash tag, count)` words, lock-free: a text whose slot holds
/// another text's tag is counted and takes the slot over. A wrong hit needs a 57-bit hash
/// collision, and costs only an estimate (settled against the reported usage anyway). The
/// hash is keyed at random per process: with a known key a client could search offline for
/// a long text that collides with a short one and have it admitted at the short one's count.
struct Memo {
    slots: [AtomicU64; MEMO_SLOTS],
}

/// The keys of [`Memo`]'s hash, drawn once per process.
static MEMO_KEYS: LazyLock<std::hash::RandomState> = LazyLock::new(std::hash::RandomState::new);

impl Memo {
    fn count(&self, table: &'static Bpe, text: &str, encode: impl FnOnce() -> u64) -> u64 {
        let hash = std::hash::BuildHasher::hash_one(&*MEMO_KEYS, (std::ptr::from_ref(table), text));
        let Some(slot) = self.slots.get(usize::try_from(hash).unwrap_or_default() % MEMO_SLOTS) else {
            return encode();
        };
        let tag = hash >> MEMO_COUNT_BITS;
        let word = slot.load(Ordering::Relaxed);
        if word != 0 && word >> MEMO_COUNT_BITS == tag {
            return word & ((1 << MEMO_COUNT_BITS) - 1);
        }
        let count = encode();
        if count < 1 << MEMO_COUNT_BITS {
            slot.store(tag << MEMO_COUNT_BITS | count, Ordering::Relaxed);
        }
        count
    }
}

/// Counts the texts of one request: with its counter until [`BPE_REQUEST_LIMIT`] bytes have
/// been encoded, then by bytes.
struct Meter {
    counter: Counter,
    left: std::cell::Cell<usize>,
}

impl Meter {
    fn new(counter: Counter) -> Meter {
        Meter { counter, left: std::cell::Cell::new(BPE_REQUEST_LIMIT) }
    }

    fn count(&self, text: &str) -> u64 {
        let Some(left) = self.left.get().checked_sub(text.len()) else { return fallback(text) };
        if matches!(self.counter, Counter::Bpe(_)) && text.len() <= BPE_TEXT_LIMIT {
            self.left.set(left);
        }
        self.counter.count(text)
    }
}

/// UTF-8 bytes / 4, rounded up.
pub fn fallback(text: &str) -> u64 {
    len_u64(text.len()).div_ceil(4)
}

fn len_u64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

/// A count field out of range, worded as OpenAI words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCount {
    pub param: &'static str,
    pub reason: String,
}

/// A request's token estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Estimate {
    pub prompt: u64,
    pub completion: u64,
}

impl Estimate {
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
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
    #[serde(borrow, default)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    n: Option<&'a RawValue>,
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

/// Estimates `body` (already checked by `parse_head`) for `endpoint`; `Err` when a count
/// it reserves by is not an integer in range.
pub fn estimate(
    endpoint: Endpoint,
    body: &[u8],
    counter: Counter,
    default_max_tokens: u64,
) -> Result<Estimate, BadCount> {
    let Ok(body) = serde_json::from_slice::<Body<'_>>(body) else {
        // parse_head accepted it, so this is a shape we do not model: count it as text.
        return Ok(Estimate { prompt: len_u64(body.len()).div_ceil(4), completion: default_max_tokens });
    };
    let completion = match endpoint {
        Endpoint::Embeddings => 0,
        // The inbound APIs are estimated on their chat translation.
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Responses | Endpoint::Messages => {
            let max_completion = count_field(body.max_completion_tokens, "max_completion_tokens", 0, u64::MAX)?;
            let max_tokens = count_field(body.max_tokens, "max_tokens", 0, u64::MAX)?;
            let n = count_field(body.n, "n", 1, MAX_CHOICES)?;
            max_completion.or(max_tokens).unwrap_or(default_max_tokens).saturating_mul(n.unwrap_or(1))
        }
    };
    let counter = Meter::new(counter);
    let counter = &counter;
    let mut prompt = 0u64;
    let mut add = |tokens: u64| prompt = prompt.saturating_add(tokens);
    if let Some(messages) = &body.messages {
        add(REPLY_PRIMING);
        for m in messages {
            add(PER_MESSAGE);
            add(m.role.as_deref().map_or(0, |r| counter.count(r)));
            add(m.name.as_deref().map_or(0, |n| counter.count(n).saturating_add(1)));
            add(m.content.map_or(0, |c| content_tokens(c, counter)));
            for raw in [m.tool_calls, m.function_call].into_iter().flatten() {
                add(counter.count(raw.get()));
            }
        }
    }
    for raw in [body.tools, body.functions].into_iter().flatten() {
        add(counter.count(raw.get()));
    }
    for raw in [body.prompt, body.input].into_iter().flatten() {
        add(input_tokens(raw, counter));
    }
    Ok(Estimate { prompt, completion })
}

/// An optional integer field in `min..=max` (`null` is absent).
fn count_field(raw: Option<&RawValue>, param: &'static str, min: u64, max: u64) -> Result<Option<u64>, BadCount> {
    let Some(raw) = raw.filter(|r| r.get() != "null") else { return Ok(None) };
    let bad = |reason: String| Err(BadCount { param, reason });
    match serde_json::from_str::<i128>(raw.get()) {
        Ok(value) if value < i128::from(min) => {
            bad(format!("integer below minimum value. Expected a value >= {min}, but got {value} instead."))
        }
        Ok(value) if value > i128::from(max) => {
            bad(format!("integer above maximum value. Expected a value <= {max}, but got {value} instead."))
        }
        Ok(value) => Ok(u64::try_from(value).ok()),
        Err(_) => {
            let shown: String = raw.get().chars().take(40).collect();
            bad(format!("expected an integer, but got {shown} instead."))
        }
    }
}

fn sum(counts: impl Iterator<Item = u64>) -> u64 {
    counts.fold(0, u64::saturating_add)
}

/// A message's `content`: a string, or an array of parts (text counted, media at a flat rate).
fn content_tokens(raw: &RawValue, counter: &Meter) -> u64 {
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
        Ok(parts) => sum(parts.iter().map(|p| p.text.as_deref().map_or(PER_MEDIA_PART, |t| counter.count(t)))),
        Err(_) => fallback(text),
    }
}

/// A completions `prompt` or embeddings `input`: strings, arrays of strings, or token ids.
fn input_tokens(raw: &RawValue, counter: &Meter) -> u64 {
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(value) => value_tokens(&value, counter),
        Err(_) => fallback(raw.get()),
    }
}

fn value_tokens(value: &Value, counter: &Meter) -> u64 {
    match value {
        Value::String(s) => counter.count(s),
        Value::Number(_) => 1,
        Value::Array(items) => sum(items.iter().map(|v| value_tokens(v, counter))),
        Value::Null | Value::Bool(_) | Value::Object(_) => 0,
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing, reason = "tests use known small numbers")]
mod tests {
    use super::*;

    /// The real `o200k` table, built once for all tests (the global one may not be).
    fn o200k() -> &'static Bpe {
        static TABLE: OnceLock<Bpe> = OnceLock::new();
        TABLE.get_or_init(|| Bpe::o200k().unwrap())
    }

    fn cl100k() -> &'static Bpe {
        static TABLE: OnceLock<Bpe> = OnceLock::new();
        TABLE.get_or_init(|| Bpe::cl100k().unwrap())
    }

    fn bpe() -> Counter {
        Counter::Bpe(o200k())
    }

    #[test]
    fn chat_counts_messages_tools_and_completion() {
        let body = br#"{"model":"gpt-4o","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"hello world"},{"type":"image_url","image_url":{"url":"x"}}]}],"max_tokens":50,"n":2}"#;
        let e = estimate(Endpoint::ChatCompletions, body, bpe(), 256).unwrap();
        // priming 3 + 2×3 framing + roles (1 each) + "Be brief." (3) + "hello world" (2) + image 85
        assert_eq!(e.prompt, 3 + 6 + 2 + 3 + 2 + 85);
        assert_eq!(e.completion, 100);
        let with_tools =
            br#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#;
        let plain = br#"{"messages":[{"role":"user","content":"hi"}]}"#;
        let (a, b) = (
            estimate(Endpoint::ChatCompletions, with_tools, bpe(), 7).unwrap(),
            estimate(Endpoint::ChatCompletions, plain, bpe(), 7).unwrap(),
        );
        assert!(a.prompt > b.prompt + 5, "{a:?} vs {b:?}");
        assert_eq!(b.completion, 7);
    }

    #[test]
    fn the_memo_counts_a_text_once_per_table() {
        let memo = Memo { slots: [const { AtomicU64::new(0) }; MEMO_SLOTS] };
        let (o200k, cl100k) = (o200k(), cl100k());
        let encodes = std::cell::Cell::new(0);
        let count = |table, text| {
            memo.count(table, text, || {
                encodes.set(encodes.get() + 1);
                41
            })
        };
        assert_eq!(count(o200k, "You are a helpful assistant."), 41);
        assert_eq!(count(o200k, "You are a helpful assistant."), 41);
        assert_eq!(encodes.get(), 1, "the second count is a hit");
        count(cl100k, "You are a helpful assistant.");
        count(o200k, "Another text.");
        assert_eq!(encodes.get(), 3, "other tables and texts are counted");
        // Through the real counter, a memoised count is the BPE's.
        let text = "Résumé: the quick brown fox 🦊 jumps over the lazy dog.";
        assert_eq!(bpe().count(text), bpe().count(text));
        assert_eq!(bpe().count(text), len_u64(tiktoken_rs::o200k_base_singleton().encode_ordinary(text).len()));
    }

    #[test]
    fn fallback_is_bytes_over_four() {
        let body = br#"{"model":"llama","prompt":["abcdefgh","abc"],"max_completion_tokens":3,"max_tokens":9}"#;
        let e = estimate(Endpoint::Completions, body, Counter::Fallback, 256).unwrap();
        assert_eq!(e, Estimate { prompt: 3, completion: 3 });
        let e = estimate(Endpoint::Embeddings, br#"{"input":[1,2,3]}"#, Counter::Fallback, 256).unwrap();
        assert_eq!(e, Estimate { prompt: 3, completion: 0 });
    }

    #[test]
    fn counts_saturate_and_bad_counts_name_their_field() {
        let chat = |extra: &str| {
            let body = format!(r#"{{"messages":[{{"role":"user","content":"hi"}}]{extra}}}"#);
            estimate(Endpoint::ChatCompletions, body.as_bytes(), Counter::Fallback, 16)
        };
        let huge = chat(r#","max_tokens":18446744073709551615,"n":4"#).unwrap();
        assert_eq!((huge.completion, huge.total()), (u64::MAX, u64::MAX));
        let big = chat(r#","max_completion_tokens":9223372036854775807,"n":4"#).unwrap();
        assert_eq!(big.completion, u64::MAX);
        assert_eq!(chat(r#","max_tokens":null,"n":null"#).unwrap().completion, 16);
        for (extra, param) in [
            (r#","max_tokens":-1"#, "max_tokens"),
            (r#","max_tokens":18446744073709551616"#, "max_tokens"),
            (r#","max_completion_tokens":"5""#, "max_completion_tokens"),
            (r#","max_tokens":1.5"#, "max_tokens"),
            (r#","n":0"#, "n"),
            (r#","n":129"#, "n"),
        ] {
            let err = chat(extra).unwrap_err();
            assert_eq!(err.param, param, "{extra}: {err:?}");
        }
        assert!(chat(r#","n":0"#).unwrap_err().reason.contains(">= 1"));
        // Embeddings reserve no completion, whatever they say.
        assert!(estimate(Endpoint::Embeddings, br#"{"input":"x","n":0}"#, Counter::Fallback, 16).is_ok());
    }

    #[test]
    fn bpe_work_per_request_is_capped() {
        // 8 texts of 60 KiB: the first four (240 KiB) are encoded, the rest counted by bytes.
        let text = "hello ".repeat(10 * 1024);
        let meter = Meter::new(bpe());
        let counts: Vec<u64> = (0..8).map(|_| meter.count(&text)).collect();
        let bytes = fallback(&text);
        assert!(counts[..4].iter().all(|&c| c < bytes), "BPE counts: {counts:?}");
        assert!(counts[4..].iter().all(|&c| c == bytes), "byte counts: {counts:?}");
        // Without a BPE nothing is used up.
        let meter = Meter::new(Counter::Fallback);
        assert!((0..8).all(|_| meter.count(&text) == bytes));
        assert_eq!(meter.left.get(), BPE_REQUEST_LIMIT);
    }

    #[test]
    fn model_names_pick_their_tokenizer() {
        assert!(matches!(Counter::for_models(["my-llama"]), Counter::Fallback));
        let _ = O200K.set(Bpe::o200k().unwrap());
        assert!(matches!(Counter::for_models(["chat", "gpt-4o-mini"]), Counter::Bpe(_)));
    }
}
