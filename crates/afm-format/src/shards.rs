//! Packed training shards: the on-disk contract between `afm-data` (writer)
//! and `afm-train` (reader), kept in `afm-format` so the reader needs no
//! polars.
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
//! Every file is written atomically ([`afm_tokenizer::atomic`]: temp file in
//! the same directory, fsync, rename) and the index last, after the old
//! index was removed: a run killed (or a disk filling up) while a split is
//! written leaves either the old split or a split without an index, which
//! [`Shards::exists`] does not report and [`Shards::open`] refuses.
//!
//! [`Shards::open`] checks the index before it allocates anything: every
//! count is a non-negative integer, sizes are computed with checked
//! arithmetic, and each array's file size must equal what the index says,
//! so a hostile or corrupt index is an error naming the file and the field.
//!
//! Why flat arrays and not parquet: the trainer reads whole rows by offset
//! with no decoding, the files are a few MB, and nothing but `std` is
//! needed to read them (numpy's `fromfile` reads them too).

use afm_tokenizer::atomic::{self, AtomicFile};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Write};
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
    files: Vec<AtomicFile>,
    index: ShardIndex,
}

impl ShardWriter {
    /// Start writing the files of `split` in `dir` (into temporaries: an
    /// existing split stays as it is until [`ShardWriter::finish`]).
    pub fn create(dir: &Path, split: &str, row_len: usize) -> Result<Self, ShardError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut files = Vec::new();
        for a in ARRAYS {
            let p = array_path(dir, split, a);
            files.push(AtomicFile::create(&p).map_err(io_err(&p))?);
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

    /// Put the arrays in place and write the index (atomically, the index
    /// last; an older index is removed first, so no crash in between can
    /// pair it with new arrays). Returns the index.
    pub fn finish(self) -> Result<ShardIndex, ShardError> {
        let p = index_path(&self.dir, &self.split);
        let text = serde_json::to_string_pretty(&self.index)
            .map_err(|e| ShardError::Format(e.to_string()))?;
        match std::fs::remove_file(&p) {
            Ok(()) => atomic::sync_dir(&self.dir).map_err(io_err(&self.dir))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&p)(e)),
        }
        for (k, f) in self.files.into_iter().enumerate() {
            let a = array_path(&self.dir, &self.split, ARRAYS[k]);
            f.commit().map_err(io_err(&a))?;
        }
        atomic::write(&p, text).map_err(io_err(&p))?;
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

fn index_path(dir: &Path, split: &str) -> PathBuf {
    dir.join(format!("{split}.index.json"))
}

/// Read `path`, which the index says holds `expect_bytes` (checked against
/// the file's size before anything is allocated).
fn read_all(path: &Path, expect_bytes: u64, index: &Path) -> Result<Vec<u8>, ShardError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len();
    if len != expect_bytes {
        return Err(ShardError::Format(format!(
            "{}: {len} bytes, but {} (rows x row_len) says {expect_bytes}",
            path.display(),
            index.display()
        )));
    }
    let len = usize::try_from(len).map_err(|_| {
        ShardError::Format(format!(
            "{}: {len} bytes do not fit in memory",
            path.display()
        ))
    })?;
    let mut buf = Vec::with_capacity(len);
    f.read_to_end(&mut buf).map_err(io_err(path))?;
    if buf.len() != len {
        return Err(ShardError::Format(format!(
            "{}: read {} bytes, expected {len} (the file changed while it was read)",
            path.display(),
            buf.len()
        )));
    }
    Ok(buf)
}

/// Largest row length: positions are stored as u16.
pub const MAX_ROW_LEN: usize = 1 << 16;

