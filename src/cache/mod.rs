//! Cache: exact-match response cache with streaming replay and request coalescing.
//!
//! Owns: the [`Cache`] handle on the snapshot (carried across reloads while the `cache`
//! section is unchanged), the lookup step of the request path ([`Cache::begin`], which
//! returns a [`Lookup`]: the status, an answer to serve, or a [`Fill`] guard for an answer
//! to store), and the fill itself ([`Fill::complete`], given the finished [`Record`]).
//! Entries are answers in the non-streamed JSON shape; one entry serves JSON and streaming
//! clients alike.
//! Must not: fail or slow a request because of the cache (a broken store is a miss), store
//! anything but a whole, successful answer, or serve one key's entries to another under
//! `scope: key`.

mod coalesce;
mod drain;
mod key;
mod redis;
mod replay;
mod store;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http::header::CACHE_CONTROL;

use crate::config::{CacheConfig, CacheScope, CacheStore};
use crate::telemetry::metrics::{CacheResult, Metrics};
use crate::wire::{CAPTURE_LIMIT, CacheStatus, Capture, Endpoint, Outcome, Record};

pub use coalesce::{Follower, Next, Origin};
pub use drain::finish_for_followers;
pub use key::CacheKey;
pub use replay::to_sse;
pub use store::Entry;

use coalesce::{FlightEnd, Flights, Join, Shape, Wait};
use redis::SharedStore;
use store::Store;

/// How long a request waits on an identical one in flight before going upstream itself.
pub const FOLLOW_DEADLINE: Duration = Duration::from_secs(30);

/// The response cache of one `cache` config, shared by every model with `cache.ttl`.
#[derive(Debug)]
pub struct Cache {
    config: CacheConfig,
    store: Store,
    flights: Flights,
    shared: Option<SharedStore>,
}

/// What the cache needs to know about a request.
#[derive(Debug)]
pub struct CacheRequest<'a> {
    pub endpoint: Endpoint,
    /// The virtual key's name (the scope under `scope: key`).
    pub key_name: &'a str,
    /// The public model, after resolution.
    pub model: &'a str,
    /// The client's body as received.
    pub body: &'a [u8],
    pub stream: bool,
    /// The model's `cache.ttl`.
    pub ttl: Duration,
    /// What the answer depends on besides the body, such as the content of the prompt
    /// versions the request may render: an edited prompt is not answered from entries the
    /// old one filled. Empty when nothing.
    pub context: &'a str,
    pub headers: &'a HeaderMap,
    /// Where `weir_cache_requests_total` is counted.
    pub metrics: &'a Metrics,
}

/// What the cache step decided for one request.
#[derive(Debug, Default)]
pub struct Lookup {
    /// `x-weir-cache` and the dataset/span field.
    pub status: CacheStatus,
    /// An answer to serve instead of going upstream.
    pub served: Option<Served>,
    /// Going upstream: the answer is to be stored (and shared) when the request ends. The
    /// request path holds this guard and completes it with the finished record.
    pub fill: Option<Fill>,
}

/// An answer the cache serves instead of an upstream call.
#[derive(Debug)]
pub enum Served {
    /// A whole answer: the stored JSON bytes, or the SSE replay of them.
    Whole { body: Bytes, sse: bool, origin: Origin },
    /// Another request's stream, as it arrives.
    Shared { follower: Follower, origin: Origin },
}

/// The cache's part in a request that went upstream: held by the request path, completed by
/// [`Fill::complete`] when the request finishes (a fill dropped unfinished fails its flight).
#[derive(Debug)]
pub struct Fill {
    cache: Arc<Cache>,
    key: CacheKey,
    ttl: Duration,
    /// The API the answer is in (streams are read back and replayed in its shape).
    endpoint: Endpoint,
    /// `Some` when this request leads a flight other requests may be following.
    flight: Option<Arc<coalesce::Flight>>,
}

/// The client's `Cache-Control` directives that concern us.
#[derive(Debug, Clone, Copy, Default)]
struct Control {
    /// Do not answer from the cache.
    no_cache: bool,
    /// Do not store this answer.
    no_store: bool,
}

// === impl Cache ===

impl Cache {
    pub fn new(config: &CacheConfig) -> Cache {
        let shared = match &config.store {
            CacheStore::Memory => None,
            CacheStore::Redis(url) => Some(SharedStore::new(url)),
        };
        Cache { config: config.clone(), store: Store::new(config.max_size), flights: Flights::default(), shared }
    }

