//! One experiment's figures as the admin API and `weir experiment report` show them: per arm
//! its samples, metric mean with an always-valid interval, the comparison with the control,
//! its decision, and the winner if there is one.
//!
//! Owns: [`analyze`], the one function both the live gateway and the report call.
//! Must not: know where the counts came from (memory, Redis or dataset files).

use serde::Serialize;

use super::decision::{self, Decision, Direction, Rule};
use super::moments::Moments;
use super::sequential::{self, Difference, Interval};
use crate::config::{Metric, StopConfig};

/// One arm's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArmView {
    pub variant: String,
    pub samples: u64,
    pub mean: Option<f64>,
    /// Always-valid interval of the mean at the experiment's confidence.
    pub interval: Option<Interval>,
    /// Share of traffic the arm gets now (live experiments only).
    pub share: Option<f64>,
    /// This arm minus the control, with its always-valid interval (at the Bonferroni level)
    /// and p-value; absent for the control.
    pub vs_control: Option<Difference>,
    /// Holm-adjusted always-valid p-value; absent for the control.
    pub p_adjusted: Option<f64>,
    /// Absent for the control.
    pub decision: Option<Decision>,
}

/// An experiment's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    pub metric: &'static str,
    pub direction: Direction,
    pub control: String,
    pub confidence: f64,
    pub min_samples: u64,
    pub margin: f64,
    pub arms: Vec<ArmView>,
    /// The arm a decision favours: the best arm decided `better`, or the control when every
    /// other arm is decided `worse`.
    pub winner: Option<String>,
}

pub fn direction(metric: Metric) -> Direction {
    if metric.lower_is_better() { Direction::LowerIsBetter } else { Direction::HigherIsBetter }
}

/// The figures of `arms` (variant and moments, any order) against `control`.
pub fn analyze(arms: &[(String, Moments)], control: &str, metric: Metric, stop: &StopConfig) -> Analysis {
    let direction = direction(metric);
    let rule = Rule { confidence: stop.confidence, min_samples: stop.min_samples, margin: stop.margin, direction };
    let control_at = arms.iter().position(|(v, _)| v == control);
    let control_moments = control_at.map(|i| arms[i].1).unwrap_or_default();
    let others: Vec<usize> = (0..arms.len()).filter(|i| Some(*i) != control_at).collect();
    let verdicts = decision::decide(&control_moments, &others.iter().map(|i| arms[*i].1).collect::<Vec<_>>(), &rule);
    let rho2 = sequential::rho_squared(rule.alpha(), stop.min_samples);
    let mut views: Vec<ArmView> = arms
        .iter()
        .map(|(variant, m)| ArmView {
            variant: variant.clone(),
            samples: m.n,
            mean: m.mean(),
            interval: sequential::mean_interval(m, rule.alpha(), rho2),
            share: None,
            vs_control: None,
            p_adjusted: None,
            decision: None,
        })
        .collect();
    for (i, verdict) in others.iter().zip(&verdicts) {
        views[*i].vs_control = verdict.difference;
        views[*i].p_adjusted = Some(verdict.p_adjusted);
        views[*i].decision = Some(verdict.decision);
    }
    let winner = winner(&views, control_at, direction);
    Analysis {
        metric: metric.as_str(),
        direction,
        control: control.to_owned(),
        confidence: stop.confidence,
        min_samples: stop.min_samples,
        margin: stop.margin,
        arms: views,
        winner,
    }
}

fn winner(views: &[ArmView], control_at: Option<usize>, direction: Direction) -> Option<String> {
    let better = views.iter().filter(|v| v.decision == Some(Decision::Better));
    let best = better.max_by(|a, b| {
        let (a, b) = (a.mean.unwrap_or(0.0), b.mean.unwrap_or(0.0));
        match direction {
            Direction::HigherIsBetter => a.total_cmp(&b),
            Direction::LowerIsBetter => b.total_cmp(&a),
        }
    });
    if let Some(best) = best {
        return Some(best.variant.clone());
    }
    let mut others = views.iter().filter(|v| v.decision.is_some()).peekable();
    let all_worse = others.peek().is_some() && others.all(|v| v.decision == Some(Decision::Worse));
    control_at.filter(|_| all_worse).map(|i| views[i].variant.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stop() -> StopConfig {
        StopConfig { confidence: 0.95, min_samples: 20, promote: false, margin: 0.0 }
    }

    fn arm(n: u64, mean: f64) -> Moments {
        let mut m = Moments::default();
        (0..n).for_each(|i| m.add(if i % 2 == 0 { mean + 0.3 } else { mean - 0.3 }));
        m
    }

    #[test]
    fn the_best_better_arm_wins() {
        let arms = [
            ("a".to_owned(), arm(3000, 0.7)),
            ("control".to_owned(), arm(3000, 0.4)),
            ("b".to_owned(), arm(3000, 0.6)),
        ];
        let analysis = analyze(&arms, "control", Metric::Feedback, &stop());
        assert_eq!(analysis.winner.as_deref(), Some("a"));
        assert_eq!(analysis.arms[1].decision, None);
        assert_eq!(analysis.arms[2].decision, Some(Decision::Better));
        assert!(analysis.arms[0].interval.unwrap().contains(0.7));
    }

    #[test]
    fn the_control_wins_when_every_arm_is_worse_and_lower_latency_is_better() {
        let arms = [("control".to_owned(), arm(3000, 100.0)), ("slow".to_owned(), arm(3000, 130.0))];
        let analysis = analyze(&arms, "control", Metric::Latency, &stop());
        assert_eq!(analysis.arms[1].decision, Some(Decision::Worse));
        assert_eq!(analysis.winner.as_deref(), Some("control"));
        let undecided = analyze(
            &[("control".to_owned(), arm(5, 1.0)), ("x".to_owned(), arm(5, 0.0))],
            "control",
            Metric::Feedback,
            &stop(),
        );
        assert_eq!(undecided.winner, None);
    }
}
