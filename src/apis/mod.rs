//! Apis: the inbound OpenAI Responses and Anthropic Messages APIs, translated to and from
//! chat completions as pure functions over bytes.
//!
//! Owns: each API's request → chat completions request (`responses::request`,
//! `messages::request`), chat completion JSON → the API's answer, chat SSE → the API's typed
//! event stream (incremental, bounded, one error event on failure and nothing after it),
//! reading back an answer in the API's own shape (usage, finish reasons, assembly of a
//! stream) and replaying a whole answer as the API's stream. Token usage in all three shapes
//! ([`usage::Tokens`]), cached input and cache writes included.
//! Must not: hold runtime handles, do I/O, or know which backend answers: the request path
//! decides when to translate and when to pass through.

pub mod chat_stream;
pub mod convert;
pub mod messages;
pub mod responses;
pub mod sse;
pub mod usage;

/// Largest answer a stream translator keeps to build its closing events (the Responses API
/// repeats the whole output in `response.completed`); past it the stream fails cleanly.
pub const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// A request an inbound API accepts in its schema but weir cannot translate or refuses,
/// naming the field at fault (`input[2].content[0].type`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub param: String,
    pub message: String,
}

pub(crate) fn invalid(param: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid { param: param.into(), message: message.into() }
}

/// Why a translated stream stopped early. The translator has already written the API's
/// error event to the client's bytes when it returns one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The upstream reported an error in its stream.
    #[error("upstream error: {message}")]
    Upstream { code: Option<String>, message: String },
    /// The upstream's bytes do not follow its protocol, or end before its last event.
    #[error("malformed upstream stream: {0}")]
    Malformed(String),
    /// The answer grew past [`MAX_ANSWER`].
    #[error("the answer is longer than {MAX_ANSWER} bytes")]
    TooLarge,
}

impl StreamError {
    /// The `code` a client sees in the error event.
    pub fn code(&self) -> &str {
        match self {
            StreamError::Upstream { code: Some(code), .. } => code,
            StreamError::Upstream { code: None, .. } => "upstream_error",
            StreamError::Malformed(_) => "bad_upstream_stream",
            StreamError::TooLarge => "answer_too_large",
        }
    }

    /// The message a client sees in the error event.
    pub fn message(&self) -> String {
        match self {
            StreamError::Upstream { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// A translator from an upstream stream to a client's stream, bytes in and bytes out.
pub trait StreamTranslate: Send {
    /// Feeds the next upstream bytes (split anywhere) and appends the client bytes they
    /// complete to `out`. On an error, `out` ends with the client's error event and every
    /// later call appends nothing.
    fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError>;
    /// The upstream ended: appends the closing events, or the error event when the stream
    /// did not finish.
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError>;
    /// The upstream failed (a transport error, a timeout): appends the client's error event
    /// unless the stream already ended one way or the other.
    fn fail(&mut self, err: &StreamError, out: &mut Vec<u8>);
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod test_support;
