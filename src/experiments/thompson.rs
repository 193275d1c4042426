//! Thompson sampling allocation: each arm's share of traffic is the posterior probability
//! that it is the best arm (randomized probability matching, Thompson 1933; Scott, "A modern
//! Bayesian look at the multi-armed bandit", 2010), floored at `min_share`.
//!
//! Owns: shares from the arms' [`Moments`]. Must not: draw per request — shares are
//! recomputed from the counts (about once a second) and the router assigns users with
//! weighted rendezvous hashing, so sticky users stay put unless their arm lost share.
//!
//! Posteriors: metrics in [0, 1] (feedback scores, success) use Beta(1 + Σx, 1 + n − Σx),
//! the conjugate update with fractional rewards (Agrawal & Goyal 2012); others (latency,
//! cost) a normal posterior N(mean, s²/n), with the pooled variance standing in while an
//! arm has fewer than two samples.
//! The Monte Carlo draws are seeded from the counts themselves, so every replica that
//! reads the same counts (one Redis) computes the same shares.

use rand::SeedableRng as _;
use rand::rngs::StdRng;
use rand_distr::{Beta, Distribution as _, Normal};

use super::decision::Direction;
use super::moments::Moments;

/// Draws per recomputation: the share's Monte Carlo error is at most 0.5/sqrt(DRAWS) ≈ 0.008.
pub const DRAWS: usize = 4000;

/// The posterior family of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posterior {
    /// Observations in [0, 1].
    Beta,
    /// Any real observations.
    Normal,
}

/// Each arm's share of traffic (they sum to 1), at least `min_share` each.
pub fn shares(arms: &[Moments], posterior: Posterior, direction: Direction, min_share: f64) -> Vec<f64> {
    if arms.iter().all(|arm| arm.n == 0) {
        // Nothing is known yet: an even split, without Monte Carlo noise.
        return vec![1.0 / arms.len().max(1) as f64; arms.len()];
    }
    let mut rng = StdRng::seed_from_u64(seed_of(arms));
    let best = probability_best(arms, posterior, direction, DRAWS, &mut rng);
    floor_shares(&best, min_share)
}

/// `min_share` for every arm, the rest split by `p` (which sums to 1). When the floors
/// alone reach 1, the split is even.
pub fn floor_shares(p: &[f64], min_share: f64) -> Vec<f64> {
    let k = p.len() as f64;
    let floor = min_share.clamp(0.0, 1.0);
    if floor * k >= 1.0 {
        return vec![1.0 / k; p.len()];
    }
    p.iter().map(|p| floor + (1.0 - floor * k) * p).collect()
}

/// Monte Carlo estimate of each arm's probability of being the best.
pub fn probability_best(
    arms: &[Moments],
    posterior: Posterior,
    direction: Direction,
    draws: usize,
    rng: &mut StdRng,
) -> Vec<f64> {
    let k = arms.len();
    if k == 0 {
        return Vec::new();
    }
    let Some(samplers) = samplers(arms, posterior) else {
        return vec![1.0 / k as f64; k];
    };
    let mut wins = vec![0u64; k];
    for _ in 0..draws.max(1) {
        let mut best: Option<(usize, f64)> = None;
        for (i, sampler) in samplers.iter().enumerate() {
            let draw = sampler.draw(rng);
            let better = match (best, direction) {
                (None, _) => true,
                (Some((_, b)), Direction::HigherIsBetter) => draw > b,
                (Some((_, b)), Direction::LowerIsBetter) => draw < b,
            };
            if better {
                best = Some((i, draw));
            }
        }
        if let Some((i, _)) = best {
            wins[i] += 1;
        }
    }
    let total = wins.iter().sum::<u64>().max(1) as f64;
    wins.iter().map(|w| *w as f64 / total).collect()
}

enum Sampler {
    Beta(Beta<f64>),
    Normal(Normal<f64>),
}

