//! YAML reader that keeps positions and expands `${VAR}` references.
//!
//! Owns: turning config text into a [`serde_json::Value`] tree plus the 1-based line and
//! column of every key and value, addressed by a path such as `models.chat.targets[0].backend`.
//! Plain scalars are typed as in the YAML 1.2 core schema; quoted and block scalars are
//! strings. `${VAR}` / `${VAR:-default}` are expanded inside string values *after* parsing, so
//! an environment value containing `#` or `: ` cannot change the document's structure and
//! positions stay those of the file. `$${` is a literal `${`.
//! Must not: know the config schema; that is `validate`'s job.

use std::collections::HashMap;

use serde_json::{Map, Value};
use yaml_rust2::Yaml;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::{ConfigError, Problem};

/// A 1-based place in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    const START: Pos = Pos { line: 1, col: 1 };

    fn from_marker(mark: Marker) -> Pos {
        // yaml-rust2 counts lines from 1 but columns from 0.
        Pos { line: mark.line().max(1), col: mark.col() + 1 }
    }
}

/// A parsed config file: its value tree and where each node came from.
#[derive(Debug, Clone)]
pub struct Document {
    /// Always a mapping (an empty file is an empty mapping).
    pub root: Value,
    /// Position of each value, by path (`""` is the root).
    values: HashMap<String, Pos>,
    /// Position of each mapping key, by the path of the value it introduces.
    keys: HashMap<String, Pos>,
    /// The text of plain scalars typed as something other than a string (`0x1F`, `1.50`),
    /// so a field that wants a string can get back exactly what was written.
    plain_text: HashMap<String, String>,
}

impl Document {
    /// Where the value at `path` starts, or the nearest ancestor's position.
    pub fn value_pos(&self, path: &str) -> Pos {
        let mut current = path;
        loop {
            if let Some(pos) = self.values.get(current) {
                return *pos;
            }
            match parent(current) {
                Some(up) => current = up,
                None => return Pos::START,
            }
        }
    }

    /// Where the key introducing `path` is written; falls back to [`Document::value_pos`].
    pub fn key_pos(&self, path: &str) -> Pos {
        match self.keys.get(path) {
            Some(pos) => *pos,
            None => self.value_pos(path),
        }
    }

    /// The source text of a plain scalar that was typed as a number, bool or null.
    pub fn plain_text(&self, path: &str) -> Option<&str> {
        self.plain_text.get(path).map(String::as_str)
    }
}

/// Parses `text`, expanding `${VAR}` with `env`. Reports every problem it can find.
pub fn parse(text: &str, origin: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Document, ConfigError> {
    let (protected, refs) = protect_refs(text);
    let mut builder = Builder::new(env, &refs);
    let result = Parser::new_from_str(&protected).load(&mut builder, true);
    let problem =
        |pos: Pos, message: String| Problem { origin: origin.to_string(), line: pos.line, col: pos.col, message };
    let mut problems: Vec<Problem> = builder.problems.drain(..).map(|(pos, msg)| problem(pos, msg)).collect();
    if let Err(err) = result {
        problems.push(problem(Pos::from_marker(*err.marker()), format!("invalid YAML: {}", err.info())));
        // Problems found after a syntax error are likely its echoes.
        return Err(ConfigError { problems });
    }
    let root = builder.root.take().unwrap_or_else(|| Value::Object(Map::new()));
    if !root.is_object() {
        problems.push(problem(
            builder.doc.value_pos(""),
            "the config must be a mapping of sections (`server:`, `backends:`, ...)".into(),
        ));
    }
    if !problems.is_empty() {
        problems.sort_by_key(|p| (p.line, p.col));
        return Err(ConfigError { problems });
    }
    let mut doc = builder.doc;
    doc.root = root;
    Ok(doc)
}

/// Appends a mapping key to a path, quoting keys that would make the path ambiguous.
pub fn join_key(path: &str, key: &str) -> String {
    let needs_quotes = key.is_empty() || key.contains(['.', '[', ']', '"']);
    let key = if needs_quotes { format!("\"{}\"", key.replace('"', "\\\"")) } else { key.to_string() };
    if path.is_empty() { key } else { format!("{path}.{key}") }
}

/// Appends a sequence index to a path.
pub fn join_index(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

/// The path one level up, or `None` for the root.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let mut cut = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in path.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '.' | '[' if !quoted => cut = i,
            _ => {}
        }
    }
    Some(&path[..cut])
}

// === impl Builder ===

