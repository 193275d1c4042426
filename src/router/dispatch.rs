//! The attempt loop: retries with backoff, then the variant's other targets, then fallbacks.
//!
//! Owns: the order targets are tried in, whether a failure is retried, moved past or
//! relayed, the backoff between tries, and reporting each attempt (the request's record,
//! metrics, health, logs).
//! Must not: retry once an answer's headers are accepted. Everything here happens before
//! a byte reaches the client, so a stream is never replayed.
//!
//! Order: the chosen target up to `retry.attempts` times, the other targets of its variant
//! (same experiment arm) the same way, then each of `fallbacks` the same way. Targets out of
//! rotation are skipped. A failure moves on when it is a 5xx, a 429, a connection failure, a
//! timeout, or a status listed in `retry.on`; it is retried on the same target only when
//! listed in `retry.on` (`connect` also covers connections the upstream dropped before
//! answering). Any other answer (a 4xx) is the client's and is relayed at once.
//!
//! Prompts: a target gets the request's prompt rendered in (the version the request names,
//! else the one the target fixes, else the prompt's default), once per target, at its first
//! admitted try; a prompt that does not render for the chosen target ends the request with the
//! client's error, as nothing was sent.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::StatusCode;

use super::health::{InFlight, Verdict};
use super::{ModelRoute, Pick, RouteError, Target, hints};
use crate::backends::{BackendCall, BackendError, BackendResponse, BackendRuntime, UpstreamAuth, upstream_message};
use crate::config::RetryConfig;
use crate::prompts::{Prepared, PromptError, PromptPlan};
use crate::telemetry::metrics::Metrics;
use crate::wire::{Attempt, AttemptKind, Endpoint, Record, RequestHead, parse_head};

/// Upstream error bodies are read whole up to this size to relay their message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// First retry waits up to this long (full jitter: a random time from zero)...
const BACKOFF_BASE: Duration = Duration::from_millis(50);
/// ...each further one up to twice as long, never more than this.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What every attempt sends, whichever target it goes to.
#[derive(Debug, Clone, Copy)]
pub struct Outbound<'a> {
    pub endpoint: Endpoint,
    pub head: &'a RequestHead,
    /// The client's body; each target gets it with its own upstream model name.
    pub body: &'a Bytes,
    pub auth: UpstreamAuth<'a>,
    /// For the Responses and Messages APIs, the request in the client's own API, sent to
    /// targets whose kind speaks it natively (`head`/`body` above are its chat translation).
    pub native: Option<Native<'a>>,
    /// Set when the request names a prompt or the route has targets that fix one: each
    /// target then gets the body with its prompt version rendered in.
    pub prompts: Option<PromptPlan<'a>>,
}

/// A request in the client's own API, for a backend that speaks it.
#[derive(Debug, Clone, Copy)]
pub struct Native<'a> {
    pub endpoint: Endpoint,
    pub head: &'a RequestHead,
    pub body: &'a Bytes,
    /// The API's own headers to pass on (`anthropic-version`, `anthropic-beta`).
    pub headers: &'a [(http::HeaderName, http::HeaderValue)],
}

/// Why no answer came back: nothing could be tried, or the last failure.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Route(#[from] RouteError),
    /// Boxed: an upstream rejection carries its body, and errors travel by value.
    #[error(transparent)]
    Backend(Box<BackendError>),
    /// The prompt cannot be rendered for the target chosen: the client's error.
    #[error(transparent)]
    Prompt(#[from] PromptError),
}

impl From<BackendError> for DispatchError {
    fn from(err: BackendError) -> Self {
        DispatchError::Backend(Box::new(err))
    }
}

/// The answer weir commits to.
pub struct Dispatched {
    pub response: BackendResponse,
    /// When its request was sent; the `total` timeout counts from here.
    pub sent: tokio::time::Instant,
    pub backend: Arc<BackendRuntime>,
    /// The target's in-flight place, held until the body ends.
    pub hold: InFlight,
    /// The answer is in the client's own API (the target spoke it natively), not chat.
    pub native: bool,
}

/// How one target's tries ended.
enum Outcome {
    Answered(Dispatched),
    /// An answer that belongs to the client as it is (a plain 4xx).
    Relay(BackendError),
    /// Gave up on this target; the error is kept in case nothing else answers.
    Failed(BackendError),
    /// Never tried: out of rotation.
    Skipped,
    /// Never tried: the request's prompt does not render for it.
    Refused(PromptError),
}

