//! Scorers: how an answer earns a score from 0 to 1.
//!
//! Owns: parsing `--scorer` and scoring one answer. `exact` (1 when the answer equals the
//! reference, surrounding whitespace ignored), `contains` (1 when the reference occurs in
//! the answer), `regex:PATTERN` (1 when the pattern matches anywhere in the answer),
//! `json-schema:FILE` (1 when the answer — a JSON document, optionally inside one ``` fence —
//! validates against the schema), `judge:MODEL` (an LLM judge called through the same weir
//! with a rubric: the shipped `rubric.txt`, or `--judge-rubric FILE`; placeholders
//! `{{input}}`, `{{reference}}`, `{{output}}`; the judge replies `{"score": 0..1, "reason"}`).
//! Must not: turn a failure to score (no reference, a judge that did not answer) into a 0 —
//! it is reported as a failure instead.

use std::path::Path;

use serde_json::{Value, json};

use super::client::Client;
use super::items::{Endpoint, Item};

/// The judge's prompt unless `--judge-rubric` names another.
pub const DEFAULT_RUBRIC: &str = include_str!("rubric.txt");

#[derive(Debug, thiserror::Error)]
pub enum ScorerError {
    #[error("unknown scorer `{0}`: use exact, contains, regex:PATTERN, json-schema:FILE or judge:MODEL")]
    Unknown(String),
    #[error("regex scorer: {0}")]
    Regex(#[from] regex::Error),
    #[error("json-schema scorer: cannot read {path}: {message}")]
    Schema { path: String, message: String },
    #[error("cannot read the judge rubric {path}: {message}")]
    Rubric { path: String, message: String },
    #[error("judge:MODEL needs a model name")]
    JudgeModel,
}

pub enum Scorer {
    Exact,
    Contains,
    Regex(regex::Regex),
    JsonSchema { schemas: boon::Schemas, index: boon::SchemaIndex },
    Judge { model: String, rubric: String },
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scorer::Exact => "exact",
            Scorer::Contains => "contains",
            Scorer::Regex(_) => "regex",
            Scorer::JsonSchema { .. } => "json-schema",
            Scorer::Judge { .. } => "judge",
        })
    }
}

/// One answer's score, with the judge's reason or the schema's complaint.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub score: f64,
    pub reason: Option<String>,
}

impl Scored {
    fn pass(pass: bool) -> Scored {
        Scored { score: if pass { 1.0 } else { 0.0 }, reason: None }
    }
}

impl Scorer {
    /// Parses `--scorer`; `rubric` is `--judge-rubric`.
    pub fn parse(spec: &str, rubric: Option<&Path>) -> Result<Scorer, ScorerError> {
        let (kind, argument) = spec.split_once(':').unwrap_or((spec, ""));
        match kind {
            "exact" if argument.is_empty() => Ok(Scorer::Exact),
            "contains" if argument.is_empty() => Ok(Scorer::Contains),
            "regex" => Ok(Scorer::Regex(regex::Regex::new(argument)?)),
            "json-schema" => json_schema(argument),
            "judge" => {
                if argument.trim().is_empty() {
                    return Err(ScorerError::JudgeModel);
                }
                let rubric = match rubric {
                    Some(path) => std::fs::read_to_string(path).map_err(|err| ScorerError::Rubric {
                        path: path.display().to_string(),
                        message: err.to_string(),
                    })?,
                    None => DEFAULT_RUBRIC.to_owned(),
                };
                Ok(Scorer::Judge { model: argument.trim().to_owned(), rubric })
            }
            _ => Err(ScorerError::Unknown(spec.to_owned())),
        }
    }

    /// Scores `output`, the answer to `item`; `Err` says why it could not be scored.
    pub async fn score(&self, item: &Item, output: &str, client: &Client) -> Result<Scored, String> {
        let reference = || item.reference.as_deref().ok_or_else(|| "the item has no reference answer".to_owned());
        match self {
            Scorer::Exact => Ok(Scored::pass(output.trim() == reference()?.trim())),
            Scorer::Contains => Ok(Scored::pass(output.contains(reference()?.trim()))),
            Scorer::Regex(pattern) => Ok(Scored::pass(pattern.is_match(output))),
            Scorer::JsonSchema { schemas, index } => Ok(validate(schemas, *index, output)),
            Scorer::Judge { model, rubric } => judge(client, model, rubric, item, output).await,
        }
    }
}

fn json_schema(path: &str) -> Result<Scorer, ScorerError> {
    let fail = |message: String| ScorerError::Schema { path: path.to_owned(), message };
    let text = std::fs::read_to_string(path).map_err(|err| fail(err.to_string()))?;
    let schema: Value = serde_json::from_str(&text).map_err(|err| fail(format!("not JSON: {err}")))?;
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    let location = "weir:eval/schema.json";
    compiler.add_resource(location, schema).map_err(|err| fail(err.to_string()))?;
    let index = compiler.compile(location, &mut schemas).map_err(|err| fail(format!("not a valid schema: {err}")))?;
    Ok(Scorer::JsonSchema { schemas, index })
}

