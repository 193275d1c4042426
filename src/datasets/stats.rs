//! Small statistics for `weir experiment report`: percentiles, mean with a 95% confidence
//! interval, and Welch's t-test.
//!
//! Student's t distribution is computed here (no extra crate): its CDF through the
//! regularized incomplete beta function (Lentz's continued fraction, as in Numerical
//! Recipes §6.4) with a Lanczos log-gamma; its quantile by bisection on the CDF.

/// Nearest-rank percentile (`p` in 0..=100) of `sorted` (ascending); `None` when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Mean and sample variance (n - 1); variance `None` below two values.
pub fn mean_var(values: &[f64]) -> Option<(f64, Option<f64>)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = (values.len() > 1).then(|| values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0));
    Some((mean, var))
}

/// Two-sided 95% confidence interval of the mean (t distribution, n - 1 degrees of freedom).
pub fn ci95(values: &[f64]) -> Option<(f64, f64)> {
    let (mean, var) = mean_var(values)?;
    let var = var?;
    let n = values.len() as f64;
    let half = t_quantile(0.975, n - 1.0) * (var / n).sqrt();
    Some((mean - half, mean + half))
}

/// Welch's unequal-variances t-test of `a` against `b`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Welch {
    /// mean(a) - mean(b).
    pub diff: f64,
    pub t: f64,
    pub df: f64,
    /// Two-sided p-value.
    pub p: f64,
}

/// `None` with fewer than two values on a side, or when both sides have no variance.
pub fn welch(a: &[f64], b: &[f64]) -> Option<Welch> {
    let (ma, va) = mean_var(a)?;
    let (mb, vb) = mean_var(b)?;
    let (va, vb) = (va?, vb?);
    let (sa, sb) = (va / a.len() as f64, vb / b.len() as f64);
    let se2 = sa + sb;
    if se2 <= 0.0 {
        return None;
    }
    let t = (ma - mb) / se2.sqrt();
    let df = se2 * se2 / (sa * sa / (a.len() as f64 - 1.0) + sb * sb / (b.len() as f64 - 1.0));
    let p = (2.0 * (1.0 - t_cdf(t.abs(), df))).clamp(0.0, 1.0);
    Some(Welch { diff: ma - mb, t, df, p })
}

/// CDF of Student's t distribution with `df` degrees of freedom.
pub fn t_cdf(t: f64, df: f64) -> f64 {
    let x = df / (df + t * t);
    let tail = 0.5 * incomplete_beta(df / 2.0, 0.5, x);
    if t >= 0.0 { 1.0 - tail } else { tail }
}

/// The `p` quantile (0 < p < 1) of Student's t with `df` degrees of freedom.
pub fn t_quantile(p: f64, df: f64) -> f64 {
    if p == 0.5 {
        return 0.0;
    }
    if p < 0.5 {
        return -t_quantile(1.0 - p, df);
    }
    let (mut lo, mut hi) = (0.0, 1.0);
    while t_cdf(hi, df) < p && hi < 1e12 {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Regularized incomplete beta I_x(a, b).
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    // The continued fraction converges fast for x below the mean; use the symmetry above it.
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_fraction(b, a, 1.0 - x) / b
    }
}

/// Lentz's evaluation of the incomplete beta continued fraction.
fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const EPS: f64 = 1e-15;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=500 {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < EPS {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; ~15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1-x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn t_distribution_matches_tables() {
        // Reference values from R: pt(2, 5), qt(0.975, 10), qt(0.975, 1), pt(-1.5, 3.7).
        assert!(close(t_cdf(2.0, 5.0), 0.949_030_260_585_070_5, 1e-9));
        assert!(close(t_quantile(0.975, 10.0), 2.228_138_851_986_274, 1e-9));
        assert!(close(t_quantile(0.975, 1.0), 12.706_204_736_174_7, 1e-7));
        assert!(close(t_cdf(0.0, 7.0), 0.5, 1e-12));
        assert!(close(t_cdf(-2.0, 5.0), 1.0 - 0.949_030_260_585_070_5, 1e-9));
        assert!(close(ln_gamma(5.0), 24f64.ln(), 1e-12));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0];
        assert_eq!(percentile(&sorted, 50.0), Some(50.0));
        assert_eq!(percentile(&sorted, 95.0), Some(100.0));
        assert_eq!(percentile(&sorted[..1], 95.0), Some(10.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn welch_matches_a_hand_computation() {
        // a: mean 2.5, var 1.6667; b: mean 4.75, var 2.9167 (n = 4 each).
        // se² = 1.6667/4 + 2.9167/4 = 1.145833; t = -2.25 / 1.070436 = -2.101947;
        // df = 1.145833² / ((0.416667² + 0.729167²) / 3) = 5.584615;
        // p = 0.083707 (numeric integration of the t density).
        let w = welch(&[1.0, 2.0, 3.0, 4.0], &[3.0, 4.0, 5.0, 7.0]).unwrap();
        assert!(close(w.diff, -2.25, 1e-12));
        assert!(close(w.t, -2.101_947_149_236_112, 1e-9), "{w:?}");
        assert!(close(w.df, 5.584_615_384_615_385, 1e-9), "{w:?}");
        assert!(close(w.p, 0.083_707, 1e-5), "{w:?}");
        assert_eq!(welch(&[1.0], &[2.0, 3.0]), None);
        assert_eq!(welch(&[1.0, 1.0], &[1.0, 1.0]), None);
    }

    #[test]
    fn confidence_interval_of_the_mean() {
        // mean 2.5, sd 1.29099, n 4: half = qt(.975, 3) * 1.29099 / 2 = 3.182446 * 0.645497.
        let (lo, hi) = ci95(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!(close(lo, 2.5 - 2.054_260_9, 1e-6) && close(hi, 2.5 + 2.054_260_9, 1e-6), "{lo} {hi}");
        assert_eq!(ci95(&[1.0]), None);
    }
}
