//! Checks each entry of `models:`: targets and fallbacks refer to defined backends, weights
//! and variants make a valid split, and `sticky`, `retry`, `cache` and `price` are well formed.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use http::HeaderName;
use serde_json::Value;

use super::Cx;
use crate::config::raw::{RawConfig, RawModel};
use crate::config::yaml::{join_index, join_key};
use crate::config::{ModelConfig, Price, RetryConfig, Sticky, TargetConfig};

impl Cx<'_> {
    /// Checks a `{backend, model}` pair at `path`.
    fn target_ref(&mut self, path: &str, backend: &str, model: &str, raw: &RawConfig) {
        if backend.is_empty() {
            self.err(path, "missing `backend` (the name of an entry of `backends`)");
        } else if !raw.backends.contains_key(backend) {
            let known: Vec<&str> = raw.backends.keys().map(String::as_str).collect();
            let known = if known.is_empty() {
                "no backends are defined".to_string()
            } else {
                format!("known: {}", known.join(", "))
            };
            self.err(&join_key(path, "backend"), format!("unknown backend `{backend}` ({known})"));
        }
        if model.trim().is_empty() {
            self.err(path, "missing `model` (the model name sent to the backend)");
        }
    }

    pub(super) fn model(&mut self, name: &str, raw: &RawModel, config: &RawConfig) -> ModelConfig {
        let path = join_key("models", name);
        let targets_path = join_key(&path, "targets");
        if raw.targets.is_empty() {
            self.key_err(&path, format!("model `{name}` needs at least one entry in `targets`"));
        }
        let mut targets = Vec::new();
        // Variant name -> whether every target so far named it explicitly.
        let mut variants: HashMap<String, bool> = HashMap::new();
        let mut upstreams: HashSet<(&str, &str)> = HashSet::new();
        let mut total_weight = 0u64;
        for (i, t) in raw.targets.iter().enumerate() {
            let tp = join_index(&targets_path, i);
            self.target_ref(&tp, &t.backend, &t.model, config);
            let weight = t.weight.unwrap_or(1);
            let weight = u32::try_from(weight).unwrap_or_else(|_| {
                self.err(&join_key(&tp, "weight"), format!("`weight` must be at most {}", u32::MAX));
                1
            });
            total_weight += u64::from(weight);
            let variant = match t.variant.as_deref() {
                Some(v) if v.trim().is_empty() => {
                    self.err(&join_key(&tp, "variant"), "`variant` must not be empty");
                    t.backend.clone()
                }
                Some(v) => v.to_string(),
                None => t.backend.clone(),
            };
            // Several targets may share a variant (weir balances load among them), but only
            // when each names it: two targets that merely default to their backend's name
            // are more likely a forgotten `variant` than a pool.
            let named = t.variant.is_some();
            match variants.get(&variant) {
                Some(all_named) if !(named && *all_named) => {
                    let at = if named { join_key(&tp, "variant") } else { tp.clone() };
                    self.err(
                        &at,
                        format!(
                            "variant `{variant}` appears twice in model `{name}`: give each target its own `variant`, \
                             or name the same `variant` on each to balance load between them"
                        ),
                    );
                }
                _ => {
                    variants.insert(variant.clone(), named);
                }
            }
            if !upstreams.insert((t.backend.as_str(), t.model.as_str())) {
                self.err(&tp, format!("model `{name}` lists backend `{}` with model `{}` twice", t.backend, t.model));
            }
            let params = self.params(&join_key(&tp, "params"), t.params.as_ref());
            targets.push(TargetConfig { backend: t.backend.clone(), model: t.model.clone(), weight, variant, params });
        }
        if !raw.targets.is_empty() && total_weight == 0 {
            self.err(
                &targets_path,
                format!("the weights of model `{name}` add up to 0: give at least one target a weight above 0"),
            );
        }
        let sticky = self.sticky(&join_key(&path, "sticky"), raw.sticky.as_deref());
        let fallbacks_path = join_key(&path, "fallbacks");
        let fallbacks = raw
            .fallbacks
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let fp = join_index(&fallbacks_path, i);
                self.target_ref(&fp, &f.backend, &f.model, config);
                TargetConfig {
                    backend: f.backend.clone(),
                    model: f.model.clone(),
                    weight: 1,
                    variant: f.backend.clone(),
                    params: self.params(&join_key(&fp, "params"), f.params.as_ref()),
                }
            })
            .collect();
        let retry = self.retry(&join_key(&path, "retry"), raw);
        let cache_ttl = raw.cache.as_ref().map(|cache| {
            let cache_path = join_key(&path, "cache");
            if cache.ttl.is_none() {
                self.key_err(&cache_path, "`cache` needs a `ttl` such as 10m");
            }
            self.duration(&join_key(&cache_path, "ttl"), "ttl", cache.ttl.as_deref(), Duration::from_secs(600), true)
        });
        let price = raw.price.as_ref().map(|p| {
            let pp = join_key(&path, "price");
            let input = self.non_negative(&join_key(&pp, "input_per_mtok"), "input_per_mtok", p.input_per_mtok);
            let output = self.non_negative(&join_key(&pp, "output_per_mtok"), "output_per_mtok", p.output_per_mtok);
            let cached = match p.cached_input_per_mtok {
                Some(_) => self.non_negative(
                    &join_key(&pp, "cached_input_per_mtok"),
                    "cached_input_per_mtok",
                    p.cached_input_per_mtok,
                ),
                None => input,
            };
            let cache_write = match p.cache_write_per_mtok {
                Some(_) => self.non_negative(
                    &join_key(&pp, "cache_write_per_mtok"),
                    "cache_write_per_mtok",
                    p.cache_write_per_mtok,
                ),
                None => input,
            };
            Price {
                input_per_mtok: input,
                output_per_mtok: output,
                cached_input_per_mtok: cached,
                cache_write_per_mtok: cache_write,
            }
        });
        ModelConfig {
            name: name.to_string(),
            targets,
            experiment: raw.experiment.clone().filter(|e| !e.trim().is_empty()),
            sticky,
            fallbacks,
            retry,
            cache_ttl,
            price,
        }
    }

    fn sticky(&mut self, path: &str, text: Option<&str>) -> Sticky {
        match text.map(str::trim) {
            None | Some("none") => Sticky::None,
            Some("key") => Sticky::Key,
            Some("user") => Sticky::User,
            Some(other) => {
                let header = other.strip_prefix("header:").map(|h| HeaderName::from_bytes(h.trim().as_bytes()));
                if let Some(Ok(name)) = header {
                    return Sticky::Header(name);
                }
                self.err(path, format!("invalid `sticky` `{other}`: expected none, key, user or header:NAME"));
                Sticky::None
            }
        }
    }

    fn retry(&mut self, path: &str, raw: &RawModel) -> RetryConfig {
        let mut retry = RetryConfig::default();
        let Some(r) = &raw.retry else { return retry };
        match r.attempts.map(u32::try_from) {
            None => {}
            Some(Ok(0)) | Some(Err(_)) => {
                self.err(&join_key(path, "attempts"), "`attempts` must be a whole number ≥ 1")
            }
            Some(Ok(n)) => retry.attempts = n,
        }
        let on_path = join_key(path, "on");
        for (i, item) in r.on.iter().enumerate() {
            let status = match item {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.trim().parse::<u64>().ok(),
                _ => None,
            };
            match (status, item.as_str().map(str::trim)) {
                (Some(code @ 100..=599), _) => retry.on_status.push(code as u16),
                (_, Some("connect")) => retry.on_connect = true,
                (_, Some("timeout")) => retry.on_timeout = true,
                _ => {
                    let shown = item.as_str().map_or_else(|| item.to_string(), str::to_string);
                    self.err(
                        &join_index(&on_path, i),
                        format!("invalid retry condition `{shown}`: expected an HTTP status (100-599), `connect` or `timeout`"),
                    );
                }
            }
        }
        retry
    }
}
