//! The whole pipeline: validate -> normalise -> score and filter -> dedup ->
//! split -> curriculum -> augment -> format -> tokenize -> mask -> window ->
//! pack -> write.
//!
//! Two passes keep memory bounded however many records there are:
//!
//! 1. **read** (streaming, rayon per batch): every record is validated,
//!    normalised (agents map), scored and keyed; valid ones are spilled as
//!    one JSON line each to a temporary file in the output directory, and
//!    only a compact row per record (keys, score, difficulty, spill offset)
//!    is kept. Rejects go to `rejects.jsonl` as they come.
//! 2. **plan** (polars lazy over the compact table): score filter, dedup,
//!    train/val split by task, order (input order, or curriculum), and the
//!    augmentation rows (train only).
//! 3. **write** (streaming, rayon per batch): records are read back from the
//!    spill in plan order, formatted, tokenized, labelled, windowed, packed
//!    (best-fit, bounded buffer) and written as shards.
//!
//! [`Prepare`] lays a run out as a recipe, one method per phase: `setup`,
//! `read` (pass 1), `plan`, `vocabulary` (roles, corpus vocabulary,
//! `vocab.json`), `write` (pass 2) and `finish` (stats, the accounting
//! check, `manifest.json`). [`prepare_with`] and [`prepare`] are thin
//! wrappers over [`Prepare::run`].

use crate::agents::AgentsMap;
use crate::augment::{self, Resolver, Transform};
use crate::ingest::{self, normalise, Format, IngestLimits, Parsed};
use crate::pack::{PackStats, Packer};
use crate::score;
use crate::window::{self, LongMode, TooLong};
use afm_format::layout::{encode_trajectory, AgentWeights, FormatError};
use afm_format::shards::ShardWriter;
use afm_format::{StepKind, Trajectory};
use afm_tokenizer::{RoleVocab, Tokenizer};
use anyhow::{bail, Context, Result};
use polars::prelude::*;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Everything `afm prepare` can be told (a TOML file may set any field; the
/// others keep their `Default`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrepareConfig {
    /// Files or directories (all `.json`/`.jsonl`/`.ndjson` and
    /// `.db`/`.sqlite`/`.sqlite3` inside, sorted).
    pub inputs: Vec<PathBuf>,
    pub format: Format,
    /// Agent renames and observation agents.
    pub agents_map: AgentsMap,
    /// Records with a quality score below this are filtered (0 keeps all).
    pub min_score: f64,
    /// Longest document; `None` = `seq_len`.
    pub max_tokens: Option<usize>,
    pub long: LongMode,
    pub curriculum: bool,
    /// Curriculum stages: difficulty buckets walked easy -> hard, the rows
    /// of each shuffled by the trainer every epoch (0 = one strict sorted
    /// order, never shuffled).
    pub curriculum_stages: usize,
    pub augment: bool,
    /// Give the model rows only for the BPE tokens the prepared data uses
    /// (a corpus vocabulary in `vocab.json`; see `afm_tokenizer::CorpusVocab`):
    /// much smaller embedding and LM head for models trained from scratch.
    pub corpus_vocab: bool,
    /// With `corpus_vocab`: a BPE token gets a row only if it occurs at
    /// least this often in the training split's source records; rarer ones
    /// are written as their bytes, in training and at inference alike. A
    /// token seen a handful of times has an untrained row, so a model cannot
    /// copy it (an observation into an answer); its bytes are frequent.
    /// 1 = every token the documents use.
    #[serde(default = "one")]
    pub vocab_min_count: usize,
    /// Share of tasks held out for validation.
    pub val_fraction: f64,
    /// Row length of the shards.
    pub seq_len: usize,
    /// Per-agent loss weights.
    pub weights: AgentWeights,
    pub seed: u64,
    /// Fail on the first rejected record.
    pub strict: bool,
    /// Drop exact duplicates (normalised task + trajectory).
    pub dedup: bool,
    pub limits: IngestLimits,
    /// Documents buffered by the packer.
    pub pack_buffer: usize,
    /// Output directory.
    pub out: PathBuf,
    /// Write the dataset even when no record is kept for training (without
    /// it such a run is an error naming the counts and the top reasons).
    #[serde(default)]
    pub allow_empty: bool,
}

impl Default for PrepareConfig {
    fn default() -> Self {
        Self {
            inputs: Vec::new(),
            format: Format::Auto,
            agents_map: AgentsMap::default(),
            min_score: 0.0,
            max_tokens: None,
            long: LongMode::Window,
            curriculum: false,
            curriculum_stages: 4,
            augment: false,
            corpus_vocab: false,
            vocab_min_count: 1,
            val_fraction: 0.05,
            seq_len: 256,
            weights: AgentWeights::default(),
            seed: 0,
            strict: false,
            dedup: true,
            limits: IngestLimits::default(),
            pack_buffer: 8192,
            out: PathBuf::from("prepared"),
            allow_empty: false,
        }
    }
}

/// The quality score's range (`afm_data::score`): `--min-score` must be in it.
pub const SCORE_RANGE: std::ops::RangeInclusive<f64> = 0.0..=100.0;

/// Raw record bytes one pass-2 batch reads back from the spill at most
/// (besides at most 2048 records; always at least one record).
const WRITE_BATCH_BYTES: usize = 64 << 20;

impl PrepareConfig {
    /// Check every setting that does not need the input; `prepare` calls it
    /// first. Errors name the flag and the accepted range.
    pub fn validate(&self) -> Result<()> {
        if !self.min_score.is_finite() || !SCORE_RANGE.contains(&self.min_score) {
            bail!(
                "--min-score {} must be a finite number in {}..={} (the quality score's range; 0 keeps all)",
                self.min_score,
                SCORE_RANGE.start(),
                SCORE_RANGE.end()
            );
        }
        if self.seq_len < 8 || self.seq_len > u16::MAX as usize {
            bail!("--seq-len {} must be in 8..=65535", self.seq_len);
        }
        let max_tokens = self.max_tokens.unwrap_or(self.seq_len);
        if max_tokens > self.seq_len || max_tokens < 8 {
            bail!(
                "--max-tokens {max_tokens} must be in 8..=seq-len ({})",
                self.seq_len
            );
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            bail!("--val-fraction {} must be in [0, 1)", self.val_fraction);
        }
        if self.limits.max_field_bytes == 0 || self.limits.max_record_bytes == 0 {
            bail!(
                "limits must be positive (max_field_bytes {}, max_record_bytes {})",
                self.limits.max_field_bytes,
                self.limits.max_record_bytes
            );
        }
        if self.vocab_min_count == 0 {
            bail!("--vocab-min-count must be at least 1 (1 keeps every token the data uses)");
        }
        if self.pack_buffer == 0 {
            bail!("pack_buffer must be at least 1");
        }
        Ok(())
    }
}

