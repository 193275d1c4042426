//! `kind: azure`: Azure OpenAI, an OpenAI pass-through with Azure's addressing.
//!
//! The deployment (the target's upstream `model`) goes in the path,
//! `{base_url}/openai/deployments/{deployment}/{chat/completions|completions|embeddings}`,
//! with `?api-version=` from the backend's `api_version`, and the credential goes in the
//! `api-key` header instead of `Authorization`. The body is forwarded as the proxy prepared
//! it (the `model` field may stay: Azure ignores it) and the answer comes back byte for byte.

use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue, Uri};

use super::transport::{HttpUpstream, Transport, finish_headers, parse_url, secret_header};
use super::{BackendBuildError, BackendCall, BackendError, BackendResponse, UpstreamAuth, params};
use crate::config::BackendConfig;
use crate::wire::Endpoint;

const API_KEY: HeaderName = HeaderName::from_static("api-key");

#[derive(Debug)]
pub struct AzureBackend {
    http: HttpUpstream,
    /// `base_url` without a trailing slash.
    base_url: String,
    /// `api-version=...`, percent-encoded once.
    query: String,
    api_key: Option<HeaderValue>,
}

impl AzureBackend {
    pub fn new(config: &BackendConfig, transport: Option<Transport>) -> Result<Self, BackendBuildError> {
        // Checks the base URL once; per-request URLs differ only in path and query.
        let probe = parse_url(config, "/openai/deployments")?;
        let api_key = match &config.api_key {
            Some(key) => Some(secret_header(&config.name, key.clone())?),
            None => None,
        };
        let version = config.api_version.as_deref().unwrap_or_default();
        Ok(AzureBackend {
            http: HttpUpstream::new(config, &probe, transport)?,
            base_url: config.base_url.clone(),
            query: format!("api-version={}", encode_component(version)),
            api_key,
        })
    }

    pub fn transport(&self) -> Transport {
        self.http.transport()
    }

    /// `{base}/openai/deployments/{deployment}/{operation}?api-version={version}`.
    fn url(&self, backend: &str, endpoint: Endpoint, deployment: &str) -> Result<Uri, BackendError> {
        let operation = match endpoint {
            Endpoint::ChatCompletions => "chat/completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses | Endpoint::Messages => {
                return Err(BackendError::Unsupported {
                    backend: backend.to_owned(),
                    param: None,
                    message: format!("backend `{backend}` (kind azure) does not speak {} natively", endpoint.as_str()),
                });
            }
        };
        let text =
            format!("{}/openai/deployments/{}/{operation}?{}", self.base_url, encode_component(deployment), self.query);
        text.parse().map_err(|err: http::uri::InvalidUri| BackendError::Protocol {
            backend: backend.to_owned(),
            detail: format!("cannot build the Azure URL for deployment `{deployment}`: {err}"),
        })
    }

    pub async fn send(&self, config: &BackendConfig, call: BackendCall<'_>) -> Result<BackendResponse, BackendError> {
        let uri = self.url(&config.name, call.endpoint, call.model)?;
        let body = params::apply_defaults(&call.body, call.params);
        // `auth: passthrough` sends the client's `Authorization` as it came (Azure takes
        // Entra ID bearer tokens there); otherwise the backend's key goes in `api-key`.
        let credential = match call.auth {
            UpstreamAuth::Backend => self.api_key.clone().map(|key| (API_KEY, key)),
            UpstreamAuth::Client(client) => client.cloned().map(|value| (AUTHORIZATION, value)),
        };
        let build = || {
            let mut request = self.http.post(&uri, body.clone(), &call);
            finish_headers(request.headers_mut(), credential.clone(), config);
            request
        };
        let answered = self.http.send(&config.name, build).await?;
        Ok(BackendResponse { status: answered.status, headers: answered.headers, body: answered.body, permit: None })
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so a deployment name or
/// version can never change the URL's structure.
fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_encoded() {
        assert_eq!(encode_component("gpt-4o_mini.v2"), "gpt-4o_mini.v2");
        assert_eq!(encode_component("a/b?c d"), "a%2Fb%3Fc%20d");
    }
}
