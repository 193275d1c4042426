//! `datasets:`: evaluation dataset sinks (names, directories, sampling, filters, redaction).

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::Value;

use super::Cx;
use crate::config::raw::{RawConfig, RawDataset, RawDatasetFilter};
use crate::config::yaml::{join_index, join_key};
use crate::config::{DatasetConfig, DatasetFilter, Redaction, StatusMatch};

/// Default `max_file_size`: large enough to keep the file count low, small enough to copy.
const DEFAULT_MAX_FILE_SIZE: u64 = 100 << 20;

impl Cx<'_> {
    pub(super) fn datasets(&mut self, raw: &RawConfig) -> Vec<DatasetConfig> {
        let mut names = HashMap::new();
        let mut dirs: HashMap<PathBuf, String> = HashMap::new();
        let mut datasets = Vec::with_capacity(raw.datasets.len());
        if raw.datasets.len() > crate::config::MAX_DATASETS {
            self.key_err("datasets", format!("at most {} datasets are supported", crate::config::MAX_DATASETS));
        }
        for (i, d) in raw.datasets.iter().enumerate() {
            let dp = join_index("datasets", i);
            if d.name.trim().is_empty() {
                self.key_err(&dp, "dataset needs a `name`");
            } else if names.insert(d.name.as_str(), i).is_some() {
                self.err(&join_key(&dp, "name"), format!("duplicate dataset name `{}`", d.name));
            }
            let dataset = self.dataset(&dp, d, raw);
            if !d.dir.trim().is_empty() {
                // Two writers rotating the same files would interleave and mis-number them.
                if let Some(other) = dirs.insert(dataset.dir.clone(), d.name.clone()) {
                    self.err(&join_key(&dp, "dir"), format!("`dir` is already used by dataset `{other}`"));
                }
            }
            datasets.push(dataset);
        }
        datasets
    }

    fn dataset(&mut self, dp: &str, d: &RawDataset, raw: &RawConfig) -> DatasetConfig {
        let at = |field: &str| join_key(dp, field);
        if d.dir.trim().is_empty() {
            self.key_err(dp, "dataset needs a `dir`");
        }
        self.ratio(&at("sample"), "sample", d.sample);
        let max_file_size =
            self.size(&at("max_file_size"), "max_file_size", d.max_file_size.as_deref(), DEFAULT_MAX_FILE_SIZE);
        let redact =
            d.redact.iter().enumerate().filter_map(|(j, item)| self.redaction(&at("redact"), j, item)).collect();
        let filter = match &d.filter {
            Some(filter) => self.dataset_filter(&at("filter"), filter, raw),
            None => DatasetFilter::default(),
        };
        DatasetConfig {
            name: d.name.clone(),
            dir: PathBuf::from(d.dir.trim()),
            sample: d.sample.unwrap_or(1.0).clamp(0.0, 1.0),
            filter,
            redact,
            max_file_size,
        }
    }

    /// `email`, `phone`, `key`, or anything else as a regular expression.
    fn redaction(&mut self, path: &str, index: usize, item: &str) -> Option<Redaction> {
        let path = join_index(path, index);
        match item.trim() {
            "" => {
                self.err(&path, "`redact` items must be email, phone, key or a regex");
                None
            }
            "email" => Some(Redaction::Email),
            "phone" => Some(Redaction::Phone),
            "key" => Some(Redaction::Key),
            pattern => match regex::Regex::new(pattern) {
                Ok(_) => Some(Redaction::Regex(pattern.to_owned())),
                Err(err) => {
                    let first_line = err.to_string().lines().last().unwrap_or_default().trim().to_owned();
                    self.err(
                        &path,
                        format!("`redact`: `{pattern}` is not email, phone, key or a valid regex: {first_line}"),
                    );
                    None
                }
            },
        }
    }

    fn dataset_filter(&mut self, fp: &str, filter: &RawDatasetFilter, raw: &RawConfig) -> DatasetFilter {
        if let Some(model) = filter.model.as_ref().filter(|m| !raw.models.contains_key(*m)) {
            self.err(&join_key(fp, "model"), format!("unknown model `{model}`"));
        }
        if let Some(key) = filter.key.as_ref().filter(|key| !raw.keys.iter().any(|k| &k.name == *key)) {
            self.err(&join_key(fp, "key"), format!("unknown key name `{key}`"));
        }
        let status = match &filter.status {
            Some(status) => self.status_matches(&join_key(fp, "status"), status),
            None => Vec::new(),
        };
        DatasetFilter { model: filter.model.clone(), variant: filter.variant.clone(), key: filter.key.clone(), status }
    }

    /// `200`, `[200, 429]`, `5xx` or `[4xx, 5xx]`.
    fn status_matches(&mut self, path: &str, status: &Value) -> Vec<StatusMatch> {
        let items = match status {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        let parsed: Option<Vec<StatusMatch>> = items.into_iter().map(status_match).collect();
        match parsed {
            Some(matches) if !matches.is_empty() => matches,
            _ => {
                self.err(path, "`status` must be HTTP statuses (100-599) or classes such as 5xx");
                Vec::new()
            }
        }
    }
}

fn status_match(value: &Value) -> Option<StatusMatch> {
    match value {
        Value::Number(n) => {
            n.as_u64().filter(|c| (100..=599).contains(c)).and_then(|c| u16::try_from(c).ok()).map(StatusMatch::Code)
        }
        Value::String(s) if s.is_ascii() && s.len() == 3 && s[1..].eq_ignore_ascii_case("xx") => {
            s[..1].parse::<u16>().ok().filter(|c| (1..=5).contains(c)).map(StatusMatch::Class)
        }
        Value::String(s) => s.parse::<u16>().ok().filter(|c| (100..=599).contains(c)).map(StatusMatch::Code),
        _ => None,
    }
}
