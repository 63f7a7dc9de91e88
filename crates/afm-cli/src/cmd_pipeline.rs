//! `afm pipeline` (the main job) and `afm ablation`.
//!
//! The pipeline runs every stage on generated data (or the user's
//! `--input`), each stage resumable (see [`crate::stage`]):
//!
//! 1. `data`: the scripted agents' trajectories on `train_tasks` generated
//!    tasks (the shipped `datasets/scripted/train.jsonl` are the first
//!    4,000; `train_tasks = 0` uses that file) and the held-out tasks
//!    (`datasets/tasks/test.jsonl`);
//! 2. `prepare-afm`, `prepare-mas-<Agent>`: filter, (curriculum,) augment,
//!    pack (one dataset for the AFM, one per agent for its own model);
//! 3. `train-mas-<Agent>`: one model per agent (the multi-agent system);
//! 4. `train-afm`: the one model, SFT + per-agent KL distillation from the
//!    agents' models;
//! 5. `eval`: AFM and MAS on the held-out tasks;
//! 6. `bench`: latency and throughput, batch 1 and 8, interleaved;
//! 7. `report`: `report.md`, `report.json`, charts, and a summary table.

use crate::stage;
use afm_agents::mas::Mas;
use afm_agents::{evaluate, EvalReport, Route, RunOptions, TaskRun};
use afm_bench::compare::{self, BenchOptions, System, TimingRun};
use afm_bench::price::PriceTable;
use afm_bench::report::{CurvePoint, Machine, Report};
use afm_bench::stats::MeanSpread;
use afm_data::{AgentWeights, PrepareConfig};
use afm_model::{parse_device, Model};
use afm_tasks::Task;
use afm_train::TrainConfig;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the whole pipeline: data, prepare, train the per-agent models and the AFM, evaluate, bench, report.
    Pipeline(PipelineArgs),
    /// Train the AFM with and without each ingredient (filtering, role embeddings, curriculum,
    /// augmentation, distillation, boundary weighting) over several seeds and tabulate task success.
    Ablation(AblationArgs),
}

/// Every knob of the pipeline (TOML with `--config`; flags override).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Run name: outputs go to `runs_dir/name`.
    pub name: String,
    pub runs_dir: PathBuf,
    /// Model preset: tiny, mini, gpt2, gpt2-medium.
    pub preset: String,
    /// cpu, cuda, cuda:N, auto.
    pub device: String,
    /// bf16 mixed precision for training (4x the fp32 matmul peak on
    /// AVX-512-bf16 CPUs). Evaluation and the bench decode in fp32 for both
    /// systems, so the MAS pays no per-call weight cast.
    pub bf16: bool,
    /// libtorch threads while decoding (eval, bench); 0 = libtorch's choice.
    /// Batch-1 decoding ops are tiny: one thread avoids OpenMP barrier stalls.
    pub decode_threads: usize,
    /// Most tokens sampled per task (AFM) or per agent turn (MAS).
    pub max_new_tokens: usize,
    pub seed: u64,
    /// Trajectory files or directories; empty = the default data (see `train_tasks`).
    pub input: Vec<PathBuf>,
    /// Without `input`: the number of train tasks the `data` stage generates
    /// (`afm tasks generate --seed 2026`) and has the scripted agents solve
    /// (`datasets/`'s error rates); the shipped 4,000 are its first 4,000.
    /// 0 = the shipped `datasets/scripted/train.jsonl`. More distinct tasks
    /// teach copying rather than recall (measured: see the README).
    pub train_tasks: usize,
    /// Held-out tasks for evaluation (afm-tasks format).
    pub tasks: PathBuf,
    /// Quality cut (0 = no filtering). Scripted failures score 50, successes 90.
    pub min_score: f64,
    /// Order training rows easy -> hard (shuffled inside stages). Off by
    /// default: the ablation measured it below shuffled data on 3 of 3 seeds.
    pub curriculum: bool,
    pub augment: bool,
    /// Corpus vocabulary: the models get embedding and LM-head rows only for
    /// the BPE tokens the data uses (text outside it is encoded as bytes).
    /// Off: the full GPT-2 table (needed for `export-hf`).
    pub corpus_vocab: bool,
    /// A BPE token gets a row only if it occurs this often in the training
    /// records; rarer ones are written as bytes. Held-out answers are full of
    /// tokens the 32,000 train tasks hold a few times (`ENC` of `PENCIL`,
    /// `641` of `14641`), whose rows never train: the models could not copy
    /// them (measured: see the README).
    pub vocab_min_count: usize,
    /// Packed row length; 0 = the preset's context length.
    pub seq_len: usize,
    /// Agent-role embeddings in the AFM.
    pub role_embeddings: bool,
    /// Per-agent KL distillation from the agents' own models (on top of
    /// the SFT on the system's trajectories). Off by default: at this
    /// budget it costs steps and the AFM solves fewer tasks (see the
    /// README's ablation).
    pub distill: bool,
    /// Extra loss weight on role tokens and the first tokens after a hand-off.
    pub boundary: bool,
    /// Training budget of each per-agent model ("60s", "2m"...), or one per
    /// agent: "Planner=20s,Coder=80s,Reviewer=60s".
    pub mas_time_budget: String,
    /// Training budget of the AFM; "auto" = the agent models' budgets
    /// together, so both systems get the same training time.
    pub afm_time_budget: String,
    /// Step cap of every training (0 = epochs/budget decide).
    pub max_steps: usize,
    /// Held-out tasks evaluated (0 = all).
    pub eval_limit: usize,
    /// Batch size of the evaluation runs.
    pub eval_batch: usize,
    /// Tasks in the latency/throughput bench.
    pub bench_tasks: usize,
    /// Batch sizes of the throughput bench (1 also gives latency).
    pub bench_batches: Vec<usize>,
    /// Learning curve: each model saves its weights at 1/N .. (N-1)/N of
    /// its training budget, and both systems are evaluated at each point
    /// on the first `curve_tasks` held-out tasks (N = 0 or 1: no curve).
    pub curve_points: usize,
    /// Held-out tasks of each learning-curve point.
    pub curve_tasks: usize,
    /// Evaluate the scripted agents that wrote the training data on the
    /// same held-out tasks (the report's reference row).
    pub reference: bool,
    /// Price table of the cost comparison.
    pub prices: PriceTable,
    /// Base training configuration for every model (the pipeline sets data,
    /// out, preset, seed, device, bf16, budget and teachers).
    pub train: TrainConfig,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        // Chosen by measurement on the 2-core CPU (README, "How the recipe
        // was chosen"): `mini` cut to 2 layers learns most per second (Coder
        // model, 60 s: token accuracy 0.90 against 0.80 with 4 layers, 0.86
        // at width 128, 0.87 at width 384); batch 8 and a peak rate of 2e-3
        // beat batch 16 and 4e-3; the cosine decay spans the time budget.
        let train = TrainConfig {
            batch_size: 8,
            epochs: 1000,
            eval_interval: 50,
            // A fixed 48-row sample covering every agent (`val_sample`):
            // the generated data's full validation split (~300 rows) would
            // cost a quarter of the training time at every evaluation.
            eval_batches: 6,
            patience: 0,
            plots: true,
            progress: true,
            // Smeared keys: copying (an observation into the answer, a list
            // from the task into the program) is most of what the agents
            // do, and most failures were copies (README, "How the recipe
            // was chosen").
            shape: afm_train::ShapeConfig {
                n_layer: 2,
                smear_keys: true,
                ..Default::default()
            },
            teacher_top_k: 32,
            optim: afm_train::OptimConfig {
                lr: 2e-3,
                min_lr: 2e-4,
                warmup_steps: 10,
                ..Default::default()
            },
            ..TrainConfig::default()
        };
        Self {
            name: "default".into(),
            runs_dir: PathBuf::from("runs"),
            preset: "mini".into(),
            device: "cpu".into(),
            bf16: true,
            decode_threads: 1,
            max_new_tokens: 160,
            seed: 0,
            input: Vec::new(),
            train_tasks: 32_000,
            tasks: PathBuf::from("datasets/tasks/test.jsonl"),
            min_score: 60.0,
            curriculum: false,
            augment: true,
            corpus_vocab: true,
            vocab_min_count: 100,
            seq_len: 0,
            role_embeddings: true,
            distill: false,
            boundary: true,
            mas_time_budget: "Planner=15s,Coder=125s,Reviewer=125s".into(),
            afm_time_budget: "auto".into(),
            max_steps: 0,
            eval_limit: 0,
            eval_batch: 16,
            bench_tasks: 24,
            bench_batches: vec![1, 8],
            curve_points: 4,
            curve_tasks: 50,
            reference: true,
            prices: PriceTable::default(),
            train,
        }
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct PipelineArgs {
    /// TOML file with any `PipelineConfig` field (see README); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub runs_dir: Option<PathBuf>,
    #[arg(long)]
    pub preset: Option<String>,
    #[arg(long)]
    pub device: Option<String>,
    /// Train in fp32 instead of the default bf16.
    #[arg(long)]
    pub fp32: bool,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Your own trajectories (files or directories), in place of the generated ones.
    #[arg(long, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Train tasks the `data` stage generates and the scripted agents solve
    /// (0 = the shipped datasets/scripted/train.jsonl).
    #[arg(long)]
    pub train_tasks: Option<usize>,
    /// Held-out tasks file.
    #[arg(long)]
    pub tasks: Option<PathBuf>,
    #[arg(long)]
    pub mas_time_budget: Option<String>,
    #[arg(long)]
    pub afm_time_budget: Option<String>,
    #[arg(long)]
    pub max_steps: Option<usize>,
    #[arg(long)]
    pub eval_limit: Option<usize>,
    #[arg(long)]
    pub bench_tasks: Option<usize>,
    /// Price table TOML (per 1K input/output tokens, per call).
    #[arg(long)]
    pub prices: Option<PathBuf>,
    /// Delete the run directory first (otherwise completed stages are skipped).
    #[arg(long)]
    pub fresh: bool,
}