impl Sampler {
    fn draw(&self, rng: &mut StdRng) -> f64 {
        match self {
            Sampler::Beta(beta) => beta.sample(rng),
            Sampler::Normal(normal) => normal.sample(rng),
        }
    }
}

/// One posterior per arm; `None` when a normal posterior has nothing to scale it with yet.
fn samplers(arms: &[Moments], posterior: Posterior) -> Option<Vec<Sampler>> {
    match posterior {
        Posterior::Beta => arms
            .iter()
            .map(|arm| {
                let successes = arm.sum.clamp(0.0, arm.n as f64);
                Beta::new(1.0 + successes, 1.0 + (arm.n as f64 - successes)).ok().map(Sampler::Beta)
            })
            .collect(),
        Posterior::Normal => {
            let pooled = arms.iter().fold(Moments::default(), |all, arm| all.merge(*arm));
            let pooled_var = pooled.variance().filter(|v| *v > 0.0)?;
            let pooled_mean = pooled.mean()?;
            arms.iter()
                .map(|arm| {
                    let var = arm.variance().filter(|v| *v > 0.0).unwrap_or(pooled_var);
                    let mean = arm.mean().unwrap_or(pooled_mean);
                    Normal::new(mean, (var / arm.n.max(1) as f64).sqrt()).ok().map(Sampler::Normal)
                })
                .collect()
        }
    }
}

/// A seed that is a function of the counts only (SHA-256, stable across builds).
fn seed_of(arms: &[Moments]) -> u64 {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    for arm in arms {
        hasher.update(arm.n.to_le_bytes());
        hasher.update(arm.sum.to_bits().to_le_bytes());
        hasher.update(arm.sum_sq.to_bits().to_le_bytes());
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bernoulli(n: u64, successes: u64) -> Moments {
        Moments { n, sum: successes as f64, sum_sq: successes as f64 }
    }

    #[test]
    fn shares_follow_the_evidence_and_keep_the_floor() {
        let arms = [bernoulli(500, 250), bernoulli(500, 320)];
        let s = shares(&arms, Posterior::Beta, Direction::HigherIsBetter, 0.05);
        assert!((s.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(s[1] > 0.9 && s[0] >= 0.05, "{s:?}");
        let lower = shares(&arms, Posterior::Beta, Direction::LowerIsBetter, 0.05);
        assert!(lower[0] > 0.9, "{lower:?}");
    }

    #[test]
    fn without_data_the_split_is_even() {
        let s = shares(&[Moments::default(); 4], Posterior::Beta, Direction::HigherIsBetter, 0.05);
        assert!(s.iter().all(|s| (s - 0.25).abs() < 0.03), "{s:?}");
        let s = shares(&[Moments::default(); 2], Posterior::Normal, Direction::LowerIsBetter, 0.05);
        assert_eq!(s, vec![0.5, 0.5]);
    }

    #[test]
    fn normal_posteriors_prefer_lower_latency() {
        let fast = Moments::of(&[100.0, 120.0, 110.0, 90.0, 105.0, 115.0]);
        let slow = Moments::of(&[300.0, 280.0, 310.0, 290.0, 305.0, 295.0]);
        let fresh = Moments::default();
        let s = shares(&[slow, fast, fresh], Posterior::Normal, Direction::LowerIsBetter, 0.1);
        assert!(s[1] > s[0] && s[0] >= 0.1 - 1e-12, "{s:?}");
    }

    #[test]
    fn the_same_counts_give_the_same_shares() {
        let arms = [bernoulli(40, 21), bernoulli(38, 22)];
        let a = shares(&arms, Posterior::Beta, Direction::HigherIsBetter, 0.05);
        assert_eq!(a, shares(&arms, Posterior::Beta, Direction::HigherIsBetter, 0.05));
    }

    #[test]
    fn floors_that_fill_everything_split_evenly() {
        assert_eq!(floor_shares(&[1.0, 0.0, 0.0], 0.4), vec![1.0 / 3.0; 3]);
        assert_eq!(floor_shares(&[1.0, 0.0], 0.1), vec![0.9, 0.1]);
    }
}
