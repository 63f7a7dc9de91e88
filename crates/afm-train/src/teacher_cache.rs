//! Offline cache of top-k teacher logits (`teacher_top_k > 0`): the
//! teachers run once over the train split before training, and the steps
//! read their top-k logits instead of running them.
//!
//! Layout of `RUN/teacher_cache/` (little-endian flat arrays):
//!
//! | file                   | content                                                       |
//! |------------------------|---------------------------------------------------------------|
//! | `train.topk.json`      | [`CacheIndex`]: version, k, rows, row_len, entries, agents    |
//! | `train.topk_offsets.u64` | `rows + 1` offsets: entries of row `r` are `offsets[r]..offsets[r+1]` |
//! | `train.topk_ids.u32`   | `entries x k` student token ids, by descending teacher logit  |
//! | `train.topk_logits.f32`| `entries x k` raw teacher logits (temperature not applied)    |
//!
//! Entries are, row by row and position by position, the loss positions
//! (shard weight > 0) whose owner is one of `agents`. The cached teacher
//! distribution is `softmax(logits / T)` renormalised over the k ids; only
//! the forward KL is supported (`sum_k p_t (log p_t - log q_s)` with the
//! student's full-vocabulary log-probabilities at those ids), scaled by T^2.

use afm_tokenizer::atomic::{self, AtomicFile};
use afm_tokenizer::Tokenizer;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// `{split}.topk.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheIndex {
    pub version: u32,
    pub k: usize,
    pub rows: usize,
    pub row_len: usize,
    pub entries: usize,
    /// Agents whose positions are cached (the teachers' agents).
    pub agents: Vec<String>,
}

/// A loaded cache.
pub struct TeacherCache {
    pub index: CacheIndex,
    /// Owner role ids (student) that have cached entries.
    pub roles: BTreeSet<u16>,
    offsets: Vec<u64>,
    ids: Vec<u32>,
    logits: Vec<f32>,
}

fn le_bytes<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * N);
    for &x in v {
        out.extend_from_slice(&f(x));
    }
    out
}

/// Writes a cache of the train split, row by row (see the module docs for
/// the layout). The index is written last by [`CacheWriter::finish`], so a
/// cache interrupted while it is written has no index and is rebuilt.
/// Computing the entries is the teachers' job
/// (`crate::teacher::Teachers::build_cache`); this type only owns the files.
pub struct CacheWriter {
    dir: PathBuf,
    k: usize,
    ids: AtomicFile,
    logits: AtomicFile,
    offsets: Vec<u64>,
    entries: usize,
}

/// The split a cache holds (only the train split is cached).
const SPLIT: &str = "train";

impl CacheWriter {
    /// Start a cache of `k` entries per position in `dir`, removing any
    /// previous index first.
    pub fn create(dir: &Path, k: usize) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let index_path = dir.join(format!("{SPLIT}.topk.json"));
        match std::fs::remove_file(&index_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", index_path.display()))
            }
            _ => {}
        }
        let create = |name: &str| {
            AtomicFile::create(&dir.join(format!("{SPLIT}.{name}")))
                .with_context(|| format!("creating the teacher cache in {}", dir.display()))
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            k,
            ids: create("topk_ids.u32")?,
            logits: create("topk_logits.f32")?,
            offsets: vec![0],
            entries: 0,
        })
    }

    /// Append the next row's entries, `(ids, logits)` of `k` each, in the
    /// order of the row's cached loss positions.
    pub fn push_row(&mut self, entries: &[(Vec<u32>, Vec<f32>)]) -> anyhow::Result<()> {
        for (i, v) in entries {
            if i.len() != self.k || v.len() != self.k {
                bail!(
                    "teacher cache: an entry has {} ids and {} logits, the cache {}",
                    i.len(),
                    v.len(),
                    self.k
                );
            }
            self.ids.write_all(&le_bytes(i, u32::to_le_bytes))?;
            self.logits.write_all(&le_bytes(v, f32::to_le_bytes))?;
        }
        self.entries += entries.len();
        let last = *self.offsets.last().unwrap_or(&0);
        self.offsets.push(last + entries.len() as u64);
        Ok(())
    }

    /// Commit the arrays, then the index (`row_len` of the split's rows,
    /// `agents` whose positions were cached).
    pub fn finish(self, row_len: usize, agents: Vec<String>) -> anyhow::Result<CacheIndex> {
        self.ids.commit()?;
        self.logits.commit()?;
        atomic::write(
            &self.dir.join(format!("{SPLIT}.topk_offsets.u64")),
            le_bytes(&self.offsets, u64::to_le_bytes),
        )?;
        let index = CacheIndex {
            version: 1,
            k: self.k,
            rows: self.offsets.len() - 1,
            row_len,
            entries: self.entries,
            agents,
        };
        atomic::write(
            &self.dir.join(format!("{SPLIT}.topk.json")),
            serde_json::to_string_pretty(&index)?,
        )?;
        Ok(index)
    }
}

