//! One fuzz input through one entry point of `weir::fuzzing`, with the invariants that must
//! hold for every input. Shared by the fuzz targets (`fuzz/fuzz_targets/`, nightly) and the
//! corpus test (`tests/it/fuzz_corpus.rs`, stable), so both check exactly the same things.
//!
//! Owns: how an input's bytes are read (below) and the invariants; a violation panics, which
//! is a finding for libFuzzer and a failure for the test.
//! Must not: depend on anything but `weir`, `serde`, `serde_json`, `bytes` and std (the test
//! includes it by path, so it uses weir's own dependencies).
//!
//! Input formats (kept readable so corpus files can be written by hand):
//! - `parse_head`: first byte % 3 picks the endpoint (0 chat, 1 completions, 2 embeddings);
//!   the rest is the request body.
//! - `assemble`: first byte's low bit: 1 = SSE, 0 = JSON; the rest is the whole answer.
//! - `sse_filter` and `anthropic_stream`: first byte's low bit is a flag (unused by the filter,
//!   `include_usage` for the translator); the rest is the upstream body, cut into the chunks
//!   it arrives in at every `0x1f` byte (ASCII unit separator, which never occurs in SSE).
//! - `responses_stream` and `messages_stream`: first byte unused; the rest is the upstream's
//!   chat completions SSE, cut into chunks at every `0x1f` byte as above.

use serde_json::Value;
use weir::fuzzing::{
    Endpoint, MessagesStream, ResponsesStream, Shell, StreamTranslate, StreamTranslator, UsageChunkFilter, assemble,
    parse_head, read_messages_answer, read_responses_answer,
};

/// The byte at which `sse_filter` and `anthropic_stream` inputs are cut into chunks.
pub const CHUNK_CUT: u8 = 0x1f;

/// One input through one target; panics on a broken invariant.
pub type Check = fn(&[u8]);

/// The fuzz targets, by the name of their corpus directory.
pub const TARGETS: [(&str, Check); 6] = [
    ("parse_head", check_parse_head),
    ("sse_filter", check_sse_filter),
    ("assemble", check_assemble),
    ("anthropic_stream", check_anthropic_stream),
    ("responses_stream", check_responses_stream),
    ("messages_stream", check_messages_stream),
];

fn chunks(body: &[u8]) -> Vec<&[u8]> {
    body.split(|b| *b == CHUNK_CUT).collect()
}

