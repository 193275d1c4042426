//! Checks each entry of `backends:`: its `kind`, the fields that kind requires (`base_url`,
//! Azure's `api_version`), limits, timeouts, extra headers and the mock-only settings.

use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::Cx;
use crate::config::raw::RawBackend;
use crate::config::yaml::join_key;
use crate::config::{BackendConfig, BackendKind, MockSettings, Timeouts};

const KINDS: &str = "openai, azure, anthropic, mock";

impl Cx<'_> {
    pub(super) fn backend(&mut self, name: &str, raw: &RawBackend) -> BackendConfig {
        let path = join_key("backends", name);
        let at = |field: &str| join_key(&path, field);
        let kind = match raw.kind.as_deref() {
            None => {
                self.key_err(&path, format!("backend `{name}` needs `kind` (one of {KINDS})"));
                None
            }
            Some("openai") => Some(BackendKind::OpenAi),
            Some("azure") => Some(BackendKind::Azure),
            Some("anthropic") => Some(BackendKind::Anthropic),
            Some("mock") => Some(BackendKind::Mock),
            Some(other) => {
                self.err(&at("kind"), format!("unknown backend kind `{other}` (expected one of {KINDS})"));
                None
            }
        };
        let is_mock = kind == Some(BackendKind::Mock);
        let base_url = match raw.base_url.as_deref() {
            Some(url) => {
                let url = self.url(&at("base_url"), "base_url", url);
                if is_mock { String::new() } else { url }
            }
            None if kind.is_some() && !is_mock => {
                self.key_err(&path, format!("backend `{name}` needs `base_url` (an http:// or https:// URL)"));
                String::new()
            }
            None => String::new(),
        };
        let api_version = raw.api_version.clone().filter(|v| !v.trim().is_empty());
        if kind == Some(BackendKind::Azure) && api_version.is_none() {
            self.key_err(&path, format!("azure backend `{name}` needs `api_version` (such as 2024-10-21)"));
        }
        let responses_native = match raw.responses.as_deref() {
            None | Some("translate") => false,
            Some("native") if kind == Some(BackendKind::OpenAi) => true,
            Some("native") => {
                self.err(&at("responses"), "`responses: native` is for `kind: openai` backends");
                false
            }
            Some(other) => {
                self.err(&at("responses"), format!("`responses` must be `native` or `translate`, not `{other}`"));
                false
            }
        };
        let max_inflight = match raw.max_inflight {
            Some(0) => {
                self.err(&at("max_inflight"), "`max_inflight` must be at least 1");
                None
            }
            Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            None => None,
        };
        let timeouts = self.timeouts(&at("timeouts"), raw);
        let headers_path = at("headers");
        let mut headers = Vec::new();
        for (key, value) in &raw.headers {
            let header_path = join_key(&headers_path, key);
            let name = HeaderName::from_bytes(key.as_bytes());
            let value = HeaderValue::from_str(value);
            if name.is_err() {
                self.key_err(&header_path, format!("invalid header name `{key}`"));
            }
            if value.is_err() {
                self.err(&header_path, format!("invalid value for header `{key}`: expected visible ASCII text"));
            }
            if let (Ok(name), Ok(value)) = (name, value) {
                headers.push((name, value));
            }
        }
        let ca_file = raw.ca_file.as_deref().map(std::path::PathBuf::from);
        if ca_file.is_some() && !base_url.starts_with("https://") && kind.is_some() {
            self.err(&at("ca_file"), "`ca_file` only applies to backends with an https:// `base_url`");
        }
        let mut mock = MockSettings::default();
        for (field, present) in
            [("latency", raw.latency.is_some()), ("tokens_per_second", raw.tokens_per_second.is_some())]
        {
            if present && kind.is_some() && !is_mock {
                self.key_err(&at(field), format!("`{field}` only applies to `kind: mock` backends"));
            }
        }
        if is_mock {
            mock.latency = self.duration(&at("latency"), "latency", raw.latency.as_deref(), Duration::ZERO, false);
            mock.tokens_per_second = match raw.tokens_per_second {
                Some(tps) if !(tps.is_finite() && tps > 0.0) => {
                    self.err(&at("tokens_per_second"), "`tokens_per_second` must be greater than 0");
                    None
                }
                other => other,
            };
        }
        BackendConfig {
            name: name.to_string(),
            kind: kind.unwrap_or(BackendKind::OpenAi),
            base_url,
            api_key: raw.api_key.clone().filter(|k| !k.is_empty()),
            api_version,
            responses_native,
            max_inflight,
            timeouts,
            headers,
            ca_file,
            mock,
        }
    }

    fn timeouts(&mut self, path: &str, raw: &RawBackend) -> Timeouts {
        let defaults = Timeouts::default();
        let Some(t) = &raw.timeouts else {
            return defaults;
        };
        let mut one = |field: &str, text: &Option<String>, default: Duration| {
            self.duration(&join_key(path, field), &format!("timeouts.{field}"), text.as_deref(), default, true)
        };
        Timeouts {
            connect: one("connect", &t.connect, defaults.connect),
            first_byte: one("first_byte", &t.first_byte, defaults.first_byte),
            total: one("total", &t.total, defaults.total),
            idle: one("idle", &t.idle, defaults.idle),
        }
    }
}
