//! Checks the sections this build accepts but does not act on yet (`datasets`)
//! for obvious mistakes, and lists each one in `Config::inactive`.

use std::collections::HashSet;

use serde_json::Value;

use super::Cx;
use crate::config::raw::{RawConfig, RawDataset};
use crate::config::yaml::{join_index, join_key};

impl Cx<'_> {
    /// Sections the schema accepts but this build does not act on yet: checked for obvious
    /// mistakes and listed in `Config::inactive`. Remove a section here once it is live.
    pub(super) fn optional_sections(&mut self, raw: &RawConfig) {
        let mut names = HashSet::new();
        for (i, d) in raw.datasets.iter().enumerate() {
            let dp = join_index("datasets", i);
            self.inactive(&dp, &format!("dataset `{}`", d.name));
            if d.name.trim().is_empty() {
                self.err(&dp, "dataset needs a `name`");
            } else if !names.insert(d.name.as_str()) {
                self.err(&join_key(&dp, "name"), format!("duplicate dataset name `{}`", d.name));
            }
            self.dataset(&dp, d, raw);
        }
    }

    pub(super) fn store(&mut self, path: &str, store: Option<&str>) {
        let Some(store) = store else { return };
        if store != "memory" && !store.starts_with("redis://") && !store.starts_with("rediss://") {
            self.err(path, format!("invalid `store` `{store}`: expected memory or a redis:// URL"));
        }
    }

    fn dataset(&mut self, dp: &str, d: &RawDataset, raw: &RawConfig) {
        let at = |field: &str| join_key(dp, field);
        if d.dir.trim().is_empty() {
            self.err(dp, "dataset needs a `dir`");
        }
        self.ratio(&at("sample"), "sample", d.sample);
        self.size(&at("max_file_size"), "max_file_size", d.max_file_size.as_deref(), 1);
        for (j, item) in d.redact.iter().enumerate() {
            // Anything but the three words is a regex; the `regex` crate is not a dependency
            // yet, so only emptiness is checked here.
            if item.trim().is_empty() {
                self.err(&join_index(&at("redact"), j), "`redact` items must be email, phone, key or a regex");
            }
        }
        let Some(filter) = &d.filter else { return };
        let fp = at("filter");
        if let Some(model) = filter.model.as_ref().filter(|m| !raw.models.contains_key(*m)) {
            self.err(&join_key(&fp, "model"), format!("unknown model `{model}`"));
        }
        if let Some(key) = filter.key.as_ref().filter(|key| !raw.keys.iter().any(|k| &k.name == *key)) {
            self.err(&join_key(&fp, "key"), format!("unknown key name `{key}`"));
        }
        if let Some(status) = &filter.status {
            let items = match status {
                Value::Array(items) => items.iter().collect(),
                other => vec![other],
            };
            let valid = |v: &Value| match v {
                Value::Number(n) => n.as_u64().is_some_and(|c| (100..=599).contains(&c)),
                Value::String(s) => {
                    s.len() == 3 && s.starts_with(['1', '2', '3', '4', '5']) && s[1..].eq_ignore_ascii_case("xx")
                }
                _ => false,
            };
            if !items.into_iter().all(valid) {
                self.err(&join_key(&fp, "status"), "`status` must be HTTP statuses (100-599) or classes such as 5xx");
            }
        }
    }
}
