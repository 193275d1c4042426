//! Shared checks for scalar values (durations, sizes, URLs, enumerations, numbers), each
//! reporting at the value's place and returning a usable default when the value is wrong.

use std::time::Duration;

use super::Cx;
use crate::config::units::{parse_duration, parse_size};

impl Cx<'_> {
    pub(super) fn duration(
        &mut self,
        path: &str,
        field: &str,
        text: Option<&str>,
        default: Duration,
        positive: bool,
    ) -> Duration {
        let Some(text) = text else { return default };
        match parse_duration(text) {
            Ok(d) if positive && d.is_zero() => {
                self.err(path, format!("`{field}` must be greater than 0"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.err(path, format!("`{field}`: {e}"));
                default
            }
        }
    }

    pub(super) fn size(&mut self, path: &str, field: &str, text: Option<&str>, default: u64) -> u64 {
        let Some(text) = text else { return default };
        match parse_size(text) {
            Ok(0) => {
                self.err(path, format!("`{field}` must be greater than 0"));
                default
            }
            Ok(n) => n,
            Err(e) => {
                self.err(path, format!("`{field}`: {e}"));
                default
            }
        }
    }

    /// Checks an `http://` or `https://` URL; returns it without trailing slashes.
    pub(super) fn url(&mut self, path: &str, field: &str, text: &str) -> String {
        let trimmed = text.trim().trim_end_matches('/');
        let ok = trimmed.parse::<http::Uri>().is_ok_and(|uri| {
            matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some_and(|h| !h.is_empty())
        });
        if !ok {
            self.err(path, format!("`{field}`: invalid URL `{text}`: expected an http:// or https:// URL such as https://api.openai.com/v1"));
        }
        trimmed.to_string()
    }

    pub(super) fn one_of(&mut self, path: &str, field: &str, text: &str, allowed: &[&str]) -> bool {
        if allowed.contains(&text) {
            return true;
        }
        self.err(path, format!("invalid `{field}` `{text}`: expected one of {}", allowed.join(", ")));
        false
    }

    pub(super) fn non_negative(&mut self, path: &str, field: &str, value: Option<f64>) -> f64 {
        match value {
            Some(v) if !(v.is_finite() && v >= 0.0) => {
                self.err(path, format!("`{field}` must be a number ≥ 0"));
                0.0
            }
            Some(v) => v,
            None => 0.0,
        }
    }

    pub(super) fn ratio(&mut self, path: &str, field: &str, value: Option<f64>) {
        if value.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
            self.err(path, format!("`{field}` must be between 0 and 1"));
        }
    }
}
