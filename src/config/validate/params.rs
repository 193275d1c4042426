//! Checks a target's `params` (a weir extension): a mapping of request fields sent where the
//! client did not set them. Fields that belong to the request itself are refused, and the
//! common sampling fields must have OpenAI's types and ranges; other fields pass as written.

use serde_json::{Map, Value};

use super::Cx;
use crate::config::yaml::join_key;

/// Fields that make the request what it is; a config default for them would be a mistake.
const REQUEST_FIELDS: [&str; 6] = ["model", "messages", "prompt", "input", "stream", "stream_options"];

impl Cx<'_> {
    pub(super) fn params(&mut self, path: &str, raw: Option<&Value>) -> Map<String, Value> {
        let map = match raw {
            None | Some(Value::Null) => return Map::new(),
            Some(Value::Object(map)) => map,
            Some(_) => {
                self.err(path, "`params` must be a mapping of request fields, such as { max_tokens: 1024 }");
                return Map::new();
            }
        };
        let mut params = Map::new();
        for (field, value) in map {
            let at = join_key(path, field);
            if REQUEST_FIELDS.contains(&field.as_str()) {
                self.key_err(&at, format!("`{field}` comes from the request and cannot be a default in `params`"));
                continue;
            }
            if let Some(problem) = check(field, value) {
                self.err(&at, format!("`params.{field}` {problem}"));
                continue;
            }
            params.insert(field.clone(), value.clone());
        }
        params
    }
}

/// What is wrong with `value` for `field`, for the fields whose shape is known.
fn check(field: &str, value: &Value) -> Option<&'static str> {
    let number_in = |low: f64, high: f64| value.as_f64().is_some_and(|n| (low..=high).contains(&n));
    let ok = match field {
        "max_tokens" | "max_completion_tokens" | "top_k" => value.as_u64().is_some_and(|n| n > 0),
        "temperature" => number_in(0.0, 2.0),
        "top_p" => number_in(0.0, 1.0),
        "presence_penalty" | "frequency_penalty" => number_in(-2.0, 2.0),
        "seed" => value.is_i64() || value.is_u64(),
        "user" => value.is_string(),
        "stop" => value.is_string() || value.as_array().is_some_and(|items| items.iter().all(Value::is_string)),
        _ => true,
    };
    if ok {
        return None;
    }
    Some(match field {
        "max_tokens" | "max_completion_tokens" | "top_k" => "must be a whole number ≥ 1",
        "temperature" => "must be a number from 0 to 2",
        "top_p" => "must be a number from 0 to 1",
        "presence_penalty" | "frequency_penalty" => "must be a number from -2 to 2",
        "seed" => "must be a whole number",
        "user" => "must be a string",
        _ => "must be a string or a list of strings",
    })
}
