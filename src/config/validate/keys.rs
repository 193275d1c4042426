//! Checks `keys:` (names unique, hashes well formed and distinct, allowed models defined, rate
//! and budget) and `auth.mode`, including that `keys` mode has at least one key.

use std::collections::HashMap;

use super::Cx;
use crate::config::raw::{RawConfig, RawKey};
use crate::config::yaml::{Pos, join_index, join_key};
use crate::config::{AuthMode, BudgetConfig, BudgetPeriod, KeyConfig, RateConfig};

const HASH_HINT: &str = "expected `sha256:` followed by 64 lowercase hex digits (produce it with `weir key hash`)";

impl Cx<'_> {
    pub(super) fn keys(&mut self, raw: &RawConfig) -> Vec<KeyConfig> {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut hashes: HashMap<[u8; 32], &str> = HashMap::new();
        let mut keys = Vec::new();
        for (i, k) in raw.keys.iter().enumerate() {
            let kp = join_index("keys", i);
            let at = |field: &str| join_key(&kp, field);
            if k.name.trim().is_empty() {
                self.err(&kp, "key needs a `name`");
            } else if let Some(first) = names.insert(&k.name, self.doc.value_pos(&at("name")).line) {
                self.err(&at("name"), format!("duplicate key name `{}` (first on line {first})", k.name));
            }
            let hash = if k.key.is_empty() {
                self.err(&kp, format!("key needs `key`: {HASH_HINT}"));
                [0; 32]
            } else {
                match parse_key_hash(&k.key) {
                    Ok(hash) => {
                        if let Some(other) = hashes.insert(hash, &k.name) {
                            self.err(&at("key"), format!("key `{}` has the same hash as key `{other}`", k.name));
                        }
                        hash
                    }
                    Err(message) => {
                        self.err(&at("key"), message);
                        [0; 32]
                    }
                }
            };
            if let Some(models) = &k.models {
                for (j, model) in models.iter().enumerate() {
                    if !raw.models.contains_key(model) {
                        let known: Vec<&str> = raw.models.keys().map(String::as_str).collect();
                        self.err(
                            &join_index(&at("models"), j),
                            format!("unknown model `{model}` (known: {})", known.join(", ")),
                        );
                    }
                }
            }
            let rate = self.rate(&at("rate"), k);
            let budget = self.budget(&at("budget"), k);
            keys.push(KeyConfig { name: k.name.clone(), hash, models: k.models.clone(), rate, budget });
        }
        keys
    }

    fn rate(&mut self, path: &str, k: &RawKey) -> RateConfig {
        let Some(r) = &k.rate else {
            return RateConfig::default();
        };
        for (field, value) in [("rpm", r.rpm), ("tpm", r.tpm), ("concurrent", r.concurrent)] {
            if value == Some(0) {
                self.err(&join_key(path, field), format!("`{field}` must be at least 1"));
            }
        }
        RateConfig { rpm: r.rpm, tpm: r.tpm, concurrent: r.concurrent }
    }

    fn budget(&mut self, path: &str, k: &RawKey) -> Option<BudgetConfig> {
        let b = k.budget.as_ref()?;
        if b.usd.is_none() {
            self.key_err(path, "`budget` needs `usd` (the spending limit in USD)");
        }
        let usd = self.non_negative(&join_key(path, "usd"), "usd", b.usd);
        let per = match b.per.as_deref() {
            Some("day") => BudgetPeriod::Day,
            Some("month") => BudgetPeriod::Month,
            Some(other) => {
                self.err(&join_key(path, "per"), format!("invalid `per` `{other}`: expected day or month"));
                BudgetPeriod::Month
            }
            None => {
                self.key_err(path, "`budget` needs `per` (day or month)");
                BudgetPeriod::Month
            }
        };
        Some(BudgetConfig { usd, per })
    }

    pub(super) fn auth(&mut self, raw: &RawConfig) -> AuthMode {
        let mode = match raw.auth.mode.as_deref() {
            None | Some("keys") => AuthMode::Keys,
            Some("none") => AuthMode::None,
            Some("passthrough") => AuthMode::Passthrough,
            Some(other) => {
                self.err("auth.mode", format!("invalid `auth.mode` `{other}`: expected keys, none or passthrough"));
                return AuthMode::None;
            }
        };
        if mode == AuthMode::Keys && raw.keys.is_empty() {
            let how = if raw.auth.mode.is_some() { "is" } else { "defaults to" };
            let message = format!(
                "`auth.mode` {how} `keys` but no `keys` are defined, so no client could call: add a key or set `auth: {{ mode: none }}`"
            );
            if raw.auth.mode.is_some() {
                self.err("auth.mode", message);
            } else {
                // Defaulted: point at `auth:` if written, else at the top, never at whatever
                // node the fallback to the nearest ancestor would find first.
                let pos = if self.doc.root.get("auth").is_some() { self.doc.key_pos("auth") } else { Pos::START };
                self.err_at("auth", pos, message);
            }
        }
        mode
    }
}

/// Decodes `sha256:` + 64 lowercase hex digits.
fn parse_key_hash(text: &str) -> Result<[u8; 32], String> {
    let Some(hex_part) = text.strip_prefix("sha256:") else {
        return Err(format!("`key` must be the key's hash, never the key itself: {HASH_HINT}"));
    };
    let lower_hex = hex_part.len() == 64 && hex_part.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let mut hash = [0u8; 32];
    if !lower_hex || hex::decode_to_slice(hex_part, &mut hash).is_err() {
        return Err(format!("invalid key hash: {HASH_HINT}"));
    }
    Ok(hash)
}
