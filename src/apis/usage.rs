//! Token usage in the three shapes weir speaks, cached input and cache writes included.
//!
//! Owns: [`Tokens`], one neutral count, and its conversions from and to OpenAI chat's
//! `usage` (`prompt_tokens_details.cached_tokens`), the Responses API's (`input_tokens_details.
//! cached_tokens`) and Anthropic's (`cache_read_input_tokens`, `cache_creation_input_tokens`).
//! The conventions differ: OpenAI's input counts include cached tokens, Anthropic's
//! `input_tokens` excludes cache reads and writes; [`Tokens::input`] is always the total.
//! Must not: estimate tokens (that is `limits`), or price them.

use serde_json::{Value, json};

/// Token counts of one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Every input token, cache reads and cache writes included.
    pub input: u64,
    pub output: u64,
    /// Input tokens read from the provider's prompt cache (part of `input`).
    pub cached_input: u64,
    /// Input tokens written to the provider's prompt cache (part of `input`).
    pub cache_write: u64,
    /// Reasoning tokens (part of `output`).
    pub reasoning: u64,
}

fn count(value: &Value, path: &[&str]) -> u64 {
    path.iter().try_fold(value, |v, name| v.get(name)).and_then(Value::as_u64).unwrap_or(0)
}

impl Tokens {
    /// OpenAI chat's `usage`. A cache-write count is read where gateways put it: weir's own
    /// `prompt_tokens_details.cache_write_tokens`, or `cache_creation_input_tokens`.
    pub fn from_chat(usage: &Value) -> Tokens {
        let cache_write = count(usage, &["prompt_tokens_details", "cache_write_tokens"])
            .max(count(usage, &["cache_creation_input_tokens"]));
        Tokens {
            input: count(usage, &["prompt_tokens"]),
            output: count(usage, &["completion_tokens"]),
            cached_input: count(usage, &["prompt_tokens_details", "cached_tokens"]),
            cache_write,
            reasoning: count(usage, &["completion_tokens_details", "reasoning_tokens"]),
        }
    }

    /// The Responses API's `usage`.
    pub fn from_responses(usage: &Value) -> Tokens {
        Tokens {
            input: count(usage, &["input_tokens"]),
            output: count(usage, &["output_tokens"]),
            cached_input: count(usage, &["input_tokens_details", "cached_tokens"]),
            cache_write: count(usage, &["input_tokens_details", "cache_write_tokens"]),
            reasoning: count(usage, &["output_tokens_details", "reasoning_tokens"]),
        }
    }

    /// Anthropic's `usage`, whose `input_tokens` leaves out cache reads and writes.
    pub fn from_anthropic(usage: &Value) -> Tokens {
        let mut tokens = Tokens::default();
        tokens.update_anthropic(usage);
        tokens
    }

    /// Folds in a later Anthropic report (`message_delta` repeats and updates the counts of
    /// `message_start`): the fields it carries replace ours.
    pub fn update_anthropic(&mut self, usage: &Value) {
        let field = |name: &str| usage.get(name).and_then(Value::as_u64);
        let uncached = field("input_tokens").unwrap_or_else(|| self.uncached_input());
        if let Some(read) = field("cache_read_input_tokens") {
            self.cached_input = read;
        }
        if let Some(write) = field("cache_creation_input_tokens") {
            self.cache_write = write;
        }
        if let Some(output) = field("output_tokens") {
            self.output = output;
        }
        self.input = uncached.saturating_add(self.cached_input).saturating_add(self.cache_write);
    }

    /// Input tokens neither read from nor written to the prompt cache.
    pub fn uncached_input(&self) -> u64 {
        self.input.saturating_sub(self.cached_input).saturating_sub(self.cache_write)
    }

    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }

    pub fn to_chat(self) -> Value {
        let mut details = json!({"cached_tokens": self.cached_input});
        if self.cache_write > 0 {
            details["cache_write_tokens"] = json!(self.cache_write);
        }
        json!({
            "prompt_tokens": self.input,
            "completion_tokens": self.output,
            "total_tokens": self.total(),
            "prompt_tokens_details": details,
            "completion_tokens_details": {"reasoning_tokens": self.reasoning},
        })
    }

    pub fn to_responses(self) -> Value {
        let mut input_details = json!({"cached_tokens": self.cached_input});
        if self.cache_write > 0 {
            input_details["cache_write_tokens"] = json!(self.cache_write);
        }
        json!({
            "input_tokens": self.input,
            "input_tokens_details": input_details,
            "output_tokens": self.output,
            "output_tokens_details": {"reasoning_tokens": self.reasoning},
            "total_tokens": self.total(),
        })
    }

    pub fn to_anthropic(self) -> Value {
        json!({
            "input_tokens": self.uncached_input(),
            "cache_creation_input_tokens": self.cache_write,
            "cache_read_input_tokens": self.cached_input,
            "output_tokens": self.output,
        })
    }

    /// As the gateway's usage record (prompt = every input token).
    pub fn to_wire(self) -> crate::wire::Usage {
        crate::wire::Usage {
            prompt_tokens: self.input,
            completion_tokens: self.output,
            cached_tokens: self.cached_input,
            cache_write_tokens: self.cache_write,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_tokens_survive_every_conversion() {
        let anthropic = json!({"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5, "output_tokens": 7});
        let tokens = Tokens::from_anthropic(&anthropic);
        assert_eq!(tokens, Tokens { input: 115, output: 7, cached_input: 100, cache_write: 5, reasoning: 0 });
        assert_eq!(Tokens::from_chat(&tokens.to_chat()), tokens);
        assert_eq!(Tokens::from_responses(&tokens.to_responses()), tokens);
        assert_eq!(tokens.to_anthropic(), anthropic);
    }

    #[test]
    fn a_later_anthropic_report_updates_the_earlier_one() {
        let mut tokens =
            Tokens::from_anthropic(&json!({"input_tokens": 10, "cache_read_input_tokens": 3, "output_tokens": 1}));
        tokens.update_anthropic(&json!({"output_tokens": 42}));
        assert_eq!(tokens, Tokens { input: 13, output: 42, cached_input: 3, cache_write: 0, reasoning: 0 });
    }

    #[test]
    fn counts_near_the_limit_saturate() {
        let tokens = Tokens::from_anthropic(
            &json!({"input_tokens": u64::MAX, "cache_read_input_tokens": 9, "output_tokens": u64::MAX}),
        );
        assert_eq!(tokens.input, u64::MAX);
        assert_eq!(tokens.total(), u64::MAX);
    }
}