/// Counts of one split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitStats {
    /// Trajectories (augmented ones included).
    pub records: usize,
    /// Distinct tasks.
    pub tasks: usize,
    pub documents: usize,
    pub rows: usize,
    pub real_tokens: usize,
    pub loss_tokens: usize,
    pub padding: usize,
    pub efficiency: f64,
}

/// Per-agent counts: targets owned and targets with loss weight.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStats {
    pub turns: usize,
    pub tokens: usize,
    pub loss_tokens: usize,
}

/// `manifest.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub files: Vec<String>,
    /// Input records seen (= kept + filtered + rejected).
    pub total: usize,
    pub kept: usize,
    pub filtered: BTreeMap<String, usize>,
    pub rejected: BTreeMap<String, usize>,
    /// Augmented records written, by transform kind (and skipped ones as `skipped:*`).
    pub augmented: BTreeMap<String, usize>,
    /// Agents in role order (the role vocabulary).
    pub roles: Vec<String>,
    pub n_vocab: usize,
    pub n_roles: usize,
    pub train: SplitStats,
    pub val: SplitStats,
    /// Real tokens over both splits.
    pub tokens: usize,
    pub loss_tokens: usize,
    /// Real tokens / all positions, both splits.
    pub packing_efficiency: f64,
    /// Documents that were windowed / truncated.
    pub windowed: usize,
    pub truncated: usize,
    /// Extra documents made by windowing.
    pub extra_windows: usize,
    pub per_agent: BTreeMap<String, AgentStats>,
    pub config: PrepareConfig,
}

impl Manifest {
    /// The stats table printed at the end of `afm prepare`.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let pct = |a: usize, b: usize| {
            if b == 0 {
                0.0
            } else {
                100.0 * a as f64 / b as f64
            }
        };
        s += &format!(
            "records  total {}  kept {}  filtered {}  rejected {}\n",
            self.total,
            self.kept,
            self.filtered.values().sum::<usize>(),
            self.rejected.values().sum::<usize>()
        );
        for (k, v) in &self.filtered {
            s += &format!("  filtered {k:<28} {v}\n");
        }
        for (k, v) in &self.rejected {
            s += &format!("  rejected {k:<28} {v}\n");
        }
        for (k, v) in &self.augmented {
            s += &format!("  augmented {k:<27} {v}\n");
        }
        s += &format!(
            "{:<6} {:>8} {:>7} {:>8} {:>7} {:>12} {:>12} {:>8}\n",
            "split", "records", "tasks", "docs", "rows", "tokens", "loss", "packing"
        );
        for (n, st) in [("train", &self.train), ("val", &self.val)] {
            s += &format!(
                "{n:<6} {:>8} {:>7} {:>8} {:>7} {:>12} {:>12} {:>7.2}%\n",
                st.records,
                st.tasks,
                st.documents,
                st.rows,
                st.real_tokens,
                st.loss_tokens,
                100.0 * st.efficiency
            );
        }
        s += &format!(
            "windowed {} (+{} windows), truncated {}; vocab {} tokens, {} agents\n",
            self.windowed,
            self.extra_windows,
            self.truncated,
            self.n_vocab,
            self.roles.len()
        );
        s += &format!(
            "{:<32} {:>7} {:>12} {:>12} {:>6}\n",
            "agent", "turns", "tokens", "loss", "share"
        );
        for (a, st) in &self.per_agent {
            s += &format!(
                "{a:<32} {:>7} {:>12} {:>12} {:>5.1}%\n",
                st.turns,
                st.tokens,
                st.loss_tokens,
                pct(st.loss_tokens, self.loss_tokens)
            );
        }
        s
    }
}

/// Progress of a run: `stage` is `read` (bytes) or `write` (records).
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub stage: &'static str,
    pub done: u64,
    pub total: u64,
}

/// Run the pipeline with no progress reporting and no task world (no
/// record is re-solved; see [`prepare_with`]).
pub fn prepare(cfg: &PrepareConfig) -> Result<Manifest> {
    prepare_with(cfg, &|_| {}, None)
}

/// One row of the compact per-record table.
struct Rec {
    offset: u64,
    len: u32,
    task_key: u64,
    content_key: u64,
    score: f64,
    worst: u32,
    difficulty: f64,
    renamable: bool,
    resolvable: bool,
    /// `meta.split` says the task is held out: always validation.
    held_out: bool,
    /// `<|task|>` + task tokens.
    prompt_len: u32,
    agents: Box<[u16]>,
}

/// Removes the spill file however the run ends.
struct SpillGuard(PathBuf);
impl Drop for SpillGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Run the pipeline, reporting progress. With `cfg.augment`, `resolver`
/// (when given) re-solves the records it can ([`Transform::Resolve`]);
/// `afm-data` has no task world of its own, so a caller that wants the
/// `resolve` rows passes one (the `afm` CLI passes `afm-tasks`').
///
/// A thin wrapper: `Prepare::setup(cfg, progress, resolver)?.run()` (see
/// [`Prepare`] for the phases).
pub fn prepare_with(
    cfg: &PrepareConfig,
    progress: &(dyn Fn(Progress) + Sync),
    resolver: Option<&dyn Resolver>,
) -> Result<Manifest> {
    Prepare::setup(cfg, progress, resolver)?.run()
}

/// One `prepare` run laid out as a recipe, the way the trainer is
/// (`afm_train::Trainer`): each phase is a method, and [`Prepare::run`]
/// calls them in order.
///
/// - `setup`: validate the config, expand the inputs, create the output
///   directory, the spill file and `rejects.jsonl`;
/// - `read` (pass 1): ingest, normalise, score and key every record, spill
///   the valid ones, write the rejects;
/// - `plan`: the polars plan over the compact table (score filter, dedup,
///   split, order, augmentation rows);
/// - `vocabulary`: the roles of the kept records, the corpus vocabulary of
///   frequent tokens (`--vocab-min-count` > 1), the loss weights,
///   `vocab.json`;
/// - `write` (pass 2): format, tokenize, mask, window, pack, the shards
///   and `augmented.jsonl`;
/// - `finish`: the corpus vocabulary of the tokens used (`--corpus-vocab`
///   alone), the split stats, the accounting check (total = kept +
///   filtered + rejected) and `manifest.json`.
///
/// Only `setup` and `run` are public: the phases share state that must be
/// built in this order. The spill file is removed however the run ends.
pub struct Prepare<'a> {
    cfg: &'a PrepareConfig,
    progress: &'a (dyn Fn(Progress) + Sync),
    resolver: Option<&'a dyn Resolver>,
    /// Longest document: `cfg.max_tokens`, else `cfg.seq_len`.
    max_tokens: usize,
    /// The input files, expanded and sorted.
    files: Vec<PathBuf>,
    total_bytes: u64,
    /// The manifest, filled in phase by phase.
    m: Manifest,
    spill_path: PathBuf,
    spill: BufWriter<File>,
    /// Byte offset of the next spilled line.
    offset: u64,
    rejects_path: PathBuf,
    rejects: BufWriter<File>,
    /// The compact table: one row per valid record, in input order.
    recs: Vec<Rec>,
    names: AgentNames,
    _guard: SpillGuard,
}