fn joined(body: &[u8]) -> Vec<u8> {
    body.iter().copied().filter(|b| *b != CHUNK_CUT).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `parse_head` never panics; a head it accepts has a model, and the body weir sends
/// upstream (model renamed, usage asked for) is itself a request it accepts, naming the
/// upstream model, with the same `stream` and nothing left to splice.
pub fn check_parse_head(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else { return };
    let endpoint = match selector % 3 {
        0 => Endpoint::ChatCompletions,
        1 => Endpoint::Completions,
        _ => Endpoint::Embeddings,
    };
    let Ok(head) = parse_head(endpoint, body) else { return };
    assert!(!head.model.is_empty(), "an accepted head has a model");
    assert!(!head.injects_usage || head.stream, "usage is asked for only for streams");
    let body = bytes::Bytes::copy_from_slice(body);
    for upstream_model in [head.model.as_str(), "fuzz \"upstream\"\n\u{2028}"] {
        let upstream = head.body_for_upstream(&body, upstream_model);
        let again = match parse_head(endpoint, &upstream) {
            Ok(again) => again,
            Err(err) => panic!("the upstream body is refused ({err}): {:?}", String::from_utf8_lossy(&upstream)),
        };
        assert_eq!(again.model, upstream_model, "the upstream body names the upstream model");
        assert_eq!(again.stream, head.stream);
        assert_eq!(again.user, head.user);
        assert!(!again.injects_usage, "the upstream body asks for usage already");
        if !head.injects_usage && upstream_model == head.model {
            assert_eq!(upstream, body, "nothing to change: the same bytes");
        }
    }
}

/// `assemble` never panics. A JSON answer is read iff it is JSON. An SSE answer it reads
/// has the non-streamed shape, claims completeness only with a `[DONE]`, and reading that
/// shape back as JSON gives the same usage, finish reasons and model.
pub fn check_assemble(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else { return };
    let sse = selector & 1 == 1;
    let assembled = assemble(body, sse);
    if !sse {
        let parsed = serde_json::from_slice::<Value>(body).ok();
        assert_eq!(assembled.as_ref().map(|a| &*a.body), parsed.as_ref(), "JSON is read as it is");
        if let (Some(a), Some(tree)) = (&assembled, &parsed) {
            assert!(a.complete);
            // Read through borrowed views, the summary must say what the tree says.
            let model = tree.get("model").and_then(Value::as_str);
            assert_eq!(a.summary().model.as_deref(), model, "model as the tree has it");
            let reasons: Vec<&str> = tree
                .get("choices")
                .and_then(Value::as_array)
                .map(|choices| choices.iter().filter_map(|c| c.get("finish_reason").and_then(Value::as_str)).collect())
                .unwrap_or_default();
            assert_eq!(a.summary().finish_reasons, reasons, "finish reasons as the tree has them");
        }
        return;
    }
    let Some(a) = assembled else { return };
    assert!(!a.complete || contains(body, b"[DONE]"), "complete only with [DONE]");
    let choices = a.body.get("choices").and_then(Value::as_array).map_or(0, Vec::len);
    assert!(a.summary().finish_reasons.len() <= choices, "one finish reason per choice at most");
    let text = serde_json::to_vec(&a.body).unwrap_or_default();
    let Some(back) = assemble(&text, false) else { panic!("the assembled body is not JSON") };
    assert_eq!(back.usage, a.usage, "usage survives the round trip");
    assert_eq!(back.summary().finish_reasons, a.summary().finish_reasons);
    assert_eq!(back.summary().model, a.summary().model);
}

/// The SSE events of `body`: each up to and including its blank line (`\n\n` or `\n\r\n`,
/// whichever ends first), and a last one without it.
fn sse_events(mut body: &[u8]) -> Vec<&[u8]> {
    let mut events = Vec::new();
    while !body.is_empty() {
        let end = [&b"\n\n"[..], b"\n\r\n"]
            .iter()
            .filter_map(|sep| body.windows(sep.len()).position(|w| w == *sep).map(|i| i + sep.len()))
            .min()
            .unwrap_or(body.len());
        let (event, rest) = body.split_at(end);
        events.push(event);
        body = rest;
    }
    events
}

/// The JSON of an event's `data:` lines has no choices and a usage that is not `null`.
/// The usage is taken as JSON text, not read (a lone surrogate in it is still usage).
fn is_usage_event(event: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct UsageEvent<'a> {
        choices: Vec<serde::de::IgnoredAny>,
        #[serde(borrow)]
        usage: &'a serde_json::value::RawValue,
    }
    let Ok(text) = std::str::from_utf8(event) else { return false };
    let data: Vec<&str> =
        text.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| d.strip_prefix(' ').unwrap_or(d)).collect();
    let data = data.join("\n");
    match serde_json::from_str::<UsageEvent<'_>>(&data) {
        Ok(event) => event.choices.is_empty() && event.usage.get() != "null",
        Err(_) => false,
    }
}

/// `event` without each `,"usage":null` that closes its JSON line (followed by `}` and a line end).
fn without_closing_null_usage(event: &[u8]) -> Vec<u8> {
    const NULL_USAGE: &[u8] = b",\"usage\":null";
    let mut out = Vec::with_capacity(event.len());
    let mut at = 0;
    while at < event.len() {
        let rest = &event[at..];
        let after = rest.get(NULL_USAGE.len()..).unwrap_or_default();
        if rest.starts_with(NULL_USAGE) && (after.starts_with(b"}\n") || after.starts_with(b"}\r")) {
            at += NULL_USAGE.len();
        } else {
            out.push(event[at]);
            at += 1;
        }
    }
    out
}

