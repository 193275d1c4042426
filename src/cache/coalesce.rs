//! Single flight: identical cacheable requests in flight at once share one upstream call.
//!
//! The first request for a key leads: it registers a [`Flight`] and goes upstream. Requests
//! for the same key arriving meanwhile follow: a follower of a streamed answer receives the
//! leader's SSE bytes as they arrive (when it asked for the same stream shape); any other
//! follower waits for the stored entry and is served from it. When the leader ends without
//! an entry (upstream error, cut stream, client gone before a byte), waiting followers go
//! upstream on their own: an error is never multiplied onto them.
//! Memory: a flight keeps a copy of the leader's stream (one buffer, not a copy per chunk)
//! up to the capture limit, then stops being shareable.
//! Must not: hold a lock across `.await` (the state lock guards only pushes and reads).

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use tokio::sync::watch;

use super::key::CacheKey;
use super::store::Entry;

/// The in-flight requests by key.
#[derive(Debug, Default)]
pub struct Flights {
    map: DashMap<CacheKey, Arc<Flight>>,
}

/// The role a request takes for its key.
pub enum Join {
    Lead(Arc<Flight>),
    Follow(Follower),
}

/// What the leader asked for, which decides whether its raw bytes suit a follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub stream: bool,
    pub include_usage: bool,
}

/// One leader's response, shared as it arrives.
#[derive(Debug)]
pub struct Flight {
    key: CacheKey,
    shape: Shape,
    limit: usize,
    state: Mutex<FlightState>,
    /// Bumped after every change of `state`; followers wait on it.
    changed: watch::Sender<()>,
}

#[derive(Debug, Default)]
struct FlightState {
    /// Set with the leader's first body byte of a successful SSE answer.
    streaming: Option<Origin>,
    /// The leader's stream so far, copied: a chunk's own handle would keep the whole read
    /// buffer it came in alive for as long as the flight lasts. One buffer, so a chunk costs
    /// an append, not an allocation.
    stream: Vec<u8>,
    end: Option<FlightEnd>,
}

/// The backend and variant behind the leader's answer.
#[derive(Debug, Clone)]
pub struct Origin {
    pub backend: String,
    pub variant: String,
}

/// How a flight ended.
#[derive(Debug, Clone)]
pub enum FlightEnd {
    /// Stored: every follower can be served from it.
    Stored(Arc<Entry>),
    /// The answer reached the leader whole but was not stored (not cacheable).
    Unstored,
    /// The answer broke (upstream failure, timeout, leader gone, too large to share).
    Failed(String),
}

/// What a follower learned while waiting.
pub enum Wait {
    /// The leader streams SSE of the follower's shape: read it with [`Follower::next_chunk`].
    Streaming(Origin),
    Stored(Arc<Entry>),
    /// No entry to serve: go upstream.
    Nothing,
}

/// The next piece of a shared stream.
pub enum Next {
    Chunk(Bytes),
    Done,
    Failed(String),
}

// === impl Flights ===

impl Flights {
    /// Leads a new flight for `key`, or follows the one already in the air.
    pub fn join(&self, key: CacheKey, shape: Shape, limit: usize) -> Join {
        match self.map.entry(key) {
            MapEntry::Occupied(existing) => Join::Follow(Follower::new(Arc::clone(existing.get()))),
            MapEntry::Vacant(slot) => {
                let (changed, _) = watch::channel(());
                let state = Mutex::new(FlightState::default());
                let flight = Arc::new(Flight { key, shape, limit, state, changed });
                slot.insert(Arc::clone(&flight));
                Join::Lead(flight)
            }
        }
    }

    /// Forgets `flight` (and only it: a newer flight for the same key stays).
    fn remove(&self, flight: &Arc<Flight>) {
        self.map.remove_if(&flight.key, |_, current| Arc::ptr_eq(current, flight));
    }

    /// Flights in the air.
    pub fn count(&self) -> usize {
        self.map.len()
    }
}

// === impl Flight ===

