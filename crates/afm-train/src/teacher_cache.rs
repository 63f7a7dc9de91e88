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

use crate::data::make_batch;
use crate::teacher::Teachers;
use crate::LossConfig;
use afm_format::shards::Shards;
use afm_model::Precision;
use afm_tokenizer::atomic::{self, AtomicFile};
use afm_tokenizer::Tokenizer;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use tch::{Device, Kind, Tensor};

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

/// Run every teacher over the train split `shards` and write its top-k
/// cache into `dir` (the index is written last, so a cache interrupted
/// while building is rebuilt).
pub fn build(
    dir: &Path,
    shards: &Shards,
    teachers: &Teachers,
    student: &Tokenizer,
    k: usize,
    batch_size: usize,
    precision: Precision,
) -> anyhow::Result<CacheIndex> {
    let split = "train";
    let device = teachers
        .list
        .first()
        .map(|t| t.model.device())
        .unwrap_or(Device::Cpu);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let plain = LossConfig::default();
    let mut offsets = vec![0u64];
    // Atomic files (temp + fsync + rename), the index last: a build cut
    // short leaves no index, and `exists` says no cache.
    let index_path = dir.join(format!("{split}.topk.json"));
    match std::fs::remove_file(&index_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", index_path.display()))
        }
        _ => {}
    }
    let mut ids_f = AtomicFile::create(&dir.join(format!("{split}.topk_ids.u32")))
        .with_context(|| format!("creating the teacher cache in {}", dir.display()))?;
    let mut val_f = AtomicFile::create(&dir.join(format!("{split}.topk_logits.f32")))
        .with_context(|| format!("creating the teacher cache in {}", dir.display()))?;
    let rows: Vec<usize> = (0..shards.rows()).collect();
    let mut entries = 0usize;
    for chunk in rows.chunks(batch_size) {
        let b = make_batch(shards, chunk, &plain, student, device);
        // Per selected position: (teacher logits row) for routed ones.
        let mut per_pos: Vec<Option<(Vec<u32>, Vec<f32>)>> = vec![None; b.n_select()];
        for (ti, pos) in teachers.route(&b.owners) {
            let t = &teachers.list[ti];
            let logits = t.logits(&b, &pos, student, precision)?;
            let kk = k.min(logits.size()[1] as usize) as i64;
            let (vals, idx) = logits.topk(kk, -1, true, true);
            let vals = Vec::<f32>::try_from(vals.to_device(Device::Cpu).flatten(0, -1))?;
            let idx = Vec::<i64>::try_from(idx.to_device(Device::Cpu).flatten(0, -1))?;
            for (j, &p) in pos.iter().enumerate() {
                let r = j * kk as usize..(j + 1) * kk as usize;
                per_pos[p] = Some((
                    idx[r.clone()].iter().map(|&x| x as u32).collect(),
                    vals[r].to_vec(),
                ));
            }
        }
        // Selected positions are row-major: count per row.
        let t = b.row_len;
        let mut row_counts = vec![0u64; chunk.len()];
        for (p, e) in per_pos.iter().enumerate() {
            if let Some((i, v)) = e {
                row_counts[b.select_host[p] as usize / t] += 1;
                ids_f.write_all(&le_bytes(i, u32::to_le_bytes))?;
                val_f.write_all(&le_bytes(v, f32::to_le_bytes))?;
                entries += 1;
            }
        }
        for c in row_counts {
            let last = *offsets.last().unwrap_or(&0);
            offsets.push(last + c);
        }
    }
    ids_f.commit()?;
    val_f.commit()?;
    atomic::write(
        &dir.join(format!("{split}.topk_offsets.u64")),
        le_bytes(&offsets, u64::to_le_bytes),
    )?;
    let index = CacheIndex {
        version: 1,
        k,
        rows: shards.rows(),
        row_len: shards.index.row_len,
        entries,
        agents: teachers.list.iter().map(|t| t.agent.clone()).collect(),
    };
    atomic::write(&index_path, serde_json::to_string_pretty(&index)?)?;
    Ok(index)
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
