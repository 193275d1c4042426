//! One answer from a chat backend converted for an inbound API, chunk by chunk: the body
//! wrapper of the request path feeds it upstream bytes and sends what it returns.
//!
//! Owns: choosing the conversion from the API, the upstream status and whether it streams
//! (event stream translation; whole-JSON conversion of an answer bounded by
//! [`MAX_ANSWER`]; error bodies in the API's error shape), and handing the final Responses
//! object out for storing ([`Converter::take_final`]).
//! Must not: do I/O.

use serde_json::Value;

use super::messages::{self, MessagesStream};
use super::responses::{self, ResponsesStream, Shell};
use super::{MAX_ANSWER, StreamError, StreamTranslate};

/// The inbound API an answer is converted for, with what its answer needs to know.
#[derive(Debug, Clone)]
pub enum Target {
    Responses {
        shell: Shell,
        now: u64,
    },
    /// `id` is the message id to give; `model` is named until the upstream names its own.
    Messages {
        id: String,
        model: String,
        input_estimate: u64,
    },
}

pub struct Converter {
    mode: Mode,
    last: Option<Value>,
}

enum Mode {
    Responses(Box<ResponsesStream>),
    Messages(Box<MessagesStream>),
    Whole { whole: Vec<u8>, target: Target },
    Error { whole: Vec<u8>, status: u16, target: Target },
}

impl std::fmt::Debug for Converter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match &self.mode {
            Mode::Responses(_) | Mode::Messages(_) => "stream",
            Mode::Whole { .. } => "whole",
            Mode::Error { .. } => "error",
        };
        f.debug_struct("Converter").field("mode", &mode).finish()
    }
}

impl Converter {
    /// `status` is the upstream's; `sse` whether its answer is an event stream.
    pub fn new(target: Target, status: u16, sse: bool) -> Converter {
        let mode = if !(200..300).contains(&status) {
            Mode::Error { whole: Vec::new(), status, target }
        } else if sse {
            match target {
                Target::Responses { shell, now } => Mode::Responses(Box::new(ResponsesStream::new(shell, now))),
                Target::Messages { id, model, input_estimate } => {
                    Mode::Messages(Box::new(MessagesStream::new(id, model, input_estimate)))
                }
            }
        } else {
            Mode::Whole { whole: Vec::new(), target }
        };
        Converter { mode, last: None }
    }

    /// Feeds upstream bytes; appends the client's bytes to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        match &mut self.mode {
            Mode::Responses(translator) => translator.push(chunk, out),
            Mode::Messages(translator) => translator.push(chunk, out),
            Mode::Whole { whole, .. } | Mode::Error { whole, .. } => {
                if whole.len().saturating_add(chunk.len()) > MAX_ANSWER {
                    return Err(StreamError::TooLarge);
                }
                whole.extend_from_slice(chunk);
                Ok(())
            }
        }
    }

    /// The upstream ended: appends the rest of the client's bytes.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        match &mut self.mode {
            Mode::Responses(translator) => {
                let result = translator.finish(out);
                self.last = translator.take_final();
                result
            }
            Mode::Messages(translator) => translator.finish(out),
            Mode::Whole { whole, target } => {
                let converted = match target {
                    Target::Responses { shell, now } => responses::response::from_completion(whole, shell, *now),
                    Target::Messages { id, model, .. } => messages::response::from_completion(whole, id, model),
                };
                let value = converted.map_err(StreamError::Malformed)?;
                // Serialising a JSON value into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, &value);
                if matches!(target, Target::Responses { .. }) {
                    self.last = Some(value);
                }
                Ok(())
            }
            Mode::Error { whole, status, target } => {
                match target {
                    // The Responses API's errors are OpenAI-shaped, like chat's.
                    Target::Responses { .. } => out.extend_from_slice(whole),
                    Target::Messages { .. } => {
                        let _ =
                            serde_json::to_writer(&mut *out, &messages::response::error_from_openai(whole, *status));
                    }
                }
                Ok(())
            }
        }
    }

    /// The upstream failed: for a stream, appends the API's error event (once); a whole
    /// answer has nothing to append (the caller cuts the body).
    pub fn fail(&mut self, err: &StreamError, out: &mut Vec<u8>) {
        match &mut self.mode {
            Mode::Responses(translator) => translator.fail(err, out),
            Mode::Messages(translator) => translator.fail(err, out),
            Mode::Whole { .. } | Mode::Error { .. } => {}
        }
    }

    /// Whether the client gets an event stream.
    pub fn is_stream(&self) -> bool {
        matches!(self.mode, Mode::Responses(_) | Mode::Messages(_))
    }

    /// The final Responses object once the answer completed (taken once).
    pub fn take_final(&mut self) -> Option<Value> {
        self.last.take()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::apis::test_support::fixture;

    fn shell() -> Shell {
        Shell { id: "resp_1".into(), created_at: 1, model: "m".into(), echo: serde_json::Map::new() }
    }

    fn convert(target: Target, status: u16, sse: bool, body: &[u8]) -> (Vec<u8>, Option<Value>) {
        let mut converter = Converter::new(target, status, sse);
        let mut out = Vec::new();
        for piece in body.chunks(7) {
            converter.push(piece, &mut out).unwrap();
        }
        converter.finish(&mut out).unwrap();
        (out, converter.take_final())
    }

    #[test]
    fn responses_hand_out_their_final_object_streamed_or_whole() {
        let (out, last) =
            convert(Target::Responses { shell: shell(), now: 2 }, 200, true, fixture("chat_tool_call.sse").as_bytes());
        let last = last.unwrap();
        assert_eq!(responses::read_answer(&out, true).unwrap().body, last);
        let (out, whole) = convert(
            Target::Responses { shell: shell(), now: 2 },
            200,
            false,
            fixture("chat_tool_call.json").as_bytes(),
        );
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), whole.clone().unwrap());
        assert_eq!(whole.unwrap()["output"], last["output"]);
    }

    #[test]
    fn errors_take_the_apis_shape() {
        let error = br#"{"error":{"message":"no such model","type":"invalid_request_error","code":"model_not_found"}}"#;
        let target = Target::Messages { id: "msg_1".into(), model: "m".into(), input_estimate: 0 };
        let (out, _) = convert(target, 404, true, error);
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap(),
            json!({"type": "error", "error": {"type": "not_found_error", "message": "no such model"}})
        );
        let (out, last) = convert(Target::Responses { shell: shell(), now: 2 }, 404, false, error);
        assert_eq!(out, error);
        assert!(last.is_none());
    }
}
