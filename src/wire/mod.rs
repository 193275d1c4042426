//! Wire: the ground floor. The vocabulary every other module speaks, as plain data.
//!
//! Owns: the endpoints weir serves ([`endpoint`]); a client request's head and its parser
//! ([`request`]); HTTP bodies and the memory budget for reading them ([`body`]); every
//! header name and the client's request id ([`headers`]); weir's own request ids, which name
//! their place in the ring of recent requests ([`request_id`]); JSON strings read without a copy
//! and lenient fields for views of what upstreams send ([`json`]); client text made safe for a log line
//! ([`log_safe`]); W3C trace context ([`trace_context`]); the answer as it streamed by
//! ([`capture`]) and what is read back out of it — usage ([`usage`]), the whole answer
//! ([`assemble`], also folded as a stream passes), its summary ([`summary`]), and the lines
//! of bytes that arrive in pieces ([`lines`]); and the finished per-request [`Record`] with
//! its outcome, attempts and cache status ([`record`]), the one thing the taps read.
//! Must not: name any other module of weir, or hold a runtime handle (no snapshot, store,
//! guard or task): everything here is data and pure functions over it.

pub(crate) mod assemble;
pub(crate) mod body;
pub(crate) mod capture;
pub(crate) mod endpoint;
pub(crate) mod headers;
pub(crate) mod json;
pub(crate) mod lines;
pub(crate) mod log_safe;
pub(crate) mod record;
pub(crate) mod request;
pub(crate) mod request_id;
pub(crate) mod summary;
pub(crate) mod trace_context;
pub(crate) mod usage;

pub use assemble::{AnswerBody, Assembled, assemble};
pub use capture::{CAPTURE_LIMIT, Capture};
pub use endpoint::Endpoint;
pub use log_safe::LogSafe;
pub use record::{Attempt, AttemptKind, CacheStatus, Outcome, PromptUse, Record};
pub use request::{RequestError, RequestHead, parse_head};
pub use summary::AnswerSummary;
pub use trace_context::{SpanIds, TraceContext};
pub use usage::{Usage, usage_only};