/// One record as pass 1 keeps it: the normalised trajectory serialised for
/// the spill, its agents (distinct, in order of their first turn) and what
/// the plan needs. The trajectory itself is not kept.
struct Inspected {
    line: String,
    agents: Vec<String>,
    quality: score::Quality,
    task_key: u64,
    content_key: u64,
    difficulty: f64,
    renamable: bool,
    resolvable: bool,
    held_out: bool,
    prompt_len: u32,
}

/// Agent names seen in pass 1, numbered in order of first appearance (a
/// [`Rec`] keeps its agents' numbers, not their names).
#[derive(Default)]
struct AgentNames {
    names: Vec<String>,
    index: HashMap<String, u16>,
}

impl AgentNames {
    fn id(&mut self, name: String) -> Result<u16> {
        if let Some(&i) = self.index.get(&name) {
            return Ok(i);
        }
        if self.names.len() >= u16::MAX as usize {
            bail!("more than 65535 distinct agent names");
        }
        let id = self.names.len() as u16;
        self.index.insert(name.clone(), id);
        self.names.push(name);
        Ok(id)
    }

    fn name(&self, id: u16) -> &str {
        &self.names[id as usize]
    }
}

/// The tokenizer the documents are encoded with, and the loss weight of
/// each role.
struct Vocabulary {
    tok: Tokenizer,
    table: Vec<f32>,
}

/// The documents of one planned record (pass 2).
struct Docs {
    windows: Vec<window::Window>,
    /// Longer than `max_tokens`: windowed or truncated.
    long: bool,
    truncated: bool,
    task_key: u64,
    id: String,
}

