//! `weir experiment report`: per experiment and variant, what the datasets recorded —
//! requests, error rate, latency and TTFT percentiles, tokens, cost, and mean feedback with a
//! 95% confidence interval — and whether each variant differs from the control.
//!
//! Definitions (the README repeats them):
//! - error: a status of 400 or more, or a recorded `error` (a stream cut after its first byte);
//! - latency and TTFT: over successful requests only (fast failures would flatter a variant);
//!   p50/p95 are nearest-rank percentiles; TTFT is known for streamed requests;
//! - feedback: a request's last feedback score; mean with a t-based 95% interval;
//! - control: the variant named `control` when there is one, else the first variant met
//!   (records in file order);
//! - significance: Welch's unequal-variances t-test (two-sided, p < 0.05) of each variant
//!   against the control, on feedback scores and on latency (t distribution in `stats`).
//!   That test is only valid read once at a sample size fixed in advance;
//! - always-valid: next to it, the anytime-valid comparison the live gateway makes
//!   (`experiments::analyze`, the same code): per variant the metric's mean with its
//!   confidence sequence, the difference from the control with its interval, and the
//!   decision (`undecided`, `better`, `worse`, `equivalent`), Holm-corrected across variants.
//!   Its metric and stopping rule come from [`Sequential`] (the config's `experiments:` entry
//!   when `--config` names one). Success is the share of requests without an error; latency
//!   and cost are over successful requests.
//!
//! Requests without an `experiment` are grouped under `-`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::read::{self, Entry, ReadError};
use super::stats;
use crate::config::{Metric, StopConfig};
use crate::experiments::{Analysis, Moments, analyze};

/// p below this is reported as significant.
pub const ALPHA: f64 = 0.05;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub experiments: Vec<ExperimentReport>,
    /// Damaged lines skipped while reading.
    pub skipped_lines: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExperimentReport {
    /// `-` for requests of models without an experiment.
    pub experiment: String,
    pub control: String,
    pub variants: Vec<VariantReport>,
    /// The anytime-valid comparison, as `/admin/experiments` shows it.
    pub always_valid: Analysis,
}

/// The metric and stopping rule of the always-valid comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sequential {
    pub metric: Metric,
    pub stop: StopConfig,
}

