//! Seeded simulations of the stopping rule and the allocation (no network, a few seconds).
//! Each prints the rate it measured (`cargo test --lib experiments::simulations -- --nocapture`).

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use super::decision::{Decision, Direction, Rule, decide};
use super::moments::Moments;
use super::thompson::{self, Posterior};

const RUNS: u64 = 1000;
/// Samples per arm before a run gives up undecided.
const HORIZON: u64 = 2000;

fn rule() -> Rule {
    Rule { confidence: 0.95, min_samples: 200, margin: 0.0, direction: Direction::HigherIsBetter }
}

fn bernoulli(rng: &mut StdRng, p: f64) -> f64 {
    if rng.random::<f64>() < p { 1.0 } else { 0.0 }
}

/// One experiment with a 50/50 split, checked after every sample once both arms have
/// `min_samples`; returns the first decision (or `Undecided` at the horizon).
fn run(seed: u64, control_mean: f64, arm_mean: f64) -> Decision {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut control, mut arm) = (Moments::default(), Moments::default());
    let rule = rule();
    for i in 0..2 * HORIZON {
        if i % 2 == 0 {
            control.add(bernoulli(&mut rng, control_mean));
        } else {
            arm.add(bernoulli(&mut rng, arm_mean));
        }
        if control.n < rule.min_samples || arm.n < rule.min_samples {
            continue;
        }
        let decision = decide(&control, &[arm], &rule)[0].decision;
        if decision != Decision::Undecided {
            return decision;
        }
    }
    Decision::Undecided
}

#[test]
fn a_a_experiments_checked_after_every_sample_rarely_declare_a_winner() {
    let winners = (0..RUNS).filter(|seed| run(*seed, 0.5, 0.5) != Decision::Undecided).count();
    let rate = winners as f64 / RUNS as f64;
    println!(
        "A/A: {winners} of {RUNS} runs declared a winner ({:.1}%), checked after every sample up to {HORIZON} per arm",
        rate * 100.0
    );
    assert!(rate <= 0.05, "false positive rate {rate}");
}

#[test]
fn a_better_arm_is_found_and_never_called_worse() {
    let outcomes: Vec<Decision> = (0..RUNS).map(|seed| run(10_000 + seed, 0.5, 0.6)).collect();
    let better = outcomes.iter().filter(|d| **d == Decision::Better).count();
    let worse = outcomes.iter().filter(|d| **d == Decision::Worse).count();
    println!(
        "+0.1 arm: decided better in {better} of {RUNS} runs ({:.1}%), worse in {worse} ({:.1}%)",
        better as f64 / RUNS as f64 * 100.0,
        worse as f64 / RUNS as f64 * 100.0
    );
    assert!(better as f64 >= 0.95 * RUNS as f64, "power {better}/{RUNS}");
    assert!(worse as f64 <= 0.05 * RUNS as f64, "wrong sign {worse}/{RUNS}");
}

#[test]
fn thompson_sends_most_traffic_to_the_better_arm() {
    const THOMPSON_RUNS: u64 = 100;
    const SAMPLES: u64 = 1000;
    const RECOMPUTE_EVERY: u64 = 50;
    let means = [0.5, 0.6];
    let (mut final_share, mut served_better, mut runs_over_80) = (0.0, 0u64, 0u64);
    for seed in 0..THOMPSON_RUNS {
        let mut rng = StdRng::seed_from_u64(20_000 + seed);
        let mut arms = [Moments::default(); 2];
        let mut shares = vec![0.5, 0.5];
        for i in 0..SAMPLES {
            if i % RECOMPUTE_EVERY == 0 {
                shares = thompson::shares(&arms, Posterior::Beta, Direction::HigherIsBetter, 0.05);
            }
            let pick = usize::from(rng.random::<f64>() >= shares[0]);
            let value = bernoulli(&mut rng, means[pick]);
            arms[pick].add(value);
        }
        let share = thompson::shares(&arms, Posterior::Beta, Direction::HigherIsBetter, 0.05)[1];
        final_share += share;
        served_better += arms[1].n;
        runs_over_80 += u64::from(share >= 0.8);
    }
    let mean_share = final_share / THOMPSON_RUNS as f64;
    let served = served_better as f64 / (THOMPSON_RUNS * SAMPLES) as f64;
    println!(
        "Thompson (0.5 vs 0.6, min_share 0.05): share of the better arm after {SAMPLES} samples {:.1}% on average, ≥80% in {runs_over_80} of {THOMPSON_RUNS} runs; {:.1}% of all {SAMPLES} samples went to it",
        mean_share * 100.0,
        served * 100.0
    );
    assert!(mean_share >= 0.8, "mean share {mean_share}");
}
