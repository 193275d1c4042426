//! A byte-pair-encoding vocabulary in flat memory, for counting tokens.
//!
//! Owns: one tiktoken encoding's vocabulary (`o200k_base`, `cl100k_base`) and counting the
//! tokens a text encodes to, exactly as tiktoken does: the same split pattern, then the same
//! lowest-rank-first merges inside each piece.
//!
//! Why not tiktoken's `CoreBPE` itself: it keeps every token's bytes three times (encoder
//! map, decoder map, sorted list), each in an allocation of its own, which is 44 MiB for
//! `o200k_base`, most of a gateway's memory. Here the vocabulary is one byte string, one
//! offset array, one hash index of ranks and a table of pairs: about 5 MiB. tiktoken stays
//! the source of the vocabulary (read once while building, then dropped) and the reference
//! the tests compare every count with.
//!
//! Counting a piece looks it up in the index, which misses the core's cache; the counts of
//! short pieces seen recently are kept in a small direct-mapped memo beside it, and the
//! two-byte tokens every merge starts from in a table of their own.
//!
//! Must not: be built on an async thread (building reads tiktoken's tables, ~150 ms), or
//! encode: callers need counts, so no token ids are collected.

use std::collections::BinaryHeap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use fancy_regex::Regex;
use hashbrown::DefaultHashBuilder;
use hashbrown::HashTable;
use tiktoken_rs::CoreBPE;

type Rank = u32;

/// The split pattern of `cl100k_base`, as tiktoken has it (tiktoken-rs exports only
/// `o200k`'s).
const CL100K_PATTERN: &str = "'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}++|\\p{N}{1,3}+| ?[^\\s\\p{L}\\p{N}]++[\\r\\n]*+|\\s++$|\\s*[\\r\\n]|\\s+(?!\\S)|\\s";

/// Pieces at least this long are merged with a heap instead of rescanning (as tiktoken).
const LARGE_PIECE: usize = 100;

/// Slots of a vocabulary's piece memo: 32 KiB, so it stays in the core's cache.
const PIECE_SLOTS: usize = 4096;
/// Pieces up to this long are remembered (words, numbers, punctuation runs). A longer one is
/// always counted, so a wrong hit (a 64-bit collision under a per-process random seed) can
/// cost at most this many tokens of an estimate.
const MEMO_PIECE: usize = 24;
/// Bits of a slot's word that hold the count (at most [`MEMO_PIECE`]); the rest hold the
/// piece's hash.
const PIECE_COUNT_BITS: u32 = 8;

/// Why a vocabulary could not be built (a broken tiktoken table: a bug, not input).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("tiktoken table: {0}")]
    Tiktoken(String),
    #[error("split pattern: {0}")]
    Pattern(#[from] Box<fancy_regex::Error>),
    #[error("the vocabulary has {0} tokens, more than an offset can address")]
    TooLarge(usize),
}

/// One encoding's vocabulary and split pattern.
pub struct Bpe {
    tokens: Tokens,
    /// Ranks, found by the hash of their bytes, each with the bytes of a short token inline
    /// ([`Slot`]).
    index: HashTable<Slot>,
    hasher: DefaultHashBuilder,
    split: Regex,
    /// Token counts of short pieces seen recently, by their hash: a text is mostly words
    /// the vocabulary has seen many times, and a lookup in the 200,000-token index misses
    /// the cache twice (its slot, then the token's bytes to compare).
    pieces: Box<[AtomicU64]>,
    /// The rank of every two-byte token, by its bytes (`Rank::MAX` for none): 256 KiB. A
    /// piece's merges start from all its byte pairs, so a new word (a name, an id) of n bytes
    /// looks up n - 1 pairs before any longer part; here each is one read, not a hash, a
    /// probe and a compare.
    pairs: Box<[Rank]>,
}

impl Bpe {
    pub fn o200k() -> Result<Bpe, BuildError> {
        let table = tiktoken_rs::o200k_base().map_err(|e| BuildError::Tiktoken(e.to_string()))?;
        Bpe::from_tiktoken(&table, tiktoken_rs::O200K_BASE_PAT_STR)
    }