impl Default for Sequential {
    fn default() -> Self {
        let metric = Metric::Feedback;
        Sequential {
            metric,
            stop: StopConfig { confidence: 0.95, min_samples: 200, promote: false, margin: metric.default_margin() },
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VariantReport {
    pub variant: String,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub latency_ms: Percentiles,
    pub ttft_ms: Percentiles,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub feedback: Feedback,
    /// Absent for the control itself.
    pub vs_control: Option<Comparison>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Default)]
pub struct Percentiles {
    pub count: usize,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Default)]
pub struct Feedback {
    pub count: usize,
    pub mean: Option<f64>,
    pub ci95: Option<(f64, f64)>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Comparison {
    pub feedback: Option<Test>,
    pub latency: Option<Test>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Test {
    /// This variant's mean minus the control's.
    pub diff: f64,
    pub t: f64,
    pub df: f64,
    pub p: f64,
    pub significant: bool,
}

/// What is gathered per variant while reading.
#[derive(Default)]
struct Tally {
    requests: u64,
    errors: u64,
    latency: Vec<f64>,
    ttft: Vec<f64>,
    input_tokens: u64,
    output_tokens: u64,
    cost: f64,
    scores: Vec<f64>,
    /// Per request: 1 without an error, 0 with one.
    success: Moments,
    /// Cost of successful requests that had one.
    costs: Moments,
}

/// Variants in the order first met.
#[derive(Default)]
struct Experiment {
    variants: Vec<(String, Tally)>,
}

/// Reads `dir` and computes the report (only `experiment` when given); `sequential` gives
/// each experiment's metric and stopping rule (the defaults for the others).
pub fn report(
    dir: &Path,
    experiment: Option<&str>,
    sequential: &dyn Fn(&str) -> Sequential,
    warn: &mut dyn Write,
) -> Result<Report, ReadError> {
    let feedback = read::feedback(dir)?;
    let mut experiments: BTreeMap<String, Experiment> = BTreeMap::new();
    let skipped = read::for_each(dir, warn, |entry| {
        let Entry::Request(record) = entry else { return Ok(()) };
        let name = record.get("experiment").and_then(Value::as_str).unwrap_or("-");
        if experiment.is_some_and(|wanted| wanted != name) {
            return Ok(());
        }
        let variants = &mut experiments.entry(name.to_owned()).or_default().variants;
        let variant = read::text(&record, "variant");
        let slot = match variants.iter().position(|(v, _)| v == variant) {
            Some(slot) => slot,
            None => {
                variants.push((variant.to_owned(), Tally::default()));
                variants.len() - 1
            }
        };
        let score = feedback.get(read::text(&record, "request_id")).map(|f| f.score);
        variants[slot].1.add(&record, score);
        Ok(())
    })?;
    let experiments = experiments
        .into_iter()
        .map(|(name, e)| {
            let settings = sequential(&name);
            e.finish(name, settings)
        })
        .collect();
    Ok(Report { experiments, skipped_lines: skipped })
}

impl Tally {
    fn add(&mut self, record: &Value, score: Option<f64>) {
        self.requests += 1;
        let number = |field: &str| record.get(field).and_then(Value::as_f64);
        let status = record.get("status").and_then(Value::as_u64).unwrap_or(0);
        let failed = status >= 400 || record.get("error").is_some_and(|e| !e.is_null());
        self.success.add(if failed { 0.0 } else { 1.0 });
        if failed {
            self.errors += 1;
        } else {
            if let Some(cost) = number("cost_usd") {
                self.costs.add(cost);
            }
            self.latency.extend(number("latency_ms"));
            self.ttft.extend(number("ttft_ms").filter(|_| record.get("stream").and_then(Value::as_bool) == Some(true)));
        }
        let usage = |field: &str| record.get("usage").and_then(|u| u.get(field)).and_then(Value::as_u64).unwrap_or(0);
        self.input_tokens += usage("prompt_tokens");
        self.output_tokens += usage("completion_tokens");
        self.cost += number("cost_usd").unwrap_or(0.0);
        self.scores.extend(score);
    }
}

impl Tally {
    /// The observations of `metric`, as the live experiment counts them.
    fn metric(&self, metric: Metric) -> Moments {
        match metric {
            Metric::Feedback => Moments::of(&self.scores),
            Metric::Success => self.success,
            Metric::Latency => Moments::of(&self.latency),
            Metric::Cost => self.costs,
        }
    }
}

impl Experiment {
    fn finish(mut self, name: String, sequential: Sequential) -> ExperimentReport {
        let control = self.variants.iter().position(|(v, _)| v == "control").unwrap_or(0);
        for (_, tally) in &mut self.variants {
            tally.latency.sort_by(f64::total_cmp);
            tally.ttft.sort_by(f64::total_cmp);
        }
        let control_name = self.variants.get(control).map(|(v, _)| v.clone()).unwrap_or_default();
        let variants = self
            .variants
            .iter()
            .enumerate()
            .map(|(i, (variant, tally))| {
                let vs_control = (i != control).then(|| {
                    let base = &self.variants[control].1;
                    Comparison {
                        feedback: test(&tally.scores, &base.scores),
                        latency: test(&tally.latency, &base.latency),
                    }
                });
                summarize(variant, tally, vs_control)
            })
            .collect();
        let arms: Vec<(String, Moments)> =
            self.variants.iter().map(|(v, tally)| (v.clone(), tally.metric(sequential.metric))).collect();
        let always_valid = analyze(&arms, &control_name, sequential.metric, &sequential.stop);
        ExperimentReport { experiment: name, control: control_name, variants, always_valid }
    }
}

fn summarize(variant: &str, tally: &Tally, vs_control: Option<Comparison>) -> VariantReport {
    let percentiles = |sorted: &[f64]| Percentiles {
        count: sorted.len(),
        p50: stats::percentile(sorted, 50.0),
        p95: stats::percentile(sorted, 95.0),
    };
    VariantReport {
        variant: variant.to_owned(),
        requests: tally.requests,
        errors: tally.errors,
        error_rate: if tally.requests == 0 { 0.0 } else { tally.errors as f64 / tally.requests as f64 },
        latency_ms: percentiles(&tally.latency),
        ttft_ms: percentiles(&tally.ttft),
        input_tokens: tally.input_tokens,
        output_tokens: tally.output_tokens,
        cost_usd: tally.cost,
        feedback: Feedback {
            count: tally.scores.len(),
            mean: stats::mean_var(&tally.scores).map(|(mean, _)| mean),
            ci95: stats::ci95(&tally.scores),
        },
        vs_control,
    }
}

fn test(values: &[f64], control: &[f64]) -> Option<Test> {
    let w = stats::welch(values, control)?;
    Some(Test { diff: w.diff, t: w.t, df: w.df, p: w.p, significant: w.p < ALPHA })
}

/// The report as aligned text tables, one per experiment.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let header = [
        "variant",
        "requests",
        "errors",
        "p50 ms",
        "p95 ms",
        "ttft p50",
        "ttft p95",
        "tokens in",
        "tokens out",
        "cost usd",
        "feedback (95% CI, n)",
        "vs control (fixed-horizon)",
        "always-valid",
    ];
    for experiment in &report.experiments {
        let av = &experiment.always_valid;
        let _ = writeln!(
            out,
            "experiment {} (control: {}; always-valid on {} at {:.0}% confidence, min {} samples, margin {}{})",
            experiment.experiment,
            experiment.control,
            av.metric,
            av.confidence * 100.0,
            av.min_samples,
            av.margin,
            av.winner.as_ref().map(|w| format!("; winner: {w}")).unwrap_or_default(),
        );
        let mut rows = vec![header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()];
        for v in &experiment.variants {
            rows.push(vec![
                v.variant.clone(),
                v.requests.to_string(),
                format!("{} ({:.1}%)", v.errors, v.error_rate * 100.0),
                ms(v.latency_ms.p50),
                ms(v.latency_ms.p95),
                ms(v.ttft_ms.p50),
                ms(v.ttft_ms.p95),
                v.input_tokens.to_string(),
                v.output_tokens.to_string(),
                format!("{:.6}", v.cost_usd),
                feedback_cell(&v.feedback),
                comparison_cell(v.vs_control.as_ref()),
                always_valid_cell(av, &v.variant),
            ]);
        }
        out.push_str(&aligned(&rows, "  "));
        out.push('\n');
    }
    if report.experiments.is_empty() {
        out.push_str("no requests recorded\n");
    }
    if report.skipped_lines > 0 {
        let _ = writeln!(out, "({} damaged lines skipped)", report.skipped_lines);
    }
    out
}

/// `rows` as left-aligned columns two spaces apart, each line starting with `indent`.
pub fn aligned(rows: &[Vec<String>], indent: &str) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|cell| cell.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        let _ = writeln!(out, "{indent}{}", cells.join("  ").trim_end());
    }
    out
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

