//! When the client leading a shared stream goes away, the stream is finished for the
//! requests following it rather than cut under them.
//!
//! The upstream body moves into a task of its own that keeps the same `idle` and `total`
//! limits, hands each chunk to the flight, and stores the answer once it ends with
//! `[DONE]`. Only done when followers are reading the stream; otherwise the upstream call is
//! cancelled with its client, as always.

use std::fmt::Display;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use tokio::time::Instant;

use super::coalesce::{FlightEnd, Origin};
use super::{Entry, Fill};

/// Reads the rest of `upstream` for the followers of `fill`'s flight, then stores it.
/// `permit` (the backend's place in flight) is held until the upstream body is done.
pub fn finish_for_followers<S, E>(
    mut fill: Fill,
    mut upstream: S,
    idle: Duration,
    deadline: Instant,
    permit: impl Send + 'static,
    origin: Origin,
) where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: Display,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    runtime.spawn(async move {
        // Held until the upstream body is done, like the response it replaces.
        let _permit = permit;
        let Some(flight) = fill.flight.take() else { return };
        let flights = &fill.cache.flights;
        loop {
            let limit = (Instant::now() + idle).min(deadline);
            let next = tokio::time::timeout_at(limit, upstream.next()).await;
            match next {
                Ok(Some(Ok(chunk))) => flight.push(flights, &chunk, || origin.clone()),
                Ok(None) => break,
                Ok(Some(Err(err))) => {
                    flight.end(
                        flights,
                        FlightEnd::Failed(format!("backend `{}` failed mid-response: {err}", origin.backend)),
                    );
                    return;
                }
                Err(_) => {
                    let message = format!("backend `{}` timed out mid-response", origin.backend);
                    flight.end(flights, FlightEnd::Failed(message));
                    return;
                }
            }
        }
        let body = flight.joined().and_then(|bytes| super::replay::whole_of(fill.endpoint, &bytes));
        let end = match body {
            Some(body) => {
                let entry = std::sync::Arc::new(Entry {
                    body: body.into(),
                    backend: origin.backend.clone(),
                    variant: origin.variant.clone(),
                    ttl: fill.ttl,
                });
                fill.cache.insert(fill.key, &entry);
                FlightEnd::Stored(entry)
            }
            None => FlightEnd::Unstored,
        };
        flight.end(flights, end);
    });
}
