//! Budget periods: calendar days and months in UTC, and the clock that says which one is now.
//!
//! Owns: the [`Clock`] seam (the system clock in production; tests swap in their own to
//! cross a period boundary), a period's id and end, and USD ↔ integer nano-USD conversion
//! (spend is counted in integers so that memory and Redis add it up exactly).
//! Must not: keep spend itself (that is the store's).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::config::BudgetPeriod;

/// Nano-USD per USD: spend and reservations are integers in this unit.
const NANOS_PER_USD: f64 = 1e9;

/// Wall-clock time for budget periods.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> SystemTime;
}

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The clock the limits read, swappable at run time (process-wide, carried across reloads).
#[derive(Debug)]
pub struct ClockCell(ArcSwap<Box<dyn Clock>>);

impl Default for ClockCell {
    fn default() -> Self {
        ClockCell(ArcSwap::from_pointee(Box::new(SystemClock)))
    }
}

impl ClockCell {
    pub fn now(&self) -> SystemTime {
        self.0.load().now()
    }

    pub fn set(&self, clock: Box<dyn Clock>) {
        self.0.store(Arc::new(clock));
    }
}

/// One budget window: a UTC calendar day or month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub per: BudgetPeriod,
    /// `yyyymmdd` for days, `yyyymm` for months: compact, ordered, printable.
    pub id: u32,
    /// Unix seconds at which the next period starts.
    pub ends_at: u64,
}

impl Period {
    /// The period that contains `now` (a clock past the year 9999 reads as its last day).
    // Calendar arithmetic on a day number clamped to 0..=LAST_DAY: no step can overflow.
    #[allow(clippy::arithmetic_side_effects)]
    pub fn at(per: BudgetPeriod, now: SystemTime) -> Period {
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let days = i64::try_from(secs / 86_400).unwrap_or(LAST_DAY).min(LAST_DAY);
        let (year, month, day) = civil_from_days(days);
        match per {
            BudgetPeriod::Day => {
                Period { per, id: (year as u32) * 10_000 + month * 100 + day, ends_at: ((days + 1) * 86_400) as u64 }
            }
            BudgetPeriod::Month => {
                let (next_year, next_month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
                let ends_at = (days_from_civil(next_year, next_month, 1) * 86_400) as u64;
                Period { per, id: (year as u32) * 100 + month, ends_at }
            }
        }
    }

    /// `2026-11-28` or `2026-11`.
    pub fn label(&self) -> String {
        match self.per {
            BudgetPeriod::Day => format!("{:04}-{:02}-{:02}", self.id / 10_000, self.id / 100 % 100, self.id % 100),
            BudgetPeriod::Month => format!("{:04}-{:02}", self.id / 100, self.id % 100),
        }
    }

    /// Time from `now` until the next period starts.
    pub fn remaining(&self, now: SystemTime) -> Duration {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        Duration::from_secs(self.ends_at).saturating_sub(now)
    }
}

pub fn per_str(per: BudgetPeriod) -> &'static str {
    match per {
        BudgetPeriod::Day => "day",
        BudgetPeriod::Month => "month",
    }
}

/// USD → nano-USD, rounded up so that a fraction of a nano still counts.
/// An infinite (or too large) cost is the largest one, never zero.
pub fn usd_to_nanos(usd: f64) -> i64 {
    // `as` saturates: +inf and anything past i64::MAX become i64::MAX.
    if usd > 0.0 { (usd * NANOS_PER_USD).ceil() as i64 } else { 0 }
}

pub fn nanos_to_usd(nanos: i64) -> f64 {
    nanos as f64 / NANOS_PER_USD
}

/// 9999-12-31, the last day periods are computed for.
const LAST_DAY: i64 = 2_932_896;

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
// Only called with days in 0..=LAST_DAY (and tests' small negatives): no step overflows.
#[allow(clippy::arithmetic_side_effects)]
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) → days since 1970-01-01.
// Only called with years up to 10000: no step overflows.
#[allow(clippy::arithmetic_side_effects)]
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing, reason = "tests use known small numbers")]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn calendar_periods_in_utc() {
        // 2026-11-28T23:59:59Z
        let t = at(1_795_910_399);
        let day = Period::at(BudgetPeriod::Day, t);
        assert_eq!(day.label(), "2026-11-28");
        assert_eq!(day.remaining(t), Duration::from_secs(1));
        let month = Period::at(BudgetPeriod::Month, t);
        assert_eq!(month.label(), "2026-11");
        assert_eq!(month.ends_at, 1_796_083_200); // 2026-12-01T00:00:00Z
        let next = Period::at(BudgetPeriod::Day, at(1_795_910_400));
        assert_eq!(next.label(), "2026-11-29");
    }

    #[test]
    fn month_boundaries_roll_the_year() {
        let dec31 = at(1_798_761_599); // 2026-12-31T23:59:59Z
        let month = Period::at(BudgetPeriod::Month, dec31);
        assert_eq!(month.label(), "2026-12");
        assert_eq!(Period::at(BudgetPeriod::Month, at(month.ends_at)).label(), "2027-01");
        assert_eq!(Period::at(BudgetPeriod::Day, at(951_782_400)).label(), "2000-02-29");
        for days in [-1000_i64, 0, 59, 10_000, 20_454, 40_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn usd_converts_to_whole_nanos() {
        assert_eq!(usd_to_nanos(0.5), 500_000_000);
        assert_eq!(usd_to_nanos(1.5e-7), 150);
        assert_eq!(usd_to_nanos(-1.0), 0);
        assert_eq!(usd_to_nanos(f64::NAN), 0);
        assert_eq!(usd_to_nanos(f64::INFINITY), i64::MAX);
        assert_eq!(usd_to_nanos(1e300), i64::MAX);
        assert!((nanos_to_usd(2_500_000_000) - 2.5).abs() < 1e-12);
    }
}
