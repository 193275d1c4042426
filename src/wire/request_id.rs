//! weir's own request ids: `req_` and 32 hex digits, unique and unguessable, that also tell
//! the ring of recent requests (feedback's index) which slot an id is kept in.
//!
//! Owns: minting ids and reading one back into its [`IdParts`]. An id is 16 bytes: 8 random,
//! then the process's running count of ids enciphered with a key drawn at start (a Feistel
//! network over the 64 bits), so that an index can keep the last N ids in a ring, at slot
//! `sequence % N`, instead of hashing each into a table (a random write into megabytes of
//! table, the largest cost feedback put on every request). Enciphered, the count tells a
//! client nothing of the gateway's traffic. Must not: be relied on as a secret: an id is
//! printed in every response; what a holder of an id may do is decided by who sent it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Rounds of the Feistel network; each half is mixed three times.
const ROUNDS: usize = 6;

/// What an id says: its place in the sequence of ids this process minted, and a tag that
/// tells it apart from any other id with the same place modulo a ring's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdParts {
    pub sequence: u64,
    pub tag: u64,
}

struct Minter {
    count: AtomicU64,
    keys: [u64; ROUNDS],
}

fn minter() -> &'static Minter {
    static MINTER: OnceLock<Minter> = OnceLock::new();
    MINTER.get_or_init(|| Minter { count: AtomicU64::new(0), keys: rand::random() })
}

/// A new id: `req_`, 16 random hex digits, then the enciphered sequence in 16 more.
pub fn mint() -> String {
    let minter = minter();
    let sequence = minter.count.fetch_add(1, Ordering::Relaxed);
    let random: u64 = rand::random();
    let mut id = [0u8; 4 + 32];
    id[..4].copy_from_slice(b"req_");
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&random.to_be_bytes());
    bytes[8..].copy_from_slice(&encipher(sequence, &minter.keys).to_be_bytes());
    // Both lengths are fixed, so encoding cannot fail; the fallback only satisfies the types.
    if hex::encode_to_slice(bytes, &mut id[4..]).is_err() {
        return "req_0".to_owned();
    }
    String::from_utf8_lossy(&id).into_owned()
}

/// The parts of an id of weir's shape (any such id, minted here or not: a ring compares the
/// tag it keeps); `None` for any other text.
pub fn parts(id: &str) -> Option<IdParts> {
    let hex_digits = id.strip_prefix("req_").filter(|rest| rest.len() == 32)?;
    let mut bytes = [0u8; 16];
    hex::decode_to_slice(hex_digits, &mut bytes).ok()?;
    let random = u64::from_be_bytes(bytes[..8].try_into().ok()?);
    let enciphered = u64::from_be_bytes(bytes[8..].try_into().ok()?);
    Some(IdParts { sequence: decipher(enciphered, &minter().keys), tag: mix(random, enciphered) })
}

fn encipher(block: u64, keys: &[u64; ROUNDS]) -> u64 {
    let (mut left, mut right) = ((block >> 32) as u32, block as u32);
    for key in keys {
        (left, right) = (right, left ^ round(right, *key));
    }
    (u64::from(left) << 32) | u64::from(right)
}

fn decipher(block: u64, keys: &[u64; ROUNDS]) -> u64 {
    let (mut left, mut right) = ((block >> 32) as u32, block as u32);
    for key in keys.iter().rev() {
        (left, right) = (right ^ round(left, *key), left);
    }
    (u64::from(left) << 32) | u64::from(right)
}

/// The round function: a keyed multiply-fold of the half block.
fn round(half: u32, key: u64) -> u32 {
    let mixed = mix(u64::from(half) ^ key, key.rotate_left(32) | 1);
    (mixed ^ (mixed >> 32)) as u32
}

/// Folded 128-bit multiply (as foldhash mixes).
fn mix(a: u64, b: u64) -> u64 {
    let product = u128::from(a).wrapping_mul(u128::from(b));
    (product as u64) ^ ((product >> 64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_weirs_shape_and_read_back_to_their_sequence() {
        let first = parts(&mint()).unwrap().sequence;
        for offset in 1..1000u64 {
            let id = mint();
            assert_eq!(id.len(), 36);
            assert!(id.starts_with("req_") && id[4..].bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
            // Other tests mint ids at the same time: the sequence only grows.
            assert!(parts(&id).unwrap().sequence >= first + offset);
        }
    }

    #[test]
    fn the_cipher_is_a_permutation_that_hides_the_count() {
        let keys: [u64; ROUNDS] = rand::random();
        let mut seen = std::collections::HashSet::new();
        for sequence in (0..10_000u64).chain([u64::MAX, u64::MAX - 1, 1 << 32]) {
            let enciphered = encipher(sequence, &keys);
            assert_eq!(decipher(enciphered, &keys), sequence);
            assert!(seen.insert(enciphered));
        }
        // Consecutive counts land far apart: about half of the bits differ.
        let differing: u32 = (0..1000u64).map(|s| (encipher(s, &keys) ^ encipher(s + 1, &keys)).count_ones()).sum();
        assert!((24_000..40_000).contains(&differing), "{differing}");
    }

    #[test]
    fn other_text_has_no_parts() {
        for text in
            ["", "req_", "req_123", "chatcmpl-1", &format!("req_{}", "g".repeat(32)), &format!("x{}", "0".repeat(35))]
        {
            assert_eq!(parts(text), None, "{text}");
        }
        let id = mint();
        let mut other = id.clone().into_bytes();
        other[5] = if other[5] == b'0' { b'1' } else { b'0' };
        let (a, b) = (parts(&id).unwrap(), parts(std::str::from_utf8(&other).unwrap()).unwrap());
        assert_eq!(a.sequence, b.sequence, "the random half does not change the place");
        assert_ne!(a.tag, b.tag, "but it changes the tag");
    }
}
