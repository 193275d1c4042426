//! `weir dataset export --format dpo`: preference pairs for OpenAI's preference fine-tuning
//! (`{"input": {"messages", "tools"?}, "preferred_output": [..], "non_preferred_output": [..]}`).
//!
//! Owns: finding the pairs. Two answers to the same input (the request's messages and
//! tools, compared exactly) whose last feedback scores differ by at least `min_margin` make
//! a pair, the higher score preferred — that covers the arms of an A/B experiment answering
//! the same prompt and a prompt regenerated. A feedback `ideal` counts as an answer scored 1
//! to the same prompt, so it pairs with the answer served when that answer scored at most
//! `1 - min_margin`. Identical answers never pair.
//! Must not: hold the dataset in memory — only successful chat completions that have
//! feedback are kept (their input and answer), one pass over the files.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use serde_json::{Map, Value, json};

use super::export::{self, Options, Summary};
use super::read::{self, Entry, ReadError};

/// `--min-margin` when not given.
pub const DEFAULT_MIN_MARGIN: f64 = 0.5;

/// One scored answer to an input.
struct Answer {
    score: f64,
    /// The assistant message.
    output: Value,
}

/// Answers grouped by input, inputs in the order first met.
#[derive(Default)]
struct Groups {
    inputs: Vec<Value>,
    answers: Vec<Vec<Answer>>,
    index: HashMap<String, usize>,
}

impl Groups {
    fn add(&mut self, input: Value, answer: Answer) {
        // serde_json's maps are ordered by key, so equal inputs serialize identically.
        let key = input.to_string();
        let slot = match self.index.get(&key) {
            Some(slot) => *slot,
            None => {
                self.inputs.push(input);
                self.answers.push(Vec::new());
                self.index.insert(key, self.inputs.len() - 1);
                self.inputs.len() - 1
            }
        };
        // The same answer twice (an exact regeneration, or an ideal equal to what was
        // served) keeps its best score and is not paired with itself.
        let answers = &mut self.answers[slot];
        match answers.iter_mut().find(|a| a.output == answer.output) {
            Some(same) => same.score = same.score.max(answer.score),
            None => answers.push(answer),
        }
    }
}

/// Writes the preference pairs of `dir` to `out`.
pub fn export(
    dir: &Path,
    options: &Options,
    min_margin: f64,
    out: &mut dyn Write,
    warn: &mut dyn Write,
) -> Result<Summary, ReadError> {
    let feedback = read::feedback(dir)?;
    let mut groups = Groups::default();
    let skipped = read::for_each(dir, warn, |entry| {
        let Entry::Request(record) = entry else { return Ok(()) };
        let Some(joined) = feedback.get(read::text(&record, "request_id")) else { return Ok(()) };
        if !export::selected(&record, options, &feedback) || !read::succeeded(&record) {
            return Ok(());
        }
        let (Some(input), Some(output)) = (input(&record), served(&record)) else { return Ok(()) };
        if let Some(ideal) = &joined.ideal {
            let ideal = json!({"role": "assistant", "content": ideal});
            groups.add(input.clone(), Answer { score: 1.0, output: ideal });
        }
        groups.add(input, Answer { score: joined.score, output });
        Ok(())
    })?;
    let mut exported = 0;
    for (input, answers) in groups.inputs.iter().zip(&groups.answers) {
        for (i, a) in answers.iter().enumerate() {
            for b in &answers[i + 1..] {
                let (better, worse) = if a.score >= b.score { (a, b) } else { (b, a) };
                if better.score - worse.score + 1e-9 < min_margin {
                    continue;
                }
                let line = json!({
                    "input": input,
                    "preferred_output": [better.output],
                    "non_preferred_output": [worse.output],
                });
                serde_json::to_writer(&mut *out, &line).map_err(|err| ReadError::Output(err.into()))?;
                out.write_all(b"\n").map_err(ReadError::Output)?;
                exported += 1;
            }
        }
    }
    out.flush().map_err(ReadError::Output)?;
    Ok(Summary { exported, skipped })
}

/// The preference format's `input`: the request's messages (fine-tuning fields only) and
/// its tools when it had any.
fn input(record: &Value) -> Option<Value> {
    let request = record.get("request")?;
    let messages: Vec<Value> = request.get("messages")?.as_array()?.iter().filter_map(export::message).collect();
    let mut input = Map::new();
    input.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = request.get("tools").filter(|t| t.as_array().is_some_and(|t| !t.is_empty())) {
        input.insert("tools".into(), tools.clone());
    }
    Some(Value::Object(input))
}

/// The assistant message that was served.
fn served(record: &Value) -> Option<Value> {
    export::assistant(record.pointer("/response/choices/0/message")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(id: &str, prompt: &str, answer: &str) -> Value {
        json!({"request_id": id, "status": 200, "error": null, "model": "m", "variant": "a",
            "request": {"messages": [{"role": "user", "content": prompt}]},
            "response": {"choices": [{"message": {"role": "assistant", "content": answer}}]}})
    }

    fn pairs(lines: &[Value], margin: f64) -> Vec<Value> {
        let dir = tempfile::tempdir().unwrap();
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(dir.path().join(super::super::file_name("2026-11-28", 0)), text).unwrap();
        let mut out = Vec::new();
        export(dir.path(), &Options::default(), margin, &mut out, &mut std::io::sink()).unwrap();
        String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn fb(id: &str, score: f64, ideal: Option<&str>) -> Value {
        json!({"type": "feedback", "request_id": id, "score": score, "ideal": ideal})
    }

    #[test]
    fn answers_to_one_prompt_pair_by_score_margin() {
        let lines = [
            chat("1", "hi", "hello"),
            chat("2", "hi", "hey you"),
            chat("3", "hi", "yo"),
            chat("4", "other", "x"),
            fb("1", 0.9, None),
            fb("2", 0.2, None),
            fb("3", 0.6, None),
            fb("4", 0.0, None),
        ];
        let out = pairs(&lines, 0.5);
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(out[0]["input"], json!({"messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(out[0]["preferred_output"], json!([{"role": "assistant", "content": "hello"}]));
        assert_eq!(out[0]["non_preferred_output"], json!([{"role": "assistant", "content": "hey you"}]));
        assert_eq!(pairs(&lines, 0.3).len(), 3);
    }

    #[test]
    fn an_ideal_is_preferred_to_a_low_scored_answer() {
        let out = pairs(&[chat("1", "hi", "meh"), fb("1", 0.1, Some("Hello! How can I help?"))], 0.5);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["preferred_output"][0]["content"], "Hello! How can I help?");
        assert_eq!(out[0]["non_preferred_output"][0]["content"], "meh");
        // An ideal equal to the answer served, or a well-scored answer, gives nothing.
        assert!(pairs(&[chat("1", "hi", "same"), fb("1", 0.0, Some("same"))], 0.5).is_empty());
        assert!(pairs(&[chat("1", "hi", "good"), fb("1", 0.8, Some("better"))], 0.5).is_empty());
    }
}
