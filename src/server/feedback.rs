//! `POST /v1/feedback`: the HTTP side of feedback.
//!
//! Owns: authenticating, reading the (small) body and answering; the datasets check and
//! record the feedback itself. Must not: touch dataset files or map errors by hand.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::error::GatewayError;
use crate::datasets::feedback::{self, MAX_FEEDBACK_BODY};
use crate::runtime::Snapshot;
use crate::wire::body::{self, Body, read_body};

pub async fn handle(snapshot: &Snapshot, request: Request<Incoming>) -> Result<Response<Body>, GatewayError> {
    let (parts, incoming) = request.into_parts();
    let identity = snapshot.keys.authenticate(&parts.headers)?;
    let limit = MAX_FEEDBACK_BODY.min(snapshot.config.server.max_body);
    let body = read_body(&parts.headers, incoming, limit).await?;
    let feedback = feedback::parse(&body)?;
    let accepted = snapshot.datasets.accept_feedback(&feedback, identity.name())?;
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