    /// `(entries, bytes)` held in this process after pending evictions.
    pub fn usage(&self) -> (u64, u64) {
        self.store.usage()
    }

    /// Requests currently leading a flight.
    pub fn in_flight(&self) -> usize {
        self.flights.count()
    }

    /// The cache step of a request whose model has caching on: an answer to serve, or a
    /// fill to complete once the request went upstream. Reports `weir_cache_requests_total`.
    pub async fn begin(self: &Arc<Self>, request: CacheRequest<'_>) -> Lookup {
        let mut lookup = Lookup::default();
        lookup.served = self.decide(&request, &mut lookup).await;
        lookup
    }

    async fn decide(self: &Arc<Self>, request: &CacheRequest<'_>, lookup: &mut Lookup) -> Option<Served> {
        let control = Control::of(request.headers);
        // parse_head accepted this body as a JSON object; the full parse happens only here,
        // for models with caching on.
        let body = key::Body::parse(request.body)?;
        let include_usage = body.include_usage();
        let scope = match self.config.scope {
            CacheScope::Key => Some(request.key_name),
            CacheScope::Global => None,
        };
        let key = CacheKey::new(request.endpoint, scope, request.model, request.context, &body);
        drop(body);
        let shape = Shape { stream: request.stream, include_usage };

        if control.no_cache {
            self.account(lookup, request, CacheStatus::Bypass);
            if !control.no_store {
                self.plan_fill(lookup, key, request, None);
            }
            return None;
        }
        if let Some(served) = self.store.get(&key).and_then(|entry| self.hit(&entry, shape, request, lookup)) {
            return Some(served);
        }
        if control.no_store {
            // Looks up, but never leads: nothing this request receives may be stored.
            if let Some(entry) = self.shared_get(&key).await {
                if let Some(served) = self.hit(&entry, shape, request, lookup) {
                    return Some(served);
                }
            }
            self.account(lookup, request, CacheStatus::Miss);
            return None;
        }
        match self.flights.join(key, shape, CAPTURE_LIMIT) {
            Join::Lead(flight) => self.lead(flight, key, shape, request, lookup).await,
            Join::Follow(follower) => self.follow(follower, key, shape, request, lookup).await,
        }
    }

    /// First of its key in flight: check the stores once more, then go upstream.
    async fn lead(
        self: &Arc<Self>,
        flight: Arc<coalesce::Flight>,
        key: CacheKey,
        shape: Shape,
        request: &CacheRequest<'_>,
        lookup: &mut Lookup,
    ) -> Option<Served> {
        // The flight is the fill's from here: should this request go away during the
        // lookup below (its client gone), dropping the fill ends the flight, and the requests
        // following it go on without it instead of waiting forever.
        let mut fill =
            Fill { cache: Arc::clone(self), key, ttl: request.ttl, endpoint: request.endpoint, flight: Some(flight) };
        // A flight for this key may have ended (and stored) between our lookup and joining.
        let found = match self.store.get(&key) {
            Some(entry) => Some(entry),
            None => self.shared_get(&key).await,
        };
        if let Some(entry) = found {
            if let Some(flight) = fill.flight.take() {
                flight.end(&self.flights, FlightEnd::Stored(Arc::clone(&entry)));
            }
            if let Some(served) = self.hit(&entry, shape, request, lookup) {
                return Some(served);
            }
        }
        self.account(lookup, request, CacheStatus::Miss);
        lookup.fill = Some(fill);
        None
    }

    /// Waits on the request already in flight for this key.
    async fn follow(
        self: &Arc<Self>,
        mut follower: Follower,
        key: CacheKey,
        shape: Shape,
        request: &CacheRequest<'_>,
        lookup: &mut Lookup,
    ) -> Option<Served> {
        // The leader's bytes suit a follower that asked for the very same stream.
        let raw = shape.stream && follower.leader_shape() == shape;
        // A leader that neither answers nor ends (a stalled upstream far below its own
        // timeouts) must not hold its followers past this: they go upstream themselves.
        let waited = tokio::time::timeout(FOLLOW_DEADLINE, follower.wait(raw)).await.unwrap_or(Wait::Nothing);
        match waited {
            Wait::Streaming(origin) => {
                self.account(lookup, request, CacheStatus::Hit);
                Some(Served::Shared { follower, origin })
            }
            Wait::Stored(entry) => {
                if let Some(served) = self.hit(&entry, shape, request, lookup) {
                    return Some(served);
                }
                self.account(lookup, request, CacheStatus::Miss);
                self.plan_fill(lookup, key, request, None);
                None
            }
            // The leader failed, its answer was not cacheable, or it took too long: go
            // upstream alone.
            Wait::Nothing => {
                self.account(lookup, request, CacheStatus::Miss);
                self.plan_fill(lookup, key, request, None);
                None
            }
        }
    }