/// The filter's output for a stream that arrives in `chunks`. The inputs are far shorter
/// than the event limit (`MAX_EVENT`), so a refused event is a finding.
fn run_filter(chunks: &[&[u8]]) -> Vec<u8> {
    let mut filter = UsageChunkFilter::default();
    let mut out = Vec::new();
    for chunk in chunks {
        match filter.filter(bytes::Bytes::copy_from_slice(chunk)) {
            Ok(passed) => out.extend_from_slice(&passed),
            Err(err) => panic!("{err} in a {}-byte stream", chunks.iter().map(|c| c.len()).sum::<usize>()),
        }
    }
    out.extend_from_slice(&filter.finish());
    out
}

/// The usage filter never panics; what it lets through does not depend on how the stream
/// was cut into chunks; and its output is a subset of its input events, in order: each
/// event kept as it is or without its closing `,"usage":null`, or dropped only if it is the
/// usage-only event (the blank lines before it stay).
pub fn check_sse_filter(data: &[u8]) {
    let Some((_, body)) = data.split_first() else { return };
    let whole = joined(body);
    let out = run_filter(&chunks(body));
    assert_eq!(out, run_filter(&[&whole]), "the output does not depend on the chunking");
    let mut rest = &out[..];
    for event in sse_events(&whole) {
        // Blank lines before an event carry nothing and always pass.
        let blank = event.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
        let (blank_lines, event) = event.split_at(blank);
        match rest.strip_prefix(blank_lines) {
            Some(tail) => rest = tail,
            None => panic!("blank lines were dropped before {:?}", String::from_utf8_lossy(event)),
        }
        let stripped = without_closing_null_usage(event);
        if let Some(tail) = rest.strip_prefix(event) {
            rest = tail;
        } else if let Some(tail) = rest.strip_prefix(&stripped[..]) {
            rest = tail;
        } else {
            assert!(
                is_usage_event(event),
                "a non-usage event was dropped or changed: {:?}",
                String::from_utf8_lossy(event)
            );
        }
    }
    assert!(rest.is_empty(), "the output has bytes that were not in the input: {:?}", String::from_utf8_lossy(rest));
}

/// The JSON of each event in an Anthropic stream (read independently of the translator:
/// `data:` lines joined, an event ends at a blank line or the end of the body).
fn anthropic_events(body: &[u8]) -> Vec<Value> {
    let mut events = Vec::new();
    let mut data: Option<Vec<u8>> = None;
    let lines = body.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    for line in lines.chain([&b""[..]]) {
        if line.is_empty() {
            if let Some(json) = data.take().and_then(|d| serde_json::from_slice(&d).ok()) {
                events.push(json);
            }
        } else if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            let buf = data.get_or_insert_with(Vec::new);
            if !buf.is_empty() {
                buf.push(b'\n');
            }
            buf.extend_from_slice(value);
        }
    }
    events
}

struct Translated {
    out: Vec<u8>,
    ok: bool,
}

/// A stream translator as the checks drive it: bytes in, client bytes out, `false` on error.
trait Translate {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> bool;
    fn finish(&mut self, out: &mut Vec<u8>) -> bool;
}

impl Translate for StreamTranslator {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> bool {
        StreamTranslator::push(self, chunk, out).is_ok()
    }
    fn finish(&mut self, out: &mut Vec<u8>) -> bool {
        StreamTranslator::finish(self, out).is_ok()
    }
}

impl Translate for Box<dyn StreamTranslate> {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> bool {
        StreamTranslate::push(self.as_mut(), chunk, out).is_ok()
    }
    fn finish(&mut self, out: &mut Vec<u8>) -> bool {
        StreamTranslate::finish(self.as_mut(), out).is_ok()
    }
}

/// Feeds `chunks` through `translator`, then ends it, stopping at the first error.
fn drive(mut translator: impl Translate, chunks: &[&[u8]]) -> Translated {
    let mut out = Vec::new();
    for chunk in chunks {
        if !translator.push(chunk, &mut out) {
            return Translated { out, ok: false };
        }
    }
    let ok = translator.finish(&mut out);
    Translated { out, ok }
}

