//! The event receiver that builds a [`Document`] from the YAML parser's events: values typed
//! as in the YAML 1.2 core schema, `${VAR}` expanded in strings, the position of every key and
//! value recorded, and duplicate keys, complex keys, unknown aliases and extra documents reported.

use std::collections::HashMap;

use serde_json::{Map, Value};
use yaml_rust2::Yaml;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::env::{expand, restore_refs};
use super::{Document, Env, Pos, join_index, join_key};

enum Frame {
    Seq { path: String, items: Vec<Value>, anchor: usize },
    Map { path: String, map: Map<String, Value>, key: Option<PendingKey>, anchor: usize },
}

struct PendingKey {
    name: String,
    /// False for a key we already reported (complex or duplicate): its value is dropped.
    keep: bool,
}

pub(super) struct Builder<'e> {
    /// `None` takes strings verbatim (prompt files: a prompt must not read the environment).
    env: Option<Env<'e>>,
    /// The `${...}` references hidden from the YAML parser by [`protect_refs`].
    refs: &'e [String],
    stack: Vec<Frame>,
    pub(super) root: Option<Value>,
    anchors: HashMap<usize, Value>,
    pub(super) doc: Document,
    pub(super) problems: Vec<(Pos, String)>,
    /// Depth inside a mapping or sequence used as a key, which we skip.
    skip_depth: usize,
    documents: usize,
}

impl<'e> Builder<'e> {
    pub(super) fn new(env: Option<Env<'e>>, refs: &'e [String]) -> Self {
        Builder {
            env,
            refs,
            stack: Vec::new(),
            root: None,
            anchors: HashMap::new(),
            doc: Document {
                root: Value::Null,
                values: HashMap::new(),
                keys: HashMap::new(),
                plain_text: HashMap::new(),
            },
            problems: Vec::new(),
            skip_depth: 0,
            documents: 0,
        }
    }

    /// True when the next node is a mapping key.
    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }

    /// The path of the next value node.
    fn next_path(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(Frame::Seq { path, items, .. }) => join_index(path, items.len()),
            Some(Frame::Map { path, key: Some(key), .. }) => join_key(path, &key.name),
            Some(Frame::Map { path, .. }) => path.clone(),
        }
    }

    /// Places a finished value into its parent (or as the root).
    fn place(&mut self, value: Value, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, value.clone());
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(value);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map { map, key, .. }) => {
                if let Some(PendingKey { name, keep: true }) = key.take() {
                    map.insert(name, value);
                }
            }
        }
    }

    /// Handles a scalar in key position.
    fn on_key(&mut self, name: String, pos: Pos) {
        let Some(Frame::Map { path, map, key, .. }) = self.stack.last_mut() else {
            return;
        };
        let child = join_key(path, &name);
        let mut keep = true;
        if map.contains_key(&name) {
            let first = self.doc.keys.get(&child).map(|p| p.line).unwrap_or(0);
            self.problems.push((pos, format!("duplicate key `{name}` (first on line {first})")));
            keep = false;
        } else {
            self.doc.keys.insert(child, pos);
        }
        *key = Some(PendingKey { name, keep });
    }

    fn on_scalar(&mut self, text: String, style: TScalarStyle, anchor: usize, tag: Option<Tag>, pos: Pos) {
        let text = restore_refs(text, self.refs);
        if self.expecting_key() {
            self.on_key(text, pos);
            return;
        }
        let path = self.next_path();
        self.doc.values.entry(path.clone()).or_insert(pos);
        let forced_string = tag.as_ref().is_some_and(|t| t.handle == "!!" && t.suffix == "str");
        let value = if style == TScalarStyle::Plain && !forced_string {
            match Yaml::from_str(&text) {
                Yaml::Integer(i) => Value::from(i),
                Yaml::Real(r) => match r.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                    Some(n) => Value::Number(n),
                    None => Value::String(text.clone()),
                },
                Yaml::Boolean(b) => Value::Bool(b),
                Yaml::Null => Value::Null,
                _ => Value::String(text.clone()),
            }
        } else {
            Value::String(text.clone())
        };
        let value = match value {
            Value::String(s) => match self.env.map(|env| expand(&s, env)) {
                None => Value::String(s),
                Some(Ok(expanded)) => Value::String(expanded),
                Some(Err(message)) => {
                    self.problems.push((pos, message));
                    Value::String(s)
                }
            },
            other => {
                self.doc.plain_text.entry(path).or_insert(text);
                other
            }
        };
        self.place(value, anchor);
    }

    fn on_start(&mut self, is_map: bool, anchor: usize, pos: Pos) {
        if self.skip_depth > 0 || self.expecting_key() {
            if self.skip_depth == 0 {
                self.problems.push((pos, "mapping keys must be plain words, not lists or mappings".into()));
                if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                    *key = Some(PendingKey { name: String::new(), keep: false });
                }
            }
            self.skip_depth += 1;
            return;
        }
        let path = self.next_path();
        self.doc.values.entry(path.clone()).or_insert(pos);
        self.stack.push(if is_map {
            Frame::Map { path, map: Map::new(), key: None, anchor }
        } else {
            Frame::Seq { path, items: Vec::new(), anchor }
        });
    }

    fn on_end(&mut self) {
        if self.skip_depth > 0 {
            self.skip_depth -= 1;
            return;
        }
        let (value, anchor) = match self.stack.pop() {
            Some(Frame::Seq { items, anchor, .. }) => (Value::Array(items), anchor),
            Some(Frame::Map { map, anchor, .. }) => (Value::Object(map), anchor),
            None => return,
        };
        self.place(value, anchor);
    }
}

impl MarkedEventReceiver for Builder<'_> {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let pos = Pos::from_marker(mark);
        match event {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents == 2 {
                    self.problems.push((pos, "only one YAML document is allowed per config file".into()));
                }
            }
            _ if self.documents > 1 => {}
            Event::Scalar(..) | Event::Alias(_) if self.skip_depth > 0 => {}
            Event::Scalar(text, style, anchor, tag) => self.on_scalar(text, style, anchor, tag, pos),
            Event::Alias(id) => {
                if self.expecting_key() {
                    self.problems.push((pos, "an alias cannot be used as a mapping key".into()));
                    if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                        *key = Some(PendingKey { name: String::new(), keep: false });
                    }
                    return;
                }
                let value = match self.anchors.get(&id) {
                    Some(value) => value.clone(),
                    None => {
                        self.problems.push((pos, "alias to an unknown anchor".into()));
                        Value::Null
                    }
                };
                let path = self.next_path();
                self.doc.values.entry(path).or_insert(pos);
                self.place(value, 0);
            }
            Event::MappingStart(anchor, _) => self.on_start(true, anchor, pos),
            Event::SequenceStart(anchor, _) => self.on_start(false, anchor, pos),
            Event::MappingEnd | Event::SequenceEnd => self.on_end(),
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}
