//! Which finished requests a dataset records: its `filter` (model, variant, key, status)
//! and its `sample` ratio.
//!
//! Runs on the request's task when the request finishes, so it only compares names and
//! draws one random number; it never allocates.

use crate::config::{DatasetConfig, DatasetFilter};

/// The request fields a filter looks at.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub model: &'a str,
    pub variant: &'a str,
    pub key: &'a str,
    pub status: u16,
}

/// Whether `facts` pass `filter` (every given field must match).
pub fn matches(filter: &DatasetFilter, facts: Facts<'_>) -> bool {
    let same = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|want| want == have);
    same(&filter.model, facts.model)
        && same(&filter.variant, facts.variant)
        && same(&filter.key, facts.key)
        && (filter.status.is_empty() || filter.status.iter().any(|m| m.matches(facts.status)))
}

/// The filter, then a draw against `sample` (no draw at 1 or 0).
pub fn takes(config: &DatasetConfig, facts: Facts<'_>) -> bool {
    if !matches(&config.filter, facts) {
        return false;
    }
    if config.sample >= 1.0 {
        true
    } else if config.sample <= 0.0 {
        false
    } else {
        rand::random::<f64>() < config.sample
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StatusMatch;

    fn facts(status: u16) -> Facts<'static> {
        Facts { model: "chat", variant: "candidate", key: "team", status }
    }

    #[test]
    fn every_given_field_must_match() {
        let mut filter = DatasetFilter::default();
        assert!(matches(&filter, facts(200)));
        filter.variant = Some("candidate".into());
        filter.model = Some("chat".into());
        assert!(matches(&filter, facts(200)));
        filter.key = Some("other".into());
        assert!(!matches(&filter, facts(200)));
    }

    #[test]
    fn statuses_match_by_code_or_class() {
        let filter =
            DatasetFilter { status: vec![StatusMatch::Code(429), StatusMatch::Class(5)], ..DatasetFilter::default() };
        assert!(matches(&filter, facts(429)));
        assert!(matches(&filter, facts(502)));
        assert!(!matches(&filter, facts(200)));
    }

    #[test]
    fn sample_ratio_is_roughly_kept() {
        let mut config = DatasetConfig {
            name: "d".into(),
            dir: "d".into(),
            sample: 0.0,
            filter: DatasetFilter::default(),
            redact: Vec::new(),
            max_file_size: 1,
        };
        assert!(!(0..100).any(|_| takes(&config, facts(200))));
        config.sample = 0.5;
        let taken = (0..4000).filter(|_| takes(&config, facts(200))).count();
        assert!((1600..2400).contains(&taken), "{taken}");
    }
}
