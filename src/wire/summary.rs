//! The response model and finish reasons of an answer, read without assembling it.
//!
//! Owns: [`AnswerSummary`], what spans need of an answer when nothing asked for the whole
//! of it. Must not: build a JSON tree of the whole answer.

use serde::Deserialize;

/// The response model and finish reasons, read from a captured answer without assembling
/// it (for spans when nothing asked for the whole answer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnswerSummary {
    pub model: Option<String>,
    pub finish_reasons: Vec<String>,
}

#[derive(Deserialize)]
struct SummaryShape {
    model: Option<String>,
    #[serde(default)]
    choices: Vec<ChoiceShape>,
}

#[derive(Deserialize)]
struct ChoiceShape {
    #[serde(default)]
    index: usize,
    finish_reason: Option<String>,
}

impl AnswerSummary {
    /// Reads a JSON answer, or an SSE one's events (model from the first, each choice's
    /// last non-null finish reason).
    pub fn read(bytes: &[u8], sse: bool) -> AnswerSummary {
        if !sse {
            // One reading of a JSON answer, whether assembled or only summarised.
            return super::assemble::json_summary(bytes);
        }
        let mut summary = AnswerSummary::default();
        let mut reasons: Vec<Option<String>> = Vec::new();
        let text = String::from_utf8_lossy(bytes);
        for line in text.lines() {
            let Some(data) = line.strip_prefix("data:").map(str::trim_start) else { continue };
            let wanted = summary.model.is_none() || data.contains("\"finish_reason\":\"");
            if !wanted || data == "[DONE]" {
                continue;
            }
            let Ok(chunk) = serde_json::from_str::<SummaryShape>(data) else { continue };
            if summary.model.is_none() {
                summary.model = chunk.model;
            }
            for choice in chunk.choices {
                if let Some(reason) = choice.finish_reason {
                    if reasons.len() <= choice.index && choice.index < 128 {
                        reasons.resize(choice.index + 1, None);
                    }
                    if let Some(slot) = reasons.get_mut(choice.index) {
                        *slot = Some(reason);
                    }
                }
            }
        }
        summary.finish_reasons = reasons.into_iter().flatten().collect();
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_json_and_sse_answers() {
        let json =
            br#"{"id":"x","model":"gpt-x","choices":[{"index":0,"finish_reason":"stop","message":{"content":"hi"}}]}"#;
        assert_eq!(
            AnswerSummary::read(json, false),
            AnswerSummary { model: Some("gpt-x".into()), finish_reasons: vec!["stop".into()] }
        );
        // Read as the tree reads it: a reason that is not a string is none, the rest stay.
        assert_eq!(
            AnswerSummary::read(br#"{"model":"m","choices":[{"finish_reason":7},{"finish_reason":"stop"}]}"#, false),
            AnswerSummary { model: Some("m".into()), finish_reasons: vec!["stop".into()] }
        );
        let sse = b"data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":null}]}\n\n\
data: {\"model\":\"m\",\"choices\":[{\"index\":1,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n\
data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        assert_eq!(
            AnswerSummary::read(sse, true),
            AnswerSummary { model: Some("m".into()), finish_reasons: vec!["stop".into(), "length".into()] }
        );
    }
}
