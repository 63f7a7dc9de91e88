//! Batches from prepared shards: the seeded epoch order (or the curriculum
//! order), the data cursor saved with checkpoints, boundary loss weighting,
//! and the tensors one forward pass needs.
//!
//! The data order's only random generator is `afm_format::SplitMix64`
//! (the same on every platform; its `below` is unbiased).

use crate::config::LossConfig;
use afm_format::shards::{ShardIndex, Shards};
use afm_format::SplitMix64;
use afm_tokenizer::{Tokenizer, END, FIRST_ROLE_TOKEN, OBS};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// How the rows of a split are ordered in each epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RowOrder {
    /// A seeded shuffle of all rows.
    Shuffle,
    /// The stored order (a strict curriculum).
    Stored,
    /// A curriculum of `n` stages: the rows (stored easy -> hard) are cut
    /// into `n` equal contiguous buckets, walked in order, each shuffled
    /// afresh every epoch.
    Stages(usize),
}

impl RowOrder {
    /// The order a split's index asks for (see `ShardIndex::curriculum`).
    pub fn of_index(index: &ShardIndex) -> Self {
        match (index.curriculum, index.curriculum_stages) {
            (false, _) => RowOrder::Shuffle,
            (true, 0) => RowOrder::Stored,
            (true, n) => RowOrder::Stages(n),
        }
    }
}

/// Seeded Fisher-Yates shuffle of `v`.
fn shuffle_in_place(v: &mut [usize], rng: &mut SplitMix64) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

/// Order of the rows in `epoch` (see [`RowOrder`]). A pure function of
/// (seed, epoch, rows, order), so a resumed run rebuilds it from the
/// cursor alone.
pub fn epoch_order(rows: usize, seed: u64, epoch: u64, order: RowOrder) -> Vec<usize> {
    let mut out: Vec<usize> = (0..rows).collect();
    let mut rng = SplitMix64(seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ 0x5EED);
    match order {
        RowOrder::Stored => {}
        RowOrder::Shuffle => shuffle_in_place(&mut out, &mut rng),
        RowOrder::Stages(n) => {
            let n = n.clamp(1, rows.max(1));
            for k in 0..n {
                let (a, b) = (k * rows / n, (k + 1) * rows / n);
                shuffle_in_place(&mut out[a..b], &mut rng);
            }
        }
    }
    out
}

/// Where the train stream is: epoch and position in that epoch's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Cursor {
    pub epoch: u64,
    pub pos: usize,
}

/// The endless train stream over a split, epoch after epoch.
pub struct RowStream {
    rows: usize,
    seed: u64,
    how: RowOrder,
    order: Vec<usize>,
    cursor: Cursor,
}

impl RowStream {
    /// Start (or continue) at `cursor`.
    pub fn new(rows: usize, seed: u64, how: RowOrder, cursor: Cursor) -> Self {
        let order = epoch_order(rows, seed, cursor.epoch, how);
        Self {
            rows,
            seed,
            how,
            order,
            cursor,
        }
    }

    /// The cursor (what the next row will be).
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Next `n` row ids; crosses into the next epoch when one runs out.
    pub fn take(&mut self, n: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.cursor.pos >= self.rows {
                self.cursor = Cursor {
                    epoch: self.cursor.epoch + 1,
                    pos: 0,
                };
                self.order = epoch_order(self.rows, self.seed, self.cursor.epoch, self.how);
            }
            out.push(self.order[self.cursor.pos]);
            self.cursor.pos += 1;
        }
        out
    }
}

/// Loss weight of every position of a row after boundary weighting:
/// targets that are markers (`<|agent:X|>`, `<|obs|>`, `<|end|>`) get
/// `role_token_weight` times their weight, and the first `handoff_tokens`
/// targets after an input `<|agent:X|>` (same document) get
/// `handoff_weight` times. Positions with weight 0 stay 0.
pub fn boundary_weights(
    tokens: &[u32],
    targets: &[u32],
    weights: &[f32],
    docs: &[u16],
    l: &LossConfig,
) -> Vec<f32> {
    let mut w = weights.to_vec();
    if l.role_token_weight != 1.0 {
        for (i, &t) in targets.iter().enumerate() {
            if w[i] != 0.0 && (t >= FIRST_ROLE_TOKEN || t == OBS || t == END) {
                w[i] *= l.role_token_weight as f32;
            }
        }
    }
    if l.handoff_tokens > 0 && l.handoff_weight != 1.0 {
        for (i, &t) in tokens.iter().enumerate() {
            if t < FIRST_ROLE_TOKEN {
                continue;
            }
            for j in i..(i + l.handoff_tokens).min(tokens.len()) {
                if docs[j] != docs[i] {
                    break;
                }
                if w[j] != 0.0 {
                    w[j] *= l.handoff_weight as f32;
                }
            }
        }
    }
    w
}

