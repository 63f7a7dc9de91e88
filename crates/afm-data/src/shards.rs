//! Packed training shards: the on-disk contract between `afm-data` (writer)
//! and `afm-train` (reader).
//!
//! A split (`train`, `val`) of a prepared dataset directory is a set of flat
//! little-endian arrays, each `rows * row_len` long, plus a JSON index:
//!
//! | file                     | type | per position `i` of a row                                     |
//! |--------------------------|------|---------------------------------------------------------------|
//! | `{split}.tokens.u32`     | u32  | input token id                                                |
//! | `{split}.targets.u32`    | u32  | the token to predict at `i` (next token of the same document) |
//! | `{split}.weights.f32`    | f32  | loss weight of that prediction; 0 = no loss (task, observation, padding, last token of a document) |
//! | `{split}.roles.u16`      | u16  | role id of the input token (role embeddings; [`afm_tokenizer::RoleTracker`]) |
//! | `{split}.owners.u16`     | u16  | role id of the agent that owns the target (per-agent loss and teacher routing); 0 when none |
//! | `{split}.positions.u16`  | u16  | position id, restarting at 0 at every packed document        |
//! | `{split}.docs.u16`       | u16  | document index inside the row (block-diagonal attention); padding gets its own index |
//! | `{split}.index.json`     | JSON | [`ShardIndex`]                                                |
//!
//! Why flat arrays and not parquet: the trainer reads whole rows by offset
//! with no decoding, the files are a few MB, and nothing but `std` is
//! needed to read them (numpy's `fromfile` reads them too).

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// One packed row, position by position. All vectors have the row length.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub tokens: Vec<u32>,
    pub targets: Vec<u32>,
    pub weights: Vec<f32>,
    pub roles: Vec<u16>,
    pub owners: Vec<u16>,
    pub positions: Vec<u16>,
    pub docs: Vec<u16>,
}

impl Row {
    /// Length of the row.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True for a zero-length row.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    fn check(&self, row_len: usize) -> Result<(), ShardError> {
        let lens = [
            self.tokens.len(),
            self.targets.len(),
            self.weights.len(),
            self.roles.len(),
            self.owners.len(),
            self.positions.len(),
            self.docs.len(),
        ];
        if lens.iter().any(|&l| l != row_len) {
            return Err(ShardError::Format(format!(
                "row arrays have lengths {lens:?}, expected {row_len} each"
            )));
        }
        Ok(())
    }
}

/// `{split}.index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardIndex {
    /// Format version (1).
    pub version: u32,
    /// Number of rows.
    pub rows: usize,
    /// Positions per row.
    pub row_len: usize,
    /// Real (non-padding) tokens.
    pub real_tokens: usize,
    /// Positions with a non-zero loss weight.
    pub loss_tokens: usize,
    /// Documents packed (a windowed trajectory counts once per window).
    pub documents: usize,
    /// True when rows are in curriculum order (easy -> hard): the trainer
    /// keeps that order across `curriculum_stages` buckets.
    pub curriculum: bool,
    /// With `curriculum`: the number of equal contiguous row buckets
    /// (stages) the trainer walks in order, shuffling inside each every
    /// epoch; 0 keeps the stored order exactly.
    #[serde(default)]
    pub curriculum_stages: usize,
}

/// Errors reading or writing shards.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Format(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ShardError + '_ {
    move |source| ShardError::Io {
        path: path.to_path_buf(),
        source,
    }
}

const ARRAYS: [&str; 7] = [
    "tokens.u32",
    "targets.u32",
    "weights.f32",
    "roles.u16",
    "owners.u16",
    "positions.u16",
    "docs.u16",
];

fn array_path(dir: &Path, split: &str, array: &str) -> PathBuf {
    dir.join(format!("{split}.{array}"))
}

/// Streams rows of one split to disk.
pub struct ShardWriter {
    dir: PathBuf,
    split: String,
    row_len: usize,
    files: Vec<BufWriter<File>>,
    index: ShardIndex,
}

