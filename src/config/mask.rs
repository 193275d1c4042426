//! Masking secrets in a config tree before anyone sees it (`/admin/config`).
//!
//! Owns: the rule for what counts as a secret. It goes by shape rather than by a list of
//! fields, so sections added later are covered without touching this file: a string under a
//! key whose name has a word such as `key`, `token`, `secret` or `password`
//! (`api_key`, `admin_token`, `keys[].key`, a header like `x-api-key` or `authorization`),
//! and the password of any URL (`redis://user:PASSWORD@host`).
//! Must not: change anything but string values.

use serde_json::{Map, Value};

/// What a masked value shows.
pub const MASK: &str = "****";

/// Words that make a key name secret, matched against the name split at `_`, `-` and `.`.
const SECRET_WORDS: &[&str] =
    &["key", "apikey", "token", "secret", "password", "passwd", "authorization", "cookie", "credential", "credentials"];

/// A copy of `value` with every secret replaced by [`MASK`]. Empty strings stay empty, so
/// the view still shows that a secret is unset.
pub fn masked(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (name, value) in map {
                let value = match value {
                    Value::String(s) if is_secret_name(name) && !s.is_empty() => Value::String(MASK.into()),
                    other => masked(other),
                };
                out.insert(name.clone(), value);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(masked).collect()),
        Value::String(s) => Value::String(mask_url_password(s)),
        other => other.clone(),
    }
}

fn is_secret_name(name: &str) -> bool {
    name.split(['_', '-', '.']).any(|word| SECRET_WORDS.iter().any(|secret| word.eq_ignore_ascii_case(secret)))
}

/// `scheme://user:PASSWORD@host/...` → `scheme://user:****@host/...`; anything else as is.
fn mask_url_password(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else { return s.to_owned() };
    let rest = &s[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else { return s.to_owned() };
    let userinfo = &authority[..at];
    let user = match userinfo.find(':') {
        Some(colon) => &userinfo[..colon],
        // A lone user part of a redis URL (`redis://PASSWORD@host`) is the password.
        None if s.starts_with("redis") => "",
        None => return s.to_owned(),
    };
    format!("{}{user}:{MASK}{}", &s[..scheme_end + 3], &rest[at..])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn secrets_are_masked_by_name_and_url_passwords_by_shape() {
        let config = json!({
            "server": {"admin_token": "tok", "listen": "0.0.0.0:8080"},
            "backends": {"a": {"api_key": "sk-1", "base_url": "https://h/v1",
                               "headers": {"x-api-key": "k", "Authorization": "Bearer z", "x-served-by": "weir"},
                               "tokens_per_second": 200}},
            "keys": [{"name": "team", "key": "sha256:abc", "models": ["m"]}],
            "cache": {"store": "redis://default:pw@cache:6379/0", "scope": "key"},
            "state": {"store": "rediss://pw2@state:6380"},
            "telemetry": {"otlp": {"endpoint": "http://u:p@collector:4317"}},
            "empty": {"api_key": ""},
        });
        let view = masked(&config);
        assert_eq!(view["server"], json!({"admin_token": MASK, "listen": "0.0.0.0:8080"}));
        assert_eq!(view["backends"]["a"]["api_key"], MASK);
        assert_eq!(view["backends"]["a"]["base_url"], "https://h/v1");
        assert_eq!(
            view["backends"]["a"]["headers"],
            json!({"x-api-key": MASK, "Authorization": MASK, "x-served-by": "weir"})
        );
        assert_eq!(view["backends"]["a"]["tokens_per_second"], 200);
        assert_eq!(view["keys"], json!([{"name": "team", "key": MASK, "models": ["m"]}]));
        assert_eq!(view["cache"], json!({"store": "redis://default:****@cache:6379/0", "scope": "key"}));
        assert_eq!(view["state"]["store"], "rediss://:****@state:6380");
        assert_eq!(view["telemetry"]["otlp"]["endpoint"], "http://u:****@collector:4317");
        assert_eq!(view["empty"]["api_key"], "");
    }

    #[test]
    fn strings_without_secrets_are_unchanged() {
        for s in ["plain", "http://host:80/path@x", "mailto:a@b", "https://user@host/"] {
            assert_eq!(mask_url_password(s), s);
        }
    }
}