#[derive(Args, Debug, Clone)]
pub struct AblationArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Seeds per variant.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Only these variants: full, and each ingredient flipped from the
    /// pipeline's setting (no-filtering, no-role-embeddings, with-curriculum,
    /// no-augmentation, with-distillation, no-boundary, no-smeared-keys,
    /// no-rare-token-bytes by default).
    #[arg(long, value_delimiter = ',')]
    pub variants: Vec<String>,
}

pub fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Pipeline(a) => pipeline(&a).map(|_| ()),
        Cmd::Ablation(a) => ablation(&a),
    }
}

/// Read `--config`, apply flags, validate.
pub fn resolve(a: &PipelineArgs) -> Result<PipelineConfig> {
    let mut c = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            // Check the file on its own first (errors carry its line numbers),
            // then lay it over the pipeline's defaults: a `[train]` table
            // that sets one field keeps the pipeline's tuned values of the
            // others (not `TrainConfig`'s generic defaults).
            let user: toml::Value = toml::from_str::<PipelineConfig>(&text)
                .and_then(|_| toml::from_str(&text))
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            let mut merged = toml::Value::try_from(PipelineConfig::default())?;
            overlay(&mut merged, user);
            merged
                .try_into()
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => PipelineConfig::default(),
    };
    macro_rules! set {
        ($f:ident) => {
            if let Some(v) = &a.$f {
                c.$f = v.clone();
            }
        };
    }
    set!(name);
    set!(runs_dir);
    set!(preset);
    set!(device);
    set!(seed);
    set!(tasks);
    set!(train_tasks);
    set!(mas_time_budget);
    set!(afm_time_budget);
    set!(max_steps);
    set!(eval_limit);
    set!(bench_tasks);
    if a.fp32 {
        c.bf16 = false;
    }
    if !a.input.is_empty() {
        c.input = a.input.clone();
    }
    if let Some(p) = &a.prices {
        c.prices = PriceTable::from_toml_file(p)?;
    }
    if c.name.is_empty() || c.name.contains(['/', '\\']) || c.name == ".." {
        bail!("name {:?}: use a plain directory name", c.name);
    }
    if c.eval_batch == 0 {
        bail!("eval_batch must be >= 1");
    }
    // Checked here, before any stage runs (prepare checks it again).
    let r = afm_data::prepare::SCORE_RANGE;
    if !c.min_score.is_finite() || !r.contains(&c.min_score) {
        bail!(
            "min_score {} must be a finite number in {}..={}",
            c.min_score,
            r.start(),
            r.end()
        );
    }
    if c.bench_batches.is_empty() || c.bench_batches.contains(&0) {
        bail!("bench_batches must be non-empty batch sizes >= 1");
    }
    for a in MAS_AGENTS {
        mas_budget(&c, a)?;
    }
    afm_budget(&c)?;
    parse_device(&c.device)?;
    check_train_table(&c)?;
    if c.seq_len == 0 {
        let g =
            afm_model::GptConfig::preset(&c.preset, afm_tokenizer::FIRST_ROLE_TOKEN as usize, 0)
                .with_context(|| format!("preset {:?}", c.preset))?;
        c.seq_len = c.train.shape.apply(g).n_ctx;
    }
    Ok(c)
}