impl ShardWriter {
    /// Create (truncate) the files of `split` in `dir`.
    pub fn create(dir: &Path, split: &str, row_len: usize) -> Result<Self, ShardError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut files = Vec::new();
        for a in ARRAYS {
            let p = array_path(dir, split, a);
            files.push(BufWriter::new(File::create(&p).map_err(io_err(&p))?));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            split: split.to_string(),
            row_len,
            files,
            index: ShardIndex {
                version: 1,
                rows: 0,
                row_len,
                real_tokens: 0,
                loss_tokens: 0,
                documents: 0,
                curriculum: false,
                curriculum_stages: 0,
            },
        })
    }

    /// Append one row. `real_tokens`/`documents` are the caller's counts for
    /// this row (padding excluded).
    pub fn push(
        &mut self,
        row: &Row,
        real_tokens: usize,
        documents: usize,
    ) -> Result<(), ShardError> {
        row.check(self.row_len)?;
        let mut bufs: Vec<Vec<u8>> = (0..7)
            .map(|_| Vec::with_capacity(self.row_len * 4))
            .collect();
        for i in 0..self.row_len {
            bufs[0].extend(row.tokens[i].to_le_bytes());
            bufs[1].extend(row.targets[i].to_le_bytes());
            bufs[2].extend(row.weights[i].to_le_bytes());
            bufs[3].extend(row.roles[i].to_le_bytes());
            bufs[4].extend(row.owners[i].to_le_bytes());
            bufs[5].extend(row.positions[i].to_le_bytes());
            bufs[6].extend(row.docs[i].to_le_bytes());
        }
        for (k, (f, b)) in self.files.iter_mut().zip(&bufs).enumerate() {
            let p = array_path(&self.dir, &self.split, ARRAYS[k]);
            f.write_all(b).map_err(io_err(&p))?;
        }
        self.index.rows += 1;
        self.index.real_tokens += real_tokens;
        self.index.loss_tokens += row.weights.iter().filter(|&&w| w != 0.0).count();
        self.index.documents += documents;
        Ok(())
    }

    /// Mark the split as curriculum-ordered in `stages` buckets (see
    /// [`ShardIndex::curriculum_stages`]).
    pub fn set_curriculum(&mut self, on: bool, stages: usize) {
        self.index.curriculum = on;
        self.index.curriculum_stages = stages;
    }

    /// Flush and write the index. Returns it.
    pub fn finish(mut self) -> Result<ShardIndex, ShardError> {
        for (k, f) in self.files.iter_mut().enumerate() {
            let p = array_path(&self.dir, &self.split, ARRAYS[k]);
            f.flush().map_err(io_err(&p))?;
        }
        let p = self.dir.join(format!("{}.index.json", self.split));
        let text = serde_json::to_string_pretty(&self.index)
            .map_err(|e| ShardError::Format(e.to_string()))?;
        std::fs::write(&p, text).map_err(io_err(&p))?;
        Ok(self.index)
    }
}

/// A split loaded in memory (the default dataset is a few MB).
#[derive(Debug, Clone)]
pub struct Shards {
    pub index: ShardIndex,
    pub tokens: Vec<u32>,
    pub targets: Vec<u32>,
    pub weights: Vec<f32>,
    pub roles: Vec<u16>,
    pub owners: Vec<u16>,
    pub positions: Vec<u16>,
    pub docs: Vec<u16>,
}

fn read_all(path: &Path, expect_bytes: usize) -> Result<Vec<u8>, ShardError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len() as usize;
    if len != expect_bytes {
        return Err(ShardError::Format(format!(
            "{}: {len} bytes, the index says {expect_bytes}",
            path.display()
        )));
    }
    let mut buf = Vec::with_capacity(len);
    f.read_to_end(&mut buf).map_err(io_err(path))?;
    Ok(buf)
}

