//! Clients for a gateway: the OpenAI SDK as users drive it, and raw reqwest when a test
//! needs what the SDK hides (statuses, headers, the SSE bytes).

use async_openai::config::OpenAIConfig;
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};
use serde_json::Value;
use weir::Gateway;

use super::{DEADLINE, base_url, init};

/// A plain HTTP/1.1 client that ignores proxy settings from the environment.
pub fn http() -> reqwest::Client {
    init();
    reqwest::Client::builder().no_proxy().timeout(DEADLINE).build().expect("reqwest client")
}

/// HTTP/2 over cleartext with prior knowledge (h2c).
pub fn http_h2c() -> reqwest::Client {
    init();
    reqwest::Client::builder().no_proxy().http2_prior_knowledge().timeout(DEADLINE).build().expect("h2c client")
}

/// The OpenAI SDK pointed at `gateway`, sending `key` (none: no Authorization header at all).
pub fn openai(gateway: &Gateway, key: Option<&str>) -> async_openai::Client<OpenAIConfig> {
    let mut config = OpenAIConfig::new().with_api_base(base_url(gateway));
    config = config.with_api_key(key.unwrap_or(""));
    async_openai::Client::build(http(), config)
}

/// Status, headers and JSON body of a finished response.
pub async fn body_json(response: reqwest::Response) -> (StatusCode, HeaderMap, Value) {
    let status = response.status();
    let headers = response.headers().clone();
    let text = tokio::time::timeout(DEADLINE, response.text())
        .await
        .expect("response body arrives before the deadline")
        .expect("response body reads");
    let json = serde_json::from_str(&text).unwrap_or_else(|err| panic!("body is not JSON ({err}): {text:?}"));
    (status, headers, json)
}

/// The whole SSE body as text, bounded by the deadline. A transport error after some bytes
/// ends the text there (an aborted stream is something tests look at).
pub async fn read_sse(response: reqwest::Response) -> String {
    let mut text = String::new();
    let mut stream = response.bytes_stream();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => panic!("SSE body did not end before the deadline; got so far: {text:?}"),
            Ok(None) | Ok(Some(Err(_))) => return text,
            Ok(Some(Ok(chunk))) => text.push_str(std::str::from_utf8(&chunk).expect("SSE is UTF-8")),
        }
    }
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|line| line.strip_prefix("data:").map(|d| d.strip_prefix(' ').unwrap_or(d)))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}