/// How one failure is treated.
struct Classified {
    verdict: Verdict,
    /// Try the same target again.
    retry: bool,
    /// Move on to the next target (else relay to the client).
    move_on: bool,
}

/// Tries targets until one answers. On success `record.backend`/`variant` name the target
/// that answered; on failure, the last one tried. Every attempt is in `record.attempts`.
pub async fn dispatch(
    route: &ModelRoute,
    pick: Pick,
    outbound: Outbound<'_>,
    metrics: &Metrics,
    record: &mut Record,
) -> Result<Dispatched, DispatchError> {
    let mut last: Option<BackendError> = None;
    let mut first_kind = AttemptKind::Primary;
    let chosen = route.choose(pick, tokio::time::Instant::now());
    if let Some((variant, first)) = chosen.clone() {
        let siblings = variant.filter(|&i| i != first);
        for index in std::iter::once(first).chain(siblings) {
            match try_target(route, &route.targets[index], first_kind, outbound, metrics, record).await {
                Outcome::Answered(answer) => return Ok(answer),
                Outcome::Relay(err) => return Err(err.into()),
                Outcome::Refused(err) => return Err(err.into()),
                Outcome::Failed(err) => {
                    last = Some(err);
                    first_kind = AttemptKind::Fallback;
                }
                Outcome::Skipped => {}
            }
        }
    }
    let tried = chosen.map_or(&[][..], |(variant, _)| &route.targets[variant]);
    for target in &route.fallbacks {
        // A fallback that is one of the targets just tried would only fail the same way.
        if tried.iter().any(|t| Arc::ptr_eq(&t.health, &target.health)) {
            continue;
        }
        match try_target(route, target, AttemptKind::Fallback, outbound, metrics, record).await {
            Outcome::Answered(answer) => return Ok(answer),
            Outcome::Relay(err) => return Err(err.into()),
            Outcome::Refused(err) => return Err(err.into()),
            Outcome::Failed(err) => last = Some(err),
            Outcome::Skipped => {}
        }
    }
    let model = || route.config.name.clone();
    Err(match last {
        Some(err) => err.into(),
        None => match route.rate_limited_for(tokio::time::Instant::now()) {
            // Whole seconds, rounded up, as `Retry-After` takes them.
            Some(wait) => RouteError::RateLimited { model: model(), retry_after: wait.max(Duration::from_secs(1)) },
            None => RouteError::NoHealthyTarget { model: model() },
        }
        .into(),
    })
}

/// The body for `target` when a prompt is rendered into it, with its head (the rendered body
/// is parsed once more, so the model and usage edits find their places); `None` when the
/// client's body goes as it is. Records the prompt used and the rendered request.
fn prepare(
    target: &Target,
    outbound: Outbound<'_>,
    record: &mut Record,
) -> Result<Option<(RequestHead, Prepared)>, PromptError> {
    let Some(plan) = outbound.prompts else { return Ok(None) };
    let prepared = plan.store.prepare(plan.call, target.prompt.as_ref(), outbound.body, &target.params)?;
    let Some(prepared) = prepared else {
        // An earlier target's prompt is not this one's.
        record.prompt = None;
        record.request_body = outbound.body.clone();
        return Ok(None);
    };
    let head = parse_head(outbound.endpoint, &prepared.body).map_err(|err| PromptError::Render {
        id: prepared.used.id.clone(),
        version: prepared.used.version.clone(),
        message: err.to_string(),
    })?;
    record.prompt = Some(prepared.used.clone());
    record.request_body = prepared.body.clone();
    Ok(Some((head, prepared)))
}