/// One micro-batch: model inputs for `B` rows plus the `N` loss positions.
pub struct Batch {
    /// Row ids in the split (for error messages).
    pub rows: Vec<usize>,
    /// `[B, T]` i64.
    pub tokens: Tensor,
    pub roles: Tensor,
    pub positions: Tensor,
    pub docs: Tensor,
    /// `[N]` i64 flat indices into `B*T` of the positions with weight > 0.
    pub select: Tensor,
    /// `[N]` i64 targets at those positions.
    pub targets: Tensor,
    /// `[N]` f32 loss weights (after boundary weighting).
    pub weights: Tensor,
    /// Same as `weights`, on the CPU.
    pub weights_host: Vec<f32>,
    /// Owner role id of each selected position (CPU copy, for routing).
    pub owners: Vec<u16>,
    /// Same as `select`, on the CPU.
    pub select_host: Vec<i64>,
    /// Target rows at the selected positions (CPU copy).
    pub targets_host: Vec<u32>,
    /// Sum of `weights`.
    pub weight_sum: f64,
    /// Rows x row length.
    pub n_positions: usize,
    /// Positions per row.
    pub row_len: usize,
    /// CPU copies of the `[B*T]` inputs (tokens as model rows; teachers map
    /// them to their own rows).
    pub tokens_host: Vec<i64>,
    pub roles_host: Vec<i64>,
    pub positions_host: Vec<i64>,
    pub docs_host: Vec<i64>,
}

impl Batch {
    /// Number of loss positions.
    pub fn n_select(&self) -> usize {
        self.select_host.len()
    }
}

/// Build a micro-batch from rows of `shards`. The shards hold token ids;
/// the batch's `tokens`/`targets` (and their host copies) hold the model
/// rows of `vocab` (the model's tokenizer: equal to the ids unless it has a
/// corpus vocabulary). Ids without a row become row 0; `check_ids` rejects
/// such data before training.
pub fn make_batch(
    shards: &Shards,
    rows: &[usize],
    l: &LossConfig,
    vocab: &Tokenizer,
    device: Device,
) -> Batch {
    let row_of = |id: u32| vocab.row(id).unwrap_or(0);
    let t = shards.index.row_len;
    let b = rows.len();
    let mut tokens = Vec::with_capacity(b * t);
    let mut roles = Vec::with_capacity(b * t);
    let mut positions = Vec::with_capacity(b * t);
    let mut docs = Vec::with_capacity(b * t);
    let mut select = Vec::new();
    let mut targets = Vec::new();
    let mut weights = Vec::new();
    let mut owners = Vec::new();
    for (bi, &r) in rows.iter().enumerate() {
        let s = r * t..(r + 1) * t;
        let w = boundary_weights(
            &shards.tokens[s.clone()],
            &shards.targets[s.clone()],
            &shards.weights[s.clone()],
            &shards.docs[s.clone()],
            l,
        );
        tokens.extend(shards.tokens[s.clone()].iter().map(|&x| row_of(x) as i64));
        roles.extend(shards.roles[s.clone()].iter().map(|&x| x as i64));
        positions.extend(shards.positions[s.clone()].iter().map(|&x| x as i64));
        docs.extend(shards.docs[s.clone()].iter().map(|&x| x as i64));
        for (i, &wi) in w.iter().enumerate() {
            if wi > 0.0 {
                select.push((bi * t + i) as i64);
                targets.push(row_of(shards.targets[r * t + i]));
                weights.push(wi);
                owners.push(shards.owners[r * t + i]);
            }
        }
    }
    let shape = [b as i64, t as i64];
    let to = |v: &[i64]| Tensor::from_slice(v).view(shape).to_device(device);
    let weight_sum: f64 = weights.iter().map(|&w| w as f64).sum();
    Batch {
        rows: rows.to_vec(),
        tokens: to(&tokens),
        roles: to(&roles),
        positions: to(&positions),
        docs: to(&docs),
        select: Tensor::from_slice(&select).to_device(device),
        targets: Tensor::from_slice(&targets.iter().map(|&x| x as i64).collect::<Vec<_>>())
            .to_device(device),
        weights: Tensor::from_slice(&weights)
            .to_kind(Kind::Float)
            .to_device(device),
        weights_host: weights,
        owners,
        select_host: select,
        targets_host: targets,
        weight_sum,
        n_positions: b * t,
        row_len: t,
        tokens_host: tokens,
        roles_host: roles,
        positions_host: positions,
        docs_host: docs,
    }
}

