//! weir: an OpenAI-compatible inference gateway.
pub mod config;
