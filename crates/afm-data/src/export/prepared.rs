//! The records a prepared dataset was made from, for the text exports.
//!
//! `afm prepare` keeps no copy of its records (its spill file is removed at
//! the end; `augmented.jsonl` lists augmentations by id). So this reads
//! them again: the input files its `manifest.json` lists, with its format,
//! limits and agents map, and runs each record through the same decisions
//! in the same order as [`crate::prepare`]:
//!
//! 1. reject what the reader or the agents map rejects;
//! 2. filter a quality score under `min_score` (`low_score:PART`), and in
//!    `window` mode a task prompt too long to window (`prompt_too_long`);
//! 3. with `dedup`, filter a record equal to an earlier one (`duplicate`);
//! 4. format it with the dataset's `vocab.json` and window it as prepare
//!    did: `too_long` (`--long drop`), `prompt_too_long`, `no_loss_tokens`;
//! 5. keep the rest, in validation when its task's bucket is under
//!    `val_fraction` or `meta.split` holds it out.
//!
//! [`Walk::check`] compares the counts with the manifest's, so a changed
//! input (or a drift between this and `prepare`) is an error, not a silent
//! difference. Augmented records are not given back (their sources are);
//! windows are not either: a text export holds whole trajectories.

use crate::ingest::{self, Invalid, Location, Parsed};
use crate::prepare::{held_out, read_manifest, Manifest};
use crate::score;
use crate::window::{self, LongMode, TooLong};
use afm_format::layout::encode_trajectory;
use afm_format::Trajectory;
use afm_tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// What became of one input record.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Kept (normalised by the agents map); `val` when in the validation split.
    Kept { trajectory: Trajectory, val: bool },
    /// Filtered under this reason (the manifest's `filtered` keys).
    Filtered(String),
    /// Rejected by the reader or the agents map.
    Rejected(Invalid),
}

/// The counts of one walk over a prepared dataset's inputs.
#[derive(Debug, Clone, Default)]
pub struct Walk {
    /// The dataset's manifest (its `config` holds the weights).
    pub manifest: Manifest,
    pub total: usize,
    /// Kept records: train, validation.
    pub kept: [usize; 2],
    pub filtered: BTreeMap<String, usize>,
    pub rejected: BTreeMap<String, usize>,
}

impl Walk {
    /// Error naming every count that differs from the manifest's.
    pub fn check(&self) -> Result<()> {
        let m = &self.manifest;
        let mut diffs = Vec::new();
        if self.total != m.total {
            diffs.push(format!("records {} (manifest {})", self.total, m.total));
        }
        if self.kept[0] + self.kept[1] != m.kept {
            diffs.push(format!(
                "kept {} (manifest {})",
                self.kept[0] + self.kept[1],
                m.kept
            ));
        }
        if !m.config.augment && self.kept != [m.train.records, m.val.records] {
            diffs.push(format!(
                "train/val {}/{} (manifest {}/{})",
                self.kept[0], self.kept[1], m.train.records, m.val.records
            ));
        }
        if self.filtered != m.filtered {
            diffs.push(format!(
                "filtered {:?} (manifest {:?})",
                self.filtered, m.filtered
            ));
        }
        if self.rejected != m.rejected {
            diffs.push(format!(
                "rejected {:?} (manifest {:?})",
                self.rejected, m.rejected
            ));
        }
        if !diffs.is_empty() {
            bail!(
                "the inputs listed in manifest.json no longer give the prepared dataset: {}",
                diffs.join("; ")
            );
        }
        Ok(())
    }
}

/// True when `dir` holds a prepared dataset (`manifest.json`).
pub fn is_prepared(dir: &Path) -> bool {
    dir.join("manifest.json").is_file()
}

/// The input files of the prepared dataset at `dir` (as its manifest lists them).
pub fn input_files(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(read_manifest(dir)?
        .files
        .iter()
        .map(PathBuf::from)
        .collect())
}

