//! The JSON the admin port answers with: the active config (`GET /admin/config`) and a
//! reload's outcome (`POST /admin/reload`).
//!
//! Owns: those two JSON shapes. Must not: show a secret (the config view is masked).

use serde_json::{Value, json};

use super::ReloadOutcome;
use crate::runtime::Snapshot;

/// The active config as loaded (`${VAR}` expanded, secrets masked), where it came from, the
/// SHA-256 of its bytes and when it became active (RFC 3339).
pub fn config_view(snapshot: &Snapshot) -> Value {
    json!({
        "source": snapshot.source.origin,
        "hash": snapshot.source.hash,
        "loaded_at": loaded_at(snapshot),
        "config": snapshot.source.masked,
    })
}

/// `{"outcome": "applied" | "unchanged", "hash", "loaded_at"}` of the config now active.
pub fn outcome_json(outcome: ReloadOutcome, active: &Snapshot) -> Value {
    json!({"outcome": outcome.as_str(), "hash": active.source.hash, "loaded_at": loaded_at(active)})
}

fn loaded_at(snapshot: &Snapshot) -> String {
    humantime::format_rfc3339_millis(snapshot.loaded_at).to_string()
}