impl TeacherCache {
    /// True when `dir` holds a complete cache of `split`.
    pub fn exists(dir: &Path, split: &str) -> bool {
        dir.join(format!("{split}.topk.json")).is_file()
    }

    /// Load the cache of `split`, checking sizes against the index.
    pub fn open(dir: &Path, split: &str, student: &Tokenizer) -> anyhow::Result<Self> {
        let ip = dir.join(format!("{split}.topk.json"));
        let text =
            std::fs::read_to_string(&ip).with_context(|| format!("reading {}", ip.display()))?;
        let index: CacheIndex =
            serde_json::from_str(&text).with_context(|| format!("{}", ip.display()))?;
        let read = |name: &str, bytes: usize| -> anyhow::Result<Vec<u8>> {
            let p = dir.join(format!("{split}.{name}"));
            let b = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            if b.len() != bytes {
                bail!("{}: {} bytes, the index says {bytes}", p.display(), b.len());
            }
            Ok(b)
        };
        let n = index.entries * index.k;
        let offsets: Vec<u64> = read("topk_offsets.u64", (index.rows + 1) * 8)?
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        let ids: Vec<u32> = read("topk_ids.u32", n * 4)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let logits: Vec<f32> = read("topk_logits.f32", n * 4)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let mut roles = BTreeSet::new();
        for a in &index.agents {
            let r = student
                .roles()
                .role_id(a)
                .with_context(|| format!("{}: agent {a:?} is not in the data", ip.display()))?;
            roles.insert(r as u16);
        }
        Ok(Self {
            index,
            roles,
            offsets,
            ids,
            logits,
        })
    }

    /// Cached (ids, logits) `[n, k]` tensors for the batch's loss positions
    /// `pos` (indices into the batch's selected positions, ascending), and
    /// `pos` itself. The positions are those whose owner is cached.
    pub fn lookup(&self, b: &crate::data::Batch) -> anyhow::Result<(Vec<usize>, Tensor, Tensor)> {
        let t = b.row_len;
        let k = self.index.k;
        let mut pos = Vec::new();
        let mut ids = Vec::new();
        let mut vals = Vec::new();
        let mut ordinal = vec![0u64; b.rows.len()];
        for p in 0..b.n_select() {
            if !self.roles.contains(&b.owners[p]) {
                continue;
            }
            let bi = b.select_host[p] as usize / t;
            let row = b.rows[bi];
            let e = self.offsets[row] + ordinal[bi];
            ordinal[bi] += 1;
            if e >= self.offsets[row + 1] {
                bail!("teacher cache: row {row} has fewer cached positions than the data (stale cache? delete it)");
            }
            let r = e as usize * k..(e as usize + 1) * k;
            ids.extend(self.ids[r.clone()].iter().map(|&x| x as i64));
            vals.extend_from_slice(&self.logits[r]);
            pos.push(p);
        }
        let n = pos.len() as i64;
        let dev = b.tokens.device();
        Ok((
            pos,
            Tensor::from_slice(&ids).view([n, k as i64]).to_device(dev),
            Tensor::from_slice(&vals).view([n, k as i64]).to_device(dev),
        ))
    }
}

/// `T^2 * KL(p_t || q_s)` per row with `p_t = softmax(top_logits / T)` over
/// the k cached ids and `q_s` the student's full softmax at temperature T.
pub fn topk_forward_kl(
    student: &Tensor,
    ids: &Tensor,
    top_logits: &Tensor,
    temperature: f64,
) -> Tensor {
    let t = temperature;
    let ls = (student.to_kind(Kind::Float) / t)
        .log_softmax(-1, Kind::Float)
        .gather(1, ids, false);
    let lt = (top_logits.to_kind(Kind::Float) / t).log_softmax(-1, Kind::Float);
    (lt.exp() * (&lt - ls)).sum_dim_intlist(-1, false, Kind::Float) * (t * t)
}
