//! `kind: anthropic`: the Anthropic Messages API behind OpenAI's chat completions.
//!
//! The one kind that re-serialises: the OpenAI request is translated into a Messages
//! request (`request`), sent to `{base_url}/v1/messages` with `x-api-key` and
//! `anthropic-version`, and the answer is translated back as it streams (`stream`) or, for
//! JSON answers and errors, once it is whole (`response`), inside the body
//! ([`TranslatedBody`]) so the proxy and every tap see OpenAI-shaped bytes.
//! Must not: serve `/v1/completions` or `/v1/embeddings` (Anthropic has neither).

pub mod request;
pub mod response;
pub mod stream;

use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, StatusCode, Uri};
use serde_json::{Map, Value};

use super::client::{BodyError, UpstreamBody};
use super::transport::{HttpUpstream, Transport, finish_headers, parse_url, secret_header};
use super::{BackendBuildError, BackendCall, BackendError, BackendResponse, UpstreamAuth, params};
use crate::config::BackendConfig;
use crate::wire::Endpoint;

pub use stream::{StreamError, StreamTranslator};

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
/// The Messages API version weir speaks; a backend's `headers` may override it.
const API_VERSION: &str = "2023-06-01";
/// Largest whole (non-streamed) answer or error body read for translation.
const WHOLE_BODY_LIMIT: usize = 16 * 1024 * 1024;
/// Anthropic's "overloaded" status, which OpenAI clients and retry rules know as 503.
const OVERLOADED: u16 = 529;

#[derive(Debug)]
pub struct AnthropicBackend {
    http: HttpUpstream,
    messages_url: Uri,
    api_key: Option<HeaderValue>,
}

impl AnthropicBackend {
    pub fn new(config: &BackendConfig, transport: Option<Transport>) -> Result<Self, BackendBuildError> {
        // `https://api.anthropic.com` as in SPEC; a base URL that already ends in /v1 works too.
        let path = if config.base_url.ends_with("/v1") { "/messages" } else { "/v1/messages" };
        let messages_url = parse_url(config, path)?;
        let api_key = match &config.api_key {
            Some(key) => Some(secret_header(&config.name, key.clone())?),
            None => None,
        };
        Ok(AnthropicBackend { http: HttpUpstream::new(config, &messages_url, transport)?, messages_url, api_key })
    }

    pub fn transport(&self) -> Transport {
        self.http.transport()
    }

