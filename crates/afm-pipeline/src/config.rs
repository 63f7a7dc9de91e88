//! The pipeline's configuration: every knob, its defaults, and the checks
//! a configuration must pass before any stage runs.

use afm_bench::PriceTable;
use afm_train::TrainConfig;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
    /// How often the `data` stage may draw one train task. 1: distinct
    /// tasks (`afm_tasks::generate`, whose first 4,000 are the shipped
    /// data); that starves the ops with few possible inputs (32,000
    /// distinct tasks hold 0.1% `arith-pow`, the task distribution 6.4%).
    /// R >= 2: independent draws from the task distribution, each task at
    /// most R times (`afm_tasks::sample_train`); 0: no cap, the natural
    /// mixture, which leaves the list ops a third less data. Repeated
    /// tasks are kept by prepare (no dedup). Measured: README.
    pub task_repeats: usize,
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
    /// Off: the full GPT-2 table (with smearing and role embeddings off
    /// too, `export-hf` then writes plain GPT-2, which vLLM serves).
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
    /// Loss weight of the other agents' turns in each per-agent model's
    /// data (its own turns weigh 1): the context-loss knob of SFT
    /// (`train_on_inputs`, a prompt-loss weight). A model that also learns
    /// to predict the other turns learns the skills they share (copying a
    /// list, an observation) from 2.6x the supervised tokens per step.
    /// 0 = its own turns only.
    pub mas_context_weight: f32,
    /// Training budget of each per-agent model ("60s", "2m"...), or one per
    /// agent: "Planner=20s,Coder=80s,Reviewer=60s".
    pub mas_time_budget: String,
    /// The per-agent models train side by side in this many lanes, each
    /// with an equal share of the cores (`train.threads`, or all of them);
    /// agents go to lanes longest budget first. The agents' models are
    /// independent, so a multi-agent system can: on the 2-core machine two
    /// one-thread trainings do 1.35x the work of one two-thread training
    /// (no OpenMP barriers). 1 = one after another, with every core.
    pub mas_lanes: usize,
    /// Training budget of the AFM; "auto" = the MAS's training wall time
    /// (the longest lane's budgets), so both systems get the same wall
    /// time on the same cores.
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
        // was chosen"): `mini` cut to 2 layers learned most per second
        // before smearing (Coder model, 60 s: token accuracy 0.90 against
        // 0.80 with 4 layers, 0.86 at width 128, 0.87 at width 384); with
        // smeared keys and tokens one layer copies, and at about twice the
        // steps it beats two (the whole pipeline, three seeds); batch 8 and
        // a peak rate of 2e-3 beat batch 16 and 4e-3; the cosine decay
        // spans the time budget.
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
                // One layer: with smeared keys and tokens a single layer
                // finds "the token after the previous occurrence of this
                // pair", which is most of the agents' work, and it trains
                // about twice the steps of two layers in the same time.
                n_layer: 1,
                smear_keys: true,
                // Smeared token embeddings: a key can then match two
                // tokens, so the `,` of a list stands for the number before
                // it (the Coder's model, 600 steps: validation loss 0.262
                // against 0.407; README).
                smear_tokens: true,
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
            task_repeats: 8,
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
            mas_context_weight: 0.3,
            mas_time_budget: "Planner=30s,Coder=265s,Reviewer=235s".into(),
            mas_lanes: 2,
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

impl PipelineConfig {
    /// Check every setting (each error names its field) and fill in what
    /// follows from the others (`seq_len = 0`: the preset's context
    /// length). [`crate::run`] and [`crate::ablation`] take a validated
    /// configuration; validating one twice changes nothing.
    pub fn validated(mut self) -> Result<Self> {
        let c = &self;
        if c.name.is_empty() || c.name.contains(['/', '\\']) || c.name == ".." {
            bail!("name {:?}: use a plain directory name", c.name);
        }
        if c.eval_batch == 0 {
            bail!("eval_batch must be >= 1");
        }
        // Checked here, before any stage runs (prepare checks it again).
        let r = afm_data::SCORE_RANGE;
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
        if !(0.0..=1.0).contains(&c.mas_context_weight) {
            bail!(
                "mas_context_weight {} must be in 0..=1 (the agent's own turns weigh 1)",
                c.mas_context_weight
            );
        }
        if c.mas_lanes == 0 {
            bail!("mas_lanes must be >= 1 (1 = the agents' models one after another)");
        }
        for a in MAS_AGENTS {
            mas_budget(c, a)?;
        }
        afm_budget(c)?;
        afm_model::parse_device(&c.device)?;
        check_train_table(c)?;
        if self.seq_len == 0 {
            let g = afm_model::GptConfig::preset(
                &self.preset,
                afm_tokenizer::FIRST_ROLE_TOKEN as usize,
                0,
            )
            .with_context(|| format!("preset {:?}", self.preset))?;
            self.seq_len = self.train.shape.apply(g).n_ctx;
        }
        Ok(self)
    }

