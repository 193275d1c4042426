//! `POST /v1/feedback`: the HTTP side of feedback.
//!
//! Owns: authenticating (a client key, or the admin token as `Authorization: Bearer`),
//! reading the (small) body and answering; the datasets check that the caller may score the
//! request and record the feedback itself, and a feedback-scored experiment counts it.
//! Must not: touch dataset files or map errors by hand.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::admin::bears_admin_token;
use super::error::GatewayError;
use super::routes::refuse_unread;
use crate::datasets::Caller;
use crate::datasets::feedback::{self, FeedbackError, MAX_FEEDBACK_BODY};
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
    // A feedback-scored experiment knows its requests (and their keys) even without a dataset.
    let accepted = match snapshot.datasets.accept_feedback(&feedback, caller) {
        Ok(accepted) => Some(accepted),
        Err(FeedbackError::UnknownRequest(_)) if snapshot.experiments.knows(&feedback.request_id, owner.as_deref()) => {
            None
        }
        Err(err) => return Err(err.into()),
    };
    if let Some(served) = accepted.as_ref().and_then(|a| a.served_by.as_ref()) {
        snapshot.metrics.feedback(&served.model, &served.variant, feedback.score);
    }
    let experiment = snapshot.experiments.feedback(&feedback.request_id, owner.as_deref(), feedback.score);
    let answer = json!({
        "object": "feedback",
        "request_id": feedback.request_id,
        "score": feedback.score,
        "datasets": accepted.map_or(0, |a| a.queued),
        "experiment": experiment,
    });
    Ok(body::json(StatusCode::OK, answer.to_string()))
}
