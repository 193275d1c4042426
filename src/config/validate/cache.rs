//! The top-level `cache` section: size bound, store and scope.

use super::Cx;
use crate::config::raw::RawConfig;
use crate::config::{CacheConfig, CacheScope, CacheStore};

impl Cx<'_> {
    pub(super) fn cache(&mut self, raw: &RawConfig) -> CacheConfig {
        let defaults = CacheConfig::default();
        let Some(cache) = &raw.cache else { return defaults };
        let max_size = self.size("cache.max_size", "max_size", cache.max_size.as_deref(), defaults.max_size);
        self.store("cache.store", cache.store.as_deref());
        let store = match cache.store.as_deref().map(str::trim) {
            Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                CacheStore::Redis(url.to_owned())
            }
            _ => CacheStore::Memory,
        };
        let scope = match cache.scope.as_deref() {
            Some("global") => CacheScope::Global,
            Some(other) => {
                self.one_of("cache.scope", "scope", other, &["key", "global"]);
                CacheScope::Key
            }
            None => CacheScope::Key,
        };
        CacheConfig { max_size, store, scope }
    }
}
