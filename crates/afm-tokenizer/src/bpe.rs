//! Fast exact `r50k_base` encoder: the hand-written pre-tokenizer of
//! [`crate::pretok`], one table lookup per piece that is a whole token
//! (pieces and tokens of up to 15 bytes are keyed by one `u128`), a
//! fixed-size thread-local cache for pieces that are not, and tiktoken's own
//! rank-based byte-pair merge for the rest.
//!
//! Exactness: the ranks are read back from tiktoken-rs' `CoreBPE` (token id
//! `i` decodes to the bytes whose rank is `i`), and the merge below is the
//! same algorithm as tiktoken's `byte_pair_encode`: repeatedly merge the
//! adjacent pair whose concatenated bytes have the lowest rank, the leftmost
//! one on ties (the linear scan for pieces under 100 bytes, a heap with the
//! same order above, as tiktoken does). A piece that is a token on its own
//! is that token without merging, as in `CoreBPE::encode_ordinary`. The
//! cache only stores results of that merge.

use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::collections::BinaryHeap;
use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;

use crate::pretok::CharClasses;

/// No merge (tiktoken's `Rank::MAX`).
const NONE: u32 = u32::MAX;
/// Tokens and pieces up to this many bytes are keyed by one `u128`.
const SHORT: usize = 15;
/// Slots of the per-thread piece cache (direct-mapped, fixed size: 4096 x
/// 48 bytes = 192 KiB per thread, whatever the input).
const CACHE_SLOTS: usize = 1 << 12;
/// Pieces whose merge gives more ids than this are not cached.
const CACHE_MAX_IDS: usize = 7;
/// tiktoken switches to the heap merge at this piece length.
const LARGE_PIECE: usize = 100;

/// The key of a byte string of at most [`SHORT`] bytes: the bytes
/// little-endian, the length in the top byte (so no two strings share a key;
/// only the empty string, never a piece, has key 0, an empty cache slot's).
#[inline(always)]
fn short_key(b: &[u8]) -> u128 {
    debug_assert!(b.len() <= SHORT);
    let n = b.len() as u64;
    let (lo, hi) = match b.split_first_chunk::<8>() {
        Some((head, tail)) => (u64::from_le_bytes(*head), load_le(tail)),
        None => (load_le(b), 0),
    };
    (((hi | n << 56) as u128) << 64) | lo as u128
}

/// The bytes of `b` (fewer than 8) as a little-endian `u64`, without a
/// byte-by-byte copy: two overlapping loads whose shared bytes agree.
#[inline(always)]
fn load_le(b: &[u8]) -> u64 {
    let n = b.len();
    if let (Some(head), Some(tail)) = (b.first_chunk::<4>(), b.last_chunk::<4>()) {
        let head = u32::from_le_bytes(*head) as u64;
        let tail = u32::from_le_bytes(*tail) as u64;
        head | tail << (8 * (n - 4))
    } else if let (Some(&first), Some(&last)) = (b.first(), b.last()) {
        // 1 to 3 bytes: first, middle (the first or last again for 1 and 2
        // bytes) and last.
        let mid = b[n / 2] as u64;
        first as u64 | mid << (8 * (n / 2)) | (last as u64) << (8 * (n - 1))
    } else {
        0
    }
}

/// A cached piece: its key and the ids of its merge.
#[derive(Clone, Copy, Default)]
struct Slot {
    key: u128,
    len: u32,
    ids: [u32; CACHE_MAX_IDS],
}

impl Slot {
    #[inline(always)]
    fn index(key: u128) -> usize {
        let h = ((key as u64) ^ ((key >> 64) as u64).rotate_left(29))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> (64 - CACHE_SLOTS.trailing_zeros())) as usize
    }
}

thread_local! {
    /// Piece key -> ids, for pieces of up to [`SHORT`] bytes that needed a
    /// merge; a new piece overwrites its slot.
    static CACHE: RefCell<Vec<Slot>> = const { RefCell::new(Vec::new()) };
}

