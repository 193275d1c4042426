//! Redaction: e-mail addresses, phone numbers, API-key shapes and configured regexes are
//! replaced in every string of a record before it is written.
//!
//! Owns: the built-in patterns (compiled once per process), a dataset's [`Redactor`] and
//! [`Redacted`], a value serialised with its strings redacted as it is written
//! (compiled once per config snapshot). Must not: run on the request's task — the writer
//! applies it off the hot path.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex};
use serde::Serialize;
use serde_json::Value;

use crate::config::Redaction;

pub const EMAIL_MARK: &str = "[REDACTED:email]";
pub const PHONE_MARK: &str = "[REDACTED:phone]";
pub const KEY_MARK: &str = "[REDACTED:key]";
pub const REGEX_MARK: &str = "[REDACTED]";

static EMAIL: LazyLock<Option<Regex>> =
    LazyLock::new(|| compile(r"(?i)\b[a-z0-9._%+-]+@[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b"));

/// A phone layout: optional `+country`, optional `(area)`, then digits with optional single
/// separators. The digit count is checked afterwards (9 to 15, E.164's range), so dates and
/// short numbers are left alone.
static PHONE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    compile(r"(?:\+[0-9]{1,3}[ .-]?(?:\([0-9]{1,4}\)[ .-]?)?|\([0-9]{1,4}\)[ .-]?|\b)[0-9](?:[ .-]?[0-9]){6,16}\b")
});

/// Secret shapes: OpenAI/Anthropic `sk-...`, bearer tokens, AWS access keys, GitHub, Google,
/// Slack tokens and JWTs.
static KEY: LazyLock<Option<Regex>> = LazyLock::new(|| {
    compile(concat!(
        r"(?i:\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}",
        r"|\bsk-[A-Za-z0-9_-]{10,}",
        r"|\bAKIA[0-9A-Z]{16}\b",
        r"|\bgh[pousr]_[A-Za-z0-9]{30,}",
        r"|\bgithub_pat_[A-Za-z0-9_]{30,}",
        r"|\bAIza[0-9A-Za-z_-]{35}",
        r"|\bxox[abprs]-[A-Za-z0-9-]{10,}",
        r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+",
    ))
});

