//! `kind: mock`: a built-in model that answers at once, deterministically.
//!
//! It stands in for a model so that `weir serve` works with no backend at all and so that
//! tests and benchmarks have an upstream with known answers. The same prompt always gets the
//! same words; usage counts are exact for what it sends; streams are paced at
//! `tokens_per_second` after `latency`. It supports chat (with `n`, tools, `max_tokens`,
//! `stream_options.include_usage`), legacy completions and embeddings.

mod answer;
mod wire;

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::Value;

use super::client::UpstreamBody;
use super::{BackendCall, BackendError, BackendResponse};
use crate::config::MockSettings;
use crate::wire::Endpoint;

pub use answer::Answer;

#[derive(Debug)]
pub struct MockBackend {
    settings: MockSettings,
}

impl MockBackend {
    pub fn new(settings: MockSettings) -> Self {
        MockBackend { settings }
    }

    pub async fn send(&self, call: BackendCall<'_>) -> Result<BackendResponse, BackendError> {
        let request: Value = match serde_json::from_slice(&call.body) {
            Ok(value) => value,
            Err(err) => return Ok(error_response(StatusCode::BAD_REQUEST, &format!("invalid JSON: {err}"))),
        };
        let answer = match Answer::plan(call.endpoint, &request) {
            Ok(answer) => answer,
            Err(message) => return Ok(error_response(StatusCode::BAD_REQUEST, &message)),
        };
        if call.stream && call.endpoint != Endpoint::Embeddings {
            return Ok(self.stream(answer));
        }
        // A whole answer arrives after the time a model would take to write it.
        tokio::time::sleep(self.settings.latency + self.generation_time(answer.completion_tokens())).await;
        Ok(json_response(StatusCode::OK, Bytes::from(answer.to_json())))
    }

    fn generation_time(&self, tokens: u64) -> Duration {
        match self.settings.tokens_per_second {
            Some(tps) if tps > 0.0 => Duration::from_secs_f64(tokens as f64 / tps),
            _ => Duration::ZERO,
        }
    }

    /// SSE chunks: the first after `latency`, then one per token at the configured pace.
    /// The stream is polled by the response body itself, so a client that goes away stops it.
    fn stream(&self, answer: Answer) -> BackendResponse {
        let chunks = answer.to_sse_chunks();
        let latency = self.settings.latency;
        let gap = self.generation_time(1);
        let body = futures_util::stream::iter(chunks.into_iter().enumerate()).then(move |(i, chunk)| async move {
            let wait = if i == 0 { latency } else { gap };
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            chunk
        });
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        BackendResponse { status: StatusCode::OK, headers, body: UpstreamBody::Generated(Box::pin(body)), permit: None }
    }
}

fn json_response(status: StatusCode, body: Bytes) -> BackendResponse {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    BackendResponse { status, headers, body: UpstreamBody::Full(Some(body)), permit: None }
}

/// The mock rejects what a real OpenAI server would, in OpenAI's error shape.
fn error_response(status: StatusCode, message: &str) -> BackendResponse {
    let body = serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}});
    json_response(status, Bytes::from(body.to_string()))
}