enum Frame {
    Seq { path: String, items: Vec<Value>, anchor: usize },
    Map { path: String, map: Map<String, Value>, key: Option<PendingKey>, anchor: usize },
}

struct PendingKey {
    name: String,
    /// False for a key we already reported (complex or duplicate): its value is dropped.
    keep: bool,
}

struct Builder<'e> {
    env: &'e dyn Fn(&str) -> Option<String>,
    /// The `${...}` references hidden from the YAML parser by [`protect_refs`].
    refs: &'e [String],
    stack: Vec<Frame>,
    root: Option<Value>,
    anchors: HashMap<usize, Value>,
    doc: Document,
    problems: Vec<(Pos, String)>,
    /// Depth inside a mapping or sequence used as a key, which we skip.
    skip_depth: usize,
    documents: usize,
}

impl<'e> Builder<'e> {
    fn new(env: &'e dyn Fn(&str) -> Option<String>, refs: &'e [String]) -> Self {
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
            Value::String(s) => match expand(&s, self.env) {
                Ok(expanded) => Value::String(expanded),
                Err(message) => {
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

// `${VAR:-}` must work inside flow mappings (`{ api_key: ${KEY:-} }`), where a plain `}` would
// end the mapping. Before parsing, each reference is swapped for a run of private-use
// characters of the same length (so every position stays exact) that encodes its index; each
// scalar gets its references back before expansion.
const REF_START: char = '\u{E000}';
const REF_FILL: char = '\u{E001}';
const REF_DIGIT: u32 = 0xE100;

/// Hides every `${...}` (closed on the same line) from the YAML parser.
fn protect_refs(text: &str) -> (String, Vec<String>) {
    if !text.contains("${") {
        return (text.to_string(), Vec::new());
    }
    let mut out = String::with_capacity(text.len());
    let mut refs = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        let escaped = rest[..at].ends_with('$');
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let line_end = rest.find('\n').unwrap_or(rest.len());
        match rest[..line_end].find('}') {
            Some(end) if !escaped && refs.len() < 256 * 256 * 256 => {
                let reference = &rest[..=end];
                let len = reference.chars().count();
                let index = refs.len() as u32;
                out.push(REF_START);
                for shift in [16, 8, 0] {
                    out.push(char::from_u32(REF_DIGIT + ((index >> shift) & 0xFF)).unwrap_or(REF_FILL));
                }
                out.extend(std::iter::repeat_n(REF_FILL, len - 4));
                refs.push(reference.to_string());
                rest = &rest[end + 1..];
            }
            _ => {
                out.push_str("${");
                rest = &rest[2..];
            }
        }
    }
    out.push_str(rest);
    (out, refs)
}

/// Puts back the references [`protect_refs`] hid in one scalar.
fn restore_refs(text: String, refs: &[String]) -> String {
    if refs.is_empty() || !text.contains(REF_START) {
        return text;
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != REF_START {
            out.push(c);
            continue;
        }
        let mut index = 0usize;
        for _ in 0..3 {
            let digit = chars.next().map_or(0, |d| (d as u32).wrapping_sub(REF_DIGIT));
            index = (index << 8) | (digit & 0xFF) as usize;
        }
        while chars.peek() == Some(&REF_FILL) {
            chars.next();
        }
        out.push_str(refs.get(index).map_or("", String::as_str));
    }
    out
}

/// Expands `${VAR}` and `${VAR:-default}`; `$${` is a literal `${`. `:-` applies the default
/// when the variable is unset or empty, as in POSIX shells.
pub fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if rest.starts_with("$${") {
            out.push_str("${");
            rest = &rest[3..];
            continue;
        }
        if !rest.starts_with("${") {
            out.push('$');
            rest = &rest[1..];
            continue;
        }
        let Some(end) = rest.find('}') else {
            return Err(format!("unterminated `${{` in `{text}`: expected `${{VAR}}` or `${{VAR:-default}}`"));
        };
        let inner = &rest[2..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        let valid_name = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(format!(
                "invalid variable reference `${{{inner}}}`: expected `${{NAME}}` or `${{NAME:-default}}` (write `$${{` for a literal `${{`)"
            ));
        }
        match (env(name), default) {
            (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(format!(
                    "environment variable `{name}` is not set (write `${{{name}:-default}}` to give a default)"
                ));
            }
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("example.com".into()),
            "TRICKY" => Some("a # b: c".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn parse_ok(text: &str) -> Document {
        match parse(text, "t.yaml", &env) {
            Ok(doc) => doc,
            Err(err) => panic!("unexpected error: {err}"),
        }
    }

    fn parse_err(text: &str) -> Vec<String> {
        match parse(text, "t.yaml", &env) {
            Ok(doc) => panic!("expected an error, got {:?}", doc.root),
            Err(err) => err.problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn types_scalars_and_records_positions() {
        let doc = parse_ok("a:\n  b: [1, 2.5, true, ~, x, '7']\n  \"c.d\": { e: 0x10 }\n");
        assert_eq!(doc.root, serde_json::json!({"a": {"b": [1, 2.5, true, null, "x", "7"], "c.d": {"e": 16}}}));
        assert_eq!(doc.value_pos("a.b[4]"), Pos { line: 2, col: 24 });
        assert_eq!(doc.key_pos("a.b"), Pos { line: 2, col: 3 });
        assert_eq!(doc.key_pos("a.\"c.d\".e"), Pos { line: 3, col: 12 });
        assert_eq!(doc.plain_text("a.\"c.d\".e"), Some("0x10"));
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(doc.value_pos("a.b[9].zz"), Pos { line: 2, col: 6 });
    }

    #[test]
    fn empty_file_is_empty_mapping() {
        assert_eq!(parse_ok("").root, serde_json::json!({}));
        assert_eq!(parse_ok("# only a comment\n").root, serde_json::json!({}));
    }

    #[test]
    fn expands_env_after_parsing() {
        let doc = parse_ok("a: ${TRICKY}\nb: \"${MISSING:-dflt}\"\nc: ${EMPTY:-x}\nd: $${HOST} ${HOST}$\n");
        assert_eq!(doc.root, serde_json::json!({"a": "a # b: c", "b": "dflt", "c": "x", "d": "${HOST} example.com$"}));
    }

    #[test]
    fn references_work_inside_flow_mappings() {
        let doc = parse_ok("a: { k: ${NOPE:-}, h: \"${HOST}\", n: [${MISSING:-x}, 2] }\n# ${IN_COMMENT}\nb: ${HOST}\n");
        assert_eq!(
            doc.root,
            serde_json::json!({"a": {"k": "", "h": "example.com", "n": ["x", 2]}, "b": "example.com"})
        );
        assert_eq!(doc.value_pos("a.n[1]"), Pos { line: 1, col: 53 });
        assert_eq!(doc.value_pos("b"), Pos { line: 3, col: 4 });
    }

    #[test]
    fn missing_env_var_is_positioned() {
        assert_eq!(
            parse_err("a: 1\nb:\n  c: ${NOPE}\n"),
            ["t.yaml:3:6: environment variable `NOPE` is not set (write `${NOPE:-default}` to give a default)"]
        );
        assert!(parse_err("a: ${bad name}\n")[0].starts_with("t.yaml:1:4: invalid variable reference"));
        assert!(parse_err("a: ${OPEN\n")[0].starts_with("t.yaml:1:4: unterminated"));
    }

    #[test]
    fn syntax_error_is_positioned() {
        let problems = parse_err("a: 1\nb: [1, 2\nc: 3\n");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("t.yaml:3:"), "{problems:?}");
        let problems = parse_err("a:\n  b: 1\n c: 2\n");
        assert!(problems[0].starts_with("t.yaml:3:"), "{problems:?}");
        assert!(problems[0].contains("invalid YAML"));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        assert_eq!(
            parse_err("a: 1\nb:\n  x: 1\n  x: 2\na: 3\n"),
            ["t.yaml:4:3: duplicate key `x` (first on line 3)", "t.yaml:5:1: duplicate key `a` (first on line 1)",]
        );
    }

    #[test]
    fn anchors_and_aliases_are_supported() {
        let doc = parse_ok("base: &b { x: 1 }\nother: *b\n");
        assert_eq!(doc.root["other"], serde_json::json!({"x": 1}));
        assert_eq!(doc.value_pos("other.x"), Pos { line: 2, col: 8 });
    }

    #[test]
    fn rejects_non_mapping_root_and_complex_keys() {
        assert_eq!(
            parse_err("- a\n"),
            ["t.yaml:1:1: the config must be a mapping of sections (`server:`, `backends:`, ...)"]
        );
        assert!(parse_err("? [a, b]\n: 1\n")[0].contains("mapping keys must be plain words"));
        assert!(parse_err("a: 1\n---\nb: 2\n")[0].starts_with("t.yaml:2:1: only one YAML document"));
    }
}
