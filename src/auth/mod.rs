//! Auth: the client's key → a virtual key from the config.
//!
//! Owns: reading the client's credential (`Authorization: Bearer`, or `api-key` as Azure
//! clients send it), hashing it with SHA-256 and finding the virtual key in constant time,
//! and the per-key model allow-list. Must not: count requests or spend (that is `limits`),
//! or log a key in clear.

use std::collections::HashMap;

use http::HeaderMap;
use http::header::AUTHORIZATION;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AuthMode, KeyConfig};

/// Who is calling. `key` is `None` in `auth: none` and `passthrough` modes.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub key: Option<&'a KeyConfig>,
}

impl Identity<'_> {
    /// The key's config name, or `anonymous`: the only form of identity that reaches logs,
    /// metrics and datasets.
    pub fn name(&self) -> &str {
        self.key.map_or("anonymous", |k| k.name.as_str())
    }

    pub fn may_use(&self, model: &str) -> bool {
        match self.key.and_then(|k| k.models.as_ref()) {
            Some(allowed) => allowed.iter().any(|m| m == model),
            None => true,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing API key: send it as `Authorization: Bearer <key>`")]
    MissingKey,
    #[error("invalid API key")]
    UnknownKey,
    #[error("this key may not use model `{model}`")]
    ModelNotAllowed { model: String },
}

/// Virtual keys indexed by the SHA-256 of their secret.
#[derive(Debug, Default)]
pub struct KeyTable {
    mode: Option<AuthMode>,
    by_hash: HashMap<[u8; 32], usize>,
    keys: Vec<KeyConfig>,
}

impl KeyTable {
    pub fn new(mode: AuthMode, keys: Vec<KeyConfig>) -> KeyTable {
        let by_hash = keys.iter().enumerate().map(|(i, k)| (k.hash, i)).collect();
        KeyTable { mode: Some(mode), by_hash, keys }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode.unwrap_or(AuthMode::Keys)
    }

    /// Identifies the caller from the request headers.
    ///
    /// The lookup is by SHA-256 digest, so its timing depends on the digest, not on the
    /// secret; the final comparison is constant-time all the same.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Identity<'_>, AuthError> {
        if self.mode() != AuthMode::Keys {
            return Ok(Identity { key: None });
        }
        let secret = client_secret(headers).ok_or(AuthError::MissingKey)?;
        let digest: [u8; 32] = Sha256::digest(secret).into();
        let key = self.by_hash.get(&digest).map(|&i| &self.keys[i]).ok_or(AuthError::UnknownKey)?;
        if bool::from(key.hash.ct_eq(&digest)) { Ok(Identity { key: Some(key) }) } else { Err(AuthError::UnknownKey) }
    }
}

impl KeyTable {
    /// Who a request belongs to, for feedback: the key's name; in `passthrough` mode, where
    /// every client brings its own upstream credential, `client:` and a digest of it (never
    /// the credential itself); in `none` mode, `anonymous`.
    pub fn owner(&self, identity: &Identity<'_>, headers: &HeaderMap) -> String {
        match (identity.key, self.mode()) {
            (Some(key), _) => key.name.clone(),
            (None, AuthMode::Passthrough) => match client_secret(headers) {
                Some(secret) => format!("client:{}", hex::encode(&Sha256::digest(secret)[..8])),
                None => "anonymous".to_owned(),
            },
            (None, _) => "anonymous".to_owned(),
        }
    }
}

/// `Authorization: Bearer <key>`, or Azure-style `api-key: <key>`.
fn client_secret(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get(AUTHORIZATION) {
        let bytes = value.as_bytes();
        let token = bytes.strip_prefix(b"Bearer ").or_else(|| bytes.strip_prefix(b"bearer "))?;
        let token = token.trim_ascii();
        return (!token.is_empty()).then_some(token);
    }
    headers.get("api-key").map(|v| v.as_bytes().trim_ascii()).filter(|t| !t.is_empty())
}

/// `sha256:<hex>` of a key, the form `keys[].key` takes in the config (`weir key hash`).
pub fn hash_key(secret: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(secret.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateConfig;

    fn table() -> KeyTable {
        let hash = Sha256::digest(b"sk-team").into();
        let key = KeyConfig {
            name: "team".into(),
            hash,
            models: Some(vec!["mock".into()]),
            rate: RateConfig::default(),
            budget: None,
        };
        KeyTable::new(AuthMode::Keys, vec![key])
    }

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn bearer_key_finds_its_virtual_key() {
        let table = table();
        let identity = table.authenticate(&headers("Bearer sk-team")).unwrap();
        assert_eq!(identity.name(), "team");
        assert!(identity.may_use("mock"));
        assert!(!identity.may_use("other"));
    }

    #[test]
    fn requests_belong_to_their_key_or_in_passthrough_to_the_clients_credential() {
        let table = table();
        let team = headers("Bearer sk-team");
        assert_eq!(table.owner(&table.authenticate(&team).unwrap(), &team), "team");
        let passthrough = KeyTable::new(AuthMode::Passthrough, Vec::new());
        let (a, b) = (headers("Bearer sk-upstream-a"), headers("Bearer sk-upstream-b"));
        let owner_a = passthrough.owner(&passthrough.authenticate(&a).unwrap(), &a);
        let owner_b = passthrough.owner(&passthrough.authenticate(&b).unwrap(), &b);
        assert!(owner_a.starts_with("client:") && !owner_a.contains("upstream"), "{owner_a}");
        assert_ne!(owner_a, owner_b);
        assert_eq!(owner_a, passthrough.owner(&passthrough.authenticate(&a).unwrap(), &a));
        let none = KeyTable::new(AuthMode::None, Vec::new());
        assert_eq!(none.owner(&none.authenticate(&a).unwrap(), &a), "anonymous");
    }

    #[test]
    fn wrong_or_missing_key_is_refused() {
        let table = table();
        assert_eq!(table.authenticate(&headers("Bearer sk-nope")).unwrap_err(), AuthError::UnknownKey);
        assert_eq!(table.authenticate(&HeaderMap::new()).unwrap_err(), AuthError::MissingKey);
        assert_eq!(table.authenticate(&headers("Basic abc")).unwrap_err(), AuthError::MissingKey);
    }

    #[test]
    fn hash_matches_config_form() {
        assert_eq!(hash_key("test"), "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
    }
}
