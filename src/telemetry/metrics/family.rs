//! Lock-free metric storage: atomic counters and histograms, and label families.
//!
//! Owns: the storage primitives behind [`super::Metrics`]. A [`Family`] maps a label tuple to
//! its series through an `ArcSwap`ed hash table: reading (every request) is a wait-free load
//! and a lookup by borrowed `&str`s, with no allocation; only the first sight of a label set
//! (a config's combination, so rare and bounded) copies the table.
//! Must not: hold a lock or allocate on the read path.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

/// A monotonic count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A Prometheus histogram: per-bucket counts (made cumulative when rendered) and a sum kept
/// as an integer in `1/scale` units, so an observation is two atomic adds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One more than `bounds`: the last is `+Inf`.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
    scale: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64], scale: f64) -> Histogram {
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram { bounds, buckets, sum: AtomicU64::new(0), scale }
    }

    pub fn observe(&self, value: f64) {
        let value = if value.is_finite() { value.max(0.0) } else { 0.0 };
        let index = self.bounds.partition_point(|bound| *bound < value);
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        // Saturating float-to-int cast: a huge value cannot wrap the sum.
        self.sum.fetch_add((value * self.scale) as u64, Ordering::Relaxed);
    }

    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    /// Cumulative counts per bound, then `+Inf` (which is the count).
    pub fn cumulative(&self) -> Vec<u64> {
        let mut total = 0;
        self.buckets
            .iter()
            .map(|bucket| {
                total += bucket.load(Ordering::Relaxed);
                total
            })
            .collect()
    }

    pub fn sum(&self) -> f64 {
        self.sum.load(Ordering::Relaxed) as f64 / self.scale
    }
}

/// One labelled series of a family.
#[derive(Debug)]
pub struct Series<M, const N: usize> {
    pub labels: [String; N],
    pub metric: M,
}

type Table<M, const N: usize> = HashMap<u64, Vec<Arc<Series<M, N>>>>;

/// The series of one metric, by label values (`N` labels, names fixed by the caller).
pub struct Family<M, const N: usize> {
    table: ArcSwap<Table<M, N>>,
    make: fn() -> M,
    hasher: std::hash::RandomState,
}

impl<M, const N: usize> std::fmt::Debug for Family<M, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family").field("series", &self.table.load().values().map(Vec::len).sum::<usize>()).finish()
    }
}

impl<M, const N: usize> Family<M, N> {
    pub fn new(make: fn() -> M) -> Family<M, N> {
        Family { table: ArcSwap::from_pointee(HashMap::new()), make, hasher: std::hash::RandomState::new() }
    }

    /// Runs `f` on the series for `labels`, creating it (at zero) the first time.
    pub fn with<R>(&self, labels: [&str; N], f: impl FnOnce(&M) -> R) -> R {
        let hash = self.hash(&labels);
        {
            let table = self.table.load();
            if let Some(series) = find(&table, hash, &labels) {
                return f(&series.metric);
            }
        }
        f(&self.insert(hash, labels).metric)
    }

    /// Creates the series for `labels` at zero if it does not exist yet.
    pub fn register(&self, labels: [&str; N]) {
        self.with(labels, |_| ());
    }

    /// Every series, sorted by labels (stable output for scrapers and diffs).
    pub fn snapshot(&self) -> Vec<Arc<Series<M, N>>> {
        let mut all: Vec<_> = self.table.load().values().flatten().cloned().collect();
        all.sort_by(|a, b| a.labels.cmp(&b.labels));
        all
    }

    fn hash(&self, labels: &[&str; N]) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        for label in labels {
            label.hash(&mut hasher);
        }
        hasher.finish()
    }

    /// The slow path: copy the table with the new series in it. Racing writers retry
    /// (`rcu`), and each retry looks again, so a label set never gets two series.
    fn insert(&self, hash: u64, labels: [&str; N]) -> Arc<Series<M, N>> {
        let created = Arc::new(Series { labels: labels.map(str::to_owned), metric: (self.make)() });
        let mut result = Arc::clone(&created);
        self.table.rcu(|table| {
            let mut next = Table::clone(table);
            match find(table, hash, &labels) {
                Some(existing) => result = Arc::clone(existing),
                None => {
                    result = Arc::clone(&created);
                    next.entry(hash).or_default().push(Arc::clone(&created));
                }
            }
            next
        });
        result
    }
}

fn find<'t, M, const N: usize>(table: &'t Table<M, N>, hash: u64, labels: &[&str; N]) -> Option<&'t Arc<Series<M, N>>> {
    table.get(&hash)?.iter().find(|series| series.labels.iter().zip(labels).all(|(a, b)| a == b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_le_inclusive() {
        static BOUNDS: [f64; 3] = [0.1, 1.0, 10.0];
        let h = Histogram::new(&BOUNDS, 1e9);
        for v in [0.05, 0.1, 0.5, 20.0] {
            h.observe(v);
        }
        assert_eq!(h.cumulative(), vec![2, 3, 3, 4]);
        assert!((h.sum() - 20.65).abs() < 1e-6);
    }

    #[test]
    fn family_keeps_one_series_per_label_set() {
        let family: Family<Counter, 2> = Family::new(Counter::default);
        family.with(["a", "b"], Counter::inc);
        family.with(["a", "b"], Counter::inc);
        family.with(["a", "c"], Counter::inc);
        let all = family.snapshot();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].labels, ["a".to_owned(), "b".to_owned()]);
        assert_eq!(all[0].metric.get(), 2);
    }
}