impl ShardIndex {
    /// Parse and check an index file's text; errors name `path` and the field.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ShardError> {
        let bad = |field: &str, msg: String| {
            ShardError::Format(format!("{}: field `{field}`: {msg}", path.display()))
        };
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ShardError::Format(format!("{}: {e}", path.display())))?;
        let obj = v
            .as_object()
            .ok_or_else(|| ShardError::Format(format!("{}: not a JSON object", path.display())))?;
        // Counts first, one by one, so a bad value is named (serde would
        // only give a line and column).
        for field in [
            "version",
            "rows",
            "row_len",
            "real_tokens",
            "loss_tokens",
            "documents",
            "curriculum_stages",
        ] {
            match obj.get(field) {
                None if field == "curriculum_stages" => {}
                None => return Err(bad(field, "missing".into())),
                Some(x) => {
                    let n = x
                        .as_u64()
                        .ok_or_else(|| bad(field, format!("{x} is not a non-negative integer")))?;
                    let max = if field == "version" {
                        u64::from(u32::MAX)
                    } else {
                        usize::MAX as u64
                    };
                    if n > max {
                        return Err(bad(field, format!("{n} is out of range")));
                    }
                }
            }
        }
        let index: ShardIndex = serde_json::from_value(v)
            .map_err(|e| ShardError::Format(format!("{}: {e}", path.display())))?;
        if index.version != 1 {
            return Err(bad(
                "version",
                format!(
                    "shard format version {} is not supported (1)",
                    index.version
                ),
            ));
        }
        if index.row_len > MAX_ROW_LEN {
            return Err(bad(
                "row_len",
                format!(
                    "{} is more than {MAX_ROW_LEN} (positions are u16)",
                    index.row_len
                ),
            ));
        }
        if index.rows > 0 && index.row_len == 0 {
            return Err(bad("row_len", format!("0 with {} rows", index.rows)));
        }
        let positions = index.positions().map_err(|_| {
            bad(
                "rows",
                format!(
                    "{} rows x {} positions (row_len) overflows",
                    index.rows, index.row_len
                ),
            )
        })?;
        for (field, n) in [
            ("real_tokens", index.real_tokens),
            ("loss_tokens", index.loss_tokens),
        ] {
            if n > positions {
                return Err(bad(
                    field,
                    format!("{n} is more than the split's {positions} positions (rows x row_len)"),
                ));
            }
        }
        // `curriculum_stages` needs no bound: the trainer clamps it to the rows.
        Ok(index)
    }

    /// `rows * row_len`, checked.
    pub fn positions(&self) -> Result<usize, ShardError> {
        self.rows.checked_mul(self.row_len).ok_or_else(|| {
            ShardError::Format(format!(
                "rows {} x row_len {} overflows",
                self.rows, self.row_len
            ))
        })
    }

    /// Bytes of an array with `width`-byte elements, checked.
    fn array_bytes(&self, width: u64, path: &Path) -> Result<u64, ShardError> {
        (self.positions()? as u64)
            .checked_mul(width)
            .ok_or_else(|| {
                ShardError::Format(format!(
                    "{}: field `rows`: {} rows x {} positions x {width} bytes overflows",
                    path.display(),
                    self.rows,
                    self.row_len
                ))
            })
    }
}

impl Shards {
    /// True when `dir` holds the split (its index, written last).
    pub fn exists(dir: &Path, split: &str) -> bool {
        index_path(dir, split).is_file()
    }

