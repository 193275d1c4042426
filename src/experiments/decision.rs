//! The stopping rule: what the anytime-valid comparisons say about each arm against the
//! control, corrected for multiplicity.
//!
//! Owns: the decision of every arm (`undecided`, `better`, `worse`, `equivalent`) from the
//! arms' [`Moments`]. Must not: remember earlier decisions — latching a decision (promotion)
//! is the caller's business; each call is a pure function of the current figures.
//!
//! - Each comparison is the mixture SPRT of [`super::sequential`]; its always-valid p-value
//!   may be read after every sample.
//! - With k arms besides the control there are k comparisons. They are corrected by Holm's
//!   step-down procedure (Holm, "A simple sequentially rejective multiple test procedure",
//!   Scand. J. Statist. 6, 1979) on those p-values: sorted ascending, the j-th smallest
//!   (from 0) rejects at α/(k-j) while every smaller one rejected. Holm is valid for any
//!   p-values valid at the time they are read, so the family-wise error stays below α under
//!   continuous monitoring.
//! - A rejected arm is `better` or `worse` by the sign of its difference and the metric's
//!   direction (lower latency or cost is better).
//! - An arm not rejected is `equivalent` when its whole confidence sequence, at the
//!   Bonferroni level α/k (the intervals shown are simultaneous), lies within ±margin.
//! - No decision before both sides have `min_samples` observations.

use serde::Serialize;

use super::moments::Moments;
use super::sequential::{self, Difference};

/// Which way is good for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    HigherIsBetter,
    LowerIsBetter,
}

/// The verdict on one arm against the control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Undecided,
    Better,
    Worse,
    /// Within ±margin of the control.
    Equivalent,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Undecided => "undecided",
            Decision::Better => "better",
            Decision::Worse => "worse",
            Decision::Equivalent => "equivalent",
        }
    }
}

/// When to decide.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    /// 1 - α for the whole family of comparisons.
    pub confidence: f64,
    /// Observations each side needs before any decision (also where the boundary is tightest).
    pub min_samples: u64,
    /// Differences within ±margin count as equivalent.
    pub margin: f64,
    pub direction: Direction,
}

impl Rule {
    pub fn alpha(&self) -> f64 {
        1.0 - self.confidence
    }

    fn rho2(&self) -> f64 {
        sequential::rho_squared(self.alpha(), self.min_samples)
    }
}

/// One arm against the control.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Verdict {
    pub decision: Decision,
    /// The comparison at the Bonferroni level α/k (`None` while it cannot be computed).
    pub difference: Option<Difference>,
    /// Holm-adjusted always-valid p-value (1 while undecidable).
    pub p_adjusted: f64,
}

/// The verdict of each of `arms` against `control`, in order.
pub fn decide(control: &Moments, arms: &[Moments], rule: &Rule) -> Vec<Verdict> {
    let k = arms.len().max(1) as f64;
    let alpha = rule.alpha();
    let rho2 = rule.rho2();
    let ready = |arm: &Moments| arm.n >= rule.min_samples && control.n >= rule.min_samples;
    let differences: Vec<Option<Difference>> =
        arms.iter().map(|arm| sequential::difference(arm, control, alpha / k, rho2)).collect();
    let raw: Vec<f64> = arms
        .iter()
        .zip(&differences)
        .map(|(arm, d)| match d {
            // The p-value does not depend on the level the interval was drawn at.
            Some(d) if ready(arm) => d.p,
            _ => 1.0,
        })
        .collect();
    let adjusted = holm(&raw);
    arms.iter()
        .zip(differences)
        .zip(adjusted)
        .map(|((arm, difference), p_adjusted)| {
            let decision = match difference {
                Some(d) if ready(arm) => verdict(d, p_adjusted, alpha, rule),
                _ => Decision::Undecided,
            };
            Verdict { decision, difference, p_adjusted }
        })
        .collect()
}

