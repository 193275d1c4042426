//! Checking a client's request: one parse of only the fields routing needs, and the
//! model-name splice that lets the original bytes go upstream.
//!
//! Owns: [`RequestHead`] and [`parse_head`], and [`RequestError`] for everything wrong with
//! a request's body (reading it included, see `body`).
//! Must not: parse more than routing, limits and the cache need.

use std::borrow::Cow;
use std::ops::Range;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::Endpoint;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request body is larger than the {limit} bytes allowed (server.max_body)")]
    BodyTooLarge { limit: u64 },
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    #[error("the request body took longer than {0:?} to arrive")]
    BodyTimeout(Duration),
    #[error(
        "too many request bodies are being received at once (this {scope}'s budget of {capacity} bytes is in use); retry shortly"
    )]
    BodiesOverBudget { scope: &'static str, capacity: u64 },
    #[error("we could not parse the JSON body of your request: {0}")]
    InvalidJson(String),
    #[error("the JSON body of your request nests deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("{message}")]
    InvalidField { param: String, message: String },
}

/// What routing, limits and logging need from a request; everything else stays in the bytes.
#[derive(Debug)]
pub struct RequestHead {
    pub model: String,
    /// Byte range of the `model` value (quotes included) in the body.
    model_span: Range<usize>,
    pub stream: bool,
    pub user: Option<String>,
    /// Set for streamed chat requests that did not ask for `stream_options.include_usage`:
    /// weir asks for it upstream (limits and metrics need the usage) and takes the extra
    /// usage-only chunk out of the client's stream.
    pub injects_usage: bool,
    /// The edit that asks for usage: where in the body, and the bytes that go there.
    usage_splice: Option<(Range<usize>, Vec<u8>)>,
    /// A chat request's `prompt` (a weir extension: a versioned prompt to render), as sent.
    pub prompt: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WireHead<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    messages: Option<Vec<WireMessage<'a>>>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    /// Kept raw (even `null`) to know where it is when usage must be asked for.
    #[serde(borrow, default, deserialize_with = "raw_even_null")]
    stream_options: Option<&'a RawValue>,
}

fn raw_even_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow)]
    #[expect(dead_code, reason = "deserialised only to check that every message has a string role")]
    role: Cow<'a, str>,
}

/// Deepest nesting of arrays and objects a request body may have. Records embed a body one
/// or two levels down and are read back with serde_json (whose own limit is 128), so a body
/// accepted here can always be read back from a dataset.
pub const MAX_JSON_DEPTH: usize = 100;
/// Longest `model` a request may name; no real model name comes close.
pub const MAX_MODEL_LEN: usize = 256;