/// The `r50k_base` ranks, keyed by token bytes.
pub(crate) struct FastBpe {
    /// Tokens of up to [`SHORT`] bytes, by [`short_key`].
    short: FxHashMap<u128, u32>,
    /// Longer tokens.
    long: FxHashMap<Box<[u8]>, u32>,
    /// Rank of every 2-byte string (`NONE` when not a token), by
    /// `b0 << 8 | b1`.
    pair: Box<[u32]>,
    /// Rank of each single byte (all 256 are tokens in r50k_base).
    byte_rank: [u32; 256],
    classes: &'static CharClasses,
}

impl FastBpe {
    /// Read the rank table back from `core` (ids `0..n_ranks`).
    pub(crate) fn from_core(core: &CoreBPE, n_ranks: u32) -> Result<Self, String> {
        let mut short = FxHashMap::default();
        let mut long = FxHashMap::default();
        let mut pair = vec![NONE; 1 << 16].into_boxed_slice();
        let mut byte_rank = [NONE; 256];
        for id in 0..n_ranks {
            let bytes = core
                .decode_bytes(&[id])
                .map_err(|_| format!("rank {id} has no bytes"))?;
            let duplicate = match bytes.len() {
                0 => return Err(format!("rank {id} has no bytes")),
                1 => std::mem::replace(&mut byte_rank[bytes[0] as usize], id) != NONE,
                2 => {
                    let slot = &mut pair[(bytes[0] as usize) << 8 | bytes[1] as usize];
                    std::mem::replace(slot, id) != NONE
                }
                n if n <= SHORT => short.insert(short_key(&bytes), id).is_some(),
                _ => long.insert(bytes.into_boxed_slice(), id).is_some(),
            };
            if duplicate {
                return Err(format!("rank {id}: duplicate token bytes"));
            }
        }
        if let Some(b) = byte_rank.iter().position(|&r| r == NONE) {
            return Err(format!("byte {b} is not a token"));
        }
        Ok(Self {
            short,
            long,
            pair,
            byte_rank,
            classes: CharClasses::get(),
        })
    }