fn feedback_cell(f: &Feedback) -> String {
    match (f.mean, f.ci95) {
        (Some(mean), Some((lo, hi))) => format!("{mean:.3} [{lo:.3}, {hi:.3}] n={}", f.count),
        (Some(mean), None) => format!("{mean:.3} n={}", f.count),
        _ => "-".to_owned(),
    }
}

/// `mean [lo, hi] n=N` for the control; `diff [lo, hi] decision` for the others.
fn always_valid_cell(analysis: &Analysis, variant: &str) -> String {
    let Some(arm) = analysis.arms.iter().find(|a| a.variant == variant) else { return "-".to_owned() };
    match (arm.decision, arm.vs_control) {
        (Some(decision), Some(d)) => {
            format!("{:+.3} [{:+.3}, {:+.3}] {}", d.diff, d.interval.lo, d.interval.hi, decision.as_str())
        }
        (Some(decision), None) => format!("n={} {}", arm.samples, decision.as_str()),
        (None, _) => match (arm.mean, arm.interval) {
            (Some(mean), Some(i)) => format!("{mean:.3} [{:.3}, {:.3}] n={}", i.lo, i.hi, arm.samples),
            (Some(mean), None) => format!("{mean:.3} n={}", arm.samples),
            _ => format!("n={}", arm.samples),
        },
    }
}

fn comparison_cell(c: Option<&Comparison>) -> String {
    let Some(c) = c else { return "(control)".to_owned() };
    let part = |label: &str, t: Option<Test>| match t {
        Some(t) => format!("{label} {:+.3} p={:.3}{}", t.diff, t.p, if t.significant { " *" } else { "" }),
        None => format!("{label} n/a"),
    };
    format!("{}; {}", part("feedback", c.feedback), part("latency", c.latency))
}