impl Shards {
    /// True when `dir` holds the split.
    pub fn exists(dir: &Path, split: &str) -> bool {
        dir.join(format!("{split}.index.json")).is_file()
    }

    /// Load `split` from `dir`, checking every file's size against the index.
    pub fn open(dir: &Path, split: &str) -> Result<Self, ShardError> {
        let ip = dir.join(format!("{split}.index.json"));
        let text = std::fs::read_to_string(&ip).map_err(io_err(&ip))?;
        let index: ShardIndex = serde_json::from_str(&text)
            .map_err(|e| ShardError::Format(format!("{}: {e}", ip.display())))?;
        if index.version != 1 {
            return Err(ShardError::Format(format!(
                "{}: shard format version {} is not supported (1)",
                ip.display(),
                index.version
            )));
        }
        let n = index.rows.checked_mul(index.row_len).ok_or_else(|| {
            ShardError::Format(format!("{}: rows * row_len overflows", ip.display()))
        })?;
        let u32s = |a: &str| -> Result<Vec<u32>, ShardError> {
            let b = read_all(&array_path(dir, split, a), n * 4)?;
            Ok(b.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let u16s = |a: &str| -> Result<Vec<u16>, ShardError> {
            let b = read_all(&array_path(dir, split, a), n * 2)?;
            Ok(b.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect())
        };
        let wb = read_all(&array_path(dir, split, "weights.f32"), n * 4)?;
        let weights: Vec<f32> = wb
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(i) = weights.iter().position(|w| !w.is_finite() || *w < 0.0) {
            return Err(ShardError::Format(format!(
                "{split}.weights.f32: position {i} has weight {} (must be finite and >= 0)",
                weights[i]
            )));
        }
        Ok(Self {
            tokens: u32s("tokens.u32")?,
            targets: u32s("targets.u32")?,
            weights,
            roles: u16s("roles.u16")?,
            owners: u16s("owners.u16")?,
            positions: u16s("positions.u16")?,
            docs: u16s("docs.u16")?,
            index,
        })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.index.rows
    }

    /// Row `r` (copied out).
    pub fn row(&self, r: usize) -> Row {
        let l = self.index.row_len;
        let s = r * l..(r + 1) * l;
        Row {
            tokens: self.tokens[s.clone()].to_vec(),
            targets: self.targets[s.clone()].to_vec(),
            weights: self.weights[s.clone()].to_vec(),
            roles: self.roles[s.clone()].to_vec(),
            owners: self.owners[s.clone()].to_vec(),
            positions: self.positions[s.clone()].to_vec(),
            docs: self.docs[s].to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_round_trip_and_size_check() {
        let dir = tempfile::tempdir().unwrap();
        let row = Row {
            tokens: vec![1, 2, 3, 4],
            targets: vec![2, 3, 4, 0],
            weights: vec![0.0, 1.0, 0.5, 0.0],
            roles: vec![0, 2, 2, 2],
            owners: vec![0, 2, 2, 0],
            positions: vec![0, 1, 2, 0],
            docs: vec![0, 0, 0, 1],
        };
        let mut w = ShardWriter::create(dir.path(), "train", 4).unwrap();
        w.push(&row, 4, 2).unwrap();
        w.push(&row, 4, 2).unwrap();
        assert!(w.push(&Row::default(), 0, 0).is_err());
        let idx = w.finish().unwrap();
        assert_eq!((idx.rows, idx.loss_tokens, idx.documents), (2, 4, 4));
        let s = Shards::open(dir.path(), "train").unwrap();
        assert_eq!(s.row(1), row);
        // A truncated array is caught with the file named.
        let p = dir.path().join("train.docs.u16");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() - 2]).unwrap();
        let e = Shards::open(dir.path(), "train").unwrap_err().to_string();
        assert!(e.contains("train.docs.u16"), "{e}");
    }
}