/// Refuses JSON nested deeper than `limit` levels, and strings with a lone UTF-16 surrogate
/// escape (`"\ud800"`): one pass over the bytes counting brackets outside strings, before any
/// parser. serde skips the fields weir does not read without a depth limit and without
/// checking surrogates, so either would otherwise be accepted, sent upstream and recorded in
/// a form no reader (serde_json's included) takes back.
/// Says nothing about validity otherwise: malformed JSON is the parser's to report.
pub fn check_structure(body: &[u8], limit: usize) -> Result<(), RequestError> {
    let mut depth: usize = 0;
    let mut in_string = false;
    let mut at = 0;
    while let Some(&byte) = body.get(at) {
        at += 1;
        if in_string {
            match byte {
                b'\\' if body.get(at) == Some(&b'u') => at = after_unicode_escape(body, at - 1)?,
                b'\\' => at += 1,
                b'"' => in_string = false,
                // Most of a chat body is the text of strings: skip to its next quote or escape.
                _ => at = memchr::memchr2(b'"', b'\\', &body[at..]).map_or(body.len(), |skip| at + skip),
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth = depth.saturating_add(1);
                if depth > limit {
                    return Err(RequestError::TooDeep { limit });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Where scanning resumes after the `\uXXXX` escape at `at`, which must not be half of a
/// surrogate pair: a high surrogate is followed by a low one, a low one is never alone.
/// Hex digits that are not are the parser's to report.
fn after_unicode_escape(body: &[u8], at: usize) -> Result<usize, RequestError> {
    let unit = |at: usize| {
        let digits = body.get(at + 2..at + 6)?;
        u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    let lone = || RequestError::InvalidJson(format!("lone UTF-16 surrogate in a \\u escape at byte {at}"));
    match unit(at) {
        Some(0xD800..=0xDBFF) => match (body.get(at + 6..at + 8), unit(at + 6)) {
            (Some(b"\\u"), Some(0xDC00..=0xDFFF)) => Ok(at + 12),
            _ => Err(lone()),
        },
        Some(0xDC00..=0xDFFF) => Err(lone()),
        _ => Ok(at + 2),
    }
}

/// Parses `body` once, checking the fields OpenAI would refuse to go without.
pub fn parse_head(endpoint: Endpoint, body: &[u8]) -> Result<RequestHead, RequestError> {
    // serde would accept an array for a struct (fields by position); OpenAI wants an object.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(RequestError::InvalidJson("the request body must be a JSON object".into()));
    }
    check_structure(body, MAX_JSON_DEPTH)?;
    // serde skips the fields weir does not read without checking their text: without this, a
    // string that is not UTF-8 would go upstream and into datasets.
    if let Err(err) = std::str::from_utf8(body) {
        return Err(RequestError::InvalidJson(format!(
            "the request body is not valid UTF-8 (at byte {})",
            err.valid_up_to()
        )));
    }
    // The fast path parses without tracking paths; only a failure pays for a second,
    // path-tracking parse that names the field at fault.
    let wire: WireHead<'_> = match serde_json::from_slice(body) {
        Ok(wire) => wire,
        Err(_) => return Err(explain_parse_failure(body)),
    };

    let raw_model = wire.model.ok_or_else(|| missing("model", "you must provide a model parameter"))?;
    let model: String = serde_json::from_str(raw_model.get()).map_err(|_| RequestError::InvalidField {
        param: "model".into(),
        message: "'model' must be a string".into(),
    })?;
    if model.is_empty() {
        return Err(missing("model", "you must provide a model parameter"));
    }
    if model.len() > MAX_MODEL_LEN {
        // Echoed in errors, logs and records: a megabyte of model name would be too.
        return Err(RequestError::InvalidField {
            param: "model".into(),
            message: format!("'model' is longer than {MAX_MODEL_LEN} bytes"),
        });
    }
    match endpoint {
        // With a `prompt`, the rendered messages come first: the request's own may be none.
        Endpoint::ChatCompletions if wire.prompt.is_some() => {}
        Endpoint::ChatCompletions => match &wire.messages {
            None => return Err(missing("messages", "'messages' is a required property")),
            Some(messages) if messages.is_empty() => {
                return Err(RequestError::InvalidField {
                    param: "messages".into(),
                    message: "'messages' must contain at least one message".into(),
                });
            }
            Some(_) => {}
        },
        Endpoint::Completions if wire.prompt.is_none() => {
            return Err(missing("prompt", "'prompt' is a required property"));
        }
        Endpoint::Embeddings if wire.input.is_none() => return Err(missing("input", "'input' is a required property")),
        _ => {}
    }
    if wire.n == Some(0) {
        return Err(RequestError::InvalidField { param: "n".into(), message: "'n' must be at least 1".into() });
    }
    let start = raw_model.get().as_ptr() as usize - body.as_ptr() as usize;
    let stream = wire.stream.unwrap_or(false) && endpoint != Endpoint::Embeddings;
    let usage_splice = match endpoint {
        Endpoint::ChatCompletions if stream => usage_splice(body, wire.stream_options),
        _ => None,
    };
    Ok(RequestHead {
        model,
        model_span: start..start + raw_model.get().len(),
        stream,
        user: wire.user.map(Cow::into_owned),
        injects_usage: usage_splice.is_some(),
        usage_splice,
        prompt: match endpoint {
            Endpoint::ChatCompletions => wire.prompt.and_then(|raw| serde_json::from_str(raw.get()).ok()),
            _ => None,
        },
    })
}

impl RequestHead {
    /// The body to send upstream: the original bytes when the upstream model name is the
    /// public one, else the same bytes with only the `model` value replaced (no re-serialising).
    /// The usage request of a streamed chat is spliced in the same way.
    pub fn body_for_upstream(&self, body: &Bytes, upstream_model: &str) -> Bytes {
        let quoted = (upstream_model != self.model)
            .then(|| serde_json::Value::String(upstream_model.to_owned()).to_string().into_bytes());
        let model_edit = quoted.as_deref().map(|q| (self.model_span.clone(), q));
        let usage_edit = self.usage_splice.as_ref().map(|(span, text)| (span.clone(), text.as_slice()));
        let mut edits: Vec<(Range<usize>, &[u8])> = model_edit.into_iter().chain(usage_edit).collect();
        if edits.is_empty() {
            return body.clone();
        }
        edits.sort_by_key(|(span, _)| span.start);
        let added: usize = edits.iter().map(|(_, text)| text.len()).sum();
        let mut out = BytesMut::with_capacity(body.len() + added);
        let mut at = 0;
        for (span, text) in edits {
            out.extend_from_slice(&body[at..span.start]);
            out.extend_from_slice(text);
            at = span.end;
        }
        out.extend_from_slice(&body[at..]);
        out.freeze()
    }
}

/// Where and what to write so that a streamed chat request asks for usage; `None` when the
/// client asked already. An absent `stream_options` is added first thing in the object; a
/// present one is rewritten with `include_usage: true` and its other fields kept.
fn usage_splice(body: &[u8], stream_options: Option<&RawValue>) -> Option<(Range<usize>, Vec<u8>)> {
    let Some(raw) = stream_options else {
        let open = body.iter().position(|&b| b == b'{')? + 1;
        return Some((open..open, br#""stream_options":{"include_usage":true},"#.to_vec()));
    };
    let mut options = match serde_json::from_str::<serde_json::Value>(raw.get()) {
        Ok(serde_json::Value::Object(options)) => options,
        _ => serde_json::Map::new(),
    };
    if options.get("include_usage").and_then(serde_json::Value::as_bool) == Some(true) {
        return None;
    }
    options.insert("include_usage".into(), serde_json::Value::Bool(true));
    let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
    Some((start..start + raw.get().len(), serde_json::Value::Object(options).to_string().into_bytes()))
}

/// Re-parses a body that failed, tracking the path, to say which field is at fault.
fn explain_parse_failure(body: &[u8]) -> RequestError {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed: Result<WireHead<'_>, _> = serde_path_to_error::deserialize(&mut deserializer);
    match parsed {
        Err(err) => path_error(err),
        Ok(_) => match deserializer.end() {
            Err(err) => RequestError::InvalidJson(err.to_string()),
            Ok(()) => RequestError::InvalidJson("the request body could not be parsed".into()),
        },
    }
}

fn missing(param: &str, message: &str) -> RequestError {
    RequestError::InvalidField { param: param.into(), message: message.into() }
}

/// A serde failure becomes either bad JSON (syntax) or a named field with a wrong value.
fn path_error(err: serde_path_to_error::Error<serde_json::Error>) -> RequestError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    if inner.is_syntax() || inner.is_eof() || path == "." {
        return RequestError::InvalidJson(inner.to_string());
    }
    let message = inner.to_string();
    let message = message.split(" at line ").next().unwrap_or(&message).to_owned();
    // serde names a missing field only in its message; the field itself is the `param`.
    if let Some(field) = message.strip_prefix("missing field `").and_then(|rest| rest.strip_suffix('`')) {
        let param = if path == "." { field.to_owned() } else { format!("{path}.{field}") };
        return RequestError::InvalidField { message: format!("'{param}' is a required property"), param };
    }
    RequestError::InvalidField { message: format!("invalid value for '{path}': {message}"), param: path }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(body: &str) -> Result<RequestHead, RequestError> {
        parse_head(Endpoint::ChatCompletions, body.as_bytes())
    }

    #[test]
    fn model_is_replaced_in_place() {
        let body =
            Bytes::from_static(br#"{ "messages":[{"role":"user","content":"hi"}], "model" : "chat", "stream":true}"#);
        let h = head(std::str::from_utf8(&body).unwrap()).unwrap();
        assert_eq!(h.model, "chat");
        assert!(h.stream);
        let out = h.body_for_upstream(&body, "gpt-4o \"mini\"");
        assert_eq!(
            &out[..],
            br#"{"stream_options":{"include_usage":true}, "messages":[{"role":"user","content":"hi"}], "model" : "gpt-4o \"mini\"", "stream":true}"#
        );
        let plain = Bytes::from_static(br#"{"messages":[{"role":"user","content":"hi"}],"model":"chat"}"#);
        let h = head(std::str::from_utf8(&plain).unwrap()).unwrap();
        assert_eq!(h.body_for_upstream(&plain, "chat").as_ptr(), plain.as_ptr());
    }

    #[test]
    fn streamed_chat_asks_for_usage_unless_the_client_did() {
        let cases = [
            (
                r#"{"model":"m","messages":[],"stream":true}"#,
                Some(r#"{"stream_options":{"include_usage":true},"model":"u","messages":[],"stream":true}"#),
            ),
            (
                r#"{"model":"m","stream":true,"stream_options":{"x":1},"messages":[]}"#,
                Some(r#"{"model":"u","stream":true,"stream_options":{"include_usage":true,"x":1},"messages":[]}"#),
            ),
            (
                r#"{"model":"m","stream":true,"stream_options":null,"messages":[]}"#,
                Some(r#"{"model":"u","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#),
            ),
            (r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#, None),
            (r#"{"model":"m","messages":[]}"#, None),
        ];
        for (body, expected) in cases {
            let body = Bytes::from(body.replace("[]", r#"[{"role":"user"}]"#));
            let h = head(std::str::from_utf8(&body).unwrap()).unwrap();
            assert_eq!(h.injects_usage, expected.is_some(), "{body:?}");
            if let Some(expected) = expected {
                let out = h.body_for_upstream(&body, "u");
                assert_eq!(std::str::from_utf8(&out).unwrap(), expected.replace("[]", r#"[{"role":"user"}]"#));
            }
        }
        let embed = parse_head(Endpoint::Completions, br#"{"model":"m","prompt":"p","stream":true}"#).unwrap();
        assert!(!embed.injects_usage);
    }

    #[test]
    fn escaped_model_names_are_decoded() {
        let h = head(r#"{"model":"a\u0062c","messages":[{"role":"user"}]}"#).unwrap();
        assert_eq!(h.model, "abc");
    }

    fn param(err: RequestError) -> String {
        match err {
            RequestError::InvalidField { param, .. } => param,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(param(head(r#"{"messages":[{"role":"user"}]}"#).unwrap_err()), "model");
        assert_eq!(param(head(r#"{"model":3,"messages":[{"role":"user"}]}"#).unwrap_err()), "model");
        assert_eq!(param(head(r#"{"model":"m"}"#).unwrap_err()), "messages");
        assert_eq!(param(head(r#"{"model":"m","messages":[]}"#).unwrap_err()), "messages");
        assert_eq!(param(head(r#"{"model":"m","messages":[{"content":"x"}]}"#).unwrap_err()), "messages[0].role");
        assert_eq!(param(head(r#"{"model":"m","messages":[{"role":1}]}"#).unwrap_err()), "messages[0].role");
        assert_eq!(param(head(r#"{"model":"m","messages":[{"role":"user"}],"stream":"yes"}"#).unwrap_err()), "stream");
        assert_eq!(param(parse_head(Endpoint::Embeddings, br#"{"model":"m"}"#).unwrap_err()), "input");
        let long = format!(r#"{{"model":"{}","messages":[{{"role":"user"}}]}}"#, "m".repeat(MAX_MODEL_LEN + 1));
        assert_eq!(param(head(&long).unwrap_err()), "model");
    }

    #[test]
    fn broken_json_is_reported_as_such() {
        assert!(matches!(head(r#"{"model":"m","#).unwrap_err(), RequestError::InvalidJson(_)));
        assert!(matches!(head("[1,2]").unwrap_err(), RequestError::InvalidJson(_)));
        assert!(matches!(
            head(r#"{"model":"m","messages":[{"role":"u"}]} x"#).unwrap_err(),
            RequestError::InvalidJson(_)
        ));
    }

    #[test]
    fn nesting_is_limited_at_the_door() {
        let nested = |levels: usize| {
            format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":{}1{}}}]}}"#,
                "[".repeat(levels),
                "]".repeat(levels)
            )
        };
        // The object, `messages` and the message take three levels.
        assert!(head(&nested(MAX_JSON_DEPTH - 3)).is_ok());
        assert!(matches!(head(&nested(MAX_JSON_DEPTH - 2)), Err(RequestError::TooDeep { limit: MAX_JSON_DEPTH })));
        assert!(matches!(head(&nested(100_000)), Err(RequestError::TooDeep { .. })));
        // Brackets inside strings (escaped quotes included) do not count.
        let text = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"\"{}"}}]}}"#, "[".repeat(500));
        assert!(head(&text).is_ok());
        assert!(check_structure(br#"["\\", [[1]]]"#, 3).is_ok());
        assert!(check_structure(br#"["\\", [[[1]]]]"#, 3).is_err());
        assert!(check_structure(br#"["text [[[ \" [[[", [["after"]]]"#, 3).is_ok());
        assert!(check_structure(br#"["text [[[ \" [[[", [[["after"]]]]"#, 3).is_err());
    }

    #[test]
    fn lone_surrogates_are_refused_and_pairs_pass() {
        assert!(check_structure(br#"["\ud83d\ude00", "\u00e9", "\\ud800"]"#, 8).is_ok());
        for lone in [
            r#"["\ud800"]"#,
            r#"["\udc00"]"#,
            r#"["\ud800\u0041"]"#,
            r#"["\uD800x"]"#,
            r#"["\ud800"#,
            r#"["text [{ \ud800"]"#,
        ] {
            assert!(matches!(check_structure(lone.as_bytes(), 8), Err(RequestError::InvalidJson(_))), "{lone}");
        }
    }

    #[test]
    fn duplicate_model_fields_are_refused() {
        assert!(head(r#"{"model":"a","model":"b","messages":[{"role":"user"}]}"#).is_err());
    }
}