fn validate(schemas: &boon::Schemas, index: boon::SchemaIndex, output: &str) -> Scored {
    let Ok(document) = serde_json::from_str::<Value>(unfenced(output)) else {
        return Scored { score: 0.0, reason: Some("the answer is not JSON".into()) };
    };
    match schemas.validate(&document, index) {
        Ok(()) => Scored::pass(true),
        Err(err) => Scored { score: 0.0, reason: Some(err.to_string()) },
    }
}

/// The answer without one surrounding Markdown code fence (```json ... ```).
fn unfenced(output: &str) -> &str {
    let trimmed = output.trim();
    let Some(rest) = trimmed.strip_prefix("```") else { return trimmed };
    let Some(body) = rest.strip_suffix("```") else { return trimmed };
    // Drop the info string (`json`) on the opening line.
    body.split_once('\n').map_or(body, |(_, code)| code).trim()
}

async fn judge(client: &Client, model: &str, rubric: &str, item: &Item, output: &str) -> Result<Scored, String> {
    let prompt = rubric
        .replace("{{input}}", &item.input_text())
        .replace("{{reference}}", item.reference.as_deref().unwrap_or(""))
        .replace("{{output}}", output);
    let body = json!({"model": model, "temperature": 0, "messages": [{"role": "user", "content": prompt}]});
    let answer = client.call(Endpoint::Chat, &body, None).await;
    if let Some(error) = answer.error {
        return Err(format!("judge: {error}"));
    }
    let text = answer.text.unwrap_or_default();
    verdict(&text).ok_or_else(|| format!("judge: no score from 0 to 1 in its reply: {}", excerpt(&text)))
}

/// The judge's `{"score", "reason"}`, also when wrapped in prose or a code fence.
fn verdict(text: &str) -> Option<Scored> {
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    let value: Value = serde_json::from_str(text.get(start..=end)?).ok()?;
    let score = value.get("score").and_then(Value::as_f64).filter(|s| (0.0..=1.0).contains(s))?;
    let reason = value.get("reason").and_then(Value::as_str).map(str::to_owned);
    Some(Scored { score, reason })
}

fn excerpt(text: &str) -> String {
    let mut cut: String = text.chars().take(120).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;

    fn item(reference: Option<&str>) -> Item {
        Item { id: "r".into(), endpoint: Endpoint::Chat, body: Map::new(), reference: reference.map(str::to_owned) }
    }

    fn score(scorer: &Scorer, reference: Option<&str>, output: &str) -> Result<f64, String> {
        let client = Client::new("http://127.0.0.1:9", None, std::time::Duration::from_secs(1)).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(scorer.score(&item(reference), output, &client)).map(|s| s.score)
    }

    #[test]
    fn string_scorers() {
        assert_eq!(score(&Scorer::parse("exact", None).unwrap(), Some(" Paris\n"), "Paris"), Ok(1.0));
        assert_eq!(score(&Scorer::parse("exact", None).unwrap(), Some("Paris"), "paris"), Ok(0.0));
        assert_eq!(score(&Scorer::parse("contains", None).unwrap(), Some("Paris"), "It is Paris."), Ok(1.0));
        assert!(score(&Scorer::parse("contains", None).unwrap(), None, "x").is_err());
        assert_eq!(score(&Scorer::parse("regex:^\\d+$", None).unwrap(), None, "42"), Ok(1.0));
        assert_eq!(score(&Scorer::parse("regex:^\\d+$", None).unwrap(), None, "4 2"), Ok(0.0));
    }

    #[test]
    fn json_schema_scorer_reads_fenced_answers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, r#"{"type":"object","required":["city"],"properties":{"city":{"type":"string"}}}"#)
            .unwrap();
        let scorer = Scorer::parse(&format!("json-schema:{}", path.display()), None).unwrap();
        assert_eq!(score(&scorer, None, r#"{"city":"Paris"}"#), Ok(1.0));
        assert_eq!(score(&scorer, None, "```json\n{\"city\":\"Paris\"}\n```"), Ok(1.0));
        assert_eq!(score(&scorer, None, r#"{"town":"Paris"}"#), Ok(0.0));
        assert_eq!(score(&scorer, None, "Paris"), Ok(0.0));
    }

    #[test]
    fn bad_scorers_are_refused() {
        assert!(matches!(Scorer::parse("fuzzy", None), Err(ScorerError::Unknown(_))));
        assert!(matches!(Scorer::parse("regex:(", None), Err(ScorerError::Regex(_))));
        assert!(matches!(Scorer::parse("judge:", None), Err(ScorerError::JudgeModel)));
        assert!(matches!(Scorer::parse("json-schema:/nonexistent.json", None), Err(ScorerError::Schema { .. })));
        assert!(matches!(Scorer::parse("exact:x", None), Err(ScorerError::Unknown(_))));
    }

    #[test]
    fn judge_verdicts_are_found_in_prose() {
        assert_eq!(verdict(r#"Sure. {"score": 0.75, "reason": "ok"} done"#).map(|s| s.score), Some(0.75));
        assert_eq!(verdict(r#"{"score": 7}"#), None);
        assert_eq!(verdict("no json"), None);
    }
}