    /// Serves `entry` in the shape the request wants; `None` when it cannot (a stream
    /// asked of an answer that has no streamed form).
    fn hit(&self, entry: &Entry, shape: Shape, request: &CacheRequest<'_>, lookup: &mut Lookup) -> Option<Served> {
        let body = match shape.stream {
            true => replay::stream_of(request.endpoint, &entry.body, shape.include_usage)?,
            false => entry.body.clone(),
        };
        self.account(lookup, request, CacheStatus::Hit);
        let origin = Origin { backend: entry.backend.clone(), variant: entry.variant.clone() };
        Some(Served::Whole { body, sse: shape.stream, origin })
    }

    /// The shared store's entry, kept locally for what is left of its life.
    async fn shared_get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let entry = Arc::new(self.shared.as_ref()?.get(key).await?);
        self.store.insert(*key, Arc::clone(&entry));
        Some(entry)
    }

    fn account(&self, lookup: &mut Lookup, request: &CacheRequest<'_>, status: CacheStatus) {
        lookup.status = status;
        let result = match status {
            CacheStatus::Hit => CacheResult::Hit,
            CacheStatus::Miss => CacheResult::Miss,
            CacheStatus::Bypass => CacheResult::Bypass,
        };
        request.metrics.cache_request(request.model, result);
    }

    fn plan_fill(
        self: &Arc<Self>,
        lookup: &mut Lookup,
        key: CacheKey,
        request: &CacheRequest<'_>,
        flight: Option<Arc<coalesce::Flight>>,
    ) {
        let (ttl, endpoint) = (request.ttl, request.endpoint);
        lookup.fill = Some(Fill { cache: Arc::clone(self), key, ttl, endpoint, flight });
    }

    fn insert(&self, key: CacheKey, entry: &Arc<Entry>) {
        self.store.insert(key, Arc::clone(entry));
        if let Some(shared) = &self.shared {
            shared.put(&key, entry);
        }
    }
}

// === impl Fill ===

impl Fill {
    /// The leader's chunk on its way to the client: shared with followers of its stream.
    pub fn observe(&self, chunk: &Bytes, record: &Record) {
        let Some(flight) = &self.flight else { return };
        if record.sse && record.status == 200 {
            flight.push(&self.cache.flights, chunk, || Origin {
                backend: record.backend.clone(),
                variant: record.variant.clone(),
            });
        }
    }

    /// Whether other requests are reading this request's stream as it arrives.
    pub fn has_stream_followers(&self) -> bool {
        self.flight.as_ref().is_some_and(|flight| flight.has_stream_followers())
    }

    /// What the fill needs from the capture before the request's answer is read back: a JSON
    /// answer's exact bytes (a JSON hit returns them as they came), or — for a stream whose
    /// client hung up right after `data: [DONE]`, as SDKs do — the stream assembled, since
    /// read-back assembles only completed requests. `None` when nothing will be stored.
    /// `record.outcome` is already the final one.
    pub fn raw_answer(&self, record: &Record, capture: Option<&Capture>) -> Option<Bytes> {
        if record.status != 200 {
            return None;
        }
        let capture = capture?;
        match (record.sse, record.outcome) {
            (false, Outcome::Completed) => capture.bytes(),
            (true, Outcome::ClientGone) => match capture.as_slice() {
                Some(events) => replay::whole_of(self.endpoint, events).map(Bytes::from),
                // A chat stream folded as it passed.
                None => {
                    let assembled = capture.assembled_stream().filter(|a| a.complete)?;
                    serde_json::to_vec(&assembled.body).ok().map(Bytes::from)
                }
            },
            _ => None,
        }
    }