    /// Load `split` from `dir`, checking the index ([`ShardIndex::parse`])
    /// and every file's size against it before reading.
    pub fn open(dir: &Path, split: &str) -> Result<Self, ShardError> {
        let ip = index_path(dir, split);
        let meta = std::fs::metadata(&ip).map_err(io_err(&ip))?;
        if meta.len() > 1 << 20 {
            return Err(ShardError::Format(format!(
                "{}: {} bytes is not an index (at most 1 MiB)",
                ip.display(),
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(&ip).map_err(io_err(&ip))?;
        let index = ShardIndex::parse(&text, &ip)?;
        let (b4, b2) = (index.array_bytes(4, &ip)?, index.array_bytes(2, &ip)?);
        let u32s = |a: &str| -> Result<Vec<u32>, ShardError> {
            let b = read_all(&array_path(dir, split, a), b4, &ip)?;
            Ok(b.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let u16s = |a: &str| -> Result<Vec<u16>, ShardError> {
            let b = read_all(&array_path(dir, split, a), b2, &ip)?;
            Ok(b.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect())
        };
        let wb = read_all(&array_path(dir, split, "weights.f32"), b4, &ip)?;
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
        let row = sample_row(1);
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

    fn sample_row(k: u32) -> Row {
        Row {
            tokens: vec![k, 2, 3, 4],
            targets: vec![2, 3, 4, 0],
            weights: vec![0.0, 1.0, 0.5, 0.0],
            roles: vec![0, 2, 2, 2],
            owners: vec![0, 2, 2, 0],
            positions: vec![0, 1, 2, 0],
            docs: vec![0, 0, 0, 1],
        }
    }

    fn write_split(dir: &Path, rows: u32) -> ShardIndex {
        let mut w = ShardWriter::create(dir, "train", 4).unwrap();
        for k in 0..rows {
            w.push(&sample_row(k), 4, 2).unwrap();
        }
        w.finish().unwrap()
    }

    fn hidden_files(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect()
    }

    /// A write that fails part-way (a full disk, injected) leaves the old
    /// split whole and loadable, and the error names the file.
    #[test]
    fn failed_write_keeps_the_old_split() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), 3);
        let before = Shards::open(dir.path(), "train").unwrap();
        // Fail at several points: while pushing rows (buffered, so this may
        // only surface at finish), and while the index is written.
        for budget in [0u64, 10, 100, 200, 400, 500] {
            let res = {
                let _g = afm_tokenizer::atomic::testing::fail_after(budget);
                let mut w = ShardWriter::create(dir.path(), "train", 4).unwrap();
                let mut res = Ok(());
                for k in 0..5 {
                    res = res.and_then(|_| w.push(&sample_row(100 + k), 4, 2));
                }
                res.and_then(|_| w.finish())
            };
            let e = res.expect_err("the injected fault must fail the write");
            let msg = e.to_string();
            assert!(msg.contains("train."), "budget {budget}: {msg}");
            assert!(msg.contains("no space left"), "budget {budget}: {msg}");
            // Either the old split, or (fault after its index was removed)
            // no split at all; never a mixture, never a partial file trusted.
            if Shards::exists(dir.path(), "train") {
                let s = Shards::open(dir.path(), "train").unwrap();
                assert_eq!(s.index, before.index, "budget {budget}");
                assert_eq!(s.tokens, before.tokens, "budget {budget}");
            } else {
                assert!(Shards::open(dir.path(), "train").is_err());
                write_split(dir.path(), 3);
            }
            assert!(
                hidden_files(dir.path()).is_empty(),
                "{:?}",
                hidden_files(dir.path())
            );
        }
        // With enough room the new split replaces the old one.
        let idx = write_split(dir.path(), 5);
        assert_eq!(Shards::open(dir.path(), "train").unwrap().index, idx);
    }

    /// Hand-written hostile indexes: errors naming the file and the field,
    /// no overflow panic, no huge allocation.
    #[test]
    fn hostile_indexes_are_refused_with_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), 2);
        let ip = dir.path().join("train.index.json");
        let good: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&ip).unwrap()).unwrap();
        let big = u64::MAX;
        let half = (usize::MAX / 2 + 1) as u64;
        let cases: Vec<(serde_json::Value, &str, &str)> = vec![
            // rows * row_len overflows usize.
            (
                serde_json::json!({"rows": half, "row_len": 4}),
                "rows",
                "overflows",
            ),
            // rows * row_len fits, * 4 bytes does not.
            (
                serde_json::json!({"rows": usize::MAX / 4 + 1, "row_len": 1}),
                "rows",
                "overflows",
            ),
            // Huge but not overflowing: the files' sizes disagree (no allocation).
            (
                serde_json::json!({"rows": 1u64 << 40, "row_len": 4}),
                "rows x row_len",
                "bytes, but",
            ),
            (
                serde_json::json!({"rows": 3}),
                "rows x row_len",
                "bytes, but",
            ),
            (
                serde_json::json!({"row_len": 1u64 << 20}),
                "row_len",
                "more than",
            ),
            (
                serde_json::json!({"row_len": 0}),
                "row_len",
                "0 with 2 rows",
            ),
            (
                serde_json::json!({"rows": -1}),
                "rows",
                "not a non-negative integer",
            ),
            (
                serde_json::json!({"rows": 1.5}),
                "rows",
                "not a non-negative integer",
            ),
            (
                serde_json::json!({"rows": "2"}),
                "rows",
                "not a non-negative integer",
            ),
            (
                serde_json::json!({"real_tokens": big}),
                "real_tokens",
                "more than",
            ),
            (
                serde_json::json!({"loss_tokens": 9}),
                "loss_tokens",
                "more than",
            ),
            (
                serde_json::json!({"version": 2}),
                "version",
                "not supported",
            ),
            (
                serde_json::json!({"version": big}),
                "version",
                "out of range",
            ),
            (
                serde_json::json!({"documents": null}),
                "documents",
                "not a non-negative",
            ),
        ];
        for (patch, field, what) in cases {
            let mut v = good.clone();
            for (k, x) in patch.as_object().unwrap() {
                v[k] = x.clone();
            }
            std::fs::write(&ip, serde_json::to_string(&v).unwrap()).unwrap();
            let e = Shards::open(dir.path(), "train").unwrap_err().to_string();
            assert!(e.contains("train.index.json"), "{patch}: {e}");
            assert!(e.contains(field), "{patch}: {e}");
            assert!(e.contains(what), "{patch}: {e}");
        }
        // A missing field, a non-object, and a huge (non-index) file.
        let mut v = good.clone();
        v.as_object_mut().unwrap().remove("rows");
        std::fs::write(&ip, serde_json::to_string(&v).unwrap()).unwrap();
        let e = Shards::open(dir.path(), "train").unwrap_err().to_string();
        assert!(
            e.contains("train.index.json") && e.contains("`rows`: missing"),
            "{e}"
        );
        std::fs::write(&ip, "[1, 2]").unwrap();
        let e = Shards::open(dir.path(), "train").unwrap_err().to_string();
        assert!(
            e.contains("train.index.json") && e.contains("not a JSON object"),
            "{e}"
        );
        std::fs::write(&ip, vec![b' '; 2 << 20]).unwrap();
        let e = Shards::open(dir.path(), "train").unwrap_err().to_string();
        assert!(
            e.contains("train.index.json") && e.contains("not an index"),
            "{e}"
        );
        // The good index still loads.
        std::fs::write(&ip, serde_json::to_string(&good).unwrap()).unwrap();
        assert_eq!(Shards::open(dir.path(), "train").unwrap().rows(), 2);
    }
}
