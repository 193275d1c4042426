//! Checks shared by the sections that name a store (`cache.store`, `state.store`).

use super::Cx;

impl Cx<'_> {
    pub(super) fn store(&mut self, path: &str, store: Option<&str>) {
        let Some(store) = store else { return };
        if store != "memory" && !store.starts_with("redis://") && !store.starts_with("rediss://") {
            self.err(path, format!("invalid `store` `{store}`: expected memory or a redis:// URL"));
        }
    }
}
