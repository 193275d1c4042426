//! YAML reader that keeps positions and expands `${VAR}` references.
//!
//! Owns: turning config text into a [`serde_json::Value`] tree plus the 1-based line and
//! column of every key and value, addressed by a path such as `models.chat.targets[0].backend`.
//! Plain scalars are typed as in the YAML 1.2 core schema; quoted and block scalars are
//! strings. `${VAR}` / `${VAR:-default}` are expanded inside string values *after* parsing, so
//! an environment value containing `#` or `: ` cannot change the document's structure and
//! positions stay those of the file. `$${` is a literal `${`.
//! Must not: know the config schema; that is `validate`'s job.

mod builder;
mod env;

use std::collections::HashMap;

use serde_json::{Map, Value};
use yaml_rust2::parser::Parser;
use yaml_rust2::scanner::Marker;

use super::{ConfigError, Problem};
use builder::Builder;
use env::protect_refs;

/// Resolves `${VAR}` references: the process environment, or a test's map.
pub type Env<'e> = &'e dyn Fn(&str) -> Option<String>;

/// A 1-based place in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };

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
    parse_with(text, origin, Some(env))
}

/// Parses `text` taking every string as written: no `${VAR}` expansion (prompt files).
pub fn parse_verbatim(text: &str, origin: &str) -> Result<Document, ConfigError> {
    parse_with(text, origin, None)
}

fn parse_with(text: &str, origin: &str, env: Option<Env<'_>>) -> Result<Document, ConfigError> {
    let (protected, refs) = match env {
        Some(_) => protect_refs(text),
        None => (text.to_string(), Vec::new()),
    };
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

impl Document {
    /// The same document placed under `keys` (`["prompts", "id"]` puts the whole file at
    /// `prompts.id`), positions kept, so a file holding one section validates as that
    /// section of a config.
    pub fn nested(self, keys: &[&str]) -> Document {
        let prefix = keys.iter().fold(String::new(), |path, key| join_key(&path, key));
        let moved = |path: String| match path.as_str() {
            "" => prefix.clone(),
            _ if path.starts_with('[') => format!("{prefix}{path}"),
            _ => format!("{prefix}.{path}"),
        };
        let root = keys.iter().rev().fold(self.root, |inner, key| {
            let mut map = Map::new();
            map.insert((*key).to_string(), inner);
            Value::Object(map)
        });
        Document {
            root,
            values: self.values.into_iter().map(|(path, pos)| (moved(path), pos)).collect(),
            keys: self.keys.into_iter().map(|(path, pos)| (moved(path), pos)).collect(),
            plain_text: self.plain_text.into_iter().map(|(path, text)| (moved(path), text)).collect(),
        }
    }
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

#[cfg(test)]
mod tests;