/// Lay `top` over `base`: tables merge key by key, anything else replaces.
fn overlay(base: &mut toml::Value, top: toml::Value) {
    match (base, top) {
        (toml::Value::Table(b), toml::Value::Table(t)) => {
            for (k, v) in t {
                match b.get_mut(&k) {
                    Some(slot) => overlay(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Training budget of agent `agent`'s model (see `mas_time_budget`).
fn mas_budget(c: &PipelineConfig, agent: &str) -> Result<String> {
    let v = c.mas_time_budget.trim();
    let text = if v.contains('=') {
        let mut found = None;
        for part in v.split(',') {
            let (name, b) = part.split_once('=').with_context(|| {
                format!("mas_time_budget = {v:?}: {part:?} is not AGENT=DURATION")
            })?;
            if !MAS_AGENTS.contains(&name.trim()) {
                bail!(
                    "mas_time_budget = {v:?}: unknown agent {:?} (agents: {})",
                    name.trim(),
                    MAS_AGENTS.join(", ")
                );
            }
            if name.trim() == agent {
                found = Some(b.trim().to_string());
            }
        }
        found.with_context(|| format!("mas_time_budget = {v:?}: no budget for {agent}"))?
    } else {
        v.to_string()
    };
    afm_train::parse_duration(&text)
        .map_err(|e| anyhow::anyhow!("mas_time_budget = {v:?}: {e}"))?;
    Ok(text)
}

/// Training budget of the AFM (see `afm_time_budget`).
fn afm_budget(c: &PipelineConfig) -> Result<String> {
    let v = c.afm_time_budget.trim();
    if v == "auto" {
        let mut total = 0.0;
        for a in MAS_AGENTS {
            total += afm_train::parse_duration(&mas_budget(c, a)?).unwrap_or(0.0);
        }
        return Ok(format!("{total}s"));
    }
    afm_train::parse_duration(v).map_err(|e| anyhow::anyhow!("afm_time_budget = {v:?}: {e}"))?;
    Ok(v.to_string())
}

/// The agents of the multi-agent system (afm-tasks' chain).
const MAS_AGENTS: [&str; 3] = ["Planner", "Coder", "Reviewer"];

/// The shipped trajectories (the first 4,000 of the generated default data).
const SHIPPED_TRAJECTORIES: &str = "datasets/scripted/train.jsonl";

/// The training trajectories: the user's `--input`; else the scripted
/// agents' trajectories on `train_tasks` generated tasks (the `data` stage,
/// cached in `<run>/data`); else (`train_tasks = 0`) the shipped
/// `datasets/scripted/train.jsonl`. The stage summary comes back when the
/// stage ran (or was found complete).
fn inputs(root: &Path, c: &PipelineConfig) -> Result<(Vec<PathBuf>, Option<stage::Done>)> {
    if !c.input.is_empty() {
        return Ok((c.input.clone(), None));
    }
    if c.train_tasks == 0 {
        return Ok((vec![PathBuf::from(SHIPPED_TRAJECTORIES)], None));
    }
    let (n, seed) = (c.train_tasks, afm_tasks::DEFAULT_DATASET_SEED);
    let dir = root.join("data");
    let file = dir.join("scripted.jsonl");
    let held_out = files_key(std::slice::from_ref(&c.tasks));
    let fp = stage::fingerprint(&[
        "data-v1",
        &format!("train_tasks={n} seed={seed}"),
        &held_out,
    ]);
    let d = stage::run("data", &dir, &fp, |out| {
        let (tasks, _) = afm_tasks::generate(seed, n, 0)?;
        // The generator's split is a function of the task, so no train task
        // can be held out; check it against the file actually evaluated.
        let held: std::collections::HashSet<String> = afm_tasks::load_tasks(&c.tasks)?
            .iter()
            .map(Task::key)
            .collect();
        if let Some(t) = tasks.iter().find(|t| held.contains(&t.key())) {
            bail!(
                "generated train task {} ({:?}) is also in the held-out file {}",
                t.id,
                t.prompt,
                c.tasks.display()
            );
        }
        let trajs = crate::cmd_tasks::solve_scripted(
            &tasks,
            &afm_tasks::default_dataset_config(),
            "generated train tasks",
        )?;
        afm_tasks::save_trajectories(&out.join("scripted.jsonl"), &trajs)?;
        let ok = trajs.iter().filter(|t| t.success).count();
        Ok(serde_json::json!({
            "tasks": n,
            "seed": seed,
            "scripted_success": ok as f64 / n.max(1) as f64,
            "file": "scripted.jsonl",
        }))
    })?;
    Ok((vec![file], Some(d)))
}

/// Fingerprint part for input files: path and size (and mtime) of each.
fn files_key(paths: &[PathBuf]) -> String {
    let mut s = String::new();
    for p in paths {
        let m = std::fs::metadata(p).ok();
        let len = m.as_ref().map_or(0, |m| m.len());
        let mt = m
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        s.push_str(&format!("{}:{len}:{mt};", p.display()));
    }
    s
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn bar(len: u64, msg: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template(
            "{msg:>14} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    b.set_message(msg.to_string());
    b
}

/// Prepare one dataset (a stage of its own): the AFM's (`only = None`,
/// curriculum as configured) or one agent's (never curriculum-ordered).
fn prepare_stage(
    name: &str,
    dir: &Path,
    c: &PipelineConfig,
    ins: &[PathBuf],
    only: Option<&str>,
) -> Result<stage::Done> {
    let (curriculum, augment, min_score) = (c.curriculum && only.is_none(), c.augment, c.min_score);
    let fp = stage::fingerprint(&[
        // v3: segments encoded after one space (afm_data::format).
        "prepare-v3",
        &files_key(ins),
        &format!(
            "only={only:?} curriculum={curriculum} augment={augment} min_score={min_score} seq_len={} seed={} corpus_vocab={} vocab_min_count={}",
            c.seq_len, c.seed, c.corpus_vocab, c.vocab_min_count
        ),
    ]);
    stage::run(name, dir, &fp, |out| {
        let cfg = PrepareConfig {
            inputs: ins.to_vec(),
            min_score,
            curriculum,
            augment,
            corpus_vocab: c.corpus_vocab,
            vocab_min_count: c.vocab_min_count,
            seq_len: c.seq_len,
            seed: c.seed,
            weights: AgentWeights {
                only: only.map(str::to_string),
                ..AgentWeights::default()
            },
            out: out.to_path_buf(),
            ..PrepareConfig::default()
        };
        let pb = bar(0, name);
        let m = crate::cmd_data::prepare_with_progress(&cfg, &|p| {
            pb.set_length(p.total);
            pb.set_position(p.done);
            pb.set_message(format!("{name}:{}", p.stage));
        })?;
        pb.finish_and_clear();
        Ok(serde_json::json!({
            "total": m.total, "kept": m.kept, "filtered": m.filtered, "rejected": m.rejected,
            "augmented": m.augmented, "roles": m.roles, "train_rows": m.train.rows,
            "val_rows": m.val.rows, "tokens": m.tokens, "loss_tokens": m.loss_tokens,
            "packing_efficiency": m.packing_efficiency,
        }))
    })
}

/// What a training stage needs besides the base config.
struct TrainSpec<'a> {
    data: &'a Path,
    budget: &'a str,
    teachers: BTreeMap<String, PathBuf>,
    role_embeddings: bool,
    boundary: bool,
    seed: u64,
}

/// The boundary weighting `boundary = true` stands for when the user's
/// `[train.loss]` leaves it at the defaults: role tokens x2, the first 3
/// tokens after a hand-off x1.5.
const BOUNDARY_DEFAULTS: (f64, usize, f64) = (2.0, 3, 1.5);

/// True when `[train.loss]` sets any boundary-weighting field.
fn user_sets_boundary(l: &afm_train::LossConfig) -> bool {
    let d = afm_train::LossConfig::default();
    (l.role_token_weight, l.handoff_tokens, l.handoff_weight)
        != (d.role_token_weight, d.handoff_tokens, d.handoff_weight)
}

/// The loss of one training stage: the user's `[train.loss]` as given. With
/// `boundary`, fields the user left at the defaults get
/// [`BOUNDARY_DEFAULTS`] (the user's own boundary values are kept); without
/// it (the per-agent models, the no-boundary ablation) the boundary fields
/// are neutral unless the user set them (a pipeline with `boundary = false`
/// and such values is rejected by [`resolve`]).
fn boundary_loss(user: &afm_train::LossConfig, boundary: bool) -> afm_train::LossConfig {
    let mut l = user.clone();
    if boundary && !user_sets_boundary(user) {
        (l.role_token_weight, l.handoff_tokens, l.handoff_weight) = BOUNDARY_DEFAULTS;
    }
    l
}

/// Fields of `[train]` the pipeline sets itself from its own settings: a
/// `[train]` value for one of them that differs from the default would be
/// overwritten, so it is an error that names the pipeline field to use.
fn check_train_table(c: &PipelineConfig) -> Result<()> {
    let (t, d) = (&c.train, TrainConfig::default());
    let owned: [(&str, bool, &str); 9] = [
        (
            "data",
            t.data != d.data,
            "the pipeline prepares its own data (use `input`)",
        ),
        ("out", t.out != d.out, "use `runs_dir` and `name`"),
        ("init", t.init != d.init, "the pipeline trains fresh models"),
        ("preset", t.preset != d.preset, "use the top-level `preset`"),
        ("seed", t.seed != d.seed, "use the top-level `seed`"),
        ("device", t.device != d.device, "use the top-level `device`"),
        ("bf16", t.bf16 != d.bf16, "use the top-level `bf16`"),
        (
            "time_budget",
            t.time_budget != d.time_budget,
            "use `mas_time_budget` and `afm_time_budget`",
        ),
        (
            "teachers",
            t.teachers != d.teachers,
            "the pipeline's teachers are its agent models (switch with `distill`)",
        ),
    ];
    for (field, set, how) in owned {
        if set {
            bail!("[train] {field}: set by the pipeline itself; {how}");
        }
    }
    if t.role_embeddings != c.role_embeddings {
        bail!(
            "[train] role_embeddings = {} conflicts with the pipeline's role_embeddings = {}: set the top-level `role_embeddings` only",
            t.role_embeddings,
            c.role_embeddings
        );
    }
    if c.max_steps > 0 && t.max_steps > 0 && t.max_steps != c.max_steps {
        bail!(
            "[train] max_steps = {} conflicts with max_steps = {}: set one",
            t.max_steps,
            c.max_steps
        );
    }
    if !c.boundary && user_sets_boundary(&t.loss) {
        bail!(
            "boundary = false conflicts with [train.loss] role_token_weight = {}, handoff_tokens = {}, handoff_weight = {}: drop those or set boundary = true",
            t.loss.role_token_weight,
            t.loss.handoff_tokens,
            t.loss.handoff_weight
        );
    }
    Ok(())
}

fn train_stage(name: &str, dir: &Path, c: &PipelineConfig, s: TrainSpec) -> Result<stage::Done> {
    let mut t = c.train.clone();
    t.data = s.data.to_path_buf();
    t.out = dir.to_path_buf();
    t.preset = Some(c.preset.clone());
    t.init = None;
    t.seed = s.seed;
    t.device = c.device.clone();
    t.bf16 = c.bf16;
    t.time_budget = Some(s.budget.to_string());
    if c.max_steps > 0 {
        t.max_steps = c.max_steps;
    }
    t.role_embeddings = s.role_embeddings;
    t.teachers = s.teachers;
    t.snapshots = c.curve_points;
    t.loss = boundary_loss(&c.train.loss, s.boundary);
    let data_marker = std::fs::read_to_string(s.data.join(".afm-stage.json")).unwrap_or_default();
    let teacher_markers: String = t
        .teachers
        .values()
        .map(|p| std::fs::read_to_string(p.join("../.afm-stage.json")).unwrap_or_default())
        .collect();
    // The fingerprint covers what determines the weights, not run control
    // (`resume` flips once checkpoints exist; it must not look like a change).
    t.resume = false;
    let fp = stage::fingerprint(&["train-v1", &json(&t), &data_marker, &teacher_markers]);
    stage::run(name, dir, &fp, |out| {
        // An interrupted stage picks up its own checkpoints (a stage whose
        // inputs changed has an emptied directory by now).
        t.resume = std::fs::read_dir(out.join("checkpoints"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        let summary = afm_train::train(&t)?;
        Ok(serde_json::to_value(&summary)?)
    })
}

fn load_tasks(c: &PipelineConfig) -> Result<Vec<Task>> {
    let mut tasks = afm_tasks::load_tasks(&c.tasks)?;
    if c.eval_limit > 0 {
        tasks.truncate(c.eval_limit);
    }
    if tasks.is_empty() {
        bail!("{}: no tasks to evaluate", c.tasks.display());
    }
    Ok(tasks)
}

/// libtorch's thread count for decoding (`decode_threads`) while alive;
/// the previous count is restored on drop, so a training that follows (the
/// ablation's next variant) gets all its threads back.
struct DecodeThreads(i32);

impl DecodeThreads {
    fn set(c: &PipelineConfig) -> Self {
        let prev = tch::get_num_threads();
        if c.decode_threads > 0 {
            tch::set_num_threads(c.decode_threads as i32);
        }
        DecodeThreads(prev)
    }
}

impl Drop for DecodeThreads {
    fn drop(&mut self) {
        tch::set_num_threads(self.0);
    }
}

fn run_opts(c: &PipelineConfig, batch: usize) -> RunOptions {
    RunOptions {
        batch,
        max_new_tokens: c.max_new_tokens,
        bf16: false,
        seed: c.seed,
        // The AFM writes the hand-offs the MAS orchestrator fixes (the
        // Planner opens, the Reviewer reads observations) as prefill.
        route: Route::task_world(),
        ..RunOptions::default()
    }
}

fn eval_system(sys: &System, tasks: &[Task], opts: &RunOptions) -> Result<Vec<TaskRun>> {
    let pb = bar(tasks.len() as u64, &format!("eval {}", sys.name()));
    let runs = sys.run(tasks, opts, &mut |_| pb.inc(1))?;
    pb.finish_and_clear();
    Ok(runs)
}

fn mas_map(root: &Path) -> Vec<(String, PathBuf)> {
    MAS_AGENTS
        .iter()
        .map(|a| (a.to_string(), root.join(format!("models/mas-{a}/final"))))
        .collect()
}

/// The weights of training run `run` at curve point `k` of `n`: its
/// snapshot, or `final/` at `k == n`; with its training seconds and steps.
/// `None` when the run saved no such snapshot (a step longer than 1/n of
/// its budget skips one).
fn curve_model(run: &Path, k: usize, n: usize) -> Result<Option<(PathBuf, f64, usize)>> {
    fn read<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T> {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| p.display().to_string())
    }
    if k < n {
        let d = afm_train::snapshot_dir(run, k, n);
        if !d.join("snapshot.json").is_file() {
            return Ok(None);
        }
        let i: afm_train::SnapshotInfo = read(&d.join("snapshot.json"))?;
        Ok(Some((d, i.train_secs, i.step)))
    } else {
        let s: afm_train::TrainSummary = read(&run.join("summary.json"))?;
        Ok(Some((run.join("final"), s.train_secs, s.steps)))
    }
}

/// Evaluate every learning-curve snapshot of both systems on `subset`, and
/// the final models as the last point. A system's training seconds at a
/// point: the AFM's, or the sum of the three agent models'.
fn learning_curve(
    c: &PipelineConfig,
    root: &Path,
    subset: &[Task],
    device: tch::Device,
) -> Result<Vec<CurvePoint>> {
    let n = c.curve_points;
    let opts = run_opts(c, c.eval_batch);
    let mut points = Vec::new();
    let pb = bar((2 * n) as u64, "curve");
    let mut point = |system: &System, secs: f64, step: usize| -> Result<()> {
        let runs = system.run(subset, &opts, &mut |_| {})?;
        points.push(CurvePoint {
            system: system.name().to_ascii_uppercase(),
            train_secs: secs,
            step,
            tasks: subset.len(),
            success_rate: evaluate(&runs, None).success_rate,
        });
        pb.inc(1);
        Ok(())
    };
    for k in 1..=n {
        if let Some((dir, secs, step)) = curve_model(&root.join("models/afm"), k, n)? {
            point(&System::Afm(&Model::load(&dir, device)?), secs, step)?;
        }
        // The MAS: every agent's model at the same fraction of its budget.
        let (mut map, mut secs, mut step) = (Vec::new(), 0.0, 0);
        for a in MAS_AGENTS {
            if let Some((dir, s, st)) = curve_model(&root.join(format!("models/mas-{a}")), k, n)? {
                map.push((a.to_string(), dir));
                secs += s;
                step += st;
            }
        }
        if map.len() == MAS_AGENTS.len() {
            point(&System::Mas(&Mas::load(&map, device)?), secs, step)?;
        }
    }
    pb.finish_and_clear();
    Ok(points)
}

/// Run the pipeline; returns the report.
pub fn pipeline(a: &PipelineArgs) -> Result<Report> {
    let c = resolve(a)?;
    let root = c.runs_dir.join(&c.name);
    if a.fresh && root.exists() {
        std::fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let cfg_path = root.join("pipeline_config.toml");
    afm_tokenizer::atomic::write(&cfg_path, toml::to_string_pretty(&c)?)
        .with_context(|| format!("writing {}", cfg_path.display()))?;
    let device = parse_device(&c.device)?;
    let mut wall: BTreeMap<String, f64> = BTreeMap::new();
    let mut stages: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut notes = Vec::new();
    let mut record = |k: &str, d: &stage::Done, wall: &mut BTreeMap<String, f64>| {
        let k = if d.cached {
            format!("{k} (cached)")
        } else {
            k.to_string()
        };
        wall.insert(k.clone(), d.wall_s);
        stages.insert(k, d.summary.clone());
    };
    let t_all = std::time::Instant::now();

    // 1. data
    let (ins, data) = inputs(&root, &c)?;
    if let Some(d) = &data {
        record("0 data", d, &mut wall);
    }
    for p in ins.iter().chain([&c.tasks]) {
        if !p.exists() {
            bail!(
                "{}: not found (run from the repository root, or pass --input/--tasks)",
                p.display()
            );
        }
    }
    eprintln!(
        "[data] trajectories: {:?}; held-out tasks: {}",
        ins,
        c.tasks.display()
    );

    // 2. prepare
    let d = prepare_stage("prepare-afm", &root.join("prepared/afm"), &c, &ins, None)?;
    let roles: Vec<String> = serde_json::from_value(d.summary["roles"].clone()).unwrap_or_default();
    record("1 prepare-afm", &d, &mut wall);
    let mas_ok = MAS_AGENTS.iter().all(|a| roles.iter().any(|r| r == a));
    if !mas_ok {
        notes.push(format!(
            "the data's agents {roles:?} are not the task world's Planner/Coder/Reviewer chain: \
             the MAS baseline, distillation, evaluation and bench need that chain and were skipped"
        ));
    }
    if mas_ok {
        for ag in MAS_AGENTS {
            let d = prepare_stage(
                &format!("prepare-mas-{ag}"),
                &root.join(format!("prepared/mas-{ag}")),
                &c,
                &ins,
                Some(ag),
            )?;
            record(&format!("2 prepare-mas-{ag}"), &d, &mut wall);
        }
        // 3. the multi-agent system: one model per agent
        for ag in MAS_AGENTS {
            let d = train_stage(
                &format!("train-mas-{ag}"),
                &root.join(format!("models/mas-{ag}")),
                &c,
                TrainSpec {
                    data: &root.join(format!("prepared/mas-{ag}")),
                    budget: &mas_budget(&c, ag)?,
                    teachers: BTreeMap::new(),
                    role_embeddings: c.role_embeddings,
                    boundary: false,
                    seed: c.seed,
                },
            )?;
            record(&format!("3 train-mas-{ag}"), &d, &mut wall);
        }
    }
    // 4. the AFM
    let teachers: BTreeMap<String, PathBuf> = if c.distill && mas_ok {
        mas_map(&root).into_iter().collect()
    } else {
        BTreeMap::new()
    };
    let d = train_stage(
        "train-afm",
        &root.join("models/afm"),
        &c,
        TrainSpec {
            data: &root.join("prepared/afm"),
            budget: &afm_budget(&c)?,
            teachers,
            role_embeddings: c.role_embeddings,
            boundary: c.boundary,
            seed: c.seed,
        },
    )?;
    record("4 train-afm", &d, &mut wall);

    let mut report = Report {
        name: c.name.clone(),
        machine: Machine::detect(),
        preset: c.preset.clone(),
        device: c.device.clone(),
        price_table: c.prices,
        ..Report::default()
    };
    if mas_ok {
        // 5. evaluation on the held-out tasks
        let tasks = load_tasks(&c)?;
        let afm = Model::load(&root.join("models/afm/final"), device)?;
        let mas = Mas::load(&mas_map(&root), device)?;
        let eval_dir = root.join("eval");
        let fp = stage::fingerprint(&[
            "eval-v1",
            &std::fs::read_to_string(root.join("models/afm/.afm-stage.json")).unwrap_or_default(),
            &MAS_AGENTS
                .iter()
                .map(|a| {
                    std::fs::read_to_string(root.join(format!("models/mas-{a}/.afm-stage.json")))
                        .unwrap_or_default()
                })
                .collect::<String>(),
            &files_key(std::slice::from_ref(&c.tasks)),
            &format!(
                "{} {} {} {}",
                c.eval_limit, c.eval_batch, c.max_new_tokens, c.decode_threads
            ),
        ]);
        let _threads = DecodeThreads::set(&c);
        let d = stage::run("eval", &eval_dir, &fp, |out| {
            let opts = run_opts(&c, c.eval_batch);
            let mas_runs = eval_system(&System::Mas(&mas), &tasks, &opts)?;
            let afm_runs = eval_system(&System::Afm(&afm), &tasks, &opts)?;
            afm_agents::trajectory::write_jsonl(&mas_runs, &out.join("mas.jsonl"))?;
            afm_agents::trajectory::write_jsonl(&afm_runs, &out.join("afm.jsonl"))?;
            let reference: Vec<afm_agents::eval::ReferenceAnswer> = mas_runs
                .iter()
                .map(|r| afm_agents::eval::ReferenceAnswer {
                    id: r.id.clone(),
                    answer: r.answer.clone(),
                })
                .collect();
            let afm_rep = evaluate(&afm_runs, Some(&reference));
            let mas_rep = evaluate(&mas_runs, None);
            afm_tokenizer::atomic::write(
                &out.join("afm.json"),
                serde_json::to_string_pretty(&afm_rep)?,
            )?;
            afm_tokenizer::atomic::write(
                &out.join("mas.json"),
                serde_json::to_string_pretty(&mas_rep)?,
            )?;
            Ok(serde_json::json!({"afm": afm_rep, "mas": mas_rep}))
        })?;
        record("5 eval", &d, &mut wall);
        let afm_rep: EvalReport = serde_json::from_value(d.summary["afm"].clone())?;
        let mas_rep: EvalReport = serde_json::from_value(d.summary["mas"].clone())?;

        // 6. bench: latency and throughput, interleaved
        let bopts = BenchOptions {
            bench_tasks: c.bench_tasks,
            batches: c.bench_batches.clone(),
            run: run_opts(&c, 1),
            prices: c.prices,
        };
        let fp = stage::fingerprint(&[
            "bench-v1",
            &fp,
            &format!("{} {:?}", c.bench_tasks, c.bench_batches),
        ]);
        let systems = [System::Afm(&afm), System::Mas(&mas)];
        let d = stage::run("bench", &root.join("bench"), &fp, |out| {
            let n = c.bench_tasks.min(tasks.len()) as u64 * c.bench_batches.len() as u64 * 2;
            let pb = bar(n, "bench");
            let t = compare::timings(&systems, &tasks, &bopts, &mut |s, b, _| {
                pb.set_message(format!("bench {s} b{b}"));
                pb.inc(1);
            })?;
            pb.finish_and_clear();
            afm_tokenizer::atomic::write(
                &out.join("timings.json"),
                serde_json::to_string_pretty(&t)?,
            )?;
            Ok(serde_json::to_value(&t)?)
        })?;
        record("6 bench", &d, &mut wall);
        let timing: Vec<TimingRun> = serde_json::from_value(d.summary.clone())?;
        report.afm = compare::metrics(&systems[0], &afm_rep, &timing, &c.prices);
        report.mas = compare::metrics(&systems[1], &mas_rep, &timing, &c.prices);
        report.answer_agreement = afm_rep.answer_agreement.unwrap_or(f64::NAN);

        // 7. the learning curve: both systems' snapshots on a fixed subset
        if c.curve_points > 1 && c.curve_tasks > 0 {
            let subset = &tasks[..c.curve_tasks.min(tasks.len())];
            let fp = stage::fingerprint(&["curve-v1", &fp, &format!("{}", subset.len())]);
            let d = stage::run("curve", &root.join("curve"), &fp, |_| {
                let points = learning_curve(&c, &root, subset, device)?;
                Ok(serde_json::to_value(points)?)
            })?;
            record("7 curve", &d, &mut wall);
            report.learning_curve = serde_json::from_value(d.summary.clone())?;
        }
        // 8. the reference: the scripted agents the data came from
        if c.reference && c.input.is_empty() {
            let t0 = std::time::Instant::now();
            report.reference = Some(afm_bench::reference::scripted_reference(&tasks, c.seed)?);
            wall.insert("8 reference".into(), t0.elapsed().as_secs_f64());
        }
    }
    report.compute_ratios();
    report.wall_s = wall;
    report.wall_s.insert(
        "total (this invocation)".into(),
        t_all.elapsed().as_secs_f64(),
    );
    report.stages = stages;
    notes.push(
        "latency is wall-clock per task at batch 1 on the bench subset; tokens, calls, cost and success \
         are totals over the evaluated held-out tasks; cost uses the price table above (assumed prices, not measured); \
         answer agreement counts a task as agreeing when both systems give the same final answer, or both give none"
            .into(),
    );
    report.notes = notes;
    report.write(&root)?;
    println!("\n{}", report.summary_table());
    println!("report: {}", root.join("report.md").display());
    Ok(report)
}

/// The recipe's ingredients the ablation toggles, with the seed's claimed
/// gain of each (percentage points of success with it on).
const INGREDIENTS: [Ingredient; 8] = [
    ("filtering", Some(3.0)),
    ("role-embeddings", Some(2.0)),
    ("curriculum", Some(2.0)),
    ("augmentation", Some(2.0)),
    ("distillation", Some(1.3)),
    ("boundary", None),
    ("smeared-keys", None),
    ("rare-token-bytes", None),
];

/// True when `c` uses ingredient `name`.
fn uses(c: &PipelineConfig, name: &str) -> bool {
    match name {
        "filtering" => c.min_score > 0.0,
        "role-embeddings" => c.role_embeddings,
        "curriculum" => c.curriculum,
        "augmentation" => c.augment,
        "distillation" => c.distill,
        "boundary" => c.boundary,
        "smeared-keys" => c.train.shape.smear_keys,
        "rare-token-bytes" => c.corpus_vocab && c.vocab_min_count > 1,
        _ => false,
    }
}

/// Switch ingredient `name` of `c` to `on` (filtering on = the default cut).
fn set_ingredient(c: &mut PipelineConfig, name: &str, on: bool) {
    match name {
        "filtering" => {
            c.min_score = if on {
                PipelineConfig::default().min_score
            } else {
                0.0
            }
        }
        "role-embeddings" => {
            c.role_embeddings = on;
            c.train.role_embeddings = on;
        }
        "curriculum" => c.curriculum = on,
        "augmentation" => c.augment = on,
        "distillation" => c.distill = on,
        "boundary" => c.boundary = on,
        "smeared-keys" => c.train.shape.smear_keys = on,
        "rare-token-bytes" => {
            c.corpus_vocab |= on;
            c.vocab_min_count = if on {
                PipelineConfig::default().vocab_min_count
            } else {
                1
            };
        }
        _ => {}
    }
}

/// An ingredient's name and the seed's claimed gain of it.
type Ingredient = (&'static str, Option<f64>);

/// The ablation's variants of `base`: `full`, then each ingredient flipped
/// (`no-X` when the base uses it, `with-X` when it does not), with the
/// ingredient and its claimed gain.
fn variants(base: &PipelineConfig) -> Vec<(String, Option<Ingredient>)> {
    let mut v = vec![("full".to_string(), None)];
    for (name, claim) in INGREDIENTS {
        let flip = if uses(base, name) { "no" } else { "with" };
        v.push((format!("{flip}-{name}"), Some((name, claim))));
    }
    v
}

/// One line of the ablation table.
struct Row {
    variant: String,
    /// The ingredient flipped, whether this variant has it, its claim.
    ingredient: Option<(&'static str, bool, Option<f64>)>,
    success: MeanSpread,
    rates: Vec<f64>,
    val_loss: MeanSpread,
    steps: MeanSpread,
}

fn ablation(a: &AblationArgs) -> Result<()> {
    let mut base = resolve(&a.pipeline)?;
    // No learning-curve snapshots for the variants' models.
    base.curve_points = 0;
    if a.seeds == 0 {
        bail!("--seeds must be >= 1");
    }
    let all = variants(&base);
    for v in &a.variants {
        if !all.iter().any(|(n, _)| n == v) {
            bail!(
                "unknown variant {v:?}: use {}",
                all.iter()
                    .map(|x| x.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    // The per-agent teachers come from the main pipeline run (its own
    // settings); the ablation only trains and evaluates AFM variants.
    let root = base.runs_dir.join(&base.name);
    for (agent, dir) in mas_map(&root) {
        if !dir.join(afm_model::WEIGHTS_FILE).is_file() {
            bail!(
                "{}: the {agent} teacher is missing; run `afm pipeline --name {}` (or `cargo xtask pipeline`) first",
                dir.display(),
                base.name
            );
        }
    }
    let tasks = load_tasks(&base)?;
    // The main run's data (its `data` stage, complete after the pipeline).
    let (ins, _) = inputs(&root, &base)?;
    let device = parse_device(&base.device)?;
    let mut rows = Vec::new();
    for (variant, ingredient) in all {
        if !a.variants.is_empty() && !a.variants.contains(&variant) {
            continue;
        }
        let mut c = base.clone();
        let ingredient = ingredient.map(|(name, claim)| {
            let on = !uses(&base, name);
            set_ingredient(&mut c, name, on);
            (name, on, claim)
        });
        let (mut rates, mut losses, mut steps) = (Vec::new(), Vec::new(), Vec::new());
        for seed in 0..a.seeds {
            let dir = root.join(format!("ablation/{variant}-s{seed}"));
            let mut cs = c.clone();
            cs.seed = seed;
            // With teachers, the data is the teachers' own (the main run's
            // seed): a corpus vocabulary depends on the augmented data, and
            // a teacher must cover every token of the student's rows. The
            // seed then varies initialisation and order only.
            let data_cfg = if cs.distill {
                PipelineConfig {
                    seed: base.seed,
                    ..cs.clone()
                }
            } else {
                cs.clone()
            };
            prepare_stage(
                &format!("{variant}-s{seed} prepare"),
                &dir.join("prepared"),
                &data_cfg,
                &ins,
                None,
            )?;
            let teachers = if cs.distill {
                mas_map(&root).into_iter().collect()
            } else {
                BTreeMap::new()
            };
            let tr = train_stage(
                &format!("{variant}-s{seed} train"),
                &dir.join("model"),
                &cs,
                TrainSpec {
                    data: &dir.join("prepared"),
                    budget: &afm_budget(&cs)?,
                    teachers,
                    role_embeddings: cs.role_embeddings,
                    boundary: cs.boundary,
                    seed,
                },
            )?;
            // Only `final/` is used from here on; 21 runs of checkpoints
            // (weights + optimiser moments) would fill a small disk.
            let ckpts = dir.join("model/checkpoints");
            if ckpts.exists() {
                std::fs::remove_dir_all(&ckpts)
                    .with_context(|| format!("removing {}", ckpts.display()))?;
            }
            let fp = stage::fingerprint(&[
                "ablation-eval-v1",
                &std::fs::read_to_string(dir.join("model/.afm-stage.json")).unwrap_or_default(),
                &files_key(std::slice::from_ref(&cs.tasks)),
                &format!("{} {}", cs.eval_limit, cs.max_new_tokens),
            ]);
            let d = stage::run(
                &format!("{variant}-s{seed} eval"),
                &dir.join("eval"),
                &fp,
                |_| {
                    let _threads = DecodeThreads::set(&cs);
                    let m = Model::load(&dir.join("model/final"), device)?;
                    let runs =
                        eval_system(&System::Afm(&m), &tasks, &run_opts(&cs, cs.eval_batch))?;
                    Ok(serde_json::to_value(evaluate(&runs, None))?)
                },
            )?;
            rates.push(d.summary["success_rate"].as_f64().unwrap_or(f64::NAN) * 100.0);
            losses.push(tr.summary["best_val_loss"].as_f64().unwrap_or(f64::NAN));
            steps.push(tr.summary["steps"].as_f64().unwrap_or(f64::NAN));
        }
        rows.push(Row {
            variant,
            ingredient,
            success: MeanSpread::of(&rates),
            rates,
            val_loss: MeanSpread::of(&losses),
            steps: MeanSpread::of(&steps),
        });
    }
    let full = rows
        .iter()
        .find(|r| r.variant == "full")
        .map(|r| r.success.mean);
    let mut md = format!(
        "# Ablation ({} seeds, preset {}, AFM budget {} each, {} held-out tasks, {}, {} cores)\n\n\
         | variant | success % (mean +- std) | per seed | gain of the ingredient (with - without) | seed's claimed gain | best val loss (mean +- std) | optimiser steps |\n\
         |---|---:|---|---:|---:|---:|---:|\n",
        a.seeds,
        base.preset,
        afm_budget(&base)?,
        tasks.len(),
        afm_bench::report::today_utc(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    );
    for r in &rows {
        let gain = match (full, r.ingredient) {
            (Some(f), Some((_, with, _))) => {
                let g = if with {
                    r.success.mean - f
                } else {
                    f - r.success.mean
                };
                format!("{g:+.1} pts")
            }
            _ => String::new(),
        };
        let claim = match r.ingredient {
            Some((_, _, Some(g))) => format!("+{g} pts"),
            _ => "-".to_string(),
        };
        let seeds: Vec<String> = r.rates.iter().map(|x| format!("{x:.1}")).collect();
        md.push_str(&format!(
            "| {} | {:.1} +- {:.1} | {} | {gain} | {claim} | {:.3} +- {:.3} | {:.0} |\n",
            r.variant,
            r.success.mean,
            r.success.std,
            seeds.join(", "),
            r.val_loss.mean,
            r.val_loss.std,
            r.steps.mean,
        ));
    }
    let out = root.join("ablation.md");
    afm_tokenizer::atomic::write(&out, &md)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("\n{md}\nwritten to {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `data` stage writes the scripted agents' trajectories on the
    /// generated train tasks; the shipped dataset is its prefix; a rerun
    /// reuses it; the user's `--input` and `train_tasks = 0` bypass it.
    #[test]
    fn the_data_stage_extends_the_shipped_dataset() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let dir = tempfile::tempdir().unwrap();
        let c = PipelineConfig {
            train_tasks: 60,
            tasks: repo.join("datasets/tasks/test.jsonl"),
            ..Default::default()
        };
        let (ins, d) = inputs(dir.path(), &c).unwrap();
        assert_eq!(ins, vec![dir.path().join("data/scripted.jsonl")]);
        assert!(!d.unwrap().cached);
        let made = std::fs::read_to_string(&ins[0]).unwrap();
        let shipped = std::fs::read_to_string(repo.join(SHIPPED_TRAJECTORIES)).unwrap();
        assert_eq!(made.lines().count(), 60);
        assert!(made.lines().zip(shipped.lines()).all(|(a, b)| a == b));
        let (_, again) = inputs(dir.path(), &c).unwrap();
        assert!(again.unwrap().cached);
        let shipped_only = PipelineConfig {
            train_tasks: 0,
            ..c.clone()
        };
        let (ins, d) = inputs(dir.path(), &shipped_only).unwrap();
        assert_eq!(
            (ins, d.is_none()),
            (vec![PathBuf::from(SHIPPED_TRAJECTORIES)], true)
        );
        let user = PipelineConfig {
            input: vec![PathBuf::from("mine.jsonl")],
            ..c
        };
        assert_eq!(inputs(dir.path(), &user).unwrap().0, user.input);
    }

    #[test]
    fn a_non_finite_or_out_of_range_min_score_is_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["nan", "inf", "-1.0", "101.0"] {
            let p = dir.path().join("p.toml");
            std::fs::write(&p, format!("min_score = {bad}\n")).unwrap();
            let a = PipelineArgs {
                config: Some(p.clone()),
                ..Default::default()
            };
            let e = resolve(&a).unwrap_err().to_string();
            assert!(e.contains("min_score"), "{bad}: {e}");
        }
    }

    #[test]
    fn config_flags_override_toml_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.toml");
        std::fs::write(
            &p,
            "preset = \"tiny\"\nmin_score = 10.0\n[train]\nbatch_size = 4\n",
        )
        .unwrap();
        let a = PipelineArgs {
            config: Some(p.clone()),
            name: Some("x".into()),
            ..Default::default()
        };
        let c = resolve(&a).unwrap();
        assert_eq!(
            (
                c.preset.as_str(),
                c.min_score,
                c.train.batch_size,
                c.name.as_str()
            ),
            ("tiny", 10.0, 4, "x")
        );
        // The rest of [train] keeps the pipeline's tuned values.
        let d = PipelineConfig::default().train;
        assert_eq!(
            (c.train.epochs, c.train.optim.lr, c.train.shape.n_layer),
            (d.epochs, d.optim.lr, d.shape.n_layer)
        );
        std::fs::write(&p, "presett = \"tiny\"\n").unwrap();
        let e = resolve(&a).unwrap_err().to_string();
        assert!(e.contains("presett"), "{e}");
        let a = PipelineArgs {
            afm_time_budget: Some("soon".into()),
            ..Default::default()
        };
        let e = resolve(&a).unwrap_err().to_string();
        assert!(e.contains("afm_time_budget"), "{e}");
    }

    /// `[train.loss]` boundary weights and `role_embeddings` are kept as the
    /// user wrote them, or a conflict with the pipeline's own switches is an
    /// error; nothing is silently overwritten.
    #[test]
    fn user_loss_settings_are_kept_or_conflicts_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.toml");
        let with = |text: &str| {
            std::fs::write(&p, text).unwrap();
            resolve(&PipelineArgs {
                config: Some(p.clone()),
                ..Default::default()
            })
        };
        // Defaults: the AFM gets the boundary weighting, the agents' models none.
        let c = with("").unwrap();
        let afm = boundary_loss(&c.train.loss, true);
        assert_eq!(
            (
                afm.role_token_weight,
                afm.handoff_tokens,
                afm.handoff_weight
            ),
            BOUNDARY_DEFAULTS
        );
        assert_eq!(boundary_loss(&c.train.loss, false), c.train.loss);
        // The user's own values are kept, for both systems.
        let c = with("[train.loss]\nrole_token_weight = 3.0\nhandoff_tokens = 1\nalpha = 0.7\n")
            .unwrap();
        for on in [true, false] {
            let l = boundary_loss(&c.train.loss, on);
            assert_eq!(
                (l.role_token_weight, l.handoff_tokens, l.alpha),
                (3.0, 1, 0.7)
            );
        }
        // Conflicts name the fields.
        let e = with("boundary = false\n[train.loss]\nrole_token_weight = 3.0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("boundary") && e.contains("role_token_weight"),
            "{e}"
        );
        let e = with("[train]\nrole_embeddings = false\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("role_embeddings"), "{e}");
        assert!(with("role_embeddings = false\n[train]\nrole_embeddings = false\n").is_ok());
        let e = with("[train]\npreset = \"tiny\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("preset"), "{e}");
    }
}