impl Flight {
    fn lock(&self) -> MutexGuard<'_, FlightState> {
        // A panic while holding this lock cannot leave the state half-written in a way
        // that matters more than losing the flight; keep serving.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The leader's SSE chunk on its way to its client. Past the limit the flight can no
    /// longer be shared: followers reading it fail, waiting ones go upstream.
    pub fn push(self: &Arc<Self>, flights: &Flights, chunk: &Bytes, origin: impl FnOnce() -> Origin) {
        let mut state = self.lock();
        if state.end.is_some() {
            return;
        }
        if state.stream.len().saturating_add(chunk.len()) > self.limit {
            state.stream = Vec::new();
            state.end = Some(FlightEnd::Failed("the shared answer grew too large to share".into()));
            drop(state);
            flights.remove(self);
            self.changed.send_replace(());
            return;
        }
        if state.streaming.is_none() {
            state.streaming = Some(origin());
        }
        state.stream.extend_from_slice(chunk);
        drop(state);
        // Nobody to wake unless a request follows. One that subscribes after this check
        // reads the state after the append above, so it misses nothing.
        if self.changed.receiver_count() > 0 {
            self.changed.send_replace(());
        }
    }

    /// Whether requests are following this flight, and it is sharing a stream with them.
    pub fn has_stream_followers(&self) -> bool {
        self.changed.receiver_count() > 0 && self.lock().streaming.is_some()
    }

    /// The leader's stream so far, joined; `None` once it was given up.
    pub fn joined(&self) -> Option<Bytes> {
        let state = self.lock();
        if matches!(state.end, Some(FlightEnd::Failed(_))) {
            return None;
        }
        Some(Bytes::copy_from_slice(&state.stream))
    }

    /// Ends the flight and takes it off the map, after any entry has been stored (so a new
    /// request finds either the flight or the entry).
    pub fn end(self: &Arc<Self>, flights: &Flights, end: FlightEnd) {
        {
            let mut state = self.lock();
            if state.end.is_none() {
                state.end = Some(end);
            }
        }
        flights.remove(self);
        // As in `push`: a request that subscribes after this check reads the end set above.
        // Most flights (every miss) end with nobody following, and waking no one still cost
        // a pass over the watch's notifiers.
        if self.changed.receiver_count() > 0 {
            self.changed.send_replace(());
        }
    }
}

// === impl Follower ===

/// A request served from someone else's flight.
#[derive(Debug)]
pub struct Follower {
    flight: Arc<Flight>,
    changes: watch::Receiver<()>,
    /// Bytes of the leader's stream already passed on.
    next: usize,
}

impl Follower {
    fn new(flight: Arc<Flight>) -> Follower {
        let changes = flight.changed.subscribe();
        Follower { flight, changes, next: 0 }
    }

    /// What the leader asked for.
    pub fn leader_shape(&self) -> Shape {
        self.flight.shape
    }

    /// The rest of the leader's stream as a stream of [`Next`] items, ending after
    /// `Next::Failed` or once the stream is done.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Next> + Send {
        futures_util::stream::unfold(Some(self), |state| async move {
            let mut follower = state?;
            match follower.next_chunk().await {
                Next::Chunk(chunk) => Some((Next::Chunk(chunk), Some(follower))),
                Next::Done => None,
                failed @ Next::Failed(_) => Some((failed, None)),
            }
        })
    }

    /// Waits until there is something to serve: the leader's stream (when `raw` allows the
    /// follower to take its bytes as they are), its stored entry, or nothing.
    pub async fn wait(&mut self, raw: bool) -> Wait {
        loop {
            self.changes.borrow_and_update();
            {
                let state = self.flight.lock();
                match &state.end {
                    Some(FlightEnd::Stored(entry)) => return Wait::Stored(Arc::clone(entry)),
                    // A stream follower already committed to the bytes reads them to the end.
                    Some(FlightEnd::Unstored) if raw && state.streaming.is_some() => {}
                    Some(_) => return Wait::Nothing,
                    None => {}
                }
                if raw {
                    if let Some(origin) = &state.streaming {
                        return Wait::Streaming(origin.clone());
                    }
                }
            }
            if self.changes.changed().await.is_err() {
                return Wait::Nothing;
            }
        }
    }

    /// The next chunk of the leader's stream, waiting for it if need be.
    pub async fn next_chunk(&mut self) -> Next {
        loop {
            self.changes.borrow_and_update();
            {
                let state = self.flight.lock();
                if let Some(unread) = state.stream.get(self.next..).filter(|unread| !unread.is_empty()) {
                    self.next = state.stream.len();
                    return Next::Chunk(Bytes::copy_from_slice(unread));
                }
                match &state.end {
                    Some(FlightEnd::Stored(_) | FlightEnd::Unstored) => return Next::Done,
                    Some(FlightEnd::Failed(message)) => return Next::Failed(message.clone()),
                    None => {}
                }
            }
            if self.changes.changed().await.is_err() {
                return Next::Failed("the shared answer ended without a word".into());
            }
        }
    }
}