/// Walk every input record of the prepared dataset at `dir` in input order,
/// calling `f` with where it came from and what became of it.
pub fn for_each_record(dir: &Path, mut f: impl FnMut(&Location, Outcome)) -> Result<Walk> {
    let manifest = read_manifest(dir)?;
    let cfg = &manifest.config;
    let vocab_path = dir.join("vocab.json");
    let vocab = std::fs::read_to_string(&vocab_path)
        .with_context(|| format!("reading {}", vocab_path.display()))?;
    let tok = Tokenizer::from_json(&vocab)
        .map_err(|e| anyhow::anyhow!("{}: {e}", vocab_path.display()))?;
    let table = cfg.weights.table(&tok);
    let count_tok = Tokenizer::gpt2();
    let ctx = Ctx {
        min_score: cfg.min_score,
        long: cfg.long,
        dedup: cfg.dedup,
        max_tokens: cfg.max_tokens.unwrap_or(cfg.seq_len),
        count_tok: &count_tok,
        tok: &tok,
        table: &table,
    };
    let threshold = (cfg.val_fraction * SPLIT_BUCKETS as f64).round() as u64;
    let mut seen: HashSet<u64> = HashSet::new();
    let mut walk = Walk::default();
    for file in &manifest.files {
        let path = Path::new(file);
        if !path.is_file() {
            bail!(
                "{file} (an input of {}) is missing: run from the directory the dataset was prepared in",
                dir.join("manifest.json").display()
            );
        }
        let mut fatal = None;
        ingest::for_each_batch(
            path,
            cfg.format,
            &cfg.limits,
            ingest::BatchSize::default(),
            |batch: Vec<Parsed>, _| {
                for p in batch {
                    if fatal.is_some() {
                        return;
                    }
                    walk.total += 1;
                    let result = p.result.and_then(|t| ingest::normalise(t, &cfg.agents_map));
                    let outcome = match result {
                        Err(inv) => {
                            *walk.rejected.entry(inv.reason.key().into()).or_default() += 1;
                            Outcome::Rejected(inv)
                        }
                        Ok(t) => match decide(&t, &mut seen, &ctx) {
                            Ok(None) => {
                                let bucket = score::task_key(&t.task) % SPLIT_BUCKETS;
                                let val = bucket < threshold || held_out(&t);
                                walk.kept[val as usize] += 1;
                                Outcome::Kept { trajectory: t, val }
                            }
                            Ok(Some(why)) => {
                                *walk.filtered.entry(why.clone()).or_default() += 1;
                                Outcome::Filtered(why)
                            }
                            Err(e) => {
                                fatal = Some(e);
                                return;
                            }
                        },
                    };
                    f(&p.loc, outcome);
                }
            },
        )?;
        if let Some(e) = fatal {
            return Err(e);
        }
    }
    walk.manifest = manifest;
    Ok(walk)
}

/// `prepare`'s split buckets (a task's bucket is its key modulo this).
const SPLIT_BUCKETS: u64 = 1_000_000;

/// What the filters need.
struct Ctx<'a> {
    min_score: f64,
    long: LongMode,
    dedup: bool,
    max_tokens: usize,
    /// GPT-2 without roles: `prepare` measures task prompts with it.
    count_tok: &'a Tokenizer,
    /// The dataset's tokenizer (`vocab.json`) and weight table.
    tok: &'a Tokenizer,
    table: &'a [f32],
}

/// The filters `prepare` applies, in its order; `None` keeps the record.
fn decide(t: &Trajectory, seen: &mut HashSet<u64>, ctx: &Ctx) -> Result<Option<String>> {
    let q = score::quality(t);
    if q.total() < ctx.min_score {
        let part = score::PARTS[q.worst_part()].0;
        return Ok(Some(format!("low_score:{part}")));
    }
    if ctx.long == LongMode::Window {
        let prompt_len = 1 + ctx.count_tok.encode(&t.task).len();
        if prompt_len > ctx.max_tokens.saturating_sub(4) {
            return Ok(Some("prompt_too_long".into()));
        }
    }
    if ctx.dedup && !seen.insert(score::content_key(t)) {
        return Ok(Some("duplicate".into()));
    }
    let enc = encode_trajectory(ctx.tok, t)
        .map_err(|e| anyhow::anyhow!("record {:?}: {e} (in vocab.json)", t.id))?;
    Ok(
        match window::fit(&enc, ctx.table, ctx.max_tokens, ctx.long) {
            Ok(ws) if ws.iter().all(|w| w.doc.weights.iter().all(|&x| x == 0.0)) => {
                Some("no_loss_tokens".into())
            }
            Ok(_) => None,
            Err(TooLong::Dropped) => Some("too_long".into()),
            Err(TooLong::PromptTooLong) => Some("prompt_too_long".into()),
        },
    )
}
