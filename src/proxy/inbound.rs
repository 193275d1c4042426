//! The Responses and Messages APIs on the request path.
//!
//! Owns: turning an inbound request into what the rest of the path runs on (its chat
//! completions translation for routing, limits and chat backends; its own body and head for
//! backends that speak it natively), continuing a stored conversation
//! (`previous_response_id`), the ids weir gives (`resp_…`, `msg_…`), the [`Converter`] an
//! answer from a chat backend goes through, and storing a finished response
//! ([`StoreJob`]). Also `GET`/`DELETE /v1/responses/{id}` and `count_tokens`.
//! Must not: translate anything itself (that is `apis`), or decide where the request goes.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use crate::apis::convert::{Converter, Target};
use crate::apis::responses::Shell;
use crate::apis::{self, Invalid};
use crate::conversations::{Conversations, StoreError, Stored};
use crate::runtime::Snapshot;
use crate::wire::{Endpoint, RequestHead, parse_head};

/// Headers of the Messages API that reach Anthropic backends as the client sent them.
const ANTHROPIC_HEADERS: [HeaderName; 2] =
    [HeaderName::from_static("anthropic-version"), HeaderName::from_static("anthropic-beta")];

/// Why an inbound request cannot go ahead.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// The request does not follow its API, or asks what weir cannot translate.
    #[error("{0}")]
    Invalid(#[from] Invalid),
    #[error("Previous response with id '{0}' not found.")]
    PreviousNotFound(String),
    #[error("Response with id '{0}' not found.")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An inbound request, ready for the rest of the path.
#[derive(Debug)]
pub struct Inbound {
    /// The chat completions translation: what routing, limits and chat backends see.
    pub chat_body: Bytes,
    pub chat_head: RequestHead,
    /// The client's own request, for a backend that speaks its API (`None`: no kind does).
    pub native_head: Option<RequestHead>,
    /// The body such a backend gets when it is not the client's as sent (a Responses request
    /// continuing a stored conversation: the prior items spelled out).
    pub native_body: Option<Bytes>,
    pub native_headers: Vec<(HeaderName, HeaderValue)>,
    /// What an answer from a chat backend is converted for.
    pub target: Target,
    /// Where a Responses answer is stored (`store: true`).
    pub store: Option<StoreJob>,
}

/// Stores a Responses answer once it completed.
#[derive(Debug)]
pub struct StoreJob {
    conversations: Arc<Conversations>,
    id: String,
    owner: String,
    /// The conversation before this response's output: prior items, then this input.
    items: Vec<Value>,
}

impl StoreJob {
    /// Keeps `response` with the conversation it ends, under its own id (weir's, or the
    /// upstream's for a backend that speaks the Responses API natively).
    pub fn store(self, response: Value) {
        let StoreJob { conversations, id, owner, mut items } = self;
        let id = response.get("id").and_then(Value::as_str).map_or(id, str::to_owned);
        if let Some(output) = response.get("output").and_then(Value::as_array) {
            items.extend(output.iter().cloned());
        }
        conversations.put(&id, &Stored { owner, response, items });
    }
}

/// Reads and translates an inbound request of `endpoint` made by the key `owner`.
pub async fn prepare(
    snapshot: &Snapshot,
    endpoint: Endpoint,
    body: &Bytes,
    headers: &HeaderMap,
    owner: &str,
) -> Result<Inbound, InboundError> {
    match endpoint {
        Endpoint::Messages => messages(body, headers),
        _ => responses(snapshot, body, owner).await,
    }
}

async fn responses(snapshot: &Snapshot, body: &Bytes, owner: &str) -> Result<Inbound, InboundError> {
    let request = apis::responses::request::parse(body)?;
    let prior = match apis::responses::request::previous_response_id(&request)? {
        Some(id) => match snapshot.conversations.get(id, owner).await? {
            Some(stored) => stored.items,
            None => return Err(InboundError::PreviousNotFound(id.to_owned())),
        },
        None => Vec::new(),
    };
    // A native backend gets the client's bytes, or — continuing weir's stored conversation,
    // which the upstream does not know — the request with the prior items spelled out.
    let continued = (!prior.is_empty()).then(|| request.clone());
    let translated = apis::responses::translate(request, &prior)?;
    let native_body = match continued {
        Some(mut request) => {
            request.remove("previous_response_id");
            let items = prior.iter().chain(&translated.input_items).cloned().collect();
            request.insert("input".into(), Value::Array(items));
            Bytes::from(serde_json::to_vec(&request).map_err(|err| apis::invalid("", err.to_string()))?)
        }
        None => body.clone(),
    };
    let native_head = parse_head(Endpoint::Responses, &native_body).ok();
    let (chat_body, chat_head) = chat_request(&translated.chat)?;
    let id = new_id("resp");
    let shell = Shell { id: id.clone(), created_at: unix_now(), model: chat_head.model.clone(), echo: translated.echo };
    let store = translated.store.then(|| {
        let mut items = prior;
        items.extend(translated.input_items);
        StoreJob { conversations: Arc::clone(&snapshot.conversations), id, owner: owner.to_owned(), items }
    });
    Ok(Inbound {
        chat_body,
        chat_head,
        native_head,
        native_body: Some(native_body),
        native_headers: Vec::new(),
        target: Target::Responses { shell, now: unix_now() },
        store,
    })
}

fn messages(body: &Bytes, headers: &HeaderMap) -> Result<Inbound, InboundError> {
    let request = apis::messages::request::parse(body)?;
    let translated = apis::messages::translate(request)?;
    let (chat_body, chat_head) = chat_request(&translated.chat)?;
    // Checked by the translation already; this reads the model's place for the rename.
    let native_head = parse_head(Endpoint::Messages, body).map_err(|err| apis::invalid("", err.to_string()))?;
    let native_headers = ANTHROPIC_HEADERS
        .iter()
        .filter_map(|name| headers.get(name).map(|value| (name.clone(), value.clone())))
        .collect();
    // Chat backends report usage at the end; `message_start` carries an estimate.
    let input_estimate = (chat_body.len() as u64).div_ceil(4);
    let target = Target::Messages { id: new_id("msg"), model: chat_head.model.clone(), input_estimate };
    Ok(Inbound {
        chat_body,
        chat_head,
        native_head: Some(native_head),
        native_body: None,
        native_headers,
        target,
        store: None,
    })
}

fn chat_request(chat: &Map<String, Value>) -> Result<(Bytes, RequestHead), InboundError> {
    let body = Bytes::from(serde_json::to_vec(chat).map_err(|err| apis::invalid("", err.to_string()))?);
    let head = parse_head(Endpoint::ChatCompletions, &body).map_err(|err| apis::invalid("", err.to_string()))?;
    Ok((body, head))
}

impl Inbound {
    /// The converter for an answer from a chat backend.
    pub fn converter(&self, status: u16, sse: bool) -> Converter {
        Converter::new(self.target.clone(), status, sse)
    }
}

/// `GET /v1/responses/{id}`: the stored response, for the key that made it.
pub async fn get_response(snapshot: &Snapshot, id: &str, owner: &str) -> Result<Value, InboundError> {
    match snapshot.conversations.get(id, owner).await? {
        Some(stored) => Ok(stored.response),
        None => Err(InboundError::NotFound(id.to_owned())),
    }
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete_response(snapshot: &Snapshot, id: &str, owner: &str) -> Result<Value, InboundError> {
    if snapshot.conversations.delete(id, owner).await? {
        Ok(json!({"id": id, "object": "response.deleted", "deleted": true}))
    } else {
        Err(InboundError::NotFound(id.to_owned()))
    }
}

/// `POST /v1/messages/count_tokens`: the request's input tokens, counted as limits count a
/// chat request's prompt (the real BPE for OpenAI-family models, else bytes / 4).
pub fn count_tokens(snapshot: &Snapshot, body: &Bytes) -> Result<(String, u64), InboundError> {
    let mut request = apis::messages::request::parse(body)?;
    // count_tokens takes no `max_tokens`; the translation wants one.
    request.entry("max_tokens").or_insert(json!(1));
    let translated = apis::messages::translate(request)?;
    let (chat_body, chat_head) = chat_request(&translated.chat)?;
    let counter = match snapshot.models.get(&chat_head.model) {
        Some(route) => crate::limits::tokens::Counter::for_models(route.token_models()),
        None => crate::limits::tokens::Counter::for_models([chat_head.model.as_str()]),
    };
    let estimate = crate::limits::tokens::estimate(Endpoint::ChatCompletions, &chat_body, counter, 0)
        .map_err(|bad| apis::invalid(bad.param, bad.reason))?;
    Ok((chat_head.model, estimate.prompt))
}

/// `{prefix}_` and 32 random hex digits: unguessable, as a stored response's id is all a
/// caller needs to read it (besides its key).
fn new_id(prefix: &str) -> String {
    format!("{prefix}_{:032x}", rand::random::<u128>())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
