//! `GET /v1/models`: the public models a key may use, in OpenAI's list shape.
//!
//! Owns: that one answer. Must not: show a model the key's allow-list leaves out.

use http::{HeaderMap, Response, StatusCode};
use serde_json::json;

use super::error::GatewayError;
use crate::runtime::Snapshot;
use crate::wire::body::{self, Body};

pub fn list(snapshot: &Snapshot, headers: &HeaderMap) -> Result<Response<Body>, GatewayError> {
    let identity = snapshot.keys.authenticate(headers)?;
    let created = snapshot.loaded_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut names: Vec<&String> = snapshot.models.keys().filter(|name| identity.may_use(name)).collect();
    names.sort();
    let data: Vec<_> = names
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": created, "owned_by": "weir"}))
        .collect();
    Ok(body::json(StatusCode::OK, json!({"object": "list", "data": data}).to_string()))
}