    /// Run when the request finishes: stores a whole, successful answer and ends the flight
    /// (if this request led one) so its followers are served or go upstream.
    pub fn complete(mut self, record: &Record, raw: Option<Bytes>) {
        let entry = cacheable_body(record, raw).map(|body| {
            Arc::new(Entry { body, backend: record.backend.clone(), variant: record.variant.clone(), ttl: self.ttl })
        });
        if let Some(entry) = &entry {
            self.cache.insert(self.key, entry);
        }
        let Some(flight) = self.flight.take() else { return };
        let end = match entry {
            Some(entry) => FlightEnd::Stored(entry),
            None if record.outcome == Outcome::Completed && record.status == 200 => FlightEnd::Unstored,
            None => {
                let reason = match record.outcome {
                    Outcome::ClientGone => "the request leading this answer went away",
                    Outcome::Failed | Outcome::Completed => "the request leading this answer failed",
                };
                FlightEnd::Failed(record.error.clone().unwrap_or_else(|| reason.to_owned()))
            }
        };
        flight.end(&self.cache.flights, end);
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        // Normally `complete` has ended the flight; this covers any path that did not.
        if let Some(flight) = self.flight.take() {
            flight.end(&self.cache.flights, FlightEnd::Failed("the request leading this answer ended early".into()));
        }
    }
}

/// The body to store: only a whole 200 answer (for streams, one that reached `[DONE]`).
fn cacheable_body(record: &Record, raw: Option<Bytes>) -> Option<Bytes> {
    if record.status != 200 {
        return None;
    }
    match (record.sse, record.outcome) {
        // Read-back assembled it: that proves the bytes are a whole JSON answer.
        (false, Outcome::Completed) => raw.filter(|_| record.assembled.is_some()),
        (true, Outcome::Completed) => {
            let assembled = record.assembled.as_ref().filter(|a| a.complete)?;
            serde_json::to_vec(&assembled.body).ok().map(Bytes::from)
        }
        // Assembled (and checked complete) by `raw_answer`.
        (true, Outcome::ClientGone) => raw,
        _ => None,
    }
}

// === impl Control ===

impl Control {
    fn of(headers: &HeaderMap) -> Control {
        let mut control = Control::default();
        for value in headers.get_all(CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            for directive in value.split(',').map(str::trim) {
                if directive.eq_ignore_ascii_case("no-cache") {
                    control.no_cache = true;
                } else if directive.eq_ignore_ascii_case("no-store") {
                    control.no_store = true;
                }
            }
        }
        control
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"model":"chat","messages":[{"role":"user","content":"hi"}],"stream":true}"#;

    /// A TCP server that accepts and never answers: what a stopped (`SIGSTOP`) Redis is to a
    /// client.
    async fn silent_redis() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        format!("redis://{addr}")
    }

    async fn begin(cache: &Arc<Cache>, metrics: &Metrics, headers: &HeaderMap) -> Lookup {
        let request = CacheRequest {
            endpoint: Endpoint::ChatCompletions,
            key_name: "team",
            model: "chat",
            body: BODY,
            stream: true,
            ttl: Duration::from_secs(60),
            context: "",
            headers,
            metrics,
        };
        cache.begin(request).await
    }

    #[tokio::test]
    async fn a_leader_gone_during_a_slow_shared_lookup_blocks_no_one() {
        let config = CacheConfig { store: CacheStore::Redis(silent_redis().await), ..CacheConfig::default() };
        let cache = Arc::new(Cache::new(&config));
        let (metrics, headers) = (Metrics::new(), HeaderMap::new());
        // The leader's client goes away while the shared store is being asked.
        let abandoned = tokio::time::timeout(Duration::from_millis(30), begin(&cache, &metrics, &headers)).await;
        assert!(abandoned.is_err(), "the first request was still looking the store up");
        assert_eq!(cache.in_flight(), 0, "its flight ended with it");

        let next = tokio::time::timeout(Duration::from_secs(5), begin(&cache, &metrics, &headers))
            .await
            .expect("the next identical request is not held by the abandoned flight");
        assert_eq!(next.status, CacheStatus::Miss);
        assert!(next.served.is_none() && next.fill.is_some(), "it leads and goes upstream");
        assert_eq!(cache.in_flight(), 1);
        drop(next);
        assert_eq!(cache.in_flight(), 0, "a fill dropped unfinished ends its flight too");
    }
}