    pub fn cl100k() -> Result<Bpe, BuildError> {
        let table = tiktoken_rs::cl100k_base().map_err(|e| BuildError::Tiktoken(e.to_string()))?;
        Bpe::from_tiktoken(&table, CL100K_PATTERN)
    }

    fn from_tiktoken(table: &CoreBPE, pattern: &str) -> Result<Bpe, BuildError> {
        let tokens = Tokens::copy(table)?;
        let hasher = DefaultHashBuilder::default();
        let index = tokens.index(&hasher)?;
        let split = Regex::new(pattern).map_err(Box::new)?;
        let pieces = (0..PIECE_SLOTS).map(|_| AtomicU64::new(0)).collect();
        let pairs = tokens.pairs()?;
        Ok(Bpe { tokens, index, hasher, split, pieces, pairs })
    }

    /// How many ordinary tokens the vocabulary has.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.tokens.len()
    }

    fn token(&self, rank: Rank) -> &[u8] {
        self.tokens.get(rank)
    }

    fn rank(&self, bytes: &[u8]) -> Option<Rank> {
        self.rank_by_hash(bytes, self.hasher.hash_one(bytes))
    }

    fn rank_by_hash(&self, bytes: &[u8], hash: u64) -> Option<Rank> {
        let found = match Slot::inline(bytes) {
            Some(inline) => self.index.find(hash, |slot| slot.same_inline(inline)),
            None => self.index.find(hash, |slot| !slot.is_inline() && self.token(slot.rank()) == bytes),
        };
        found.map(|slot| slot.rank())
    }

    /// The number of tokens tiktoken encodes `text` to (`encode_ordinary(text).len()`), or
    /// `None` if the split pattern gave up on the text (its backtracking limit).
    pub fn count(&self, text: &str) -> Option<usize> {
        let mut tokens = 0usize;
        for piece in self.split.find_iter(text) {
            let piece = piece.ok()?.as_str().as_bytes();
            tokens = tokens.saturating_add(self.piece_tokens(piece));
        }
        Some(tokens)
    }

    fn piece_tokens(&self, piece: &[u8]) -> usize {
        if piece.len() <= 1 {
            return piece.len();
        }
        let hash = self.hasher.hash_one(piece);
        let slot = (piece.len() <= MEMO_PIECE).then(|| self.piece_slot(hash)).flatten();
        let tag = hash >> PIECE_COUNT_BITS;
        if let Some(slot) = slot {
            let word = slot.load(Ordering::Relaxed);
            if word != 0 && word >> PIECE_COUNT_BITS == tag {
                return usize::try_from(word & ((1 << PIECE_COUNT_BITS) - 1)).unwrap_or(piece.len());
            }
        }
        let count = if self.rank_by_hash(piece, hash).is_some() {
            1
        } else if piece.len() < LARGE_PIECE {
            self.merge_small(piece)
        } else {
            self.merge_large(piece)
        };
        if let Some(slot) = slot {
            // A piece of at most MEMO_PIECE bytes has at most as many tokens.
            slot.store(tag << PIECE_COUNT_BITS | count as u64, Ordering::Relaxed);
        }
        count
    }

    fn piece_slot(&self, hash: u64) -> Option<&AtomicU64> {
        self.pieces.get(usize::try_from(hash).unwrap_or_default() % PIECE_SLOTS)
    }

    fn rank_or_max(&self, piece: &[u8], from: usize, to: usize) -> Rank {
        match piece.get(from..to) {
            Some(&[a, b]) => self.pairs.get(pair_slot(a, b)).copied().unwrap_or(Rank::MAX),
            Some(bytes) => self.rank(bytes).unwrap_or(Rank::MAX),
            None => Rank::MAX,
        }
    }

    /// tiktoken's `_byte_pair_merge`: `parts` holds `(start, rank of the pair starting
    /// there)`; the lowest-ranked pair merges until none is in the vocabulary. O(parts ×
    /// merges), which beats a heap on short pieces.
    #[allow(
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        reason = "positions stay within a piece of at least 2 bytes by the loop's construction, as in tiktoken"
    )]
    fn merge_small(&self, piece: &[u8]) -> usize {
        let mut parts: Vec<(usize, Rank)> = Vec::with_capacity(piece.len() + 1);
        let mut min = (Rank::MAX, usize::MAX);
        for i in 0..piece.len() - 1 {
            let rank = self.rank_or_max(piece, i, i + 2);
            if rank < min.0 {
                min = (rank, i);
            }
            parts.push((i, rank));
        }
        parts.push((piece.len() - 1, Rank::MAX));
        parts.push((piece.len(), Rank::MAX));
        // The rank of the pair starting at part `i` once part `i + 1` is gone.
        let pair_rank = |parts: &[(usize, Rank)], i: usize| match parts.get(i + 3) {
            Some(&(end, _)) => self.rank_or_max(piece, parts[i].0, end),
            None => Rank::MAX,
        };
        while min.0 != Rank::MAX {
            let i = min.1;
            if i > 0 {
                parts[i - 1].1 = pair_rank(&parts, i - 1);
            }
            parts[i].1 = pair_rank(&parts, i);
            parts.remove(i + 1);
            min = (Rank::MAX, usize::MAX);
            for (i, &(_, rank)) in parts[..parts.len() - 1].iter().enumerate() {
                if rank < min.0 {
                    min = (rank, i);
                }
            }
        }
        parts.len() - 1
    }

    /// tiktoken's `_byte_pair_merge_large`: the same merges in the same order, found with a
    /// heap so that a long piece costs O(n log n), not O(n²).
    #[allow(
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        reason = "positions stay within a piece of at least 2 bytes by the loop's construction, as in tiktoken"
    )]
    fn merge_large(&self, piece: &[u8]) -> usize {
        let mut state: Vec<State> = Vec::with_capacity(piece.len());
        state.push(State { prev: usize::MAX, end: 1, next_end: 2, next_rank: Rank::MAX });
        let mut heap = BinaryHeap::with_capacity(piece.len());
        for i in 0..piece.len() - 1 {
            let rank = self.rank_or_max(piece, i, i + 2);
            if rank != Rank::MAX {
                heap.push(Merge { start: i, rank });
                state[i].next_rank = rank;
            }
            state.push(State { prev: i, end: i + 2, next_end: i + 3, next_rank: Rank::MAX });
        }
        let potential_merge = |state: &mut Vec<State>, heap: &mut BinaryHeap<Merge>, start: usize, next_end: usize| {
            state[start].next_end = next_end;
            state[start].next_rank = Rank::MAX;
            if next_end <= piece.len() {
                let rank = self.rank_or_max(piece, start, next_end);
                if rank != Rank::MAX {
                    heap.push(Merge { start, rank });
                    state[start].next_rank = rank;
                }
            }
        };
        while let Some(left) = heap.pop() {
            if left.rank == Rank::MAX {
                break;
            }
            if left.rank != state[left.start].next_rank {
                continue; // invalidated by an earlier merge
            }
            let left_start = left.start;
            let right_start = state[left_start].end;
            let right_end = state[left_start].next_end;
            let right_next_end = state[right_start].next_end;
            state[left_start].end = right_end;
            potential_merge(&mut state, &mut heap, left_start, right_next_end);
            if right_end < state.len() {
                state[right_end].prev = left_start;
            }
            if left_start > 0 {
                let prev_start = state[left_start].prev;
                potential_merge(&mut state, &mut heap, prev_start, right_end);
            }
            state[right_start].next_rank = Rank::MAX;
        }
        let (mut tokens, mut i) = (0, 0);
        while i < state.len() {
            tokens += 1;
            i = state[i].end;
        }
        tokens
    }
}

