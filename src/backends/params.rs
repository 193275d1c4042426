//! A target's `params` (a weir extension to SPEC §2): request fields filled in where the
//! client did not set them, such as a `max_tokens` or `temperature` suited to that model.
//!
//! Owns: the merge rule — a field the client sent (even as `null`) wins; `max_tokens` and
//! `max_completion_tokens` count as one field. Pass-through kinds get the defaults spliced
//! into the client's bytes (nothing else is rewritten); the Anthropic adapter merges them
//! into the request it translates.
//! Must not: validate values (config validation does) or touch a body without defaults.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use serde::de::IgnoredAny;
use serde_json::{Map, Value};

/// Fields that set the same limit: a client that set either one has set both.
const ALIASES: [[&str; 2]; 1] = [["max_tokens", "max_completion_tokens"]];

/// Whether the client set `field` (or an alias of it), judged by `present`.
pub fn client_set(field: &str, present: impl Fn(&str) -> bool) -> bool {
    if present(field) {
        return true;
    }
    ALIASES.iter().filter(|pair| pair.contains(&field)).flatten().any(|alias| present(alias))
}

/// `body` with every default the client did not set added at the front of the top-level
/// object; the client's bytes are kept as they are. Returns `body` itself when there is
/// nothing to add (or it is not a JSON object, which the proxy has already refused).
pub fn apply_defaults(body: &Bytes, defaults: &Map<String, Value>) -> Bytes {
    if defaults.is_empty() {
        return body.clone();
    }
    let Ok(present) = serde_json::from_slice::<BTreeMap<String, IgnoredAny>>(body) else {
        return body.clone();
    };
    let missing: Vec<(&String, &Value)> =
        defaults.iter().filter(|(field, _)| !client_set(field, |f| present.contains_key(f))).collect();
    let Some(brace) = body.iter().position(|b| *b == b'{') else { return body.clone() };
    if missing.is_empty() {
        return body.clone();
    }
    let mut out = BytesMut::with_capacity(body.len() + 64 * missing.len());
    out.extend_from_slice(&body[..=brace]);
    for (i, (field, value)) in missing.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b",");
        }
        out.extend_from_slice(Value::String((*field).clone()).to_string().as_bytes());
        out.extend_from_slice(b":");
        out.extend_from_slice(value.to_string().as_bytes());
    }
    if !present.is_empty() {
        out.extend_from_slice(b",");
    }
    out.extend_from_slice(&body[brace + 1..]);
    out.freeze()
}

/// Adds the defaults the client did not set to a parsed request.
pub fn merge_defaults(request: &mut Map<String, Value>, defaults: &Map<String, Value>) {
    for (field, value) in defaults {
        if !client_set(field, |f| request.contains_key(f)) {
            request.insert(field.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defaults(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!("test defaults are objects"),
        }
    }

    #[test]
    fn no_defaults_keeps_the_same_bytes() {
        let body = Bytes::from_static(br#"{"model":"m"}"#);
        assert_eq!(apply_defaults(&body, &Map::new()).as_ptr(), body.as_ptr());
    }

    #[test]
    fn only_unset_fields_are_added_and_client_bytes_stay() {
        let body = Bytes::from_static(b" {\"model\" : \"m\", \"temperature\":0.9 }");
        let d = defaults(json!({"temperature": 0.2, "max_tokens": 1024}));
        let out = apply_defaults(&body, &d);
        assert_eq!(&out[..], b" {\"max_tokens\":1024,\"model\" : \"m\", \"temperature\":0.9 }");
    }

    #[test]
    fn max_tokens_aliases_count_as_set() {
        let body = Bytes::from_static(br#"{"max_completion_tokens":5}"#);
        let d = defaults(json!({"max_tokens": 1024}));
        assert_eq!(apply_defaults(&body, &d), body);
        let mut map = defaults(json!({"max_tokens": 7}));
        merge_defaults(&mut map, &defaults(json!({"max_completion_tokens": 1, "top_p": 0.5})));
        assert_eq!(Value::Object(map), json!({"max_tokens": 7, "top_p": 0.5}));
    }

    #[test]
    fn empty_object_gets_no_trailing_comma() {
        let out = apply_defaults(&Bytes::from_static(b"{}"), &defaults(json!({"a": 1, "b": [2]})));
        assert_eq!(&out[..], br#"{"a":1,"b":[2]}"#);
        let _: Value = serde_json::from_slice(&out).unwrap();
    }
}
