//! Variant assignment: which variant of a split a request belongs to.
//!
//! Owns: the stable hash and weighted rendezvous hashing (HRW) used for `sticky` models, and
//! weighted random choice for the rest.
//! Must not: look at target health beyond the eligibility the caller passes in, or allocate:
//! this runs on every request.
//!
//! Why rendezvous hashing: each variant scores a user independently (`-ln(u) / weight`, `u`
//! a uniform draw derived from the hash of user and variant) and the lowest score wins. The
//! winner is the variant whose weight-scaled "exponential clock" rings first, which gives
//! exactly the weights' proportions, and because scores are independent:
//! - adding a variant moves only the users it now wins (to it), nobody else;
//! - raising one variant's weight moves users only to it, lowering it moves users only
//!   away from it;
//! - the hash is our own fixed function of the bytes, so every replica and every restart
//!   agrees.

/// A stable 64-bit hash of `parts` (FNV-1a over the bytes with a separator between parts,
/// finished by MurmurHash3's 64-bit mixer so every output bit depends on every input bit).
/// It must never change: sticky assignments across restarts and replicas depend on it.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hash = (hash ^ 0xff).wrapping_mul(PRIME);
        }
        for byte in *part {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(PRIME);
        }
    }
    mix(hash)
}

/// MurmurHash3's `fmix64`: a bijection that spreads every input bit over the output.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// The rendezvous score of a candidate with `seed` and `weight` for a request whose sticky
/// value hashed to `key`: lower wins. `weight` must be positive.
pub fn score(key: u64, seed: u64, weight: u64) -> f64 {
    // Mixing twice keeps (key, seed) pairs that differ in few bits uncorrelated.
    let bits = mix(key ^ mix(seed));
    // A uniform draw in (0, 1): 53 bits, shifted off zero so `ln` stays finite.
    let unit = ((bits >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -unit.ln() / weight as f64
}

/// Index of the winner among `candidates` (`(seed, weight)`, weight 0 = not eligible) for
/// the sticky hash `key`; `None` when nothing is eligible.
pub fn rendezvous(key: u64, candidates: impl Iterator<Item = (u64, u64)>) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, (seed, weight)) in candidates.enumerate() {
        if weight == 0 {
            continue;
        }
        let s = score(key, seed, weight);
        if best.is_none_or(|(_, b)| s < b) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

/// Index of a weighted random pick among `weights` (0 = not eligible); `total` is their sum.
pub fn weighted_random(total: u64, weights: impl Iterator<Item = u64>) -> Option<usize> {
    if total == 0 {
        return None;
    }
    let mut point = rand::random_range(0..total);
    let mut last = None;
    for (i, weight) in weights.enumerate() {
        if weight == 0 {
            continue;
        }
        if point < weight {
            return Some(i);
        }
        point -= weight;
        last = Some(i);
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds(names: &[&str]) -> Vec<u64> {
        names.iter().map(|n| stable_hash(&[b"model", n.as_bytes()])).collect()
    }

    fn assign(user: u64, seeds: &[u64], weights: &[u64]) -> usize {
        rendezvous(user, seeds.iter().copied().zip(weights.iter().copied())).unwrap()
    }

    fn user(i: u32) -> u64 {
        stable_hash(&[format!("user-{i}").as_bytes()])
    }

    #[test]
    fn the_hash_is_fixed_forever() {
        // Changing these values would reshuffle every sticky user on upgrade.
        assert_eq!(stable_hash(&[b""]), mix(0xcbf2_9ce4_8422_2325));
        assert_eq!(stable_hash(&[b"alice"]), stable_hash(&[b"alice"]));
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
        assert_eq!(stable_hash(&[b"user-42"]), 0xa395_32c7_ab05_1e8d, "{:#x}", stable_hash(&[b"user-42"]));
    }

    #[test]
    fn rendezvous_follows_the_weights() {
        let seeds = seeds(&["control", "candidate"]);
        let n = 100_000;
        let control = (0..n).filter(|&i| assign(user(i), &seeds, &[80, 20]) == 0).count();
        let share = control as f64 / f64::from(n);
        assert!((share - 0.8).abs() < 0.01, "control share {share}");
    }

    #[test]
    fn adding_a_variant_moves_users_only_to_it() {
        let two = seeds(&["control", "candidate"]);
        let three = seeds(&["control", "candidate", "canary"]);
        let n = 20_000;
        let mut moved = 0;
        for i in 0..n {
            let before = assign(user(i), &two, &[80, 20]);
            let after = assign(user(i), &three, &[80, 20, 5]);
            if after != before {
                assert_eq!(after, 2, "user {i} moved from {before} to {after}, not to the new variant");
                moved += 1;
            }
        }
        let share = f64::from(moved) / f64::from(n);
        assert!((share - 5.0 / 105.0).abs() < 0.01, "moved share {share}");
    }

    #[test]
    fn changing_one_weight_moves_only_the_users_it_must() {
        let seeds = seeds(&["a", "b", "c"]);
        let n = 20_000;
        let mut moved = 0;
        for i in 0..n {
            let before = assign(user(i), &seeds, &[50, 30, 20]);
            let after = assign(user(i), &seeds, &[50, 30, 40]);
            if after != before {
                assert_eq!(after, 2, "raising c's weight may only move users to c");
                moved += 1;
            }
            let lower = assign(user(i), &seeds, &[50, 30, 10]);
            if lower != before {
                assert_eq!(before, 2, "lowering c's weight may only move users away from c");
            }
        }
        // c goes from 20% to 40/120 = 33.3%: about 13 points of users move.
        let share = f64::from(moved) / f64::from(n);
        assert!((share - (40.0 / 120.0 - 0.2)).abs() < 0.015, "moved share {share}");
    }

    #[test]
    fn ineligible_candidates_are_skipped_and_their_users_spread() {
        let seeds = seeds(&["a", "b", "c"]);
        for i in 0..2_000 {
            let full = assign(user(i), &seeds, &[1, 1, 1]);
            let without_b = assign(user(i), &seeds, &[1, 0, 1]);
            assert_ne!(without_b, 1);
            if full != 1 {
                assert_eq!(without_b, full, "users of a and c stay put when b drops out");
            }
        }
        assert_eq!(rendezvous(1, [(1, 0), (2, 0)].into_iter()), None);
    }

    #[test]
    fn weighted_random_follows_the_weights_and_skips_zero() {
        let n = 100_000;
        let mut counts = [0u32; 3];
        for _ in 0..n {
            counts[weighted_random(100, [80, 0, 20].into_iter()).unwrap()] += 1;
        }
        assert_eq!(counts[1], 0);
        let share = f64::from(counts[0]) / f64::from(n);
        assert!((share - 0.8).abs() < 0.01, "share {share}");
        assert_eq!(weighted_random(0, [0, 0].into_iter()), None);
    }
}
