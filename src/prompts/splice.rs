//! The request body a target gets once a prompt is rendered: the client's object with
//! `prompt` taken out and `messages` replaced by the rendered messages followed by the
//! client's own. Every other field keeps its bytes and its place; nothing else is parsed.

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::wire::json::JsonStr;

/// The top-level fields of a JSON object, in order, values as written.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> de::Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut fields = Vec::new();
                while let Some((JsonStr(key), value)) = map.next_entry::<JsonStr<'de>, &'de RawValue>()? {
                    fields.push((key, value));
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// `body` with `rendered` (message objects joined by commas) in front of its `messages` and
/// without `prompt`. `Err` carries a message for a body that is not an object or whose
/// `messages` is not a list.
pub(super) fn splice(body: &[u8], rendered: &[u8]) -> Result<Bytes, String> {
    let Fields(fields) = serde_json::from_slice(body).map_err(|err| format!("the request body: {err}"))?;
    // The client's messages stay as written: only the list's brackets are looked at.
    let client_messages = match fields.iter().find(|(key, _)| key == "messages") {
        Some((_, raw)) => {
            let inner = raw.get().trim();
            let inner = inner.strip_prefix('[').and_then(|rest| rest.strip_suffix(']'));
            Some(inner.ok_or_else(|| "`messages` must be a list".to_string())?.trim())
        }
        None => None,
    };
    let mut out = BytesMut::with_capacity(body.len() + rendered.len() + 16);
    out.put_slice(b"{\"messages\":[");
    out.put_slice(rendered);
    if let Some(messages) = client_messages.filter(|m| !m.is_empty()) {
        if !rendered.is_empty() {
            out.put_u8(b',');
        }
        out.put_slice(messages.as_bytes());
    }
    out.put_u8(b']');
    for (key, value) in &fields {
        if key == "messages" || key == "prompt" {
            continue;
        }
        out.put_u8(b',');
        let key = serde_json::to_vec(key.as_ref()).map_err(|err| err.to_string())?;
        out.put_slice(&key);
        out.put_u8(b':');
        out.put_slice(value.get().as_bytes());
    }
    out.put_u8(b'}');
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_messages_come_first_and_prompt_goes() {
        let body =
            br#"{"model":"m","prompt":{"id":"p"},"messages":[{"role":"user","content":"more"}],"temperature":1}"#;
        let rendered = br#"{"role":"system","content":"Be \"brief\"."}"#;
        let out = splice(body, rendered).map(|b| String::from_utf8_lossy(&b).into_owned());
        assert_eq!(
            out.as_deref(),
            Ok(
                r#"{"messages":[{"role":"system","content":"Be \"brief\"."},{"role":"user","content":"more"}],"model":"m","temperature":1}"#
            )
        );
    }

    #[test]
    fn a_body_without_messages_gets_the_rendered_ones() {
        let out = splice(br#"{"model":"m\u0021","prompt":{}}"#, br#"{"role":"user","content":"q"}"#);
        let out = out.map(|b| String::from_utf8_lossy(&b).into_owned());
        assert_eq!(out.as_deref(), Ok(r#"{"messages":[{"role":"user","content":"q"}],"model":"m\u0021"}"#));
        assert!(splice(b"[1]", b"").is_err());
        assert!(splice(br#"{"messages":3}"#, b"").is_err());
        let out = splice(br#"{"messages":[{"role":"user"}],"prompt":{}}"#, b"");
        assert_eq!(
            out.as_deref().map(|b| String::from_utf8_lossy(b).into_owned()).as_deref(),
            Ok(r#"{"messages":[{"role":"user"}]}"#)
        );
    }
}