/// The tokens laid end to end: token `r`'s bytes are `bytes[starts[r]..starts[r + 1]]`.
struct Tokens {
    bytes: Box<[u8]>,
    starts: Box<[u32]>,
}

impl Tokens {
    /// The ordinary tokens of `table`: ranks `0..n`, before the special ones.
    fn copy(table: &CoreBPE) -> Result<Tokens, BuildError> {
        let mut bytes = Vec::with_capacity(2 << 20);
        let mut starts = vec![0];
        for rank in 0.. {
            let Ok(token) = table.decode_bytes(&[rank]) else { break };
            bytes.extend_from_slice(&token);
            starts.push(u32::try_from(bytes.len()).map_err(|_| BuildError::TooLarge(bytes.len()))?);
        }
        Ok(Tokens { bytes: bytes.into_boxed_slice(), starts: starts.into_boxed_slice() })
    }

    fn len(&self) -> usize {
        self.starts.len().saturating_sub(1)
    }

    fn get(&self, rank: Rank) -> &[u8] {
        let at = |r: usize| self.starts.get(r).map_or(0, |&s| s as usize);
        let rank = rank as usize;
        self.bytes.get(at(rank)..at(rank.saturating_add(1))).unwrap_or_default()
    }

    /// The rank of each two-byte token at [`pair_slot`] of its bytes, `Rank::MAX` elsewhere.
    fn pairs(&self) -> Result<Box<[Rank]>, BuildError> {
        let mut pairs = vec![Rank::MAX; 1 << 16].into_boxed_slice();
        for rank in 0..self.len() {
            let rank = Rank::try_from(rank).map_err(|_| BuildError::TooLarge(self.len()))?;
            if let &[a, b] = self.get(rank)
                && let Some(slot) = pairs.get_mut(pair_slot(a, b))
            {
                *slot = rank;
            }
        }
        Ok(pairs)
    }

