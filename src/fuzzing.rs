//! Entry points for fuzz targets and corpus tests.
//!
//! Owns: the public names the fuzz targets (`fuzz/`, cargo-fuzz on nightly) and the corpus
//! tests (`tests/it/fuzz_corpus.rs`, stable) drive: the request-head parser, the SSE usage
//! filter, the answer assembler, the Anthropic stream translator and the inbound APIs' stream
//! translators (chat SSE → Responses and Messages events). Re-exports only, so no
//! whole module has to be public for them.
//! Must not: hold logic of its own, or be used by weir itself.

pub use crate::apis::StreamTranslate;
pub use crate::apis::messages::{MessagesStream, read_answer as read_messages_answer};
pub use crate::apis::responses::{ResponsesStream, Shell, read_answer as read_responses_answer};
pub use crate::backends::anthropic::{StreamError, StreamTranslator};
pub use crate::proxy::sse_filter::UsageChunkFilter;
pub use crate::wire::{Assembled, Endpoint, RequestError, RequestHead, assemble, parse_head};
