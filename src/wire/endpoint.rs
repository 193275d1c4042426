//! The client-facing APIs weir serves.
//!
//! Owns: [`Endpoint`] and its labels. Must not: hold routing or parsing rules.

/// The endpoints weir forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    /// The OpenAI Responses API (`/v1/responses`).
    Responses,
    /// The Anthropic Messages API (`/v1/messages`).
    Messages,
}

impl Endpoint {
    /// The `endpoint` field of dataset records and label of metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat",
            Endpoint::Completions => "text_completion",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
        }
    }

    /// The GenAI `gen_ai.operation.name` (the Responses and Messages APIs are chat).
    pub fn operation(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions | Endpoint::Responses | Endpoint::Messages => "chat",
            Endpoint::Completions => "text_completion",
            Endpoint::Embeddings => "embeddings",
        }
    }

    /// Whether the client speaks an API other than OpenAI's chat/completions/embeddings:
    /// its request is translated to chat completions unless the backend speaks it natively.
    pub fn is_inbound(self) -> bool {
        matches!(self, Endpoint::Responses | Endpoint::Messages)
    }
}