/// What pass 2 makes of one planned record.
enum Out {
    Docs(Docs),
    /// A source record dropped, under this reason.
    Filtered(&'static str),
    /// An augmentation not written, under this `skipped:*` reason.
    AugSkipped(&'static str),
}

/// Counts pass 2 keeps besides the manifest's, per split (train, val).
struct Tally {
    records: [usize; 2],
    tasks: [HashSet<u64>; 2],
    /// Source records kept.
    kept: usize,
    kept_split: [usize; 2],
    /// Indexed by role.
    agent_stats: Vec<AgentStats>,
    /// BPE ids any document uses (the corpus vocabulary of
    /// `--corpus-vocab` with `--vocab-min-count 1`).
    corpus_seen: Vec<bool>,
}

/// Pass 2 in progress: the shard writers, packers and augmentation log.
struct Pass2 {
    writers: [ShardWriter; 2],
    packers: [Packer; 2],
    aug_log: BufWriter<File>,
    tally: Tally,
}

/// What pass 2 wrote, per split (train, val).
struct Written {
    tally: Tally,
    packed: [PackStats; 2],
    loss_tokens: [usize; 2],
}

impl<'a> Prepare<'a> {
    /// Validate `cfg`, expand its inputs and create the output directory,
    /// the spill file and `rejects.jsonl`.
    pub fn setup(
        cfg: &'a PrepareConfig,
        progress: &'a (dyn Fn(Progress) + Sync),
        resolver: Option<&'a dyn Resolver>,
    ) -> Result<Self> {
        cfg.validate()?;
        let max_tokens = cfg.max_tokens.unwrap_or(cfg.seq_len);
        let files = ingest::expand_inputs(&cfg.inputs)?;
        if files.is_empty() {
            bail!(
                "no input files (.json, .jsonl, .ndjson, .db, .sqlite, .sqlite3) in {:?}",
                cfg.inputs
            );
        }
        std::fs::create_dir_all(&cfg.out)
            .with_context(|| format!("creating {}", cfg.out.display()))?;
        let total_bytes: u64 = files
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum();
        let spill_path = cfg.out.join(".prepare.spill.jsonl");
        let guard = SpillGuard(spill_path.clone());
        let spill = BufWriter::new(
            File::create(&spill_path)
                .with_context(|| format!("creating {}", spill_path.display()))?,
        );
        let rejects_path = cfg.out.join("rejects.jsonl");
        let rejects = BufWriter::new(
            File::create(&rejects_path)
                .with_context(|| format!("creating {}", rejects_path.display()))?,
        );
        let m = Manifest {
            version: 1,
            config: cfg.clone(),
            files: files.iter().map(|f| f.display().to_string()).collect(),
            ..Default::default()
        };
        Ok(Self {
            cfg,
            progress,
            resolver,
            max_tokens,
            files,
            total_bytes,
            m,
            spill_path,
            spill,
            offset: 0,
            rejects_path,
            rejects,
            recs: Vec::new(),
            names: AgentNames::default(),
            _guard: guard,
        })
    }

    /// Every phase in order; the manifest it wrote.
    pub fn run(mut self) -> Result<Manifest> {
        self.read()?;
        let plan = self.plan()?;
        let vocab = self.vocabulary(&plan)?;
        let written = self.write(&plan, &vocab)?;
        self.finish(&vocab, written)
    }

    /// Pass 1 (streaming, rayon per batch): validate, normalise, score and
    /// key every record; spill the valid ones, write the rejects.
    fn read(&mut self) -> Result<()> {
        let (cfg, progress, resolver) = (self.cfg, self.progress, self.resolver);
        let total_bytes = self.total_bytes;
        let count_tok = Tokenizer::gpt2();
        let mut bytes_before = 0u64;
        for file in self.files.clone() {
            let file_bytes = std::fs::metadata(&file).map(|x| x.len()).unwrap_or(0);
            let mut fatal: Option<anyhow::Error> = None;
            ingest::for_each_batch(
                &file,
                cfg.format,
                &cfg.limits,
                ingest::BatchSize::default(),
                |batch: Vec<Parsed>, info: ingest::BatchInfo| {
                    if fatal.is_some() {
                        return;
                    }
                    progress(Progress {
                        stage: "read",
                        done: bytes_before + info.bytes_read,
                        total: total_bytes,
                    });
                    let work: Vec<(ingest::Location, std::result::Result<Inspected, _>)> = batch
                        .into_par_iter()
                        .map(|p| {
                            let r = p.result.and_then(|t| inspect(t, cfg, resolver, &count_tok));
                            (p.loc, r)
                        })
                        .collect();
                    for (loc, r) in work {
                        if let Err(e) = self.take(loc, r) {
                            fatal = Some(e);
                            return;
                        }
                    }
                },
            )?;
            if let Some(e) = fatal {
                return Err(e);
            }
            bytes_before += file_bytes;
        }
        self.spill.flush().context("flushing the spill file")?;
        self.rejects
            .flush()
            .with_context(|| format!("writing {}", self.rejects_path.display()))
    }

    /// Count one record of pass 1, and reject or spill it.
    fn take(
        &mut self,
        loc: ingest::Location,
        r: std::result::Result<Inspected, ingest::Invalid>,
    ) -> Result<()> {
        self.m.total += 1;
        match r {
            Err(inv) => self.reject(loc, inv),
            Ok(x) => self.spill(x),
        }
    }

    /// A rejected record: fatal with `strict`, else a line of `rejects.jsonl`.
    fn reject(&mut self, loc: ingest::Location, inv: ingest::Invalid) -> Result<()> {
        let key = inv.reason.key();
        if self.cfg.strict {
            bail!("{loc}: rejected ({key}): {}", inv.message);
        }
        *self.m.rejected.entry(key.to_string()).or_default() += 1;
        let line = ingest::RejectLine::new(&loc, &inv);
        serde_json::to_writer(&mut self.rejects, &line)
            .map_err(anyhow::Error::from)
            .and_then(|_| self.rejects.write_all(b"\n").map_err(anyhow::Error::from))
            .with_context(|| format!("writing {}", self.rejects_path.display()))
    }

    /// A valid record: its line to the spill, its row to the compact table.
    fn spill(&mut self, x: Inspected) -> Result<()> {
        let mut agents = Vec::new();
        for name in x.agents {
            let id = self.names.id(name)?;
            if !agents.contains(&id) {
                agents.push(id);
            }
        }
        self.spill
            .write_all(x.line.as_bytes())
            .and_then(|_| self.spill.write_all(b"\n"))
            .with_context(|| format!("writing {}", self.spill_path.display()))?;
        self.recs.push(Rec {
            offset: self.offset,
            len: x.line.len() as u32,
            task_key: x.task_key,
            content_key: x.content_key,
            score: x.quality.total(),
            worst: x.quality.worst_part() as u32,
            difficulty: x.difficulty,
            renamable: x.renamable,
            resolvable: x.resolvable,
            held_out: x.held_out,
            prompt_len: x.prompt_len,
            agents: agents.into_boxed_slice(),
        });
        self.offset += x.line.len() as u64 + 1;
        Ok(())
    }

    /// The plan (polars lazy over the compact table): score filter, dedup,
    /// split by task, order, augmentation rows.
    fn plan(&mut self) -> Result<Vec<PlanRow>> {
        plan_rows(self.cfg, self.max_tokens, &self.recs, &mut self.m).context("planning (polars)")
    }

    /// The role vocabulary (agents of kept records, first seen in input
    /// order), the corpus vocabulary of frequent tokens, the loss weights;
    /// writes `vocab.json`.
    fn vocabulary(&mut self, plan: &[PlanRow]) -> Result<Vocabulary> {
        let cfg = self.cfg;
        let mut kept_recs: Vec<u32> = plan
            .iter()
            .filter(|p| p.transform.is_none())
            .map(|p| p.rec)
            .collect();
        kept_recs.sort_unstable();
        let mut roles = RoleVocab::new();
        for &r in &kept_recs {
            for &a in self.recs[r as usize].agents.iter() {
                roles.insert(self.names.name(a))?;
            }
        }
        let mut tok = Tokenizer::new(roles);
        if cfg.corpus_vocab && cfg.vocab_min_count > 1 {
            (self.progress)(Progress {
                stage: "count",
                done: 0,
                total: plan.len() as u64,
            });
            let corpus = frequent_tokens(
                plan,
                &self.recs,
                &self.spill_path,
                &tok,
                cfg.vocab_min_count,
            )?;
            tok = tok.with_corpus(corpus);
        }
        for name in cfg.weights.weights.keys().chain(cfg.weights.only.iter()) {
            if tok.roles().index_of(name).is_none() {
                bail!(
                    "agent {name:?} (in --agent-weight/--only-agent) is not in the data; agents: {:?}",
                    tok.roles().agents()
                );
            }
        }
        let table = cfg.weights.table(&tok);
        self.m.roles = tok.roles().agents().to_vec();
        self.m.n_vocab = tok.n_vocab();
        self.m.n_roles = tok.roles().n_roles();
        afm_tokenizer::atomic::write(&cfg.out.join("vocab.json"), tok.to_json())
            .context("writing vocab.json")?;
        Ok(Vocabulary { tok, table })
    }

    /// Pass 2 (streaming, rayon per batch): read the records back from the
    /// spill in plan order; format, tokenize, mask, window, pack and write
    /// the shards and `augmented.jsonl`.
    fn write(&mut self, plan: &[PlanRow], vocab: &Vocabulary) -> Result<Written> {
        let val_tasks: HashSet<u64> = plan
            .iter()
            .filter(|p| p.val)
            .map(|p| self.recs[p.rec as usize].task_key)
            .collect();
        let spill = File::open(&self.spill_path)
            .with_context(|| format!("opening {}", self.spill_path.display()))?;
        let mut pass = Pass2::create(self.cfg, vocab.tok.roles().n_roles())?;
        let total_plan = plan.len() as u64;
        let mut written = 0u64;
        // Bounded by bytes as well as records: one record may be megabytes.
        for chunk in write_batches(plan, &self.recs, 2048, WRITE_BATCH_BYTES) {
            (self.progress)(Progress {
                stage: "write",
                done: written,
                total: total_plan,
            });
            written += chunk.len() as u64;
            let this = &*self;
            let outs: Vec<Result<Out>> = chunk
                .par_iter()
                .map(|p| this.render(p, vocab, &val_tasks, &spill))
                .collect();
            for (p, o) in chunk.iter().zip(outs) {
                pass.absorb(p, o?, &mut self.m)?;
            }
        }
        pass.aug_log.flush()?;
        (self.progress)(Progress {
            stage: "write",
            done: total_plan,
            total: total_plan,
        });
        pass.finish()
    }

    /// One planned record read back from the spill: its transform applied
    /// (and the result checked), encoded, windowed.
    fn render(
        &self,
        p: &PlanRow,
        vocab: &Vocabulary,
        val_tasks: &HashSet<u64>,
        spill: &File,
    ) -> Result<Out> {
        let cfg = self.cfg;
        let src = read_spilled(spill, &self.recs[p.rec as usize])?;
        let t = match p.transform {
            None => src,
            Some(tr) => match augment::apply(&src, tr, self.resolver) {
                None => return Ok(Out::AugSkipped("skipped:noop")),
                Some(a) => {
                    let Ok(a) = normalise(a, &cfg.agents_map) else {
                        return Ok(Out::AugSkipped("skipped:bad_agent_name"));
                    };
                    if val_tasks.contains(&score::task_key(&a.task)) {
                        return Ok(Out::AugSkipped("skipped:would_leak"));
                    }
                    a
                }
            },
        };
        let enc = match encode_trajectory(&vocab.tok, &t) {
            Ok(e) => e,
            Err(FormatError::UnknownAgent(_)) if p.transform.is_some() => {
                return Ok(Out::AugSkipped("skipped:unknown_agent"));
            }
            Err(FormatError::UnknownAgent(a)) => {
                bail!("internal: agent {a:?} missing from the vocabulary")
            }
        };
        let long = enc.tokens.len() > self.max_tokens;
        // A source record is filtered under `why`; an augmentation skipped.
        let dropped = |why: &'static str, skipped: &'static str| {
            if p.transform.is_some() {
                Out::AugSkipped(skipped)
            } else {
                Out::Filtered(why)
            }
        };
        match window::fit(&enc, &vocab.table, self.max_tokens, cfg.long) {
            Ok(ws) => {
                if ws.iter().all(|w| w.doc.weights.iter().all(|&x| x == 0.0)) {
                    return Ok(dropped("no_loss_tokens", "skipped:no_loss_tokens"));
                }
                Ok(Out::Docs(Docs {
                    windows: ws,
                    long,
                    truncated: cfg.long == LongMode::Truncate && long,
                    task_key: score::task_key(&t.task),
                    id: t.id.clone(),
                }))
            }
            Err(TooLong::Dropped) => Ok(dropped("too_long", "skipped:too_long")),
            Err(TooLong::PromptTooLong) => {
                Ok(dropped("prompt_too_long", "skipped:prompt_too_long"))
            }
        }
    }

    /// The corpus vocabulary of the tokens used (`--corpus-vocab` with
    /// `--vocab-min-count 1`), the split stats, the accounting check and
    /// `manifest.json`.
    fn finish(mut self, vocab: &Vocabulary, w: Written) -> Result<Manifest> {
        let cfg = self.cfg;
        let m = &mut self.m;
        if cfg.corpus_vocab && cfg.vocab_min_count <= 1 {
            // Rows only for the BPE ids the documents use (see `CorpusVocab`).
            let seen = &w.tally.corpus_seen;
            let ids = (0..seen.len() as u32).filter(|&i| seen[i as usize]);
            let tok = vocab
                .tok
                .clone()
                .with_corpus(afm_tokenizer::CorpusVocab::from_ids(ids));
            m.n_vocab = tok.n_vocab();
            afm_tokenizer::atomic::write(&cfg.out.join("vocab.json"), tok.to_json())
                .context("writing vocab.json")?;
        }
        let split = |s: usize| SplitStats {
            records: w.tally.records[s],
            tasks: w.tally.tasks[s].len(),
            documents: w.packed[s].documents,
            rows: w.packed[s].rows,
            real_tokens: w.packed[s].real_tokens,
            loss_tokens: w.loss_tokens[s],
            padding: w.packed[s].padding,
            efficiency: w.packed[s].efficiency(),
        };
        m.train = split(0);
        m.val = split(1);
        m.kept = w.tally.kept;
        m.tokens = w.packed[0].real_tokens + w.packed[1].real_tokens;
        m.loss_tokens = w.loss_tokens[0] + w.loss_tokens[1];
        let all = m.tokens + w.packed[0].padding + w.packed[1].padding;
        m.packing_efficiency = if all == 0 {
            0.0
        } else {
            m.tokens as f64 / all as f64
        };
        for (i, a) in vocab.tok.roles().agents().iter().enumerate() {
            m.per_agent.insert(
                a.clone(),
                w.tally.agent_stats[afm_tokenizer::ROLE_FIRST_AGENT as usize + i].clone(),
            );
        }
        let filtered: usize = m.filtered.values().sum();
        let rejected: usize = m.rejected.values().sum();
        if m.total != m.kept + filtered + rejected {
            bail!("internal accounting error: total {} != kept {} + filtered {filtered} + rejected {rejected}", m.total, m.kept);
        }
        if w.tally.kept_split[0] == 0 && !cfg.allow_empty {
            bail!(
                "{}",
                nothing_to_train(m, w.tally.kept_split[1], &self.rejects_path)
            );
        }
        let text = serde_json::to_string_pretty(&*m)?;
        afm_tokenizer::atomic::write(&cfg.out.join("manifest.json"), text)
            .context("writing manifest.json")?;
        Ok(std::mem::take(m))
    }
}

/// Normalise, score and key one parsed record (pass 1, per record in
/// parallel).
fn inspect(
    t: Trajectory,
    cfg: &PrepareConfig,
    resolver: Option<&dyn Resolver>,
    count_tok: &Tokenizer,
) -> std::result::Result<Inspected, ingest::Invalid> {
    let t = normalise(t, &cfg.agents_map)?;
    let quality = score::quality(&t);
    let tokens = if cfg.curriculum {
        count_tok.encode(&t.task).len()
            + t.steps
                .iter()
                .map(|s| 1 + count_tok.encode(&s.text).len())
                .sum::<usize>()
            + 2
    } else {
        0
    };
    let difficulty = score::difficulty(tokens, t.agent_turns(), t.tool_calls());
    let line = serde_json::to_string(&t).map_err(|e| ingest::Invalid {
        reason: ingest::RejectReason::WrongType,
        message: format!("cannot re-serialise: {e}"),
    })?;
    let renamable = cfg.augment && !augment::renamable(&t).is_empty();
    let resolvable = cfg.augment && resolver.is_some_and(|r| r.can_resolve(&t));
    let held_out = held_out(&t);
    let prompt_len = 1 + count_tok.encode(&t.task).len() as u32;
    let (task_key, content_key) = (score::task_key(&t.task), score::content_key(&t));
    let mut agents: Vec<String> = Vec::new();
    for s in t.steps.iter().filter(|s| s.kind == StepKind::Agent) {
        if !agents.contains(&s.agent) {
            agents.push(s.agent.clone());
        }
    }
    Ok(Inspected {
        line,
        agents,
        quality,
        task_key,
        content_key,
        difficulty,
        renamable,
        resolvable,
        held_out,
        prompt_len,
    })
}

impl Pass2 {
    /// The shard writers and packers of both splits, and `augmented.jsonl`.
    fn create(cfg: &PrepareConfig, n_roles: usize) -> Result<Self> {
        let mut writers = [
            ShardWriter::create(&cfg.out, "train", cfg.seq_len)?,
            ShardWriter::create(&cfg.out, "val", cfg.seq_len)?,
        ];
        for w in writers.iter_mut() {
            w.set_curriculum(cfg.curriculum, cfg.curriculum_stages);
        }
        let packers = [
            Packer::new(cfg.seq_len, cfg.pack_buffer),
            Packer::new(cfg.seq_len, cfg.pack_buffer),
        ];
        let aug_log = BufWriter::new(
            File::create(cfg.out.join("augmented.jsonl")).context("creating augmented.jsonl")?,
        );
        Ok(Self {
            writers,
            packers,
            aug_log,
            tally: Tally {
                records: [0; 2],
                tasks: [HashSet::new(), HashSet::new()],
                kept: 0,
                kept_split: [0; 2],
                agent_stats: vec![AgentStats::default(); n_roles],
                corpus_seen: vec![false; afm_tokenizer::EOT as usize],
            },
        })
    }

    /// Count one planned record's outcome, log an augmentation, and pack
    /// its documents.
    fn absorb(&mut self, p: &PlanRow, out: Out, m: &mut Manifest) -> Result<()> {
        let s = p.val as usize;
        let d = match out {
            Out::Filtered(why) => {
                *m.filtered.entry(why.into()).or_default() += 1;
                return Ok(());
            }
            Out::AugSkipped(why) => {
                *m.augmented.entry(why.into()).or_default() += 1;
                return Ok(());
            }
            Out::Docs(d) => d,
        };
        let tally = &mut self.tally;
        if let Some(tr) = p.transform {
            *m.augmented.entry(tr.kind().into()).or_default() += 1;
            let id = &d.id;
            serde_json::to_writer(
                &mut self.aug_log,
                &serde_json::json!({
                    "id": id,
                    "source": id.rsplit_once('+').map(|x| x.0).unwrap_or(id),
                    "transform": tr.name(),
                    "split": "train"
                }),
            )?;
            self.aug_log.write_all(b"\n")?;
        } else {
            tally.kept += 1;
            tally.kept_split[s] += 1;
        }
        tally.records[s] += 1;
        tally.tasks[s].insert(d.task_key);
        if d.long {
            if d.truncated {
                m.truncated += 1;
            } else {
                m.windowed += 1;
                m.extra_windows += d.windows.len() - 1;
            }
        }
        let (packer, writer) = (&mut self.packers[s], &mut self.writers[s]);
        for w in d.windows {
            count_agents(&mut tally.agent_stats, &w);
            // The corpus vocabulary covers whole documents, so every
            // dataset prepared from the same records (each agent's, the
            // AFM's) gets the same one.
            for &t in &w.doc.tokens {
                if let Some(x) = tally.corpus_seen.get_mut(t as usize) {
                    *x = true;
                }
            }
            let mut doc = w.doc;
            doc.trim_untrained();
            packer.push(doc, &mut |pk: crate::pack::Packed| {
                writer.push(&pk.row, pk.real_tokens, pk.documents)
            })?;
        }
        Ok(())
    }

    /// Flush the packers and close the shards (train, then val).
    fn finish(self) -> Result<Written> {
        let [p_train, p_val] = self.packers;
        let [mut w_train, mut w_val] = self.writers;
        let st_train = p_train.finish(&mut |pk: crate::pack::Packed| {
            w_train.push(&pk.row, pk.real_tokens, pk.documents)
        })?;
        let st_val = p_val.finish(&mut |pk: crate::pack::Packed| {
            w_val.push(&pk.row, pk.real_tokens, pk.documents)
        })?;
        let i_train = w_train.finish()?;
        let i_val = w_val.finish()?;
        Ok(Written {
            tally: self.tally,
            packed: [st_train, st_val],
            loss_tokens: [i_train.loss_tokens, i_val.loss_tokens],
        })
    }
}

/// Per-agent counts of one window: the targets an agent owns (and those
/// with loss weight) among the window's own positions, and its turns.
fn count_agents(stats: &mut [AgentStats], w: &window::Window) {
    for (i, &o) in w.doc.owners.iter().enumerate().skip(w.new_from) {
        if o >= afm_tokenizer::ROLE_FIRST_AGENT && i + 1 < w.doc.len() {
            let st = &mut stats[o as usize];
            st.tokens += 1;
            if w.doc.weights[i] > 0.0 {
                st.loss_tokens += 1;
            }
        }
    }
    for (i, &tkn) in w.doc.tokens.iter().enumerate() {
        let opens = w.doc.roles[i];
        if tkn >= afm_tokenizer::FIRST_ROLE_TOKEN
            && w.doc.owners[i] == opens
            && w.doc.weights[i] > 0.0
        {
            stats[opens as usize].turns += 1;
        }
    }
}

/// The normalised trajectory pass 1 spilled for record `r`.
fn read_spilled(spill: &File, r: &Rec) -> Result<Trajectory> {
    let mut buf = vec![0u8; r.len as usize];
    spill
        .read_exact_at(&mut buf, r.offset)
        .context("reading the spill file")?;
    serde_json::from_slice(&buf).context("decoding the spill file")
}

fn one() -> usize {
    1
}

/// The corpus vocabulary of the BPE tokens occurring at least `min_count`
/// times in the training split's source records (augmentations excluded),
/// encoded as the documents are. The records, the split and so the
/// vocabulary are the same for every dataset prepared from the same inputs
/// (each agent's and the AFM's), which a multi-agent system needs.
fn frequent_tokens(
    plan: &[PlanRow],
    recs: &[Rec],
    spill_path: &Path,
    tok: &Tokenizer,
    min_count: usize,
) -> Result<afm_tokenizer::CorpusVocab> {
    let spill =
        File::open(spill_path).with_context(|| format!("opening {}", spill_path.display()))?;
    let eot = afm_tokenizer::EOT as usize;
    let sources: Vec<&PlanRow> = plan
        .iter()
        .filter(|p| !p.val && p.transform.is_none())
        .collect();
    let counts = sources
        .par_chunks(512)
        .map(|chunk| -> Result<Vec<u32>> {
            let mut counts = vec![0u32; eot];
            for p in chunk {
                let t = read_spilled(&spill, &recs[p.rec as usize])?;
                // Unknown agents cannot occur: the roles come from these records.
                if let Ok(enc) = encode_trajectory(tok, &t) {
                    for &id in enc.tokens.iter().filter(|&&id| (id as usize) < eot) {
                        counts[id as usize] = counts[id as usize].saturating_add(1);
                    }
                }
            }
            Ok(counts)
        })
        .try_reduce(
            || vec![0u32; eot],
            |mut a, b| {
                a.iter_mut()
                    .zip(b)
                    .for_each(|(x, y)| *x = x.saturating_add(y));
                Ok(a)
            },
        )?;
    Ok(afm_tokenizer::CorpusVocab::from_ids(
        (0..eot as u32).filter(|&i| counts[i as usize] as usize >= min_count),
    ))
}

/// Consecutive slices of `plan` of at most `max_rows` rows whose spilled
/// records total at most `max_bytes` (always at least one row).
fn write_batches<'a>(
    plan: &'a [PlanRow],
    recs: &'a [Rec],
    max_rows: usize,
    max_bytes: usize,
) -> impl Iterator<Item = &'a [PlanRow]> + 'a {
    let mut rest = plan;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (mut n, mut bytes) = (0usize, 0usize);
        while n < rest.len() && n < max_rows.max(1) {
            let len = recs[rest[n].rec as usize].len as usize;
            if n > 0 && bytes + len > max_bytes {
                break;
            }
            bytes += len;
            n += 1;
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Some(head)
    })
}