    pub async fn send(&self, config: &BackendConfig, call: BackendCall<'_>) -> Result<BackendResponse, BackendError> {
        let unsupported = |param: Option<String>, message: String| BackendError::Unsupported {
            backend: config.name.clone(),
            param,
            message,
        };
        if call.endpoint == Endpoint::Messages {
            return self.send_native(config, call).await;
        }
        if call.endpoint != Endpoint::ChatCompletions {
            let message = format!(
                "backend `{}` (kind anthropic) serves only /v1/chat/completions, not {}",
                config.name,
                call.endpoint.as_str()
            );
            return Err(unsupported(None, message));
        }
        let mut request: Map<String, Value> = serde_json::from_slice(&call.body)
            .map_err(|err| unsupported(None, format!("the request body is not a JSON object: {err}")))?;
        params::merge_defaults(&mut request, call.params);
        let (messages, translated) =
            request::translate(request).map_err(|refusal| unsupported(Some(refusal.param), refusal.message))?;
        let body = serde_json::to_vec(&messages)
            .map(Bytes::from)
            .map_err(|err| BackendError::Protocol { backend: config.name.clone(), detail: err.to_string() })?;
        let credential = self.credential(call.auth);
        let build = || {
            let mut request = self.http.post(&self.messages_url, body.clone(), &call);
            request.headers_mut().insert(ANTHROPIC_VERSION, HeaderValue::from_static(API_VERSION));
            finish_headers(request.headers_mut(), credential.clone(), config);
            request
        };
        let answered = self.http.send(&config.name, build).await?;
        let status = match answered.status.as_u16() {
            OVERLOADED => StatusCode::SERVICE_UNAVAILABLE,
            _ => answered.status,
        };
        let mode = if !status.is_success() {
            Mode::Error { whole: Vec::new(), client_error: status.is_client_error() }
        } else if translated.stream {
            Mode::Stream(Box::new(StreamTranslator::new(translated.include_usage, unix_now())))
        } else {
            Mode::Message { whole: Vec::new() }
        };
        let mut headers = answered.headers;
        let content_type = match mode {
            Mode::Stream(_) => "text/event-stream",
            _ => "application/json",
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        let body = TranslatedBody { inner: answered.body, mode, done: false, deferred: None };
        Ok(BackendResponse { status, headers, body: UpstreamBody::Translated(Box::new(body)), permit: None })
    }

    /// A Messages request as the client sent it (model renamed, `params` defaults filled
    /// in), with the client's `anthropic-version` and `anthropic-beta`; the answer comes back
    /// untouched, so nothing Anthropic-specific (cache_control, thinking, citations) is lost.
    async fn send_native(
        &self,
        config: &BackendConfig,
        call: BackendCall<'_>,
    ) -> Result<BackendResponse, BackendError> {
        let body = params::apply_defaults(&call.body, call.params);
        let credential = self.credential(call.auth);
        let build = || {
            let mut request = self.http.post(&self.messages_url, body.clone(), &call);
            let headers = request.headers_mut();
            headers.insert(ANTHROPIC_VERSION, HeaderValue::from_static(API_VERSION));
            for (name, value) in call.native_headers {
                headers.insert(name.clone(), value.clone());
            }
            finish_headers(headers, credential.clone(), config);
            request
        };
        let answered = self.http.send(&config.name, build).await?;
        Ok(BackendResponse { status: answered.status, headers: answered.headers, body: answered.body, permit: None })
    }

    /// The backend's key, or with `auth: passthrough` the client's bearer token, as `x-api-key`.
    fn credential(&self, auth: UpstreamAuth<'_>) -> Option<(HeaderName, HeaderValue)> {
        let key = match auth {
            UpstreamAuth::Backend => self.api_key.clone(),
            UpstreamAuth::Client(client) => client.and_then(|value| {
                let token = value.to_str().ok()?;
                let token = token.strip_prefix("Bearer ").unwrap_or(token).trim();
                let mut value = HeaderValue::from_str(token).ok()?;
                value.set_sensitive(true);
                Some(value)
            }),
        };
        key.map(|key| (X_API_KEY, key))
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// An Anthropic answer body read as OpenAI's: streams translated event by event, whole
/// answers and errors translated once they have arrived (bounded by [`WHOLE_BODY_LIMIT`]).
pub struct TranslatedBody {
    inner: UpstreamBody,
    mode: Mode,
    done: bool,
    /// A failure to report after the bytes translated before it have gone out.
    deferred: Option<BodyError>,
}

enum Mode {
    Stream(Box<StreamTranslator>),
    Message { whole: Vec<u8> },
    Error { whole: Vec<u8>, client_error: bool },
}

impl TranslatedBody {
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        loop {
            if let Some(err) = self.deferred.take() {
                self.done = true;
                return Poll::Ready(Some(Err(err)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            let mut out = Vec::new();
            match std::task::ready!(self.inner.poll_chunk(cx)) {
                Some(Ok(chunk)) => self.absorb(&chunk, &mut out),
                Some(Err(err)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(err)));
                }
                None => {
                    self.done = true;
                    self.end(&mut out);
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Bytes::from(out))));
            }
        }
    }

    fn absorb(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        match &mut self.mode {
            Mode::Stream(translator) => {
                if let Err(err) = translator.push(chunk, out) {
                    self.deferred = Some(BodyError::Translate(err.to_string()));
                }
            }
            Mode::Message { whole } | Mode::Error { whole, .. } => {
                if whole.len() + chunk.len() > WHOLE_BODY_LIMIT {
                    let message = format!("the Anthropic answer is larger than {WHOLE_BODY_LIMIT} bytes");
                    self.deferred = Some(BodyError::Translate(message));
                } else {
                    whole.extend_from_slice(chunk);
                }
            }
        }
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        let result = match &mut self.mode {
            Mode::Stream(translator) => translator.finish(out).map_err(|err| err.to_string()),
            Mode::Message { whole } => response::completion(whole, unix_now()).map(|answer| *out = answer),
            Mode::Error { whole, client_error } => {
                *out = response::error_body(whole, *client_error);
                Ok(())
            }
        };
        if let Err(message) = result {
            self.deferred = Some(BodyError::Translate(message));
        }
    }
}
