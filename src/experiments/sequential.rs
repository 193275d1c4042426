//! Anytime-valid inference: confidence sequences and mixture-SPRT p-values for an arm's
//! mean and for the difference between an arm and the control.
//!
//! Owns: the boundary arithmetic. Must not: keep state — every figure is a function of the
//! arms' current [`Moments`], so the live gateway and `weir experiment report` agree.
//!
//! Method: the normal-mixture sequential probability ratio test (mSPRT) of Johari, Koomen,
//! Pekelis & Walsh, "Always valid inference: continuous monitoring of A/B tests",
//! Operations Research 70(3), 2022 — the likelihood ratio of "mean difference θ" against
//! "θ = 0", mixed over θ ~ N(0, τ²), of an estimate with variance V:
//!
//! ```text
//! Λ = sqrt(V / (V + τ²)) · exp(τ² Δ² / (2 V (V + τ²)))
//! ```
//!
//! Λ is a nonnegative martingale under the null, so by Ville's inequality
//! P(Λ ever reaches 1/α) ≤ α: the p-value `min(1, 1/Λ)` may be read after every sample.
//! Inverting it gives the confidence sequence `Δ ± sqrt(V (V+τ²)/τ² · (2 ln(1/α) + ln((V+τ²)/V)))`.
//! The variances are plug-in estimates, which makes this the asymptotic confidence sequence
//! of Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas, "Time-uniform central limit theory and
//! asymptotic confidence sequences", Annals of Statistics 52(6), 2024 (Theorem 2.2): with
//! V = σ²/n and τ² = ρ²σ² the width above is exactly their `σ·sqrt(2(nρ²+1)/(n²ρ²) ·
//! ln(sqrt(nρ²+1)/α))`. It holds for any distribution with finite variance (feedback
//! scores, success, latency, cost) once samples are not tiny — hence `min_samples`.
//! ρ is chosen, as in that paper, to make the boundary tightest at `n*` samples (the
//! experiment's `min_samples`): ρ² = (2 ln(1/α) + ln(2 ln(1/α) + 1)) / n*.

use serde::Serialize;

use super::moments::Moments;

/// A closed interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
}

impl Interval {
    fn around(center: f64, half: f64) -> Interval {
        Interval { lo: center - half, hi: center + half }
    }

    pub fn contains(&self, value: f64) -> bool {
        self.lo <= value && value <= self.hi
    }
}

/// The mixture's scale: ρ² such that the boundary is tightest after `n_star` samples at
/// error rate `alpha` (Waudby-Smith et al. 2024, §2.5).
pub fn rho_squared(alpha: f64, n_star: u64) -> f64 {
    let two_log = -2.0 * alpha.ln();
    (two_log + (two_log + 1.0).ln()) / n_star.max(1) as f64
}

/// Half-width of the confidence sequence of an estimate with variance `v`, mixture variance
/// `tau2`, at error rate `alpha`.
pub fn half_width(v: f64, tau2: f64, alpha: f64) -> f64 {
    let spread = v * (v + tau2) / tau2;
    (spread * (-2.0 * alpha.ln() + ((v + tau2) / v).ln())).sqrt()
}

/// ln Λ, the log mixture likelihood ratio of an estimate `diff` with variance `v` against 0.
pub fn log_mixture_ratio(diff: f64, v: f64, tau2: f64) -> f64 {
    0.5 * (v / (v + tau2)).ln() + tau2 * diff * diff / (2.0 * v * (v + tau2))
}

/// The always-valid p-value `min(1, 1/Λ)`.
pub fn p_value(diff: f64, v: f64, tau2: f64) -> f64 {
    (-log_mixture_ratio(diff, v, tau2)).exp().min(1.0)
}

/// The confidence sequence of one arm's mean at error rate `alpha`; `None` below two
/// samples or without variance (nothing bounds an unknown spread).
pub fn mean_interval(arm: &Moments, alpha: f64, rho2: f64) -> Option<Interval> {
    let (mean, var) = (arm.mean()?, arm.variance()?);
    if !(var > 0.0 && valid_alpha(alpha) && rho2 > 0.0) {
        return None;
    }
    let v = var / arm.n as f64;
    Some(Interval::around(mean, half_width(v, rho2 * var, alpha)))
}

/// An arm against the control.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Difference {
    /// mean(arm) - mean(control).
    pub diff: f64,
    /// Confidence sequence of the difference.
    pub interval: Interval,
    /// Always-valid p-value of "no difference".
    pub p: f64,
}