/// The error of a run that keeps no record for training: the counts and
/// the most frequent reasons.
fn nothing_to_train(m: &Manifest, kept_val: usize, rejects: &Path) -> String {
    let top = |reasons: &BTreeMap<String, usize>| -> String {
        let mut v: Vec<(&String, &usize)> = reasons.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let shown: Vec<String> = v.iter().take(3).map(|(k, n)| format!("{k} {n}")).collect();
        if shown.is_empty() {
            String::new()
        } else if v.len() > 3 {
            format!(" ({}, ...)", shown.join(", "))
        } else {
            format!(" ({})", shown.join(", "))
        }
    };
    let filtered: usize = m.filtered.values().sum();
    let rejected: usize = m.rejected.values().sum();
    let mut s = format!(
        "no record kept for training: read {} records from {} file(s); kept {} ({kept_val} in validation only), filtered {filtered}{}, rejected {rejected}{}",
        m.total,
        m.files.len(),
        m.kept,
        top(&m.filtered),
        top(&m.rejected),
    );
    if rejected > 0 {
        s += &format!(
            "; rejects with file, line and field are in {}",
            rejects.display()
        );
    }
    if m.filtered.keys().any(|k| k.starts_with("low_score")) {
        s += &format!("; --min-score is {}", m.config.min_score);
    }
    s += "; pass --allow-empty (PrepareConfig::allow_empty) to write the empty dataset anyway";
    s
}