    /// The shared `r50k_base` instance (ranks 0..50256; `<|endoftext|>` is a
    /// special token, never produced by ordinary encoding).
    pub(crate) fn r50k() -> &'static Self {
        static BPE: OnceLock<FastBpe> = OnceLock::new();
        BPE.get_or_init(|| {
            Self::from_core(tiktoken_rs::r50k_base_singleton(), 50256)
                .unwrap_or_else(|e| panic!("r50k_base rank table shipped with tiktoken-rs: {e}"))
        })
    }

    /// Rank of the token `bytes` (non-empty), `NONE` when it is not one.
    #[inline]
    fn rank(&self, bytes: &[u8]) -> u32 {
        match bytes {
            [b] => self.byte_rank[*b as usize],
            [b0, b1] => self.pair[(*b0 as usize) << 8 | *b1 as usize],
            _ if bytes.len() <= SHORT => self.short_rank(short_key(bytes)),
            _ => self.long.get(bytes).copied().unwrap_or(NONE),
        }
    }

    #[inline(always)]
    fn short_rank(&self, key: u128) -> u32 {
        self.short.get(&key).copied().unwrap_or(NONE)
    }

    /// Append the ids of `text` to `out` (same ids as
    /// `CoreBPE::encode_ordinary`).
    pub(crate) fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        let s = text.as_bytes();
        CACHE.with(|cache| {
            // A re-entrant borrow cannot happen (no callbacks), but never
            // panic over it: go on without the cache.
            let mut guard = cache.try_borrow_mut();
            let mut cache = match guard.as_mut() {
                Ok(c) => {
                    if c.is_empty() {
                        c.resize(CACHE_SLOTS, Slot::default());
                    }
                    Some(&mut c[..])
                }
                Err(_) => None,
            };
            let mut i = 0;
            while i < s.len() {
                let end = self.classes.piece_end(s, i);
                let piece = &s[i..end];
                i = end;
                match piece.len() {
                    1 | 2 => {
                        let r = self.rank(piece);
                        if r != NONE {
                            out.push(r);
                        } else {
                            self.merge_into(piece, out);
                        }
                    }
                    n if n <= SHORT => {
                        let key = short_key(piece);
                        let r = self.short_rank(key);
                        if r != NONE {
                            out.push(r);
                            continue;
                        }
                        let Some(cache) = cache.as_deref_mut() else {
                            self.merge_into(piece, out);
                            continue;
                        };
                        let slot = &mut cache[Slot::index(key)];
                        if slot.key == key {
                            out.extend_from_slice(&slot.ids[..slot.len as usize]);
                            continue;
                        }
                        let from = out.len();
                        self.merge_into(piece, out);
                        let ids = &out[from..];
                        if ids.len() <= CACHE_MAX_IDS {
                            slot.key = key;
                            slot.len = ids.len() as u32;
                            slot.ids[..ids.len()].copy_from_slice(ids);
                        }
                    }
                    _ => match self.long.get(piece) {
                        Some(&r) => out.push(r),
                        None => self.merge_into(piece, out),
                    },
                }
            }
        });
    }

    /// tiktoken's `byte_pair_encode` for a piece that is not a token itself.
    fn merge_into(&self, piece: &[u8], out: &mut Vec<u32>) {
        match piece.len() {
            0 => {}
            1 => out.push(self.byte_rank[piece[0] as usize]),
            n if n < LARGE_PIECE => self.merge_small(piece, out),
            _ => self.merge_large(piece, out),
        }
    }

    /// tiktoken's `_byte_pair_merge` on fixed arrays: part `k` starts at
    /// `start[k]`, `rank[k]` is the rank of merging it with the next part,
    /// and `token[k]` is its own token (tracked, so no lookup is needed at
    /// the end). Removing part `k + 1` shifts the arrays as `Vec::remove`
    /// does in tiktoken.
    fn merge_small(&self, piece: &[u8], out: &mut Vec<u32>) {
        let n = piece.len();
        debug_assert!((2..LARGE_PIECE).contains(&n));
        let mut start = [0u32; LARGE_PIECE + 1];
        let mut rank = [NONE; LARGE_PIECE + 1];
        let mut token = [0u32; LARGE_PIECE];
        let mut min = (NONE, usize::MAX);
        for i in 0..n - 1 {
            let r = self.pair[(piece[i] as usize) << 8 | piece[i + 1] as usize];
            if r < min.0 {
                min = (r, i);
            }
            start[i] = i as u32;
            rank[i] = r;
            token[i] = self.byte_rank[piece[i] as usize];
        }
        token[n - 1] = self.byte_rank[piece[n - 1] as usize];
        start[n - 1] = (n - 1) as u32;
        start[n] = n as u32;
        // rank[n - 1] and rank[n] are NONE already.
        let mut parts = n + 1;
        // Rank of merging parts `i` and `i + 1` before part `i + 1` is
        // removed (hence `i + 3`), as tiktoken's `get_rank`.
        let pair_rank = |start: &[u32], parts: usize, i: usize| {
            if i + 3 < parts {
                self.rank(&piece[start[i] as usize..start[i + 3] as usize])
            } else {
                NONE
            }
        };
        while min.0 != NONE {
            let i = min.1;
            token[i] = min.0;
            token.copy_within(i + 2..parts - 1, i + 1);
            if i > 0 {
                rank[i - 1] = pair_rank(&start, parts, i - 1);
            }
            rank[i] = pair_rank(&start, parts, i);
            start.copy_within(i + 2..parts, i + 1);
            rank.copy_within(i + 2..parts, i + 1);
            parts -= 1;
            min = (NONE, usize::MAX);
            for (k, &r) in rank[..parts - 1].iter().enumerate() {
                if r < min.0 {
                    min = (r, k);
                }
            }
        }
        out.extend_from_slice(&token[..parts - 1]);
    }

    /// tiktoken's `_byte_pair_merge_large`: the same merge order (lowest
    /// rank, then leftmost) with a heap and lazy invalidation.
    fn merge_large(&self, piece: &[u8], out: &mut Vec<u32>) {
        #[derive(PartialEq, Eq)]
        struct Merge {
            start: usize,
            rank: u32,
        }
        impl Ord for Merge {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                other
                    .rank
                    .cmp(&self.rank)
                    .then_with(|| other.start.cmp(&self.start))
            }
        }
        impl PartialOrd for Merge {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
        struct State {
            prev: usize,
            end: usize,
            next_end: usize,
            next_rank: u32,
            cur_rank: u32,
        }

        let n = piece.len();
        let mut state: Vec<State> = (0..n)
            .map(|i| State {
                prev: if i == 0 { usize::MAX } else { i - 1 },
                end: i + 1,
                next_end: i + 2,
                next_rank: NONE,
                cur_rank: NONE,
            })
            .collect();
        let mut heap = BinaryHeap::with_capacity(n);
        for i in 0..n - 1 {
            let rank = self.rank(&piece[i..i + 2]);
            if rank != NONE {
                heap.push(Merge { start: i, rank });
                state[i].next_rank = rank;
            }
        }
        let potential =
            |state: &mut [State], heap: &mut BinaryHeap<Merge>, start: usize, ne: usize| {
                state[start].next_end = ne;
                state[start].next_rank = NONE;
                if ne <= n {
                    let rank = self.rank(&piece[start..ne]);
                    if rank != NONE {
                        heap.push(Merge { start, rank });
                        state[start].next_rank = rank;
                    }
                }
            };
        while let Some(left) = heap.pop() {
            if left.rank != state[left.start].next_rank {
                continue;
            }
            let left_start = left.start;
            let right_start = state[left_start].end;
            let right_end = state[left_start].next_end;
            let right_next_end = state[right_start].next_end;
            state[left_start].cur_rank = state[left_start].next_rank;
            state[left_start].end = right_end;
            potential(&mut state, &mut heap, left_start, right_next_end);
            if right_end < n {
                state[right_end].prev = left_start;
            }
            if left_start > 0 {
                let prev_start = state[left_start].prev;
                potential(&mut state, &mut heap, prev_start, right_end);
            }
            state[right_start].next_rank = NONE;
        }
        let mut i = 0;
        while i < n {
            let s = &state[i];
            out.push(if s.cur_rank != NONE {
                s.cur_rank
            } else {
                self.byte_rank[piece[i] as usize]
            });
            i = s.end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn short_key_is_bytes_and_length() {
        let mut state = 0x1234_5678_9ABC_DEF1;
        for _ in 0..20_000 {
            let n = (xorshift(&mut state) % 16) as usize;
            let b: Vec<u8> = (0..n).map(|_| xorshift(&mut state) as u8).collect();
            let mut want = [0u8; 16];
            want[..n].copy_from_slice(&b);
            want[15] = n as u8;
            assert_eq!(short_key(&b), u128::from_le_bytes(want), "{b:?}");
        }
        assert_ne!(short_key(b"a"), short_key(b"a\0"));
        assert_ne!(short_key(b""), short_key(b"\0"));
    }

    /// The array merge (under 100 bytes) and the heap merge agree with
    /// each other and with tiktoken's own merge (`byte_pair_split`, public
    /// in tiktoken-rs), on random pieces that are mostly not tokens
    /// (letters, spaces, UTF-8 lead and continuation bytes).
    #[test]
    fn merges_agree_with_tiktoken() {
        let bpe = FastBpe::r50k();
        let core = tiktoken_rs::r50k_base_singleton();
        let ranks: FxHashMap<Vec<u8>, u32> = (0..50256)
            .map(|id| (core.decode_bytes(&[id]).expect("rank"), id))
            .collect();
        let alphabet = b"etaoinshrdlu  xyz_.,'\xc3\xa9\xe6\xbc\xa2\x80\xbf0123";
        let mut state = 0xDEAD_BEEF_u64;
        for _ in 0..3000 {
            let n = 2 + (xorshift(&mut state) % 160) as usize;
            let piece: Vec<u8> = (0..n)
                .map(|_| alphabet[(xorshift(&mut state) % alphabet.len() as u64) as usize])
                .collect();
            let want: Vec<u32> = tiktoken_rs::byte_pair_split(&piece, &ranks)
                .iter()
                .map(|p| ranks[*p])
                .collect();
            let mut large = Vec::new();
            bpe.merge_large(&piece, &mut large);
            assert_eq!(large, want, "{piece:?}");
            if n < LARGE_PIECE {
                let mut small = Vec::new();
                bpe.merge_small(&piece, &mut small);
                assert_eq!(small, want, "{piece:?}");
            }
        }
    }
}
