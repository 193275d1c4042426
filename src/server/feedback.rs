//! `POST /v1/feedback`: the HTTP side of feedback.
//!
//! Owns: authenticating (a client key, or the admin token as `Authorization: Bearer`),
//! reading the (small) body and answering; the datasets check that the caller may score the
//! request and record the feedback itself. Must not: touch dataset files or map errors by hand.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::admin::bears_admin_token;
use super::error::GatewayError;
use super::routes::refuse_unread;
use crate::datasets::Caller;
use crate::datasets::feedback::{self, MAX_FEEDBACK_BODY};
use crate::runtime::Snapshot;
use crate::wire::body::{self, Body, read_body};

pub async fn handle(snapshot: &Snapshot, request: Request<Incoming>) -> Result<Response<Body>, GatewayError> {
    let (parts, incoming) = request.into_parts();
    let admin = bears_admin_token(snapshot, &parts.headers);
    let identity = match snapshot.keys.authenticate(&parts.headers) {
        Ok(identity) => Some(identity),
        Err(_) if admin => None,
        Err(err) => return Ok(refuse_unread(Request::from_parts(parts, incoming), err.into()).await),
    };
    let owner = identity.as_ref().filter(|_| !admin).map(|identity| snapshot.keys.owner(identity, &parts.headers));
    let caller = owner.as_deref().map_or(Caller::Admin, Caller::Key);
    let limit = MAX_FEEDBACK_BODY.min(snapshot.config.server.max_body);
    let body = read_body(&parts, incoming, limit).await?;
    let feedback = feedback::parse(&body)?;
    let accepted = snapshot.datasets.accept_feedback(&feedback, caller)?;
    if let Some(served) = &accepted.served_by {
        snapshot.metrics.feedback(&served.model, &served.variant, feedback.score);
    }
    let answer = json!({
        "object": "feedback",
        "request_id": feedback.request_id,
        "score": feedback.score,
        "datasets": accepted.queued,
    });
    Ok(body::json(StatusCode::OK, answer.to_string()))
}