fn run_translator(include_usage: bool, chunks: &[&[u8]]) -> Translated {
    drive(StreamTranslator::new(include_usage, 1_700_000_000), chunks)
}

/// The Anthropic translator never panics; its output does not depend on the chunking; it
/// writes whole OpenAI chunk events only; it never invents a terminal event (`[DONE]` once,
/// last, only after a `message_stop` came in, and exactly when the stream ends well; a
/// finish reason only from a `stop_reason`); and a stream that ends well assembles into a
/// complete answer.
pub fn check_anthropic_stream(data: &[u8]) {
    let Some((&flags, body)) = data.split_first() else { return };
    let include_usage = flags & 1 == 1;
    let whole = joined(body);
    let translated = run_translator(include_usage, &chunks(body));
    let at_once = run_translator(include_usage, &[&whole]);
    assert_eq!(translated.out, at_once.out, "the output does not depend on the chunking");
    assert_eq!(translated.ok, at_once.ok);

    let Translated { out, ok } = translated;
    let sent = anthropic_events(&whole);
    let events = sse_events(&out);
    let mut done = 0;
    let mut usage_chunks = 0;
    for (i, event) in events.iter().enumerate() {
        let Some(data) = event.strip_prefix(b"data: ").and_then(|e| e.strip_suffix(b"\n\n")) else {
            panic!("not a whole data event: {:?}", String::from_utf8_lossy(event));
        };
        if data == b"[DONE]" {
            done += 1;
            assert_eq!(i + 1, events.len(), "[DONE] is the last event");
            continue;
        }
        let chunk: Value = match serde_json::from_slice(data) {
            Ok(chunk) => chunk,
            Err(err) => panic!("a chunk is not JSON ({err}): {:?}", String::from_utf8_lossy(data)),
        };
        assert_eq!(chunk.get("object").and_then(Value::as_str), Some("chat.completion.chunk"));
        let choices = chunk.get("choices").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
        if choices.is_empty() {
            usage_chunks += 1;
            assert!(chunk.get("usage").is_some_and(Value::is_object), "a chunk without choices carries usage");
        }
        if choices.iter().any(|c| c.get("finish_reason").is_some_and(|r| !r.is_null())) {
            let stop_reason = |e: &Value| e.pointer("/delta/stop_reason").is_some_and(Value::is_string);
            assert!(sent.iter().any(stop_reason), "a finish reason only from a stop_reason");
        }
    }
    assert!(done <= 1, "[DONE] at most once");
    assert_eq!(ok, done == 1, "[DONE] exactly when the stream ends well");
    if done == 1 {
        let stop = |e: &Value| e.get("type").and_then(Value::as_str) == Some("message_stop");
        assert!(sent.iter().any(stop), "[DONE] only after a message_stop");
    }
    assert_eq!(usage_chunks, usize::from(include_usage && ok), "the usage chunk once, when asked for");
    if ok {
        let assembled = assemble(&out, true);
        assert!(assembled.is_some_and(|a| a.complete), "a stream that ended well assembles complete");
    }
}

/// One inbound API's stream translator, as its fuzz target sees it.
struct InboundApi {
    new: fn() -> Box<dyn StreamTranslate>,
    /// The events that end a stream well.
    terminal: &'static [&'static str],
    /// Reads the client's stream back into the API's answer (as the request path does).
    reads_back: fn(&[u8]) -> bool,
}

const RESPONSES: InboundApi = InboundApi {
    new: || {
        let shell = Shell {
            id: "resp_fuzz".into(),
            created_at: 1_700_000_000,
            model: "m".into(),
            echo: serde_json::Map::new(),
        };
        Box::new(ResponsesStream::new(shell, 1_700_000_001))
    },
    terminal: &["response.completed", "response.incomplete"],
    reads_back: |out| read_responses_answer(out, true).is_some(),
};

const MESSAGES: InboundApi = InboundApi {
    new: || Box::new(MessagesStream::new("msg_fuzz".into(), "m".into(), 7)),
    terminal: &["message_stop"],
    reads_back: |out| read_messages_answer(out, true).is_some(),
};