    /// Where the run's outputs go: `runs_dir/name`.
    pub fn root(&self) -> PathBuf {
        self.runs_dir.join(&self.name)
    }

    /// Whether the training data is the `data` stage's natural draw, whose
    /// repeated tasks are intended (prepare keeps them).
    pub fn draws_repeats(&self) -> bool {
        self.input.is_empty() && self.train_tasks > 0 && self.task_repeats != 1
    }
}

/// The agents of the multi-agent system (afm-tasks' chain).
pub const MAS_AGENTS: [&str; 3] = ["Planner", "Coder", "Reviewer"];

/// Training budget of agent `agent`'s model (see `mas_time_budget`).
pub(crate) fn mas_budget(c: &PipelineConfig, agent: &str) -> Result<String> {
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

/// One lane of the per-agent models' training: its agents, in chain order,
/// and their budgets' sum (the lane's wall time).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Lane {
    pub agents: Vec<&'static str>,
    pub secs: f64,
}

/// The lanes the per-agent models train in (see `mas_lanes`): agents
/// longest budget first, each to the lane with the least budget so far
/// (the first such lane on a tie); in each lane, agents in chain order.
pub(crate) fn mas_lanes(c: &PipelineConfig) -> Result<Vec<Lane>> {
    let mut agents = Vec::new();
    for a in MAS_AGENTS {
        let secs = afm_train::parse_duration(&mas_budget(c, a)?).map_err(anyhow::Error::msg)?;
        agents.push((a, secs));
    }
    agents.sort_by(|x, y| y.1.total_cmp(&x.1));
    let n = c.mas_lanes.clamp(1, MAS_AGENTS.len());
    let mut lanes = vec![
        Lane {
            agents: Vec::new(),
            secs: 0.0
        };
        n
    ];
    for (a, secs) in agents {
        let least = (0..n)
            .min_by(|&i, &j| lanes[i].secs.total_cmp(&lanes[j].secs))
            .unwrap_or(0);
        lanes[least].secs += secs;
        lanes[least].agents.push(a);
    }
    lanes.retain(|l| !l.agents.is_empty());
    for l in &mut lanes {
        l.agents
            .sort_by_key(|a| MAS_AGENTS.iter().position(|m| m == a));
    }
    Ok(lanes)
}

/// Training budget of the AFM (see `afm_time_budget`).
pub(crate) fn afm_budget(c: &PipelineConfig) -> Result<String> {
    let v = c.afm_time_budget.trim();
    if v == "auto" {
        let wall = mas_lanes(c)?.iter().fold(0.0f64, |w, l| w.max(l.secs));
        return Ok(format!("{wall}s"));
    }
    afm_train::parse_duration(v).map_err(|e| anyhow::anyhow!("afm_time_budget = {v:?}: {e}"))?;
    Ok(v.to_string())
}

/// Fields of `[train]` the pipeline sets itself from its own settings: a
/// `[train]` value for one of them that differs from the default would be
/// overwritten, so it is an error that names the pipeline field to use.
fn check_train_table(c: &PipelineConfig) -> Result<()> {
    let (t, d) = (&c.train, TrainConfig::default());
    let owned: [(&str, bool, &str); 10] = [
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
        (
            "best_of",
            t.best_of != d.best_of,
            "each agent's model is picked on its own validation loss, the AFM on the total",
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
    if !c.boundary && crate::loss_policy::user_sets_boundary(&t.loss) {
        bail!(
            "boundary = false conflicts with [train.loss] role_token_weight = {}, handoff_tokens = {}, handoff_weight = {}: drop those or set boundary = true",
            t.loss.role_token_weight,
            t.loss.handoff_tokens,
            t.loss.handoff_weight
        );
    }
    Ok(())
}
