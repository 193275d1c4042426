//! Checks `experiments:`: each names the experiment of exactly one model, its strategy and
//! metric are known, and its numbers make sense for that model's variants.

use std::collections::BTreeMap;

use super::Cx;
use crate::config::raw::{RawConfig, RawExperiment};
use crate::config::yaml::join_key;
use crate::config::{ExperimentConfig, Metric, ModelConfig, StopConfig, Strategy};

impl Cx<'_> {
    pub(super) fn experiments(
        &mut self,
        raw: &RawConfig,
        models: &BTreeMap<String, ModelConfig>,
    ) -> BTreeMap<String, ExperimentConfig> {
        raw.experiments
            .iter()
            .filter_map(|(name, e)| self.experiment(name, e, models).map(|e| (name.clone(), e)))
            .collect()
    }

    fn experiment(
        &mut self,
        name: &str,
        raw: &RawExperiment,
        models: &BTreeMap<String, ModelConfig>,
    ) -> Option<ExperimentConfig> {
        let path = join_key("experiments", name);
        let owners: Vec<&ModelConfig> = models.values().filter(|m| m.experiment.as_deref() == Some(name)).collect();
        let model = match owners.as_slice() {
            [one] => *one,
            [] => {
                self.key_err(
                    &path,
                    format!("no model names experiment `{name}` (set `experiment: {name}` on a model)"),
                );
                return None;
            }
            many => {
                let names: Vec<&str> = many.iter().map(|m| m.name.as_str()).collect();
                self.key_err(
                    &path,
                    format!(
                        "experiment `{name}` is named by several models ({}); each experiment belongs to one model",
                        names.join(", ")
                    ),
                );
                return None;
            }
        };
        let mut variants: Vec<&str> = Vec::new();
        for target in &model.targets {
            if !variants.contains(&target.variant.as_str()) {
                variants.push(&target.variant);
            }
        }
        let strategy = match raw.strategy.as_deref() {
            None | Some("fixed") => Strategy::Fixed,
            Some("thompson") => Strategy::Thompson,
            Some(other) => {
                self.one_of(&join_key(&path, "strategy"), "strategy", other, &["fixed", "thompson"]);
                Strategy::Fixed
            }
        };
        let metric = match raw.metric.as_deref() {
            None | Some("feedback") => Metric::Feedback,
            Some("success") => Metric::Success,
            Some("latency") => Metric::Latency,
            Some("cost") => Metric::Cost,
            Some(other) => {
                let allowed = ["feedback", "success", "latency", "cost"];
                self.one_of(&join_key(&path, "metric"), "metric", other, &allowed);
                Metric::Feedback
            }
        };
        if variants.len() < 2 {
            self.key_err(
                &path,
                format!(
                    "experiment `{name}` needs a model with at least two variants (model `{}` has {})",
                    model.name,
                    variants.len()
                ),
            );
        }
        let min_share = raw.min_share.unwrap_or(0.05);
        if !(min_share.is_finite() && min_share >= 0.0 && min_share * variants.len().max(1) as f64 <= 1.0) {
            self.err(
                &join_key(&path, "min_share"),
                format!("`min_share` must be from 0 to 1/{} (one share per variant)", variants.len().max(1)),
            );
        }
        let control = match raw.control.as_deref() {
            Some(control) if variants.contains(&control) => control.to_owned(),
            Some(control) => {
                self.err(
                    &join_key(&path, "control"),
                    format!(
                        "model `{}` has no variant `{control}` (its variants: {})",
                        model.name,
                        variants.join(", ")
                    ),
                );
                control.to_owned()
            }
            None if variants.contains(&"control") => "control".to_owned(),
            None => variants.first().map(|v| (*v).to_owned()).unwrap_or_default(),
        };
        let stop = self.stop(&join_key(&path, "stop"), raw, metric);
        Some(ExperimentConfig {
            name: name.to_owned(),
            model: model.name.clone(),
            strategy,
            metric,
            min_share,
            control,
            stop,
        })
    }

    fn stop(&mut self, path: &str, raw: &RawExperiment, metric: Metric) -> StopConfig {
        let stop = raw.stop.clone().unwrap_or_default();
        let confidence = stop.confidence.unwrap_or(0.95);
        if !(confidence > 0.5 && confidence < 1.0) {
            self.err(&join_key(path, "confidence"), "`confidence` must be above 0.5 and below 1 (0.95 is usual)");
        }
        let min_samples = stop.min_samples.unwrap_or(200);
        if min_samples < 2 {
            self.err(&join_key(path, "min_samples"), "`min_samples` must be at least 2");
        }
        let margin = self.non_negative(&join_key(path, "margin"), "margin", stop.margin);
        let margin = if stop.margin.is_some() { margin } else { metric.default_margin() };
        StopConfig { confidence, min_samples: min_samples.max(2), promote: stop.promote.unwrap_or(false), margin }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Metric, Strategy, load_str};

    const BASE: &str = "\
backends:
  m: { kind: mock }
models:
  chat:
    experiment: exp
    targets:
      - { backend: m, model: a, variant: control }
      - { backend: m, model: b, variant: candidate }
  solo: { targets: [ { backend: m, model: s } ] }
auth: { mode: none }
";

    #[test]
    fn experiments_are_typed_with_defaults() {
        let yaml = format!("{BASE}experiments:\n  exp: {{ strategy: thompson, metric: success }}\n");
        let config = load_str(&yaml, "t.yaml", &|_| None).unwrap();
        let exp = &config.experiments["exp"];
        assert_eq!((exp.strategy, exp.metric, exp.min_share), (Strategy::Thompson, Metric::Success, 0.05));
        assert_eq!((exp.model.as_str(), exp.control.as_str()), ("chat", "control"));
        assert_eq!((exp.stop.confidence, exp.stop.min_samples, exp.stop.promote), (0.95, 200, false));
        assert_eq!(exp.stop.margin, 0.02);
    }

    #[test]
    fn experiment_mistakes_are_reported_in_place() {
        let yaml = format!(
            "{BASE}experiments:\n  exp: {{ strategy: greedy, metric: vibes, min_share: 0.6, control: x, stop: {{ confidence: 1.5, min_samples: 1 }} }}\n  nobody: {{}}\n"
        );
        let err = load_str(&yaml, "t.yaml", &|_| None).unwrap_err().to_string();
        for expected in [
            "invalid `strategy` `greedy`: expected one of fixed, thompson",
            "invalid `metric` `vibes`",
            "`min_share` must be from 0 to 1/2",
            "model `chat` has no variant `x`",
            "`confidence` must be above 0.5",
            "`min_samples` must be at least 2",
            "no model names experiment `nobody`",
        ] {
            assert!(err.contains(expected), "{expected} not in:\n{err}");
        }
    }
}
