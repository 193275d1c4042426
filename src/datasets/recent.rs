//! The index of recent request ids that `POST /v1/feedback` checks: who may send feedback for
//! a request, and which model and variant served it.
//!
//! Owns: [`RecentRequests`], bounded in count and age by two generations of a concurrent map:
//! new ids go into the current one; when it holds half the window's requests or is half the
//! window old, the older generation is emptied and becomes the current one. An id is thus
//! remembered for at least half the window and at most all of it, and at most
//! [`FEEDBACK_WINDOW_REQUESTS`] ids are held at once.
//! Must not: cost a request more than one map operation: it runs on every request of a
//! gateway with datasets (a cache with admission and eviction policies cost ~5% of one here,
//! and an insert, then two updates as the owner and the variant became known, ~4%).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use hashbrown::DefaultHashBuilder;

use super::{FEEDBACK_WINDOW, FEEDBACK_WINDOW_REQUESTS, ServedBy};

/// Distinct (model, variant) pairs shared by the entries; past this, new pairs are not
/// remembered (a config has a handful; only endless renames across reloads could reach it).
const MAX_SERVED_NAMES: usize = 4096;

/// What is remembered of a recent request.
#[derive(Debug, Clone, Default)]
pub(super) struct Recent {
    /// Hash of the name of the key that made it, once authenticated.
    pub owner: Option<u64>,
    /// Who served it, once routed.
    pub served: Option<Arc<ServedBy>>,
}

pub(super) struct RecentRequests {
    /// Keyed by the id's hash already: a fast hasher is enough.
    generations: [DashMap<u64, Recent, DefaultHashBuilder>; 2],
    /// Index of the generation new ids go to.
    current: AtomicUsize,
    /// Ids put into the current generation.
    count: AtomicU64,
    /// When the current generation started, in ms since `origin`.
    started_ms: AtomicU64,
    origin: Instant,
    rotating: AtomicBool,
    /// Each (model, variant) once, shared by the entries it served.
    served_names: RwLock<Vec<Arc<ServedBy>>>,
    per_generation: u64,
    generation_age: Duration,
}

impl std::fmt::Debug for RecentRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries: usize = self.generations.iter().map(DashMap::len).sum();
        f.debug_struct("RecentRequests").field("entries", &entries).finish()
    }
}

impl RecentRequests {
    pub fn new() -> RecentRequests {
        RecentRequests::with_window(FEEDBACK_WINDOW_REQUESTS, FEEDBACK_WINDOW)
    }

    fn with_window(requests: u64, age: Duration) -> RecentRequests {
        RecentRequests {
            generations: [DashMap::default(), DashMap::default()],
            current: AtomicUsize::new(0),
            count: AtomicU64::new(0),
            started_ms: AtomicU64::new(0),
            origin: Instant::now(),
            rotating: AtomicBool::new(false),
            served_names: RwLock::new(Vec::new()),
            per_generation: (requests / 2).max(1),
            generation_age: age / 2,
        }
    }

    /// Remembers request `id`: the hash of the key that made it, and the public model and
    /// variant that served it (none when not routed).
    pub fn remember(&self, id: u64, owner: Option<u64>, model: &str, variant: &str) {
        let served = if variant.is_empty() { None } else { self.served_name(model, variant) };
        let count = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if count > self.per_generation || self.current_is_old() {
            self.rotate();
        }
        self.generations[self.current.load(Ordering::Acquire)].insert(id, Recent { owner, served });
    }

    pub fn get(&self, id: u64) -> Option<Recent> {
        let current = self.current.load(Ordering::Acquire);
        [current, 1 - current].into_iter().find_map(|g| self.generations[g].get(&id).map(|e| e.value().clone()))
    }

    /// Changes a remembered request; one forgotten already stays forgotten.
    /// The shared `ServedBy` of a (model, variant) pair.
    fn served_name(&self, model: &str, variant: &str) -> Option<Arc<ServedBy>> {
        let same = |s: &&Arc<ServedBy>| s.model == model && s.variant == variant;
        if let Some(found) = self.served_names.read().ok()?.iter().find(same) {
            return Some(Arc::clone(found));
        }
        let mut names = self.served_names.write().ok()?;
        if let Some(found) = names.iter().find(same) {
            return Some(Arc::clone(found));
        }
        if names.len() >= MAX_SERVED_NAMES {
            return None;
        }
        let served = Arc::new(ServedBy { model: model.to_owned(), variant: variant.to_owned() });
        names.push(Arc::clone(&served));
        Some(served)
    }

    fn current_is_old(&self) -> bool {
        let age = self.elapsed_ms().saturating_sub(self.started_ms.load(Ordering::Relaxed));
        u128::from(age) >= self.generation_age.as_millis()
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Empties the older generation and makes it the current one. One caller does it; the
    /// others go on with the generation they saw.
    fn rotate(&self) {
        if self.rotating.swap(true, Ordering::Acquire) {
            return;
        }
        let older = 1 - self.current.load(Ordering::Acquire);
        self.generations[older].clear();
        self.started_ms.store(self.elapsed_ms(), Ordering::Relaxed);
        // The id whose insert rotated counts in the new generation.
        self.count.store(1, Ordering::Relaxed);
        self.current.store(older, Ordering::Release);
        self.rotating.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request that was refused before it was authenticated or routed.
    fn insert(recent: &RecentRequests, id: u64) {
        recent.remember(id, None, "", "");
    }

    #[test]
    fn ids_live_at_least_half_the_window_and_at_most_all_of_it() {
        let recent = RecentRequests::with_window(10, Duration::from_secs(3600));
        for id in 0..10 {
            insert(&recent, id);
        }
        // 10 ids: the first generation (5) rotated out of current, all still known.
        assert!((0..10).all(|id| recent.get(id).is_some()));
        insert(&recent, 10);
        // The 11th id emptied the oldest generation (ids 0..5).
        assert!((0..5).all(|id| recent.get(id).is_none()));
        assert!((5..11).all(|id| recent.get(id).is_some()));
        let held: usize = recent.generations.iter().map(DashMap::len).sum();
        assert!(held <= 10);
    }

    #[test]
    fn a_generation_past_half_the_age_is_rotated() {
        let recent = RecentRequests::with_window(1000, Duration::ZERO);
        insert(&recent, 1);
        insert(&recent, 2);
        insert(&recent, 3);
        // Every insert rotates: only the last two ids are left.
        assert!(recent.get(1).is_none());
        assert!(recent.get(2).is_some() && recent.get(3).is_some());
    }

    #[test]
    fn an_entry_keeps_its_owner_and_one_shared_name_per_model_and_variant() {
        let recent = RecentRequests::with_window(4, Duration::from_secs(3600));
        recent.remember(1, Some(7), "chat", "a");
        recent.remember(2, None, "chat", "a");
        recent.remember(3, None, "chat", ""); // rotates: 1 and 2 are in the older generation now
        assert_eq!(recent.get(1).unwrap().owner, Some(7));
        assert_eq!(recent.get(2).unwrap().owner, None);
        let (a, b) = (recent.get(1).unwrap().served.unwrap(), recent.get(2).unwrap().served.unwrap());
        assert!(Arc::ptr_eq(&a, &b), "one shared name per (model, variant)");
        assert!(recent.get(3).unwrap().served.is_none(), "not routed");
        assert!(recent.get(99).is_none(), "an unknown id stays unknown");
    }
}