    /// Every rank, found by the hash of its bytes.
    fn index(&self, hasher: &DefaultHashBuilder) -> Result<HashTable<Slot>, BuildError> {
        let mut index = HashTable::with_capacity(self.len());
        for rank in 0..self.len() {
            let rank = Rank::try_from(rank).ok().filter(|&r| r <= Slot::MAX_RANK);
            let rank = rank.ok_or(BuildError::TooLarge(self.len()))?;
            let bytes = self.get(rank);
            let hash_of = |slot: &Slot| hasher.hash_one(self.get(slot.rank()));
            index.insert_unique(hasher.hash_one(bytes), Slot::new(rank, bytes), hash_of);
        }
        Ok(index)
    }
}

/// A rank in the index, with the token's bytes beside it when it has at most
/// [`Slot::INLINE`] of them: most lookups are of short parts of a word being merged, and
/// comparing them here spares two reads that miss the cache (the token's offset, then its
/// bytes). Bits: the rank (20), the inline length (3; 0 for a longer token), the bytes (40).
#[derive(Clone, Copy)]
struct Slot(u64);

impl Slot {
    const INLINE: usize = 5;
    const RANK_BITS: u32 = 20;
    const MAX_RANK: Rank = (1 << Slot::RANK_BITS) - 1;

    fn new(rank: Rank, bytes: &[u8]) -> Slot {
        Slot(Slot::inline(bytes).unwrap_or(0) | u64::from(rank))
    }

    /// The length and bytes of a token of at most [`Slot::INLINE`] bytes, in a slot's
    /// high bits.
    fn inline(bytes: &[u8]) -> Option<u64> {
        if bytes.is_empty() || bytes.len() > Slot::INLINE {
            return None;
        }
        let mut packed = [0u8; 8];
        packed.get_mut(..bytes.len())?.copy_from_slice(bytes);
        let packed = u64::from_le_bytes(packed) << 3 | bytes.len() as u64;
        Some(packed << Slot::RANK_BITS)
    }

    fn rank(self) -> Rank {
        (self.0 & u64::from(Slot::MAX_RANK)) as Rank
    }

    fn is_inline(self) -> bool {
        self.0 >> Slot::RANK_BITS != 0
    }

    fn same_inline(self, inline: u64) -> bool {
        self.0 >> Slot::RANK_BITS << Slot::RANK_BITS == inline
    }
}

/// Where the two-byte token `a b` is in [`Bpe::pairs`].
fn pair_slot(a: u8, b: u8) -> usize {
    usize::from(a) << 8 | usize::from(b)
}

/// A part of a long piece being merged: it spans `start..end` (its index is `start`).
struct State {
    prev: usize,
    end: usize,
    next_end: usize,
    next_rank: Rank,
}

