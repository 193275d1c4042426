//! The cache key: one SHA-256 over everything that can change an answer.
//!
//! Canonical form: the endpoint, the scope (the virtual key's name, or nothing for
//! `scope: global`), the public model name, and the request's JSON with object keys sorted
//! and insignificant whitespace gone. `stream`, `stream_options` and `user` are left out at
//! the top level: the same prompt streamed or not, by any end user, is the same answer.
//! Keys are sorted here rather than trusting `serde_json::Map` to be ordered, so enabling
//! serde_json's `preserve_order` anywhere in the build cannot split entries silently.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use sha2::{Digest, Sha256};

use crate::wire::Endpoint;
use crate::wire::json::JsonStr;

/// Top-level request fields that do not change the answer.
const IGNORED_FIELDS: [&str; 3] = ["stream", "stream_options", "user"];

/// A request's identity in the cache: 32 bytes of SHA-256.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CacheKey(pub [u8; 32]);

/// A key is a digest already: its first 8 bytes are as random as all 32, and a map's seeded
/// hasher mixes them further. Hashing all 32 bytes (as the derived `Hash` does, length
/// first) cost a fifth of the in-process store's CPU on a miss: moka hashes a key on each
/// lookup, insert, eviction and rehash.
impl std::hash::Hash for CacheKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let [a, b, c, d, e, f, g, h, ..] = self.0;
        state.write_u64(u64::from_le_bytes([a, b, c, d, e, f, g, h]));
    }
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CacheKey({})", self.hex())
    }
}

impl CacheKey {
    /// Hashes `request` (the client's parsed body) for `model` as seen by `scope`, with
    /// `context` (what else the answer depends on; empty for nothing).
    pub fn new(endpoint: Endpoint, scope: Option<&str>, model: &str, context: &str, request: &Body<'_>) -> CacheKey {
        let mut hasher = HashWriter(Sha256::new());
        hasher.part(b"weir-cache-v1");
        hasher.part(endpoint.as_str().as_bytes());
        match scope {
            Some(name) => {
                hasher.part(b"key");
                hasher.part(name.as_bytes());
            }
            None => hasher.part(b"global"),
        }
        hasher.part(model.as_bytes());
        // Empty adds nothing, so keys of requests without a context are as before.
        if !context.is_empty() {
            hasher.part(b"context");
            hasher.part(context.as_bytes());
        }
        match &request.0 {
            Node::Object(fields) => {
                let fields = fields.iter().filter(|(name, _)| !IGNORED_FIELDS.contains(&name.as_ref()));
                write_object(&mut hasher, fields);
            }
            other => write_canonical(&mut hasher, other),
        }
        CacheKey(hasher.0.finalize().into())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// A request body parsed only as far as its canonical form needs: strings and names stay
/// borrowed from the body unless they hold escapes, and nothing is inserted into maps. A
/// `serde_json::Value` of the body cost a tenth of a cache hit's CPU.
pub struct Body<'a>(Node<'a>);

impl<'a> Body<'a> {
    /// `None` when `body` is not JSON (or nests deeper than serde_json's limit).
    pub fn parse(body: &'a [u8]) -> Option<Body<'a>> {
        serde_json::from_slice(body).ok().map(Body)
    }

    /// `stream_options.include_usage` is `true`.
    pub fn include_usage(&self) -> bool {
        let stream_options = self.0.field("stream_options");
        matches!(stream_options.and_then(|options| options.field("include_usage")), Some(Node::Bool(true)))
    }
}

/// One JSON value, as [`Body`] keeps it.
enum Node<'a> {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(Cow<'a, str>),
    Array(Vec<Node<'a>>),
    /// Fields sorted by name; of a name given twice, the last (as `serde_json::Map` keeps).
    Object(Vec<(Cow<'a, str>, Node<'a>)>),
}

impl<'a> Node<'a> {
    fn field(&self, name: &str) -> Option<&Node<'a>> {
        let Node::Object(fields) = self else { return None };
        let at = fields.binary_search_by(|(field, _)| field.as_ref().cmp(name)).ok()?;
        fields.get(at).map(|(_, value)| value)
    }
}

impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }

    fn visit_bool<E>(self, value: bool) -> Result<Node<'de>, E> {
        Ok(Node::Bool(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Node<'de>, E> {
        Ok(Node::U64(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Node<'de>, E> {
        Ok(Node::I64(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Node<'de>, E> {
        Ok(Node::F64(value))
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Node<'de>, E> {
        Ok(Node::Str(Cow::Borrowed(value)))
    }

    fn visit_str<E>(self, value: &str) -> Result<Node<'de>, E> {
        Ok(Node::Str(Cow::Owned(value.to_owned())))
    }

    fn visit_string<E>(self, value: String) -> Result<Node<'de>, E> {
        Ok(Node::Str(Cow::Owned(value)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        let mut fields: Vec<(Cow<'de, str>, Node<'de>)> = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some((JsonStr(name), value)) = map.next_entry()? {
            fields.push((name, value));
        }
        // Stable: of equal names the last given ends up last, and is the one kept.
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        let mut deduped: Vec<(Cow<'de, str>, Node<'de>)> = Vec::with_capacity(fields.len());
        for field in fields {
            match deduped.last_mut() {
                Some(last) if last.0 == field.0 => *last = field,
                _ => deduped.push(field),
            }
        }
        Ok(Node::Object(deduped))
    }
}

struct HashWriter(Sha256);

impl HashWriter {
    /// A length-prefixed part, so `("ab","c")` and `("a","bc")` never collide.
    fn part(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }
}

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes `node` as compact JSON with every object's keys in sorted order: byte for byte
/// what `serde_json` writes for the same value as a `Value` with sorted keys (escaped
/// strings, shortest numbers), so keys stay those of earlier versions (and of Redis).
/// Writing to a hasher cannot fail.
fn write_canonical(out: &mut impl Write, node: &Node<'_>) {
    match node {
        Node::Object(fields) => write_object(out, fields.iter()),
        Node::Array(items) => {
            let _ = out.write_all(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    let _ = out.write_all(b",");
                }
                write_canonical(out, item);
            }
            let _ = out.write_all(b"]");
        }
        Node::Null => write_json(out, &()),
        Node::Bool(value) => write_json(out, value),
        Node::U64(value) => write_json(out, value),
        Node::I64(value) => write_json(out, value),
        Node::F64(value) => write_json(out, value),
        Node::Str(value) => write_json(out, value),
    }
}

/// A scalar or a name in serde_json's own compact form.
fn write_json(out: &mut impl Write, value: &(impl serde::Serialize + ?Sized)) {
    let _ = serde_json::to_writer(out, value);
}

/// `fields` in name order, as [`Node::Object`] keeps them.
fn write_object<'b, 'a: 'b>(out: &mut impl Write, fields: impl Iterator<Item = &'b (Cow<'a, str>, Node<'a>)>) {
    let _ = out.write_all(b"{");
    for (i, (name, value)) in fields.enumerate() {
        if i > 0 {
            let _ = out.write_all(b",");
        }
        write_json(out, name);
        let _ = out.write_all(b":");
        write_canonical(out, value);
    }
    let _ = out.write_all(b"}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(scope: Option<&str>, body: &str) -> CacheKey {
        CacheKey::new(Endpoint::ChatCompletions, scope, "chat", "", &Body::parse(body.as_bytes()).unwrap())
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a = key(None, r#"{"model":"chat","messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#);
        let b = key(
            None,
            r#"{ "temperature": 0.5,
            "messages": [ { "content": "hi", "role": "user" } ], "model": "chat" }"#,
        );
        assert_eq!(a, b);
    }

    #[test]
    fn stream_and_user_do_not_split_entries() {
        let a = key(None, r#"{"messages":[{"role":"user","content":"hi"}]}"#);
        let b = key(
            None,
            r#"{"messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"user":"u1"}"#,
        );
        assert_eq!(a, b);
    }

    #[test]
    fn parameters_scope_and_endpoint_split_entries() {
        let base = key(None, r#"{"messages":[{"role":"user","content":"hi"}]}"#);
        assert_ne!(base, key(None, r#"{"messages":[{"role":"user","content":"hi"}],"temperature":1}"#));
        assert_ne!(base, key(None, r#"{"messages":[{"role":"user","content":"hi!"}]}"#));
        assert_ne!(base, key(Some("team"), r#"{"messages":[{"role":"user","content":"hi"}]}"#));
        assert_ne!(key(Some("a"), "{}"), key(Some("b"), "{}"));
        let value = Body::parse(br#"{"messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        assert_ne!(base, CacheKey::new(Endpoint::Completions, None, "chat", "", &value));
        assert_ne!(base, CacheKey::new(Endpoint::ChatCompletions, None, "chat", "p=v1:sha256:1", &value));
        assert_ne!(base, CacheKey::new(Endpoint::ChatCompletions, None, "other", "", &value));
    }

    #[test]
    fn nested_user_fields_still_count() {
        // Only the top-level `user` is an end-user id; a tool's parameter named `user` is content.
        let a = key(None, r#"{"tools":[{"user":"a"}]}"#);
        let b = key(None, r#"{"tools":[{"user":"b"}]}"#);
        assert_ne!(a, b);
    }

    #[test]
    fn canonical_form_is_serde_json_of_the_sorted_value() {
        // The canonical bytes (so every key) equal those the Value-based form gave, which
        // serde_json's sorted map writes compactly; Redis entries of earlier versions still hit.
        for body in [
            r#"{"b":1,"a":[1,-2,3.5,1e3,1.0,0.1,-0.0,18446744073709551615,-9223372036854775808]}"#,
            r#"{"s":"quote \" slash \\ tab \t nl \n uni \u00e9 \ud83e\udd8a raw é 🦊","n":null,"t":true,"f":false}"#,
            r#"{"dup":1,"x":{"z":0,"y":[{"k":"v","a":{}}]},"dup":2}"#,
            r#"{"esc\u0061ped":"k","plain":"v","":"empty"}"#,
            r#"  { "messages" : [ { "role" : "user" , "content" : "hi" } ] , "temperature" : 0.7 }  "#,
            r#"[1,{"b":2,"a":1}]"#,
            r#""just a string""#,
            "12.5e-3",
        ] {
            let mut ours = Vec::new();
            write_canonical(&mut ours, &Body::parse(body.as_bytes()).unwrap().0);
            let theirs = serde_json::to_vec(&serde_json::from_str::<serde_json::Value>(body).unwrap()).unwrap();
            assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(theirs).unwrap(), "{body}");
        }
    }

    #[test]
    fn include_usage_is_read_from_stream_options() {
        let parse = |body: &str| Body::parse(body.as_bytes()).unwrap().include_usage();
        assert!(parse(r#"{"stream_options":{"include_usage":true}}"#));
        assert!(!parse(r#"{"stream_options":{"include_usage":false}}"#));
        assert!(!parse(r#"{"stream_options":{"include_usage":"true"}}"#));
        assert!(!parse(r#"{"stream_options":null}"#));
        assert!(!parse(r#"{}"#));
        assert!(Body::parse(b"{not json").is_none());
    }
}
