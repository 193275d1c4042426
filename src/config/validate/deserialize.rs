//! Deserializes the document into the raw schema without stopping at the first problem.
//!
//! `serde_ignored` reports unknown keys (with the keys expected there); `serde_path_to_error`
//! gives the path of a value of the wrong type, which is reported, swapped for a neutral
//! stand-in (`{}`, `""`, or removed) and deserialization retried. A number written where a
//! string is wanted (or the reverse, e.g. from `${VAR}`) is taken as meant.

use std::collections::HashMap;

use serde_json::{Map, Value};
use yaml_rust2::Yaml;

use super::Cx;
use super::schema::expected_keys;
use crate::config::raw::RawConfig;
use crate::config::yaml::{Pos, join_index, join_key};

/// One step of a path into the value tree.
#[derive(Debug, Clone)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

fn render(segs: &[Seg]) -> String {
    segs.iter().fold(String::new(), |path, seg| match seg {
        Seg::Key(key) => join_key(&path, key),
        Seg::Index(i) => join_index(&path, *i),
    })
}

fn ignored_segs(path: &serde_ignored::Path<'_>, out: &mut Vec<Seg>) {
    match path {
        serde_ignored::Path::Root => {}
        serde_ignored::Path::Seq { parent, index } => {
            ignored_segs(parent, out);
            out.push(Seg::Index(*index));
        }
        serde_ignored::Path::Map { parent, key } => {
            ignored_segs(parent, out);
            out.push(Seg::Key(key.clone()));
        }
        serde_ignored::Path::Some { parent }
        | serde_ignored::Path::NewtypeStruct { parent }
        | serde_ignored::Path::NewtypeVariant { parent } => ignored_segs(parent, out),
    }
}

fn node_mut<'v>(tree: &'v mut Value, segs: &[Seg]) -> Option<&'v mut Value> {
    segs.iter().try_fold(tree, |node, seg| match seg {
        Seg::Key(key) => node.get_mut(key.as_str()),
        Seg::Index(i) => node.get_mut(*i),
    })
}

fn remove(tree: &mut Value, segs: &[Seg]) -> bool {
    let Some((last, parents)) = segs.split_last() else {
        return false;
    };
    match (node_mut(tree, parents), last) {
        (Some(Value::Object(map)), Seg::Key(key)) => map.remove(key).is_some(),
        (Some(Value::Array(items)), Seg::Index(i)) if *i < items.len() => {
            items.remove(*i);
            true
        }
        _ => false,
    }
}

impl Cx<'_> {
    /// Deserializes the document into the raw schema, reporting every unknown key and every
    /// value of the wrong type. `None` only if the tree could not be repaired.
    pub(super) fn deserialize(&mut self) -> Option<RawConfig> {
        let mut tree = self.doc.root.clone();
        let mut attempts: HashMap<String, u32> = HashMap::new();
        for _ in 0..10_000 {
            let mut unknown = Vec::new();
            let result: Result<RawConfig, _> = {
                let mut on_ignored = |path: serde_ignored::Path<'_>| {
                    let mut segs = Vec::new();
                    ignored_segs(&path, &mut segs);
                    unknown.push(segs);
                };
                serde_path_to_error::deserialize(serde_ignored::Deserializer::new(&tree, &mut on_ignored))
            };
            let err = match result {
                Ok(raw) => {
                    for segs in unknown {
                        let path = render(&segs);
                        let key = match segs.last() {
                            Some(Seg::Key(key)) => key.clone(),
                            _ => path.clone(),
                        };
                        let pos = self.doc.key_pos(&path);
                        let message = match segs.split_last().and_then(|(_, parent)| expected_keys(parent)) {
                            Some(expected) => {
                                format!("unknown key `{key}` (expected one of: {})", expected.join(", "))
                            }
                            None => format!("unknown key `{key}`"),
                        };
                        self.problems.push((path, pos, message));
                    }
                    return Some(raw);
                }
                Err(err) => err,
            };
            let segs: Vec<Seg> = err
                .path()
                .iter()
                .filter_map(|seg| match seg {
                    serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                    serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                    _ => None,
                })
                .collect();
            let path = render(&segs);
            let inner = err.inner().to_string();
            let Some(node) = node_mut(&mut tree, &segs) else {
                break;
            };
            let in_map = matches!(segs.last(), Some(Seg::Key(_)));
            // `keys:` with every entry commented out is null: same as absent.
            if node.is_null() && in_map {
                remove(&mut tree, &segs);
                continue;
            }
            let tries = attempts.entry(path.clone()).or_default();
            *tries += 1;
            if *tries == 1 {
                if let Some(fixed) = coerce(node, &inner, self.doc.plain_text(&path)) {
                    *node = fixed;
                    continue;
                }
            }
            if !self.dropped.contains(&path) {
                let pos = self.doc.value_pos(&path);
                self.problems.push((path.clone(), pos, type_message(&path, &inner)));
                self.dropped.push(path.clone());
            }
            // Placeholders that deserialize into most fields: {} for sections, "" for words.
            match *tries {
                1 | 2 if !node.is_object() => *node = Value::Object(Map::new()),
                1..=3 if !node.is_string() => *node = Value::String(String::new()),
                _ => {
                    if !remove(&mut tree, &segs) {
                        break;
                    }
                }
            }
        }
        if self.problems.is_empty() {
            self.problems.push((String::new(), Pos { line: 1, col: 1 }, "the config could not be read".into()));
        }
        None
    }
}

/// A scalar written as a number where a string is wanted (or the reverse, e.g. from `${VAR}`)
/// is taken as meant.
fn coerce(node: &Value, inner: &str, plain: Option<&str>) -> Option<Value> {
    let expected = inner.split_once(", expected ")?.1;
    match node {
        Value::Number(_) | Value::Bool(_) if expected == "a string" => {
            Some(Value::String(plain.map_or_else(|| node.to_string(), str::to_string)))
        }
        Value::String(text) if expected != "a string" => match Yaml::from_str(text.trim()) {
            Yaml::Integer(i) => Some(Value::from(i)),
            Yaml::Real(r) => r.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number),
            Yaml::Boolean(b) => Some(Value::Bool(b)),
            _ => None,
        },
        _ => None,
    }
}

fn type_message(path: &str, inner: &str) -> String {
    let friendly = |expected: &str| match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number".to_string(),
        "f32" | "f64" => "a number".to_string(),
        "a sequence" => "a list".to_string(),
        "a map" => "a mapping".to_string(),
        _ if expected.starts_with("struct ") => "a mapping".to_string(),
        _ => expected.to_string(),
    };
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((got, expected)) = inner.strip_prefix(prefix).and_then(|rest| rest.split_once(", expected ")) {
            return format!("`{path}`: expected {}, got {got}", friendly(expected));
        }
    }
    if let Some(field) = inner.strip_prefix("missing field ") {
        return format!("`{path}` needs {field}");
    }
    format!("`{path}`: {inner}")
}