/// A candidate merge; the heap pops the lowest rank, then the leftmost start.
#[derive(Eq, PartialEq, Clone, Copy)]
struct Merge {
    start: usize,
    rank: Rank,
}

impl Ord for Merge {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.rank.cmp(&self.rank).then_with(|| other.start.cmp(&self.start))
    }
}

impl PartialOrd for Merge {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "tests use known small numbers"
)]
mod tests {
    use super::*;

    /// Texts that reach every branch: known words, merges, long pieces, Unicode, numbers,
    /// whitespace runs, contractions.
    fn corpus() -> Vec<String> {
        let mut texts: Vec<String> = [
            "",
            " ",
            "hello world",
            "Résumé: the quick brown fox 🦊 jumps over the lazy dog.",
            "I'll we've they're don't CAN'T",
            "1234567890 3.14159 1e-9 0x1F",
            "  leading and trailing   \n\n\t tabs\r\n",
            "日本語のテキストと中文文本，还有한국어.",
            "{\"role\":\"user\",\"content\":\"hi\"}",
            "fn main() { println!(\"{}\", 1 + 2); }",
            "supercalifragilisticexpialidocious antidisestablishmentarianism",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        texts.push("a".repeat(5000));
        texts.push("ab1 ".repeat(300));
        texts.push("xq".repeat(180) + "zzzyx".repeat(40).as_str());
        texts.push("!@#$%^&*()".repeat(30));
        texts.push("🦊".repeat(120));
        // Pseudo-random bytes of assorted scripts (a fixed LCG: reproducible).
        let alphabet: Vec<char> = "abcdefgXYZ019 ,.'\n\téßж中🦊-_/\\\"".chars().collect();
        let mut seed = 7u64;
        for len in [3, 17, 64, 99, 100, 101, 250, 1000] {
            let text: String = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    alphabet[(seed >> 33) as usize % alphabet.len()]
                })
                .collect();
            texts.push(text);
        }
        texts
    }

    #[test]
    fn counts_equal_tiktokens_for_both_encodings() {
        for (ours, theirs) in [
            (Bpe::o200k().unwrap(), tiktoken_rs::o200k_base_singleton()),
            (Bpe::cl100k().unwrap(), tiktoken_rs::cl100k_base_singleton()),
        ] {
            assert!(ours.len() > 100_000, "{}", ours.len());
            // The second pass counts the short pieces from the piece memo.
            for pass in 0..2 {
                for text in corpus() {
                    assert_eq!(ours.count(&text), Some(theirs.encode_ordinary(&text).len()), "pass {pass}: {text:?}");
                }
            }
        }
    }

    #[test]
    fn every_token_is_found_by_its_bytes_alone() {
        let bpe = Bpe::cl100k().unwrap();
        for rank in 0..Rank::try_from(bpe.len()).unwrap() {
            assert_eq!(bpe.rank(bpe.token(rank)), Some(rank), "{:?}", bpe.token(rank));
        }
        // Inline bytes carry their length: a zero byte is not padding.
        let a = bpe.rank(b"a").unwrap();
        assert_ne!(bpe.rank(b"a\0"), Some(a));
        assert_eq!(bpe.rank(b""), None);
    }

    #[test]
    fn the_pair_table_agrees_with_the_index() {
        let bpe = Bpe::o200k().unwrap();
        let mut found = 0;
        for pair in 0..=u16::MAX {
            let [a, b] = pair.to_be_bytes();
            let expected = bpe.rank(&[a, b]);
            assert_eq!(bpe.rank_or_max(&[a, b], 0, 2), expected.unwrap_or(Rank::MAX), "{a} {b}");
            found += usize::from(expected.is_some());
        }
        assert!(found > 1000, "{found} two-byte tokens");
    }

    #[test]
    fn long_pieces_merge_alike_on_both_paths() {
        let bpe = Bpe::o200k().unwrap();
        for len in [2, 5, 40, 99] {
            let piece = "abcabcxyz".repeat(12);
            let piece = &piece.as_bytes()[..len];
            assert_eq!(bpe.merge_small(piece), bpe.merge_large(piece), "{len}");
        }
    }
}
