//! Checks the sections this build accepts but does not act on yet (`cache`, `state`) for
//! obvious mistakes, and lists each one in `Config::inactive`.

use super::Cx;
use crate::config::raw::RawConfig;

impl Cx<'_> {
    /// Sections the schema accepts but this build does not act on yet: checked for obvious
    /// mistakes and listed in `Config::inactive`. Remove a section here once it is live.
    pub(super) fn optional_sections(&mut self, raw: &RawConfig) {
        if let Some(cache) = &raw.cache {
            self.inactive("cache", "`cache`");
            self.size("cache.max_size", "max_size", cache.max_size.as_deref(), 1);
            self.store("cache.store", cache.store.as_deref());
            if let Some(scope) = cache.scope.as_deref() {
                self.one_of("cache.scope", "scope", scope, &["key", "global"]);
            }
        }
        if let Some(state) = &raw.state {
            self.inactive("state", "`state`");
            self.store("state.store", state.store.as_deref());
        }
    }

    fn store(&mut self, path: &str, store: Option<&str>) {
        let Some(store) = store else { return };
        if store != "memory" && !store.starts_with("redis://") && !store.starts_with("rediss://") {
            self.err(path, format!("invalid `store` `{store}`: expected memory or a redis:// URL"));
        }
    }
}
