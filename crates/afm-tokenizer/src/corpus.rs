//! Corpus vocabularies: a model trained from scratch needs embedding and
//! LM-head rows only for the BPE tokens its data uses.
//!
//! GPT-2's BPE stays exactly as it is (the same text gives the same ids);
//! a [`CorpusVocab`] only says which BPE ids get a row of the model. The
//! 256 single-byte tokens always do, so any text still encodes: a BPE token
//! outside the corpus is written as its bytes (byte fallback, lossless:
//! decoding gives the same bytes). Ids stay GPT-2 ids everywhere outside
//! the model (shards, prompts, decoded text); only the model's embedding
//! and LM head are indexed by *rows*:
//!
//! | rows                          | ids                                  |
//! |-------------------------------|--------------------------------------|
//! | `0 .. kept.len()`             | the kept BPE ids, ascending          |
//! | `kept.len() + 0 ..= + 3`      | `<|endoftext|>`, `<|task|>`, `<|end|>`, `<|obs|>` |
//! | `kept.len() + 4 + i`          | `<|agent:NAME|>` of agent `i`        |
//!
//! Without a corpus vocabulary rows and ids coincide (the full GPT-2 table).

use crate::EOT;
use std::sync::{Arc, OnceLock};

/// Marks a BPE id without a row in [`CorpusVocab::row_of`].
const ABSENT: u32 = u32::MAX;

/// The BPE ids a model has rows for (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusVocab {
    /// Kept BPE ids (< `<|endoftext|>`), ascending; includes every byte token.
    kept: Arc<Vec<u32>>,
    /// Dense `[EOT]` table: row of each BPE id, or `ABSENT`.
    row_of: Arc<Vec<u32>>,
}

/// The ids of the 256 single-byte tokens, indexed by byte.
pub(crate) fn byte_ids() -> &'static [u32; 256] {
    static IDS: OnceLock<[u32; 256]> = OnceLock::new();
    IDS.get_or_init(|| {
        let bpe = tiktoken_rs::r50k_base_singleton();
        let mut ids = [u32::MAX; 256];
        for id in 0..EOT {
            if let Ok(b) = bpe.decode_bytes(&[id]) {
                if b.len() == 1 && ids[b[0] as usize] == u32::MAX {
                    ids[b[0] as usize] = id;
                }
            }
        }
        debug_assert!(ids.iter().all(|&i| i != u32::MAX));
        ids
    })
}

impl CorpusVocab {
    /// The vocabulary of the BPE ids in `ids` (specials and ids beyond
    /// GPT-2's are ignored), plus every byte token.
    pub fn from_ids(ids: impl IntoIterator<Item = u32>) -> Self {
        let mut seen = vec![false; EOT as usize];
        for &b in byte_ids() {
            seen[b as usize] = true;
        }
        for id in ids {
            if id < EOT {
                seen[id as usize] = true;
            }
        }
        let kept: Vec<u32> = (0..EOT).filter(|&i| seen[i as usize]).collect();
        Self::from_kept(kept).expect("ids are in range and include the bytes")
    }

    /// Rebuild from the saved list of kept ids (checked: ascending, BPE ids
    /// only, every byte token present).
    pub fn from_kept(kept: Vec<u32>) -> Result<Self, String> {
        if let Some(w) = kept.windows(2).find(|w| w[0] >= w[1]) {
            return Err(format!(
                "corpus ids must be strictly ascending ({} then {})",
                w[0], w[1]
            ));
        }
        if let Some(&bad) = kept.iter().find(|&&i| i >= EOT) {
            return Err(format!(
                "corpus id {bad} is not a BPE token (must be < {EOT})"
            ));
        }
        let mut row_of = vec![ABSENT; EOT as usize];
        for (r, &id) in kept.iter().enumerate() {
            row_of[id as usize] = r as u32;
        }
        if let Some(b) = byte_ids().iter().find(|&&b| row_of[b as usize] == ABSENT) {
            return Err(format!(
                "corpus ids lack the byte token {b} (every byte token must be kept)"
            ));
        }
        Ok(Self {
            kept: Arc::new(kept),
            row_of: Arc::new(row_of),
        })
    }

    /// The kept BPE ids, ascending.
    pub fn kept(&self) -> &[u32] {
        &self.kept
    }

    /// Rows before the specials.
    pub fn n_bpe(&self) -> usize {
        self.kept.len()
    }

    /// Row of BPE id `id` (< `<|endoftext|>`), if kept.
    pub fn bpe_row(&self, id: u32) -> Option<u32> {
        self.row_of
            .get(id as usize)
            .copied()
            .filter(|&r| r != ABSENT)
    }

    /// True when BPE id `id` has a row.
    pub fn contains(&self, id: u32) -> bool {
        self.bpe_row(id).is_some()
    }

    /// Replace every BPE id without a row by its bytes' tokens, in place
    /// (`ids` as produced by the BPE encoder).
    pub fn byte_fallback(&self, ids: &mut Vec<u32>) {
        if ids.iter().all(|&i| i >= EOT || self.contains(i)) {
            return;
        }
        let bpe = tiktoken_rs::r50k_base_singleton();
        let bytes = byte_ids();
        let mut out = Vec::with_capacity(ids.len() + 8);
        for &id in ids.iter() {
            if id >= EOT || self.contains(id) {
                out.push(id);
            } else {
                let b = bpe.decode_bytes(&[id]).unwrap_or_default();
                out.extend(b.iter().map(|&x| bytes[x as usize]));
            }
        }
        *ids = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_256_distinct_tokens() {
        let b = byte_ids();
        let mut s: Vec<u32> = b.to_vec();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 256);
        let bpe = tiktoken_rs::r50k_base_singleton();
        for (byte, &id) in b.iter().enumerate() {
            assert_eq!(bpe.decode_bytes(&[id]).unwrap(), vec![byte as u8]);
        }
    }

    #[test]
    fn kept_list_is_checked() {
        assert!(CorpusVocab::from_kept(vec![3, 2]).is_err());
        assert!(CorpusVocab::from_kept(vec![EOT]).is_err());
        let e = CorpusVocab::from_kept(vec![1, 2]).unwrap_err();
        assert!(e.contains("byte token"), "{e}");
        let c = CorpusVocab::from_ids([995, 15496, 50300]);
        assert_eq!(c.n_bpe(), 258);
        assert_eq!(CorpusVocab::from_kept(c.kept().to_vec()).unwrap(), c);
    }
}
