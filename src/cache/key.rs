//! The cache key: one SHA-256 over everything that can change an answer.
//!
//! Canonical form: the endpoint, the scope (the virtual key's name, or nothing for
//! `scope: global`), the public model name, and the request's JSON with object keys sorted
//! and insignificant whitespace gone. `stream`, `stream_options` and `user` are left out at
//! the top level: the same prompt streamed or not, by any end user, is the same answer.
//! Keys are sorted here rather than trusting `serde_json::Map` to be ordered, so enabling
//! serde_json's `preserve_order` anywhere in the build cannot split entries silently.

use std::io::Write;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::wire::Endpoint;

/// Top-level request fields that do not change the answer.
const IGNORED_FIELDS: [&str; 3] = ["stream", "stream_options", "user"];

/// A request's identity in the cache: 32 bytes of SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CacheKey({})", self.hex())
    }
}

impl CacheKey {
    /// Hashes `request` (the client's parsed body) for `model` as seen by `scope`, with
    /// `context` (what else the answer depends on; empty for nothing).
    pub fn new(endpoint: Endpoint, scope: Option<&str>, model: &str, context: &str, request: &Value) -> CacheKey {
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
        match request {
            Value::Object(map) => {
                let mut fields: Vec<(&String, &Value)> =
                    map.iter().filter(|(name, _)| !IGNORED_FIELDS.contains(&name.as_str())).collect();
                fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
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

/// Writes `value` as compact JSON with every object's keys in sorted order.
fn write_canonical(out: &mut HashWriter, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut fields: Vec<(&String, &Value)> = map.iter().collect();
            fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
            write_object(out, fields);
        }
        Value::Array(items) => {
            out.0.update(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.0.update(b",");
                }
                write_canonical(out, item);
            }
            out.0.update(b"]");
        }
        // Scalars: serde_json's own compact form (escaped strings, shortest numbers).
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

fn write_object(out: &mut HashWriter, fields: Vec<(&String, &Value)>) {
    out.0.update(b"{");
    for (i, (name, value)) in fields.into_iter().enumerate() {
        if i > 0 {
            out.0.update(b",");
        }
        let _ = serde_json::to_writer(&mut *out, name);
        out.0.update(b":");
        write_canonical(out, value);
    }
    out.0.update(b"}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(scope: Option<&str>, body: &str) -> CacheKey {
        let value: Value = serde_json::from_str(body).unwrap();
        CacheKey::new(Endpoint::ChatCompletions, scope, "chat", "", &value)
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
        let value: Value = serde_json::from_str(r#"{"messages":[{"role":"user","content":"hi"}]}"#).unwrap();
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
}