fn compile(pattern: &str) -> Option<Regex> {
    match Regex::new(pattern) {
        Ok(regex) => Some(regex),
        Err(err) => {
            // Built-in patterns are constants covered by tests; this cannot happen in a release.
            tracing::error!(%err, "built-in redaction pattern does not compile");
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Email,
    Phone,
    Key,
    Custom,
}

impl Kind {
    /// A cheap test that rules a text out before its regex runs: most strings of a record
    /// (names, roles, ids, short answers) can hold no match, and a regex search costs more
    /// than these scans even when it finds nothing.
    fn may_match(self, text: &str) -> bool {
        match self {
            // The shortest address: `a@b.co`.
            Kind::Email => text.len() >= 6 && memchr::memchr(b'@', text.as_bytes()).is_some(),
            // A phone-shaped match is replaced only with 9 to 15 digits (`phone_or_keep`).
            Kind::Phone => text.bytes().filter(u8::is_ascii_digit).nth(8).is_some(),
            // The shortest secret shape: `sk-` and 10 more.
            Kind::Key => text.len() >= 13,
            Kind::Custom => true,
        }
    }
}

/// A dataset's redaction rules, compiled.
#[derive(Debug, Default)]
pub struct Redactor {
    rules: Vec<(Kind, Regex)>,
}

impl Redactor {
    /// Compiles `rules`; a pattern that does not compile (validation rejects those) is
    /// skipped with an error in the log rather than writing unredacted data silently.
    pub fn new(dataset: &str, rules: &[Redaction]) -> Redactor {
        let mut compiled = Vec::with_capacity(rules.len());
        for rule in rules {
            let entry = match rule {
                Redaction::Email => EMAIL.clone().map(|r| (Kind::Email, r)),
                Redaction::Phone => PHONE.clone().map(|r| (Kind::Phone, r)),
                Redaction::Key => KEY.clone().map(|r| (Kind::Key, r)),
                Redaction::Regex(pattern) => match Regex::new(pattern) {
                    Ok(regex) => Some((Kind::Custom, regex)),
                    Err(err) => {
                        tracing::error!(dataset, %err, "redact pattern does not compile; skipped");
                        None
                    }
                },
            };
            compiled.extend(entry);
        }
        // Keys first: a token can contain digit runs the phone rule would half-replace.
        compiled.sort_by_key(|(kind, _)| match kind {
            Kind::Key => 0,
            Kind::Custom => 1,
            Kind::Email => 2,
            Kind::Phone => 3,
        });
        Redactor { rules: compiled }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether no rule can change any string of the JSON text `json`, checked on the text
    /// as a whole, so that a record of such bodies is written from their bytes instead of
    /// a tree of each. Sound only where a string's content is its bytes in the text: with
    /// no `\` escape in it, a match inside a string is a match in the text (a quote is a
    /// word boundary as the string's edge is), and no built-in pattern matches a quote, so
    /// each match found lies wholly inside a string or wholly outside. Matches outside
    /// strings (a `created` timestamp is phone-shaped) change nothing; one inside does,
    /// unless it is a phone-shaped match the phone rule keeps. A configured regex may
    /// anchor (`^`, `$`) to a string's edges, which the text does not have, so a dataset
    /// with one always takes the tree path.
    pub fn leaves_alone(&self, json: &str) -> bool {
        if self.rules.is_empty() {
            return true;
        }
        if memchr::memchr(b'\\', json.as_bytes()).is_some() {
            return false;
        }
        self.rules.iter().all(|(kind, regex)| match kind {
            Kind::Custom => false,
            _ if !kind.may_match(json) => true,
            // Checked string by string: the rule's prefilter (an `@`, nine digits) then rules
            // out nearly every string, and the numbers outside strings (timestamps, counts,
            // an embedding's thousands) are never searched.
            Kind::Email | Kind::Phone => strings_of(json).all(|text| {
                !kind.may_match(text)
                    || regex.find_iter(text).all(|found| *kind == Kind::Phone && !is_phone(found.as_str()))
            }),
            // A secret's literal prefixes (`sk-`, `AKIA`, ...) let the regex skip through the
            // whole text at once.
            Kind::Key => {
                let mut strings = StringsSoFar::default();
                regex.find_iter(json).all(|found| !strings.inside_at(json, found.start()))
            }
        })
    }

    /// `value` to serialise with every string in it redacted (object keys are left alone).
    pub fn over<'a, T>(&'a self, value: &'a T) -> Redacted<'a, T> {
        Redacted { value, redactor: self }
    }

    /// `text` with every rule applied; borrowed when nothing matched.
    pub fn text<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut out = Cow::Borrowed(text);
        for (kind, regex) in &self.rules {
            if !kind.may_match(&out) {
                continue;
            }
            let replaced = match kind {
                Kind::Email => regex.replace_all(&out, EMAIL_MARK),
                Kind::Key => regex.replace_all(&out, KEY_MARK),
                Kind::Custom => regex.replace_all(&out, REGEX_MARK),
                Kind::Phone => regex.replace_all(&out, |caps: &Captures<'_>| phone_or_keep(&caps[0])),
            };
            if let Cow::Owned(replaced) = replaced {
                out = Cow::Owned(replaced);
            }
        }
        out
    }
}

/// A JSON value written with every string in it redacted (object keys as they are),
/// straight from the shared value: nothing is copied but the strings a rule changed.
pub struct Redacted<'a, T> {
    value: &'a T,
    redactor: &'a Redactor,
}

impl Serialize for Redacted<'_, Value> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match self.value {
            Value::String(text) => serializer.serialize_str(&self.redactor.text(text)),
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for value in items {
                    seq.serialize_element(&self.redactor.over(value))?;
                }
                seq.end()
            }
            Value::Object(map) => self.redactor.over(map).serialize(serializer),
            Value::Null | Value::Bool(_) | Value::Number(_) => self.value.serialize(serializer),
        }
    }
}

impl Serialize for Redacted<'_, serde_json::Map<String, Value>> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.value.len()))?;
        for (key, value) in self.value {
            map.serialize_entry(key, &self.redactor.over(value))?;
        }
        map.end()
    }
}

/// Replaces a phone-shaped match that has a phone's digit count and is not an IPv4 address.
fn phone_or_keep(candidate: &str) -> String {
    if is_phone(candidate) { PHONE_MARK.to_owned() } else { candidate.to_owned() }
}

