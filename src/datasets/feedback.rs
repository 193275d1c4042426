//! Feedback: a score (and optional comment) for a request this gateway served.
//!
//! Owns: checking a feedback body ([`parse`]) and handing the feedback line to every
//! dataset ([`Datasets::accept_feedback`]). Must not: speak HTTP (`POST /v1/feedback` is the
//! server's handler), map errors to statuses, or wait for the disk.
//!
//! Body: `{"request_id": "...", "score": 0.0-1.0, "comment": "..."?, "ideal": "..."?}`.
//! `ideal` (optional, an extension) is the answer a reviewer would have wanted; `weir dataset
//! export --format eval` writes it as the record's `ideal`. The id must be one of the
//! requests seen in the last [`super::FEEDBACK_WINDOW`] (at most
//! [`super::FEEDBACK_WINDOW_REQUESTS`] of them, the oldest forgotten first) and made with the
//! caller's key (or the caller holds the admin token), else 404.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::record::rfc3339;
use super::{Caller, Datasets, ServedBy};
use crate::wire::RequestError;
use crate::wire::request::{MAX_JSON_DEPTH, check_structure};

/// Feedback bodies are small; this bounds them below `server.max_body`.
pub const MAX_FEEDBACK_BODY: u64 = 64 * 1024;
/// Longest `request_id` accepted (request ids weir keeps are at most 128 bytes).
const MAX_ID_LEN: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error(
        "unknown request_id `{0}`: feedback must name a request this gateway served recently (the last 24 hours, up to 200000 requests) for the same key while a dataset was configured"
    )]
    UnknownRequest(String),
}

/// A checked feedback body.
#[derive(Debug, Clone, PartialEq)]
pub struct Feedback {
    pub request_id: String,
    pub score: f64,
    pub comment: Option<String>,
    pub ideal: Option<String>,
}

/// Feedback the datasets took.
#[derive(Debug)]
pub struct Accepted {
    /// How many datasets queued the feedback line.
    pub queued: usize,
    /// The public model and variant that served the request, once it was routed.
    pub served_by: Option<Arc<ServedBy>>,
}

impl Datasets {
    /// Appends `feedback`, sent by `caller`, to every dataset. Refused (as unknown, so ids of
    /// other keys' requests are not revealed) when it names no request seen recently, or one
    /// another key made.
    pub fn accept_feedback(&self, feedback: &Feedback, caller: Caller<'_>) -> Result<Accepted, FeedbackError> {
        if !self.knows(&feedback.request_id, caller) {
            return Err(FeedbackError::UnknownRequest(feedback.request_id.clone()));
        }
        let mut line = Map::new();
        line.insert("type".into(), json!("feedback"));
        line.insert("request_id".into(), json!(feedback.request_id));
        line.insert("score".into(), json!(feedback.score));
        line.insert("comment".into(), json!(feedback.comment));
        if let Some(ideal) = &feedback.ideal {
            line.insert("ideal".into(), json!(ideal));
        }
        let key = match caller {
            Caller::Key(key) => key,
            Caller::Admin => "admin",
        };
        line.insert("key".into(), json!(key));
        line.insert("ts".into(), json!(rfc3339(std::time::SystemTime::now())));
        let queued = self.feedback(Value::Object(line));
        Ok(Accepted { queued, served_by: self.served_by(&feedback.request_id) })
    }
}

/// Checks a feedback body, naming the offending field.
pub fn parse(body: &[u8]) -> Result<Feedback, RequestError> {
    check_structure(body, MAX_JSON_DEPTH)?;
    let value: Value = serde_json::from_slice(body).map_err(|err| RequestError::InvalidJson(err.to_string()))?;
    let Value::Object(map) = value else {
        return Err(RequestError::InvalidJson("the feedback body must be a JSON object".into()));
    };
    let request_id = match map.get("request_id") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_ID_LEN => id.clone(),
        Some(Value::String(_)) => return Err(invalid("request_id", "`request_id` must be 1 to 256 characters")),
        Some(_) => return Err(invalid("request_id", "`request_id` must be a string")),
        None => return Err(invalid("request_id", "missing required parameter: `request_id`")),
    };
    let score = match map.get("score") {
        Some(Value::Number(n)) => n.as_f64().filter(|s| (0.0..=1.0).contains(s)),
        Some(_) => None,
        None => return Err(invalid("score", "missing required parameter: `score`")),
    };
    let Some(score) = score else {
        return Err(invalid("score", "`score` must be a number from 0 to 1"));
    };
    Ok(Feedback { request_id, score, comment: optional_text(&map, "comment")?, ideal: optional_text(&map, "ideal")? })
}

fn optional_text(map: &Map<String, Value>, field: &str) -> Result<Option<String>, RequestError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(invalid(field, &format!("`{field}` must be a string"))),
    }
}

fn invalid(param: &str, message: &str) -> RequestError {
    RequestError::InvalidField { param: param.to_owned(), message: message.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(body: &str) -> String {
        match parse(body.as_bytes()) {
            Err(RequestError::InvalidField { param, .. }) => param,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn valid_feedback_parses() {
        let f = parse(br#"{"request_id":"req_1","score":1,"comment":"good"}"#).unwrap();
        assert_eq!(f, Feedback { request_id: "req_1".into(), score: 1.0, comment: Some("good".into()), ideal: None });
        assert_eq!(parse(br#"{"request_id":"r","score":0.25,"comment":null}"#).unwrap().comment, None);
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(param(r#"{"request_id":"r","score":1.5}"#), "score");
        assert_eq!(param(r#"{"request_id":"r","score":-0.1}"#), "score");
        assert_eq!(param(r#"{"request_id":"r","score":"1"}"#), "score");
        assert_eq!(param(r#"{"request_id":"r"}"#), "score");
        assert_eq!(param(r#"{"score":1}"#), "request_id");
        assert_eq!(param(r#"{"request_id":7,"score":1}"#), "request_id");
        assert_eq!(param(r#"{"request_id":"r","score":1,"comment":3}"#), "comment");
        assert!(matches!(parse(b"{"), Err(RequestError::InvalidJson(_))));
    }
}