/// Up to `retry.attempts` tries on one target.
async fn try_target(
    route: &ModelRoute,
    target: &Target,
    first_kind: AttemptKind,
    outbound: Outbound<'_>,
    metrics: &Metrics,
    record: &mut Record,
) -> Outcome {
    let retry = &route.config.retry;
    // Rendered once, at the first try the target admits (an ejected target renders nothing).
    let mut prepared: Option<Option<(RequestHead, Prepared)>> = None;
    let mut failed = None;
    for number in 0..retry.attempts.max(1) {
        if number > 0 {
            let pause = backoff(number);
            tokio::time::sleep(pause).await;
            // Waiting out a backend's failure is backend time, not weir's overhead.
            record.backend_wait += pause;
        }
        let Some(mut hold) = target.health.admit(tokio::time::Instant::now()) else { break };
        let native = outbound.native.filter(|n| target.backend.speaks_natively(n.endpoint));
        if prepared.is_none() {
            // A backend that speaks the client's API gets its request as sent, prompt and all.
            if native.is_some() {
                prepared = Some(None);
            }
            // Dropping the hold without a verdict leaves the target's health as it was.
            match prepared.is_none().then(|| prepare(target, outbound, record)) {
                None => {}
                Some(Ok(ready)) => prepared = Some(ready),
                Some(Err(err)) => return Outcome::Refused(err),
            }
        }
        let (head, body, params) = match prepared.as_ref().and_then(Option::as_ref) {
            Some((head, prepared)) => (head, &prepared.body, &prepared.params),
            None => (outbound.head, outbound.body, &target.params),
        };
        let kind = if number > 0 { AttemptKind::Retry } else { first_kind };
        record.backend.clone_from(&target.backend.config.name);
        record.provider = Some(target.backend.config.kind.genai_provider());
        record.variant.clone_from(&target.variant);
        // Prompts render into the chat shape; a request a backend takes natively goes as sent.
        let (endpoint, head, body, native_headers, params) = match native {
            Some(n) => (n.endpoint, n.head, n.body, n.headers, &target.params),
            None => (outbound.endpoint, head, body, &[][..], params),
        };
        let call = BackendCall {
            endpoint,
            body: head.body_for_upstream(body, &target.model),
            model: &target.model,
            params,
            stream: head.stream,
            auth: outbound.auth,
            request_id: &record.request_id,
            traceparent: record.trace.upstream_header(record.attempts.len()),
            native_headers,
        };
        let sent = tokio::time::Instant::now();
        let offset = record.started.elapsed();
        let result = match target.backend.send(call).await {
            Ok(response) if response.status.is_success() => Ok(response),
            Ok(response) => Err(rejection(target, response).await),
            Err(err) => Err((err, None)),
        };
        let duration = sent.elapsed();
        record.backend_wait += duration;
        let (err, hint) = match result {
            Ok(response) => {
                hold.verdict(Verdict::Success);
                push_attempt(record, target, kind, offset, duration, Some(response.status), None);
                let backend = Arc::clone(&target.backend);
                let native = native.is_some();
                return Outcome::Answered(Dispatched { response, sent, backend, hold, native });
            }
            Err(failure) => failure,
        };
        let classified = classify(&err, hint, retry);
        hold.verdict(classified.verdict);
        drop(hold);
        metrics.backend_error(target.backend.name(), err.reason());
        let status = match &err {
            BackendError::Rejected { status, .. } => Some(*status),
            _ => None,
        };
        push_attempt(record, target, kind, offset, duration, status, Some(&err));
        if !classified.move_on {
            return Outcome::Relay(err);
        }
        let again =
            classified.retry && number + 1 < retry.attempts && !matches!(classified.verdict, Verdict::RateLimited(_));
        tracing::info!(
            request_id = %record.request_id, backend = target.backend.name(), model = %target.model,
            variant = %target.variant, attempt = number + 1, error = %crate::wire::LogSafe(&err.to_string()),
            next = if again { "retry" } else { "next target" },
            "upstream attempt failed"
        );
        failed = Some(err);
        if !again {
            break;
        }
    }
    failed.map_or(Outcome::Skipped, Outcome::Failed)
}

fn classify(err: &BackendError, hint: Option<Duration>, retry: &RetryConfig) -> Classified {
    let failure = |retry| Classified { verdict: Verdict::Failure, retry, move_on: true };
    match err {
        BackendError::Connect { .. } => failure(retry.on_connect),
        BackendError::Protocol { .. } => failure(retry.on_connect),
        BackendError::Timeout { .. } => failure(retry.on_timeout),
        // weir's own `max_inflight` refused: says nothing about the upstream, and the wait
        // for a place already happened.
        BackendError::Saturated { .. } => Classified { verdict: Verdict::Neutral, retry: false, move_on: true },
        // The request itself cannot be translated for this backend: no other attempt of it
        // would fare better, and the upstream is not at fault.
        BackendError::Unsupported { .. } => Classified { verdict: Verdict::Neutral, retry: false, move_on: false },
        BackendError::Rejected { status, .. } => {
            let listed = retry.on_status.contains(&status.as_u16());
            let limited = Classified {
                verdict: hint.map_or(Verdict::Failure, Verdict::RateLimited),
                retry: listed,
                move_on: true,
            };
            match *status {
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => limited,
                s if s.is_server_error() => failure(listed),
                s if s.is_client_error() => Classified { verdict: Verdict::Success, retry: listed, move_on: listed },
                _ => failure(listed),
            }
        }
    }
}

