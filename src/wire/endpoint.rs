//! The client-facing APIs weir serves.
//!
//! Owns: [`Endpoint`] and its label. Must not: hold routing or parsing rules.

/// The OpenAI endpoints weir forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    /// The `endpoint` field of dataset records and the operation name of spans.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat",
            Endpoint::Completions => "text_completion",
            Endpoint::Embeddings => "embeddings",
        }
    }
}
