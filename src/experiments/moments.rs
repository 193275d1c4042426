//! The running sums of one arm's metric: count, sum and sum of squares.
//!
//! Owns: the three numbers every statistic of an arm is computed from, so that they can be
//! kept as plain counters (in memory or in Redis, added to from any replica) and merged.
//! Must not: keep individual samples — memory per arm is constant.

use serde::{Deserialize, Serialize};

/// Count, sum and sum of squares of an arm's observations.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Moments {
    pub n: u64,
    pub sum: f64,
    pub sum_sq: f64,
}

impl Moments {
    /// The moments of `values`.
    pub fn of(values: &[f64]) -> Moments {
        let mut moments = Moments::default();
        values.iter().for_each(|v| moments.add(*v));
        moments
    }

    /// Adds one observation; non-finite values are ignored (they carry no information and
    /// would poison every later figure).
    pub fn add(&mut self, value: f64) {
        if !value.is_finite() {
            return;
        }
        self.n = self.n.saturating_add(1);
        self.sum += value;
        self.sum_sq += value * value;
    }

    /// Both arms' observations together.
    pub fn merge(self, other: Moments) -> Moments {
        Moments { n: self.n.saturating_add(other.n), sum: self.sum + other.sum, sum_sq: self.sum_sq + other.sum_sq }
    }

    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// The sample variance (n - 1), `None` below two observations. Never negative: the
    /// sums-of-squares form can round below zero when every value is the same.
    pub fn variance(&self) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        let n = self.n as f64;
        let mean = self.sum / n;
        Some(((self.sum_sq - n * mean * mean) / (n - 1.0)).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_variance_match_the_two_pass_formulas() {
        let m = Moments::of(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m.n, 4);
        assert_eq!(m.mean(), Some(2.5));
        assert!((m.variance().unwrap() - 5.0 / 3.0).abs() < 1e-12);
        assert_eq!(Moments::of(&[7.0]).variance(), None);
        assert_eq!(Moments::default().mean(), None);
        let constant = Moments::of(&[0.1; 1000]).variance().unwrap();
        assert!((0.0..1e-12).contains(&constant), "{constant}");
    }

    #[test]
    fn merging_equals_adding_everything_to_one() {
        let merged = Moments::of(&[1.0, 5.0]).merge(Moments::of(&[2.0, f64::NAN, 8.0]));
        assert_eq!(merged, Moments::of(&[1.0, 5.0, 2.0, 8.0]));
    }
}