fn is_phone(candidate: &str) -> bool {
    let digits = candidate.bytes().filter(u8::is_ascii_digit).count();
    let ipv4 = candidate.split('.').count() == 4 && candidate.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    (9..=15).contains(&digits) && !ipv4
}

/// The contents of the strings of a JSON text without escapes, object keys included (an
/// unterminated last string runs to the end of the text).
fn strings_of(json: &str) -> impl Iterator<Item = &str> {
    let mut rest = json;
    std::iter::from_fn(move || {
        let open = memchr::memchr(b'"', rest.as_bytes())?;
        let after = rest.get(open + 1..)?;
        let close = memchr::memchr(b'"', after.as_bytes()).unwrap_or(after.len());
        rest = after.get(close + 1..).unwrap_or_default();
        after.get(..close)
    })
}

/// Whether positions of a JSON text without escapes lie inside a string (an odd number of
/// quotes comes before them), asked in increasing order so the text is scanned once however
/// many matches there are (an embedding's numbers are thousands of phone-shaped runs).
#[derive(Default)]
struct StringsSoFar {
    scanned: usize,
    inside: bool,
}

impl StringsSoFar {
    fn inside_at(&mut self, json: &str, at: usize) -> bool {
        let quotes = json.as_bytes().get(self.scanned..at).map_or(0, |gap| memchr::memchr_iter(b'"', gap).count());
        self.inside ^= quotes % 2 == 1;
        self.scanned = self.scanned.max(at);
        self.inside
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn all() -> Redactor {
        Redactor::new(
            "t",
            &[Redaction::Email, Redaction::Phone, Redaction::Key, Redaction::Regex(r"acct-[0-9]+".into())],
        )
    }

    fn all_built_in() -> Redactor {
        Redactor::new("t", &[Redaction::Email, Redaction::Phone, Redaction::Key])
    }

    #[test]
    fn built_in_patterns_compile() {
        assert!(EMAIL.is_some() && PHONE.is_some() && KEY.is_some());
        assert_eq!(all().rules.len(), 4);
    }

    #[test]
    fn emails_phones_keys_and_custom_patterns_are_replaced() {
        let r = all();
        let cases = [
            ("mail jane.doe+x@example.co.uk now", "mail [REDACTED:email] now"),
            ("call +1 415-555-0123 or (415) 555 0123", "call [REDACTED:phone] or [REDACTED:phone]"),
            ("+442079460958", "[REDACTED:phone]"),
            ("key sk-proj-abcdefghijklmnop123", "key [REDACTED:key]"),
            ("sk-ant-api03-AbCdEfGhIjKlMnOp", "[REDACTED:key]"),
            ("Authorization: Bearer abc.def-ghi_jkl", "Authorization: [REDACTED:key]"),
            ("AKIAIOSFODNN7EXAMPLE", "[REDACTED:key]"),
            ("account acct-99812 closed", "account [REDACTED] closed"),
        ];
        for (input, expected) in cases {
            assert_eq!(r.text(input), expected, "{input}");
        }
    }

    #[test]
    fn the_shortest_matches_get_past_the_prefilters() {
        let r = all();
        assert_eq!(r.text("a@b.co"), EMAIL_MARK);
        assert_eq!(r.text("415555012"), PHONE_MARK, "nine digits");
        assert_eq!(r.text("sk-0123456789"), KEY_MARK, "13 bytes");
        assert_eq!(r.text("acct-1"), REGEX_MARK, "custom rules have no prefilter");
        assert_eq!(r.text("41555501"), "41555501", "eight digits are no phone");
    }

    #[test]
    fn ordinary_numbers_and_text_are_kept() {
        let r = all();
        for input in ["on 2026-11-28 at 10:30", "version 1.2.3", "host 192.168.100.200", "order 12345", "sk-learn"] {
            assert_eq!(r.text(input), input);
        }
    }

    #[test]
    fn every_string_in_a_value_is_redacted() {
        let value = json!({"messages": [{"role": "user", "content": "I am a@b.io"}], "n": 1, "tags": ["x@y.dev"]});
        let redactor = all();
        let value = serde_json::to_value(redactor.over(&value)).unwrap();
        assert_eq!(
            value,
            json!({"messages": [{"role": "user", "content": "I am [REDACTED:email]"}], "n": 1, "tags": ["[REDACTED:email]"]})
        );
    }

    #[test]
    fn a_text_is_left_alone_only_when_no_string_of_it_could_change() {
        let redactor = all_built_in();
        assert!(
            redactor.leaves_alone(
                r#"{"model":"chat","messages":[{"role":"user","content":"hello there"}],"max_tokens":256}"#
            )
        );
        // Phone-shaped numbers outside strings, and short ones inside, change nothing.
        assert!(redactor.leaves_alone(r#"{"created":1764300000,"seed":123456789012,"content":"call 555-0100"}"#));
        assert!(!redactor.leaves_alone(r#"{"created":1764300000,"content":"call 415 555 0100"}"#));
        for json in [
            r#"{"content":"write to a@b.io"}"#,
            r#"{"content":"call +1 415 555 0100"}"#,
            r#"{"content":"my key sk-abcdefghijklmnop"}"#,
            // Escapes hide what a string holds: `\u0040` is `@`.
            r#"{"content":"a\u0040b.io"}"#,
            r#"{"content":"line\nbreak"}"#,
        ] {
            assert!(!redactor.leaves_alone(json), "{json}");
        }
        // Whenever the text is judged unchanged, redacting its tree changes nothing.
        let cases = [
            r#"{"a":"sk-abcdefghijklmnop","created":1764300000}"#,
            r#"{"sk-abcdefghijklmnop":1}"#,
            r#"{"n":4155550100,"s":"4155550100"}"#,
            r#"{"s":"10.0.0.1 and 2026-12-07","t":"x@y"}"#,
            r#"["bearer abcdefghij", "a@b.co", 12345678901]"#,
            r#"{"ip":"192.168.100.200","n":[1,2,3],"deep":{"x":["ok"]}}"#,
        ];
        for json in cases {
            let value: Value = serde_json::from_str(json).unwrap();
            let redacted = serde_json::to_value(redactor.over(&value)).unwrap();
            if redactor.leaves_alone(json) {
                assert_eq!(redacted, value, "{json}");
            }
        }
        // And over generated bodies mixing every shape inside and outside strings.
        let fragments = [
            "hello",
            "415 555 0100",
            "+1 (415) 555-0100",
            "555-0100",
            "a@b.io",
            "x@y",
            "sk-abcdefghijk12",
            "AKIAABCDEFGHIJKLMNOP",
            "2026-12-07",
            "10.0.0.1",
            "123456789",
            "12345678",
            "[",
            "{ }",
            ":",
            ",",
        ];
        let mut seed = 11u64;
        let mut next = |n: usize| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        let (mut judged_alone, mut judged_not) = (0, 0);
        for _ in 0..3000 {
            let mut object = serde_json::Map::new();
            for field in 0..1 + next(4) {
                let text: Vec<&str> = (0..1 + next(3)).map(|_| fragments[next(fragments.len())]).collect();
                let value = match next(3) {
                    0 => json!(text.join(" ")),
                    1 => json!([text.join(""), 1764300000u64 + next(1000) as u64]),
                    _ => json!(4155550100u64 + next(1000) as u64),
                };
                object.insert(format!("{}{field}", text[0]), value);
            }
            let value = Value::Object(object);
            let text = serde_json::to_string(&value).unwrap();
            if redactor.leaves_alone(&text) {
                judged_alone += 1;
                assert_eq!(serde_json::to_value(redactor.over(&value)).unwrap(), value, "{text}");
            } else {
                judged_not += 1;
            }
        }
        assert!(judged_alone > 100 && judged_not > 100, "{judged_alone} / {judged_not}");
        assert_eq!(
            strings_of(r#"{"a":"x y","b":[1,""],"c":"open"#).collect::<Vec<_>>(),
            ["a", "x y", "b", "", "c", "open"]
        );
        // A configured regex may anchor to a string's edges: never judged on the whole text.
        let custom = Redactor::new("t", &[Redaction::Regex("^secret$".into())]);
        assert!(!custom.leaves_alone(r#"{"content":"hello"}"#));
        assert!(Redactor::default().leaves_alone(r#"{"content":"a@b.io"}"#));
    }
}