/// True when `meta.split` marks the record's task as held out
/// (`test`, `val`, `validation`, `held_out`): it always goes to validation.
pub fn held_out(t: &Trajectory) -> bool {
    matches!(
        t.meta
            .as_ref()
            .and_then(|m| m.get("split"))
            .and_then(|s| s.as_str()),
        Some("test" | "val" | "validation" | "held_out")
    )
}

/// One planned output record.
#[derive(Debug, Clone, Copy)]
struct PlanRow {
    rec: u32,
    val: bool,
    transform: Option<Transform>,
}

const SPLIT_BUCKETS: u64 = 1_000_000;

/// The plan (polars lazy over the compact table): score filter (counted
/// in `m.filtered`), prompts too long to window, dedup, train/val split by
/// task, order (input order, or curriculum), then the augmentation rows.
fn plan_rows(
    cfg: &PrepareConfig,
    max_tokens: usize,
    recs: &[Rec],
    m: &mut Manifest,
) -> Result<Vec<PlanRow>> {
    let n = recs.len();
    let df = df!(
        "rec" => (0..n as u32).collect::<Vec<u32>>(),
        "content_key" => recs.iter().map(|r| r.content_key).collect::<Vec<u64>>(),
        "bucket" => recs.iter().map(|r| (r.task_key % SPLIT_BUCKETS) as u32).collect::<Vec<u32>>(),
        "score" => recs.iter().map(|r| r.score).collect::<Vec<f64>>(),
        "worst" => recs.iter().map(|r| r.worst).collect::<Vec<u32>>(),
        "difficulty" => recs.iter().map(|r| r.difficulty).collect::<Vec<f64>>(),
        "renamable" => recs.iter().map(|r| r.renamable).collect::<Vec<bool>>(),
        "resolvable" => recs.iter().map(|r| r.resolvable).collect::<Vec<bool>>(),
        "held_out" => recs.iter().map(|r| r.held_out).collect::<Vec<bool>>(),
        "prompt_len" => recs.iter().map(|r| r.prompt_len).collect::<Vec<u32>>(),
    )?;
    let lf = df.lazy();
    count_low_scores(&lf, cfg.min_score, m)?;
    let passed = lf.filter(col("score").gt_eq(lit(cfg.min_score)));
    // A window keeps the task prompt: it needs room for at least 4 more tokens.
    let passed = if cfg.long == LongMode::Window {
        let limit = max_tokens.saturating_sub(4) as u32;
        let n_long = passed
            .clone()
            .filter(col("prompt_len").gt(lit(limit)))
            .select([len().alias("n")])
            .collect()?
            .column("n")?
            .idx()?
            .get(0)
            .unwrap_or(0) as usize;
        if n_long > 0 {
            m.filtered.insert("prompt_too_long".into(), n_long);
        }
        passed.filter(col("prompt_len").lt_eq(lit(limit)))
    } else {
        passed
    };
    let n_passed = passed
        .clone()
        .select([len().alias("n")])
        .collect()?
        .column("n")?
        .idx()?
        .get(0)
        .unwrap_or(0) as usize;
    let uniq = if cfg.dedup {
        passed.unique_stable_generic(Some(vec![col("content_key")]), UniqueKeepStrategy::First)
    } else {
        passed
    };
    let threshold = (cfg.val_fraction * SPLIT_BUCKETS as f64).round() as u32;
    let split = uniq.with_column(
        col("bucket")
            .lt(lit(threshold))
            .or(col("held_out"))
            .alias("val"),
    );
    let sort_by: Vec<&str> = if cfg.curriculum {
        vec!["val", "difficulty", "rec"]
    } else {
        vec!["val", "rec"]
    };
    let ordered = split
        .sort(sort_by, SortMultipleOptions::default())
        .collect()?;
    if ordered.height() < n_passed {
        m.filtered
            .insert("duplicate".into(), n_passed - ordered.height());
    }
    let rec_ca = ordered.column("rec")?.u32()?;
    let recs_col: Vec<u32> = (0..rec_ca.len()).filter_map(|i| rec_ca.get(i)).collect();
    let val_ca = ordered.column("val")?.bool()?;
    let val_col: Vec<bool> = (0..val_ca.len())
        .map(|i| val_ca.get(i).unwrap_or(false))
        .collect();
    let mut base: Vec<(u32, bool)> = recs_col.into_iter().zip(val_col).collect();
    if cfg.curriculum && cfg.curriculum_stages > 1 {
        stage_curriculum(&mut base, cfg.curriculum_stages, cfg.seed);
    }
    if !cfg.augment {
        return Ok(base
            .into_iter()
            .map(|(rec, val)| PlanRow {
                rec,
                val,
                transform: None,
            })
            .collect());
    }
    augment_rows(cfg, recs, &base)
}

