//! The index of recent request ids that `POST /v1/feedback` checks: who may send feedback for
//! a request, and which model and variant served it.
//!
//! Owns: [`RecentRequests`], a ring of the last [`FEEDBACK_WINDOW_REQUESTS`] requests, each at
//! the slot its id names (`wire::request_id`: an id carries its sequence number, enciphered),
//! forgotten when the ring comes round to its slot again or after [`FEEDBACK_WINDOW`].
//! Must not: cost a request more than one write of one slot: it runs on every request of a
//! gateway with datasets. (A concurrent map cost ~0.5 µs a request here: each insert a
//! random write into megabytes of table; the ring is written in order.)

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use super::{FEEDBACK_WINDOW, FEEDBACK_WINDOW_REQUESTS, ServedBy};
use crate::wire::request_id::{self, IdParts};

/// Distinct (model, variant) pairs shared by the entries; past this, new pairs are not
/// remembered (a config has a handful; only endless renames across reloads could reach it).
const MAX_SERVED_NAMES: usize = 4096;

/// A slot's tag while a request is being written into it.
const WRITING: u64 = u64::MAX;
/// A slot's tag before any request was written into it.
const EMPTY: u64 = 0;

/// What is remembered of a recent request.
#[derive(Debug, Clone, Default)]
pub(super) struct Recent {
    /// Hash of the name of the key that made it, once authenticated.
    owner: Option<u64>,
    /// Who served it, once routed.
    pub served: Option<Arc<ServedBy>>,
}

impl Recent {
    /// Whether the key whose name hashes to `owner` made it.
    pub fn made_by(&self, owner: u64) -> bool {
        self.owner == Some(owner_code(owner))
    }
}

/// One request: its id's tag (written last, so a reader that sees it sees the rest), then
/// its owner, who served it and when.
#[derive(Default)]
struct Slot {
    tag: AtomicU64,
    /// [`owner_code`] of the owner's hash; 0 for none.
    owner: AtomicU64,
    /// Index + 1 into the served names; 0 for none.
    served: AtomicU32,
    /// Seconds since the ring's origin.
    at: AtomicU32,
}

pub(super) struct RecentRequests {
    /// Allocated on the first request remembered (a config with no dataset never is).
    slots: OnceLock<Box<[Slot]>>,
    size: u64,
    max_age: Duration,
    origin: Instant,
    /// Each (model, variant) once, shared by the entries it served.
    served_names: RwLock<Vec<Arc<ServedBy>>>,
}

impl std::fmt::Debug for RecentRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecentRequests").field("size", &self.size).finish()
    }
}

impl RecentRequests {
    pub fn new() -> RecentRequests {
        RecentRequests::with_window(FEEDBACK_WINDOW_REQUESTS, FEEDBACK_WINDOW)
    }

    fn with_window(requests: u64, max_age: Duration) -> RecentRequests {
        RecentRequests {
            slots: OnceLock::new(),
            size: requests.max(1),
            max_age,
            origin: Instant::now(),
            served_names: RwLock::new(Vec::new()),
        }
    }

    /// Remembers request `id` (one of weir's; any other text is not remembered): the hash of
    /// the key that made it, and the public model and variant that served it (none when not
    /// routed).
    pub fn remember(&self, id: &str, owner: Option<u64>, model: &str, variant: &str) {
        let Some(parts) = request_id::parts(id) else { return };
        let served = if variant.is_empty() { 0 } else { self.served_index(model, variant) };
        let slot = self.slot(parts);
        // Two requests a whole ring apart could reach one slot at once: one writes at a time.
        loop {
            let tag = slot.tag.load(Ordering::Relaxed);
            if tag != WRITING
                && slot.tag.compare_exchange_weak(tag, WRITING, Ordering::Acquire, Ordering::Relaxed).is_ok()
            {
                break;
            }
            std::hint::spin_loop();
        }
        fence(Ordering::Release);
        slot.owner.store(owner.map_or(0, owner_code), Ordering::Relaxed);
        slot.served.store(served, Ordering::Relaxed);
        slot.at.store(self.seconds(), Ordering::Relaxed);
        slot.tag.store(tag_code(parts.tag), Ordering::Release);
    }

    pub fn get(&self, id: &str) -> Option<Recent> {
        let parts = request_id::parts(id)?;
        let want = tag_code(parts.tag);
        let slot = self.slot(parts);
        if slot.tag.load(Ordering::Acquire) != want {
            return None;
        }
        let (owner, served, at) =
            (slot.owner.load(Ordering::Relaxed), slot.served.load(Ordering::Relaxed), slot.at.load(Ordering::Relaxed));
        fence(Ordering::Acquire);
        // Rewritten while read (the ring came round): that request is gone.
        if slot.tag.load(Ordering::Relaxed) != want {
            return None;
        }
        if Duration::from_secs(u64::from(self.seconds().saturating_sub(at))) > self.max_age {
            return None;
        }
        let served = served.checked_sub(1).and_then(|index| {
            self.served_names.read().ok().and_then(|names| names.get(index as usize).map(Arc::clone))
        });
        Some(Recent { owner: (owner != 0).then_some(owner), served })
    }

    fn slot(&self, parts: IdParts) -> &Slot {
        let slots = self.slots.get_or_init(|| (0..self.size).map(|_| Slot::default()).collect());
        &slots[(parts.sequence % self.size) as usize]
    }