/// Check that every id in the split has a row in the model (`vocab` is the
/// model's tokenizer, `vocab_size` its row count) and every role a role
/// embedding.
pub fn check_ids(
    shards: &Shards,
    split: &str,
    vocab: &Tokenizer,
    vocab_size: usize,
    n_roles: usize,
) -> anyhow::Result<()> {
    let has_row = |id: u32| vocab.row(id).is_some_and(|r| (r as usize) < vocab_size);
    let what = |id: u32| {
        match vocab.corpus() {
        Some(c) => format!(
            "the model's corpus vocabulary ({} BPE tokens + specials; was the data prepared with another vocabulary?)",
            c.n_bpe()
        ),
        None => format!(
            "the model's vocabulary (vocab_size {vocab_size}, token {id} has no row)"
        ),
    }
    };
    if let Some(i) = shards.tokens.iter().position(|&x| !has_row(x)) {
        let id = shards.tokens[i];
        anyhow::bail!(
            "{split}.tokens.u32: position {i} has token {id} ({:?}), which is not in {}",
            vocab.decode(&[id]).unwrap_or_default(),
            what(id)
        );
    }
    for (i, (&tg, &w)) in shards.targets.iter().zip(&shards.weights).enumerate() {
        if w > 0.0 && !has_row(tg) {
            anyhow::bail!(
                "{split}.targets.u32: position {i} has target {tg} ({:?}), which is not in {}",
                vocab.decode(&[tg]).unwrap_or_default(),
                what(tg)
            );
        }
    }
    if n_roles > 0 {
        if let Some(i) = shards.roles.iter().position(|&x| x as usize >= n_roles) {
            anyhow::bail!(
                "{split}.roles.u16: position {i} has role {} but the model has {n_roles} role embeddings",
                shards.roles[i]
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_a_seeded_permutation() {
        let a = epoch_order(100, 7, 0, RowOrder::Shuffle);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(100, 7, 0, RowOrder::Shuffle));
        assert_ne!(a, epoch_order(100, 7, 1, RowOrder::Shuffle));
        assert_ne!(a, epoch_order(100, 8, 0, RowOrder::Shuffle));
        assert_eq!(epoch_order(5, 7, 3, RowOrder::Stored), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn curriculum_rows_are_shuffled_inside_stages_every_epoch() {
        let (rows, stages) = (103, 4);
        let e0 = epoch_order(rows, 7, 0, RowOrder::Stages(stages));
        let e1 = epoch_order(rows, 7, 1, RowOrder::Stages(stages));
        for e in [&e0, &e1] {
            // Each stage's slot range holds exactly that stage's rows...
            for k in 0..stages {
                let (a, b) = (k * rows / stages, (k + 1) * rows / stages);
                let mut got = e[a..b].to_vec();
                got.sort();
                assert_eq!(got, (a..b).collect::<Vec<_>>(), "stage {k}");
                // ...shuffled, not in stored order.
                assert_ne!(e[a..b].to_vec(), (a..b).collect::<Vec<_>>(), "stage {k}");
            }
        }
        // A new shuffle every epoch; the same one for the same (seed, epoch).
        assert_ne!(e0, e1);
        assert_eq!(e0, epoch_order(rows, 7, 0, RowOrder::Stages(stages)));
        // The stream walks the stages easy -> hard in every epoch.
        let mut s = RowStream::new(rows, 7, RowOrder::Stages(stages), Cursor::default());
        let two: Vec<usize> = s.take(2 * rows);
        assert_eq!(&two[..rows], &e0[..]);
        assert_eq!(&two[rows..], &e1[..]);
    }

    #[test]
    fn stream_resumes_from_cursor() {
        let mut a = RowStream::new(7, 1, RowOrder::Shuffle, Cursor::default());
        let first: Vec<usize> = (0..5).flat_map(|_| a.take(3)).collect();
        let mut b = RowStream::new(7, 1, RowOrder::Shuffle, Cursor::default());
        let mut got = b.take(3);
        got.extend(b.take(3));
        let c = b.cursor();
        assert_eq!(c, Cursor { epoch: 0, pos: 6 });
        let mut b2 = RowStream::new(7, 1, RowOrder::Shuffle, c);
        for _ in 0..3 {
            got.extend(b2.take(3));
        }
        assert_eq!(first, got);
        // Every epoch sees every row once.
        let mut e0 = first[..7].to_vec();
        e0.sort();
        assert_eq!(e0, (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn boundary_weighting() {
        let coder = FIRST_ROLE_TOKEN + 1;
        // inputs:  task a  <coder> b  c  d  <end>
        let tokens = [1, 2, coder, 3, 4, 5, END];
        let targets = [2, coder, 3, 4, 5, END, 0];
        let weights = [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0];
        let docs = [0u16; 7];
        let l = LossConfig {
            role_token_weight: 3.0,
            handoff_tokens: 2,
            handoff_weight: 2.0,
            ..Default::default()
        };
        let w = boundary_weights(&tokens, &targets, &weights, &docs, &l);
        assert_eq!(w, vec![0.0, 3.0, 2.0, 2.0, 1.0, 3.0, 0.0]);
        // Off by default.
        let w = boundary_weights(&tokens, &targets, &weights, &docs, &LossConfig::default());
        assert_eq!(w, weights.to_vec());
        // Hand-off weighting stops at a document boundary.
        let docs = [0u16, 0, 0, 1, 1, 1, 1];
        let w = boundary_weights(&tokens, &targets, &weights, &docs, &l);
        assert_eq!(w, vec![0.0, 3.0, 2.0, 1.0, 1.0, 3.0, 0.0]);
    }
}