/// Count the records under `min_score` in `m.filtered`, each under the
/// score part that lost the most points (`low_score:PART`).
fn count_low_scores(lf: &LazyFrame, min_score: f64, m: &mut Manifest) -> Result<()> {
    let low = lf
        .clone()
        .filter(col("score").lt(lit(min_score)))
        .group_by([col("worst")])
        .agg([len().alias("n")])
        .collect()?;
    let worst = low.column("worst")?.u32()?.clone();
    let counts = low.column("n")?.idx()?.clone();
    for (w, c) in (0..worst.len()).map(|i| (worst.get(i), counts.get(i))) {
        if let (Some(w), Some(c)) = (w, c) {
            let name = score::PARTS
                .get(w as usize)
                .map(|p| p.0)
                .unwrap_or("unknown");
            *m.filtered.entry(format!("low_score:{name}")).or_default() += c as usize;
        }
    }
    Ok(())
}

/// Curriculum stages: within each split, `stages` quantile buckets of the
/// difficulty-sorted `base` (rec, val), a seeded order inside each.
fn stage_curriculum(base: &mut [(u32, bool)], stages: usize, seed: u64) {
    for val in [false, true] {
        let idx: Vec<usize> = (0..base.len()).filter(|&i| base[i].1 == val).collect();
        let k = idx.len();
        let mut staged: Vec<(usize, u64, (u32, bool))> = idx
            .iter()
            .enumerate()
            .map(|(rank, &i)| {
                let stage = rank * stages / k.max(1);
                (
                    stage,
                    afm_format::fnv1a(&base[i].0.to_le_bytes(), seed),
                    base[i],
                )
            })
            .collect();
        staged.sort_by_key(|x| (x.0, x.1));
        for (slot, x) in idx.iter().zip(staged) {
            base[*slot] = x.2;
        }
    }
}