fn verdict(d: Difference, p_adjusted: f64, alpha: f64, rule: &Rule) -> Decision {
    if p_adjusted <= alpha {
        let higher = d.diff > 0.0;
        return match (higher, rule.direction) {
            (true, Direction::HigherIsBetter) | (false, Direction::LowerIsBetter) => Decision::Better,
            _ => Decision::Worse,
        };
    }
    if rule.margin > 0.0 && -rule.margin <= d.interval.lo && d.interval.hi <= rule.margin {
        return Decision::Equivalent;
    }
    Decision::Undecided
}

/// Holm-adjusted p-values (`max over k ≤ j of min(1, (m - k) p_(k))` along the ascending
/// order), in the input's order: an arm is rejected at level α exactly when its adjusted
/// p-value is at most α.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|a, b| p[*a].total_cmp(&p[*b]));
    let mut adjusted = vec![1.0; m];
    let mut running = 0.0f64;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        adjusted[i] = running;
    }
    adjusted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(direction: Direction) -> Rule {
        Rule { confidence: 0.95, min_samples: 20, margin: 0.05, direction }
    }

    /// `n` observations with the given mean: alternating mean ± spread.
    fn arm(n: u64, mean: f64, spread: f64) -> Moments {
        let mut m = Moments::default();
        (0..n).for_each(|i| m.add(if i % 2 == 0 { mean + spread } else { mean - spread }));
        m
    }

    #[test]
    fn holm_matches_statsmodels() {
        // Golden values: statsmodels.stats.multitest.multipletests(p, method="holm")[1]
        // (tests/golden/experiments.py).
        for (p, expected) in GOLDEN_HOLM {
            let ours = holm(p);
            for (a, b) in ours.iter().zip(expected.iter()) {
                assert!((a - b).abs() < 1e-12, "holm({p:?}) = {ours:?}, expected {expected:?}");
            }
        }
    }

    #[test]
    fn clear_differences_are_decided_by_direction() {
        let control = arm(2000, 0.5, 0.5);
        let verdicts = decide(&control, &[arm(2000, 0.7, 0.5), arm(2000, 0.3, 0.5)], &rule(Direction::HigherIsBetter));
        assert_eq!(verdicts[0].decision, Decision::Better);
        assert_eq!(verdicts[1].decision, Decision::Worse);
        let verdicts = decide(&control, &[arm(2000, 0.7, 0.5)], &rule(Direction::LowerIsBetter));
        assert_eq!(verdicts[0].decision, Decision::Worse);
    }

    #[test]
    fn tight_equal_arms_are_equivalent_and_loose_ones_undecided() {
        let control = arm(20_000, 0.5, 0.3);
        let verdicts = decide(&control, &[arm(20_000, 0.5, 0.3), arm(30, 0.5, 0.3)], &rule(Direction::HigherIsBetter));
        assert_eq!(verdicts[0].decision, Decision::Equivalent);
        assert_eq!(verdicts[1].decision, Decision::Undecided);
    }

    #[test]
    fn nothing_is_decided_before_min_samples() {
        let verdicts = decide(&arm(19, 0.0, 0.1), &[arm(19, 1.0, 0.1)], &rule(Direction::HigherIsBetter));
        assert_eq!(verdicts[0].decision, Decision::Undecided);
        assert_eq!(verdicts[0].p_adjusted, 1.0);
        assert!(verdicts[0].difference.is_some());
    }

    #[test]
    fn the_interval_shown_is_at_the_bonferroni_level() {
        let control = arm(500, 0.5, 0.5);
        let one = decide(&control, &[arm(500, 0.55, 0.5)], &rule(Direction::HigherIsBetter));
        let three = decide(&control, &[arm(500, 0.55, 0.5); 3], &rule(Direction::HigherIsBetter));
        let width = |v: &Verdict| v.difference.map(|d| d.interval.hi - d.interval.lo).unwrap();
        assert!(width(&three[0]) > width(&one[0]));
        assert!(three[0].p_adjusted >= one[0].p_adjusted);
    }

    include!("golden_holm.rs");
}