/// Full jitter: a random wait up to `BACKOFF_BASE × 2^(retry−1)`, capped.
fn backoff(retry: u32) -> Duration {
    let ceiling = BACKOFF_BASE.saturating_mul(1 << (retry - 1).min(16)).min(BACKOFF_MAX);
    Duration::from_micros(rand::random_range(0..=ceiling.as_micros() as u64))
}

/// Reads a failed upstream answer's (small) body to relay its status and message, and the
/// retry hint of a rate-limited one.
async fn rejection(target: &Target, upstream: BackendResponse) -> (BackendError, Option<Duration>) {
    let status = upstream.status;
    let hint = match status {
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            hints::retry_hint(&upstream.headers, SystemTime::now())
        }
        _ => None,
    };
    let retry_after = upstream.headers.get(http::header::RETRY_AFTER).cloned();
    let wait = target.backend.config.timeouts.idle;
    let body = match tokio::time::timeout(wait, upstream.body.read_bounded(ERROR_BODY_LIMIT)).await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) | Err(_) => Bytes::new(),
    };
    let message = upstream_message(&body);
    let backend = target.backend.name().to_owned();
    (BackendError::Rejected { backend, status, message, body, retry_after }, hint)
}

fn push_attempt(
    record: &mut Record,
    target: &Target,
    kind: AttemptKind,
    offset: Duration,
    duration: Duration,
    status: Option<StatusCode>,
    error: Option<&BackendError>,
) {
    record.attempts.push(Attempt {
        kind,
        backend: target.backend.config.name.clone(),
        provider: target.backend.config.kind.genai_provider(),
        model: target.model.clone(),
        variant: target.variant.clone(),
        offset,
        duration,
        status: status.map(|s| s.as_u16()),
        error: error.map(ToString::to_string),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(status: u16) -> BackendError {
        BackendError::Rejected {
            backend: "b".into(),
            status: StatusCode::from_u16(status).unwrap(),
            message: String::new(),
            body: Bytes::new(),
            retry_after: None,
        }
    }

    fn retry_on(statuses: &[u16], connect: bool) -> RetryConfig {
        RetryConfig { attempts: 2, on_status: statuses.to_vec(), on_connect: connect, on_timeout: false }
    }

    #[test]
    fn client_errors_are_relayed_unless_listed() {
        let c = classify(&rejected(400), None, &retry_on(&[500], true));
        assert!(!c.move_on && !c.retry);
        assert_eq!(c.verdict, Verdict::Success, "a 4xx means the backend is up");
        let c = classify(&rejected(404), None, &retry_on(&[404], false));
        assert!(c.move_on && c.retry);
    }

    #[test]
    fn server_errors_and_rate_limits_move_on_and_retry_only_when_listed() {
        let c = classify(&rejected(500), None, &retry_on(&[], false));
        assert!(c.move_on && !c.retry);
        assert_eq!(c.verdict, Verdict::Failure);
        let c = classify(&rejected(502), None, &retry_on(&[502], false));
        assert!(c.move_on && c.retry);
        let c = classify(&rejected(429), Some(Duration::from_secs(3)), &retry_on(&[429], false));
        assert_eq!(c.verdict, Verdict::RateLimited(Duration::from_secs(3)));
        assert_eq!(classify(&rejected(429), None, &retry_on(&[], false)).verdict, Verdict::Failure);
    }

    #[test]
    fn connection_failures_follow_connect_and_local_refusals_are_neutral() {
        let connect = BackendError::Connect { backend: "b".into(), detail: String::new() };
        assert!(classify(&connect, None, &retry_on(&[], true)).retry);
        assert!(!classify(&connect, None, &retry_on(&[], false)).retry);
        let saturated = BackendError::Saturated { backend: "b".into(), limit: 1 };
        let c = classify(&saturated, None, &retry_on(&[503], true));
        assert_eq!(c.verdict, Verdict::Neutral);
        assert!(c.move_on && !c.retry);
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        for retry in 1..40 {
            let pause = backoff(retry);
            let ceiling = (BACKOFF_BASE * 2u32.pow((retry - 1).min(16))).min(BACKOFF_MAX);
            assert!(pause <= ceiling, "retry {retry}: {pause:?} > {ceiling:?}");
        }
    }
}