fn run_inbound(api: &InboundApi, chunks: &[&[u8]]) -> Translated {
    drive((api.new)(), chunks)
}

/// The client's events: each must be exactly `event: NAME\ndata: JSON\n\n` with the JSON
/// an object whose `type` is NAME.
fn typed_events(out: &[u8]) -> Vec<(String, Value)> {
    sse_events(out)
        .into_iter()
        .map(|event| {
            let text = match std::str::from_utf8(event) {
                Ok(text) => text,
                Err(err) => panic!("an event is not UTF-8 ({err}): {:?}", String::from_utf8_lossy(event)),
            };
            let Some((name, data)) = text
                .strip_prefix("event: ")
                .and_then(|t| t.strip_suffix("\n\n"))
                .and_then(|t| t.split_once("\ndata: "))
            else {
                panic!("not a whole typed event: {text:?}");
            };
            let data: Value = match serde_json::from_str(data) {
                Ok(data) => data,
                Err(err) => panic!("an event's data is not JSON ({err}): {data:?}"),
            };
            assert_eq!(data.get("type").and_then(Value::as_str), Some(name), "the data's type names the event");
            (name.to_owned(), data)
        })
        .collect()
}

/// Both inbound translators never panic; their output does not depend on the chunking; it
/// is whole typed events only; a terminal or error event comes at most once, last, and
/// exactly one of them ends every stream (terminal iff the stream ended well, which needs
/// the upstream's `[DONE]`); and a stream that ended well reads back as the API's answer.
/// Returns the client's events for the API's own checks.
fn check_inbound(api: &InboundApi, data: &[u8]) -> Vec<(String, Value)> {
    let Some((_, body)) = data.split_first() else { return Vec::new() };
    let whole = joined(body);
    let translated = run_inbound(api, &chunks(body));
    let at_once = run_inbound(api, &[&whole]);
    assert_eq!(translated.out, at_once.out, "the output does not depend on the chunking");
    assert_eq!(translated.ok, at_once.ok);

    let Translated { out, ok } = translated;
    let events = typed_events(&out);
    let ends: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, (name, _))| name == "error" || api.terminal.contains(&name.as_str()))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(ends, [events.len() - 1], "one terminal or error event, last: {:?}", String::from_utf8_lossy(&out));
    let ended_well = events.last().is_some_and(|(name, _)| name != "error");
    assert_eq!(ok, ended_well, "a terminal event exactly when the stream ended well");
    if ok {
        assert!(contains(&whole, b"[DONE]"), "ended well only after the upstream's [DONE]");
        assert!((api.reads_back)(&out), "a stream that ended well reads back: {:?}", String::from_utf8_lossy(&out));
    }
    events
}

/// Responses events also number themselves 0, 1, 2, ... in `sequence_number`.
pub fn check_responses_stream(data: &[u8]) {
    for (i, (_, event)) in check_inbound(&RESPONSES, data).iter().enumerate() {
        assert_eq!(event.get("sequence_number").and_then(Value::as_u64), Some(i as u64), "sequence numbers count up");
    }
}

/// Messages content blocks are also started once each, in index order, and their deltas and
/// stop come while they are the open block.
pub fn check_messages_stream(data: &[u8]) {
    let mut open: Option<u64> = None;
    let mut next = 0u64;
    for (name, event) in check_inbound(&MESSAGES, data) {
        let index = event.get("index").and_then(Value::as_u64);
        match name.as_str() {
            "content_block_start" => {
                assert_eq!(open, None, "a block starts while none is open");
                assert_eq!(index, Some(next), "blocks start in index order");
                open = index;
                next += 1;
            }
            "content_block_delta" => assert!(index.is_some() && index == open, "a delta for the open block"),
            "content_block_stop" => {
                assert!(index.is_some() && index == open, "the open block stops");
                open = None;
            }
            "message_delta" | "message_stop" => assert_eq!(open, None, "every block stops before the message ends"),
            _ => {}
        }
    }
}
