//! The evaluation's HTTP client: OpenAI-shaped calls to a running weir.
//!
//! Owns: the base URL (`http://host:port` or `.../v1`), the API key, pinning a variant with
//! `x-weir-variant`, and turning any answer — success, OpenAI error body, timeout, broken
//! connection — into an [`Answer`]. Must not: retry (a failure is a result worth reporting).

use std::time::{Duration, Instant};

use serde_json::Value;

use super::items::{Endpoint, content_text};

/// The most of an answer read back: an evaluation answer larger than this is a failure.
const MAX_ANSWER_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--target `{0}` is not an http:// or https:// URL")]
    Target(String),
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// A client of one weir.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// `.../v1`, without a trailing slash.
    base: String,
    key: Option<String>,
}

/// What one call gave.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    /// 0 when no HTTP answer came.
    pub status: u16,
    pub latency_ms: f64,
    /// The first choice's text (`message.content`, or `text` for completions).
    pub text: Option<String>,
    /// `(prompt_tokens, completion_tokens)`.
    pub usage: Option<(u64, u64)>,
    /// The variant that answered (`x-weir-variant`).
    pub variant: Option<String>,
    /// Why the call failed, when it did.
    pub error: Option<String>,
}

impl Client {
    pub fn new(target: &str, key: Option<String>, timeout: Duration) -> Result<Client, ClientError> {
        let trimmed = target.trim().trim_end_matches('/');
        if !(trimmed.starts_with("http://") || trimmed.starts_with("https://")) {
            return Err(ClientError::Target(target.to_owned()));
        }
        let base = if trimmed.ends_with("/v1") { trimmed.to_owned() } else { format!("{trimmed}/v1") };
        // reqwest is built without a crypto provider of its own and panics without one.
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|err| ClientError::Build(err.to_string()))?;
        Ok(Client { http, base, key: key.filter(|k| !k.is_empty()) })
    }

    /// Sends `body` to `endpoint`, pinned to `variant` when given.
    pub async fn call(&self, endpoint: Endpoint, body: &Value, variant: Option<&str>) -> Answer {
        let started = Instant::now();
        let mut request = self
            .http
            .post(format!("{}{}", self.base, endpoint.path()))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        if let Some(variant) = variant {
            request = request.header("x-weir-variant", variant);
        }
        let mut answer = match request.send().await {
            Ok(response) => read(response, endpoint).await,
            Err(err) => Answer { error: Some(describe(&err)), ..Answer::default() },
        };
        answer.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        answer
    }
}

async fn read(mut response: reqwest::Response, endpoint: Endpoint) -> Answer {
    let status = response.status().as_u16();
    let variant = response.headers().get("x-weir-variant").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_ANSWER_BYTES => body.extend_from_slice(&chunk),
            Ok(Some(_)) => return failed(status, variant, format!("answer larger than {MAX_ANSWER_BYTES} bytes")),
            Ok(None) => break,
            Err(err) => return failed(status, variant, describe(&err)),
        }
    }
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        return failed(status, variant, format!("HTTP {status}: the answer is not JSON"));
    };
    if !(200..300).contains(&status) {
        let message = value.pointer("/error/message").and_then(Value::as_str).unwrap_or("no error message");
        return failed(status, variant, format!("HTTP {status}: {message}"));
    }
    let text = match endpoint {
        Endpoint::Chat => value.pointer("/choices/0/message/content").map(|c| content_text(Some(c))),
        Endpoint::Completions => value.pointer("/choices/0/text").and_then(Value::as_str).map(str::to_owned),
    };
    let tokens = |field: &str| value.get("usage").and_then(|u| u.get(field)).and_then(Value::as_u64);
    let usage = tokens("prompt_tokens").zip(tokens("completion_tokens"));
    Answer { status, text, usage, variant, ..Answer::default() }
}

fn failed(status: u16, variant: Option<String>, error: String) -> Answer {
    Answer { status, variant, error: Some(error), ..Answer::default() }
}

fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connect() {
        format!("cannot connect: {err}")
    } else {
        err.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_take_or_leave_v1() {
        let base = |t: &str| Client::new(t, None, Duration::from_secs(1)).map(|c| c.base);
        assert_eq!(base("http://127.0.0.1:8080").unwrap(), "http://127.0.0.1:8080/v1");
        assert_eq!(base("http://127.0.0.1:8080/v1/").unwrap(), "http://127.0.0.1:8080/v1");
        assert!(base("127.0.0.1:8080").is_err());
    }
}