/// The difference of means between `arm` and `control` at error rate `alpha`; `None` while
/// either has fewer than two samples or neither has any variance.
pub fn difference(arm: &Moments, control: &Moments, alpha: f64, rho2: f64) -> Option<Difference> {
    let (ma, va) = (arm.mean()?, arm.variance()?);
    let (mc, vc) = (control.mean()?, control.variance()?);
    // The variance of one (arm, control) pair of observations scales the mixture, so that
    // ρ means the same as for a single mean.
    let pair = va + vc;
    if !(pair > 0.0 && valid_alpha(alpha) && rho2 > 0.0) {
        return None;
    }
    let v = va / arm.n as f64 + vc / control.n as f64;
    let tau2 = rho2 * pair;
    let diff = ma - mc;
    Some(Difference { diff, interval: Interval::around(diff, half_width(v, tau2, alpha)), p: p_value(diff, v, tau2) })
}

fn valid_alpha(alpha: f64) -> bool {
    alpha > 0.0 && alpha < 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1.0)
    }

    // Golden values: tests/golden/sequential.py (Python 3, numpy 2, scipy 1.x), which computes
    // Λ by numerical integration of the N(0, τ²)-mixed likelihood ratio (scipy.integrate.quad)
    // and the confidence-sequence boundary as the root of Λ = 1/α (scipy.optimize.brentq) —
    // neither uses the closed forms above.

    #[test]
    fn rho_matches_the_reference() {
        // Waudby-Smith et al. 2024, §2.5, evaluated in Python.
        assert!(close(rho_squared(0.05, 200), GOLDEN_RHO2_005_200, 1e-12));
    }

    #[test]
    fn mixture_ratio_matches_numerical_integration() {
        for &(diff, v, tau2, log_lr) in GOLDEN_LOG_LR {
            let ours = log_mixture_ratio(diff, v, tau2);
            assert!(close(ours, log_lr, 1e-8), "Λ({diff}, {v}, {tau2}): {ours} vs {log_lr}");
        }
    }

    #[test]
    fn boundary_matches_the_root_of_the_mixture_ratio() {
        for &(v, tau2, alpha, half) in GOLDEN_HALF_WIDTH {
            let ours = half_width(v, tau2, alpha);
            assert!(close(ours, half, 1e-8), "half width({v}, {tau2}, {alpha}): {ours} vs {half}");
        }
    }

    #[test]
    fn difference_of_two_samples_matches_the_reference() {
        let arm = Moments::of(&GOLDEN_ARM);
        let control = Moments::of(&GOLDEN_CONTROL);
        let d = difference(&arm, &control, 0.05, rho_squared(0.05, 10)).unwrap();
        let (diff, lo, hi, p) = GOLDEN_DIFFERENCE;
        assert!(close(d.diff, diff, 1e-10), "{d:?}");
        assert!(close(d.interval.lo, lo, 1e-8) && close(d.interval.hi, hi, 1e-8), "{d:?}");
        assert!(close(d.p, p, 1e-8), "{d:?}");
        let m = mean_interval(&arm, 0.05, rho_squared(0.05, 10)).unwrap();
        let (lo, hi) = GOLDEN_MEAN_INTERVAL;
        assert!(close(m.lo, lo, 1e-8) && close(m.hi, hi, 1e-8), "{m:?}");
    }

    #[test]
    fn the_p_value_and_the_interval_agree() {
        // 0 lies on the boundary exactly when p = α.
        let (v, tau2, alpha) = (0.002, 0.01, 0.05);
        let edge = half_width(v, tau2, alpha);
        assert!(close(p_value(edge, v, tau2), alpha, 1e-9));
        assert!(p_value(edge * 1.01, v, tau2) < alpha && p_value(edge * 0.99, v, tau2) > alpha);
    }

    #[test]
    fn degenerate_arms_have_no_interval() {
        let flat = Moments::of(&[1.0, 1.0, 1.0]);
        assert_eq!(mean_interval(&flat, 0.05, 0.1), None);
        assert_eq!(difference(&flat, &flat, 0.05, 0.1), None);
        assert_eq!(difference(&Moments::of(&[1.0]), &Moments::of(&[0.0, 1.0]), 0.05, 0.1), None);
        assert_eq!(mean_interval(&Moments::of(&[0.0, 1.0]), 1.0, 0.1), None);
        // One flat side still compares: the other carries the variance.
        assert!(difference(&flat, &Moments::of(&[0.0, 1.0, 1.0]), 0.05, 0.1).is_some());
    }

    include!("golden.rs");
}
