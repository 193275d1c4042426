//! `kind: openai`: any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp, ...).
//!
//! A pass-through: the body goes upstream as the proxy prepared it (only the model name was
//! changed, plus the target's `params` defaults when it has any), the answer comes back
//! byte for byte.

use http::header::AUTHORIZATION;
use http::{HeaderValue, Uri};

use super::transport::{HttpUpstream, Transport, finish_headers, parse_url, secret_header};
use super::{BackendBuildError, BackendCall, BackendError, BackendResponse, UpstreamAuth, params};
use crate::config::BackendConfig;
use crate::wire::Endpoint;

#[derive(Debug)]
pub struct OpenAiBackend {
    http: HttpUpstream,
    /// Upstream URLs, parsed once per snapshot rather than per request.
    chat_url: Uri,
    completions_url: Uri,
    embeddings_url: Uri,
    /// `{base_url}/responses`, for `responses: native`.
    responses_url: Uri,
    /// `Bearer <api_key>`, ready to send.
    authorization: Option<HeaderValue>,
}

impl OpenAiBackend {
    pub fn new(config: &BackendConfig, transport: Option<Transport>) -> Result<Self, BackendBuildError> {
        let authorization = match &config.api_key {
            Some(key) => Some(secret_header(&config.name, format!("Bearer {key}"))?),
            None => None,
        };
        let chat_url = parse_url(config, "/chat/completions")?;
        Ok(OpenAiBackend {
            http: HttpUpstream::new(config, &chat_url, transport)?,
            chat_url,
            completions_url: parse_url(config, "/completions")?,
            embeddings_url: parse_url(config, "/embeddings")?,
            responses_url: parse_url(config, "/responses")?,
            authorization,
        })
    }

    /// The connection pool, for a reload to carry over.
    pub fn transport(&self) -> Transport {
        self.http.transport()
    }

    pub async fn send(&self, config: &BackendConfig, call: BackendCall<'_>) -> Result<BackendResponse, BackendError> {
        let uri = match call.endpoint {
            Endpoint::ChatCompletions => &self.chat_url,
            Endpoint::Completions => &self.completions_url,
            Endpoint::Embeddings => &self.embeddings_url,
            Endpoint::Responses if config.responses_native => &self.responses_url,
            // The request path sends these as chat completions to this kind.
            Endpoint::Responses | Endpoint::Messages => {
                return Err(BackendError::Unsupported {
                    backend: config.name.clone(),
                    param: None,
                    message: format!(
                        "backend `{}` (kind openai) gets {} as chat completions",
                        config.name,
                        call.endpoint.as_str()
                    ),
                });
            }
        };
        let body = params::apply_defaults(&call.body, call.params);
        let authorization = match call.auth {
            UpstreamAuth::Backend => self.authorization.as_ref(),
            UpstreamAuth::Client(client) => client,
        };
        let build = || {
            let mut request = self.http.post(uri, body.clone(), &call);
            let credential = authorization.map(|value| (AUTHORIZATION, value.clone()));
            finish_headers(request.headers_mut(), credential, config);
            request
        };
        let answered = self.http.send(&config.name, build).await?;
        Ok(BackendResponse { status: answered.status, headers: answered.headers, body: answered.body, permit: None })
    }
}
