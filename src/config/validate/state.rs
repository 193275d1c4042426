//! Checks `state:` (the store limits and budgets share, its failure mode and deadline).

use std::time::Duration;

use super::Cx;
use crate::config::raw::RawConfig;
use crate::config::{FailMode, StateConfig, StateStore};

impl Cx<'_> {
    pub(super) fn state(&mut self, raw: &RawConfig) -> StateConfig {
        let defaults = StateConfig::default();
        let Some(state) = &raw.state else { return defaults };
        self.store("state.store", state.store.as_deref());
        let store = match state.store.as_deref() {
            Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                StateStore::Redis(url.to_owned())
            }
            _ => StateStore::Memory,
        };
        let on_error =
            match state.on_error.as_deref() {
                None => defaults.on_error,
                Some(mode) if self.one_of("state.on_error", "on_error", mode, &["open", "closed"]) => {
                    if mode == "closed" { FailMode::Closed } else { FailMode::Open }
                }
                Some(_) => defaults.on_error,
            };
        let timeout =
            self.duration("state.timeout", "timeout", state.timeout.as_deref(), Duration::from_millis(100), true);
        let default_max_tokens = match state.default_max_tokens {
            Some(0) => {
                self.err("state.default_max_tokens", "`default_max_tokens` must be at least 1");
                defaults.default_max_tokens
            }
            Some(n) => n,
            None => defaults.default_max_tokens,
        };
        let responses_ttl = self.duration(
            "state.responses_ttl",
            "responses_ttl",
            state.responses_ttl.as_deref(),
            defaults.responses_ttl,
            true,
        );
        let responses_max_size = self.size(
            "state.responses_max_size",
            "responses_max_size",
            state.responses_max_size.as_deref(),
            defaults.responses_max_size,
        );
        StateConfig { store, on_error, timeout, default_max_tokens, responses_ttl, responses_max_size }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{FailMode, StateStore, load_str};

    const BASE: &str = "backends:\n  m: { kind: mock }\nmodels:\n  m: { targets: [ { backend: m, model: m } ] }\nauth: { mode: none }\n";

    #[test]
    fn state_is_typed_with_defaults() {
        let config = load_str(BASE, "t.yaml", &|_| None).unwrap();
        assert_eq!(config.state.store, StateStore::Memory);
        assert_eq!(config.state.on_error, FailMode::Open);
        let yaml = format!("{BASE}state: {{ store: \"redis://r:6379/0\", on_error: closed, timeout: 50ms }}\n");
        let config = load_str(&yaml, "t.yaml", &|_| None).unwrap();
        assert_eq!(config.state.store, StateStore::Redis("redis://r:6379/0".into()));
        assert_eq!(config.state.on_error, FailMode::Closed);
        assert_eq!(config.state.timeout, std::time::Duration::from_millis(50));
    }

    #[test]
    fn bad_state_values_are_reported_in_place() {
        let yaml = format!("{BASE}state: {{ store: mem, on_error: maybe, default_max_tokens: 0 }}\n");
        let err = load_str(&yaml, "t.yaml", &|_| None).unwrap_err().to_string();
        assert!(err.contains("t.yaml:6:17: invalid `store` `mem`"), "{err}");
        assert!(err.contains("invalid `on_error` `maybe`: expected one of open, closed"), "{err}");
        assert!(err.contains("`default_max_tokens` must be at least 1"), "{err}");
    }
}