/// The planned order `base` (rec, val) with the augmentation rows added.
fn augment_rows(cfg: &PrepareConfig, recs: &[Rec], base: &[(u32, bool)]) -> Result<Vec<PlanRow>> {
    // Augmentation rows (train only), as a polars query over the planned
    // order: every train record gets a template rewording; records with
    // renamable identifiers a rename; records with re-solve metadata a
    // re-solved variant. Each follows its source in the order.
    let planned = df!(
        "pos" => (0..base.len() as u32).collect::<Vec<u32>>(),
        "rec" => base.iter().map(|b| b.0).collect::<Vec<u32>>(),
        "val" => base.iter().map(|b| b.1).collect::<Vec<bool>>(),
    )?;
    let flags = df!(
        "rec" => (0..recs.len() as u32).collect::<Vec<u32>>(),
        "renamable" => recs.iter().map(|r| r.renamable).collect::<Vec<bool>>(),
        "resolvable" => recs.iter().map(|r| r.resolvable).collect::<Vec<bool>>(),
    )?;
    let p = planned.lazy().join(
        flags.lazy(),
        [col("rec")],
        [col("rec")],
        JoinArgs::new(JoinType::Left),
    );
    let kind = |k: u32| lit(k).cast(DataType::UInt32).alias("kind");
    let parts = [
        p.clone()
            .select([col("pos"), col("rec"), col("val"), kind(0)]),
        p.clone()
            .filter(col("val").not())
            .select([col("pos"), col("rec"), col("val"), kind(1)]),
        p.clone()
            .filter(col("val").not().and(col("renamable")))
            .select([col("pos"), col("rec"), col("val"), kind(2)]),
        p.filter(col("val").not().and(col("resolvable"))).select([
            col("pos"),
            col("rec"),
            col("val"),
            kind(3),
        ]),
    ];
    let all = concat(parts, UnionArgs::default())?
        .sort(["pos", "kind"], SortMultipleOptions::default())
        .collect()?;
    let rec_ca = all.column("rec")?.u32()?;
    let val_ca = all.column("val")?.bool()?;
    let kind_ca = all.column("kind")?.u32()?;
    let mut rows = Vec::with_capacity(all.height());
    for i in 0..all.height() {
        let (Some(rec), Some(k)) = (rec_ca.get(i), kind_ca.get(i)) else {
            continue;
        };
        let val = val_ca.get(i).unwrap_or(false);
        let transform = match k {
            0 => None,
            1 => {
                let t = afm_format::fnv1a(&rec.to_le_bytes(), cfg.seed ^ 0xa5)
                    % augment::TEMPLATES.len() as u64;
                Some(Transform::Template(t as u8))
            }
            2 => Some(Transform::Rename(cfg.seed)),
            _ => Some(Transform::Resolve(cfg.seed)),
        };
        rows.push(PlanRow {
            rec,
            val,
            transform,
        });
    }
    Ok(rows)
}

/// Read `dir/manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let p = dir.join("manifest.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_batches_are_bounded_by_bytes_and_rows() {
        let rec = |len: u32| Rec {
            offset: 0,
            len,
            task_key: 0,
            content_key: 0,
            score: 0.0,
            worst: 0,
            difficulty: 0.0,
            renamable: false,
            resolvable: false,
            held_out: false,
            prompt_len: 0,
            agents: Box::new([]),
        };
        let recs: Vec<Rec> = [5, 5, 20, 1, 1, 1, 1, 9].into_iter().map(rec).collect();
        let plan: Vec<PlanRow> = (0..recs.len() as u32)
            .map(|rec| PlanRow {
                rec,
                val: false,
                transform: None,
            })
            .collect();
        let sizes = |rows: usize, bytes: usize| -> Vec<Vec<u32>> {
            write_batches(&plan, &recs, rows, bytes)
                .map(|c| c.iter().map(|p| recs[p.rec as usize].len).collect())
                .collect()
        };
        // A record over the budget is a batch of its own; no row is lost.
        assert_eq!(
            sizes(100, 10),
            vec![vec![5, 5], vec![20], vec![1, 1, 1, 1], vec![9]]
        );
        assert_eq!(
            sizes(3, 1000),
            vec![vec![5, 5, 20], vec![1, 1, 1], vec![1, 9]]
        );
        assert_eq!(sizes(0, 0).len(), 8);
        assert_eq!(write_batches(&[], &recs, 10, 10).count(), 0);
    }
}