    fn seconds(&self) -> u32 {
        u32::try_from(self.origin.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// The index + 1 of the shared `ServedBy` of a (model, variant) pair; 0 past the limit.
    fn served_index(&self, model: &str, variant: &str) -> u32 {
        let same = |s: &Arc<ServedBy>| s.model == model && s.variant == variant;
        let found = |names: &[Arc<ServedBy>]| names.iter().position(same).map(|i| i as u32 + 1);
        if let Some(index) = self.served_names.read().ok().and_then(|names| found(&names)) {
            return index;
        }
        let Ok(mut names) = self.served_names.write() else { return 0 };
        if let Some(index) = found(&names) {
            return index;
        }
        if names.len() >= MAX_SERVED_NAMES {
            return 0;
        }
        names.push(Arc::new(ServedBy { model: model.to_owned(), variant: variant.to_owned() }));
        names.len() as u32
    }
}

/// A tag as kept in a slot: never [`EMPTY`] or [`WRITING`].
fn tag_code(tag: u64) -> u64 {
    tag.clamp(EMPTY + 1, WRITING - 1)
}

/// An owner's hash as kept in a slot: never 0, which means none.
fn owner_code(owner: u64) -> u64 {
    owner.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request that was refused before it was authenticated or routed.
    fn insert(recent: &RecentRequests) -> String {
        let id = request_id::mint();
        recent.remember(&id, None, "", "");
        id
    }

    #[test]
    fn the_last_ring_of_ids_is_remembered() {
        let recent = RecentRequests::with_window(10, Duration::from_secs(3600));
        let ids: Vec<String> = (0..10).map(|_| insert(&recent)).collect();
        assert!(ids.iter().all(|id| recent.get(id).is_some()));
        // Other tests mint ids too, so more than one may be forgotten; the newest stays.
        let newest = insert(&recent);
        assert!(recent.get(&newest).is_some());
        let more: Vec<String> = (0..10).map(|_| insert(&recent)).collect();
        assert!(ids.iter().all(|id| recent.get(id).is_none()), "a whole ring later, all are gone");
        assert!(recent.get(more.last().unwrap()).is_some());
    }

    #[test]
    fn ids_older_than_the_window_are_forgotten() {
        let recent = RecentRequests::with_window(1000, Duration::ZERO);
        let id = insert(&recent);
        assert!(recent.get(&id).is_some(), "within the same second");
        let mut aged = RecentRequests::with_window(1000, Duration::ZERO);
        aged.origin -= Duration::from_secs(5);
        let id = insert(&aged);
        aged.slot(request_id::parts(&id).unwrap()).at.store(0, Ordering::Relaxed);
        assert!(aged.get(&id).is_none());
    }

    #[test]
    fn only_the_exact_id_is_found() {
        let recent = RecentRequests::with_window(1000, Duration::from_secs(3600));
        let id = insert(&recent);
        let mut forged = id.clone().into_bytes();
        forged[6] = if forged[6] == b'a' { b'b' } else { b'a' };
        assert!(recent.get(std::str::from_utf8(&forged).unwrap()).is_none(), "same slot, other id");
        for text in ["", "req_1", "chatcmpl-1"] {
            recent.remember(text, Some(1), "m", "v");
            assert!(recent.get(text).is_none());
        }
    }

    #[test]
    fn an_entry_keeps_its_owner_and_one_shared_name_per_model_and_variant() {
        let recent = RecentRequests::with_window(100, Duration::from_secs(3600));
        let (one, two, three) = (request_id::mint(), request_id::mint(), request_id::mint());
        recent.remember(&one, Some(7), "chat", "a");
        recent.remember(&two, None, "chat", "a");
        recent.remember(&three, Some(0), "chat", "");
        assert!(recent.get(&one).unwrap().made_by(7));
        assert!(!recent.get(&one).unwrap().made_by(8));
        assert!(!recent.get(&two).unwrap().made_by(0) && recent.get(&two).unwrap().owner.is_none());
        assert!(recent.get(&three).unwrap().made_by(0), "a hash of 0 is an owner too");
        let (a, b) = (recent.get(&one).unwrap().served.unwrap(), recent.get(&two).unwrap().served.unwrap());
        assert!(Arc::ptr_eq(&a, &b), "one shared name per (model, variant)");
        assert_eq!((a.model.as_str(), a.variant.as_str()), ("chat", "a"));
        assert!(recent.get(&three).unwrap().served.is_none(), "not routed");
        assert!(recent.get(&request_id::mint()).is_none(), "an unknown id stays unknown");
    }

    #[test]
    fn writers_on_many_threads_leave_every_id_whole() {
        let recent = Arc::new(RecentRequests::with_window(64, Duration::from_secs(3600)));
        let threads: Vec<_> = (0..4u64)
            .map(|owner| {
                let recent = Arc::clone(&recent);
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let id = request_id::mint();
                        recent.remember(&id, Some(owner), "m", &format!("v{owner}"));
                        if let Some(entry) = recent.get(&id) {
                            // Found, it is this request's, never a mix of two.
                            assert!(entry.made_by(owner));
                            assert_eq!(entry.served.unwrap().variant, format!("v{owner}"));
                        }
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
    }
}
