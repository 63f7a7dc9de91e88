//! Verbs of afm-train: `afm train`.

use afm_train::{Divergence, FinalWeights, TrainConfig};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum Cmd {
    /// Supervised fine-tuning with optional per-agent teacher distillation.
    ///
    /// Every knob can come from a TOML file (--config); flags given here
    /// override it. See crates/afm-train/README.md for the full reference.
    Train(Box<TrainArgs>),
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Prepared dataset directory (train/val shards and vocab.json).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Run directory (checkpoints, metrics.jsonl, plots, final/).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// TOML config file; flags override its values.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Start from this checkpoint (vocabulary extended to the data's).
    #[arg(long, conflicts_with = "preset")]
    pub init: Option<PathBuf>,
    /// Fresh model from a preset: tiny, mini, gpt2, gpt2-medium.
    #[arg(long)]
    pub preset: Option<String>,
    /// Per-agent teacher, AGENT=CHECKPOINT (repeat for several agents).
    #[arg(long = "teacher", value_name = "AGENT=CKPT")]
    pub teachers: Vec<String>,
    /// Distil from the teachers' cached top-k logits (built once in
    /// RUN/teacher_cache; forward KL only); 0 = run the teachers every step.
    #[arg(long)]
    pub teacher_top_k: Option<usize>,
    /// Optimiser steps (0 = from --epochs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Passes over the train split when --max-steps is 0.
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// bf16 mixed precision (fp32 master weights).
    #[arg(long)]
    pub bf16: bool,
    /// Continue the run in --out from its latest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Wall-clock budget, e.g. 10m, 90s, 1h30m.
    #[arg(long)]
    pub time_budget: Option<String>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long)]
    pub device: Option<String>,
    /// libtorch CPU threads (0 = default).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Rows per micro-batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimiser step.
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Floor of the cosine decay.
    #[arg(long)]
    pub min_lr: Option<f64>,
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Global gradient-norm clip (0 = off).
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// Dropout of a fresh preset model.
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Validate every N steps (0 = only at the end).
    #[arg(long)]
    pub eval_interval: Option<usize>,
    /// At most N validation batches per evaluation (0 = all).
    #[arg(long)]
    pub eval_batches: Option<usize>,
    /// Checkpoint every N steps (0 = at evaluations and at the end).
    #[arg(long)]
    pub checkpoint_interval: Option<usize>,
    /// Step checkpoints to keep (plus the best).
    #[arg(long)]
    pub keep_last: Option<usize>,
    /// Early stopping: evaluations without improvement (0 = off).
    #[arg(long)]
    pub patience: Option<usize>,
    /// Log a train record every N steps.
    #[arg(long)]
    pub log_interval: Option<usize>,
    /// best or last: which weights go to RUN/final.
    #[arg(long)]
    pub final_weights: Option<String>,
    /// Weight of CE on distilled tokens.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Weight of the distillation divergence.
    #[arg(long)]
    pub beta: Option<f64>,
    /// Distillation temperature.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// forward, reverse or jsd.
    #[arg(long)]
    pub divergence: Option<String>,
    /// Mixture weight of the JSD, in (0, 1).
    #[arg(long)]
    pub jsd_beta: Option<f64>,
    /// Loss-weight multiplier on marker targets (agent/obs/end tokens).
    #[arg(long)]
    pub role_token_weight: Option<f64>,
    /// Number of targets after each agent hand-off to up-weight.
    #[arg(long)]
    pub handoff_tokens: Option<usize>,
    /// Multiplier for those targets.
    #[arg(long)]
    pub handoff_weight: Option<f64>,
    /// Fresh preset model without agent-role embeddings (ablation).
    #[arg(long)]
    pub no_role_embeddings: bool,
    /// Do not draw PNG loss curves.
    #[arg(long)]
    pub no_plots: bool,
    /// Do not show the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// The config file (or defaults) with the flags applied.
pub fn build_config(a: &TrainArgs) -> anyhow::Result<TrainConfig> {
    let mut c = match &a.config {
        Some(p) => TrainConfig::from_toml_file(p)?,
        None => TrainConfig::default(),
    };
    macro_rules! set {
        ($($field:expr => $val:expr),* $(,)?) => {$(
            if let Some(v) = $val.clone() { $field = v; }
        )*};
    }
    set!(
        c.data => a.data,
        c.out => a.out,
        c.max_steps => a.max_steps,
        c.teacher_top_k => a.teacher_top_k,
        c.epochs => a.epochs,
        c.seed => a.seed,
        c.time_budget => a.time_budget.clone().map(Some),
        c.device => a.device,
        c.threads => a.threads,
        c.batch_size => a.batch_size,
        c.grad_accum => a.grad_accum,
        c.optim.lr => a.lr,
        c.optim.min_lr => a.min_lr,
        c.optim.warmup_steps => a.warmup_steps,
        c.optim.weight_decay => a.weight_decay,
        c.optim.grad_clip => a.grad_clip,
        c.dropout => a.dropout,
        c.eval_interval => a.eval_interval,
        c.eval_batches => a.eval_batches,
        c.checkpoint_interval => a.checkpoint_interval,
        c.keep_last => a.keep_last,
        c.patience => a.patience,
        c.log_interval => a.log_interval,
        c.loss.alpha => a.alpha,
        c.loss.beta => a.beta,
        c.loss.temperature => a.temperature,
        c.loss.jsd_beta => a.jsd_beta,
        c.loss.role_token_weight => a.role_token_weight,
        c.loss.handoff_tokens => a.handoff_tokens,
        c.loss.handoff_weight => a.handoff_weight,
    );
    if let Some(p) = &a.init {
        c.init = Some(p.clone());
        c.preset = None;
    }
    if let Some(p) = &a.preset {
        c.preset = Some(p.clone());
        c.init = None;
    }
    if let Some(d) = &a.divergence {
        c.loss.divergence = d
            .parse::<Divergence>()
            .map_err(|e| anyhow::anyhow!("--divergence: {e}"))?;
    }
    if let Some(f) = &a.final_weights {
        c.final_weights = match f.as_str() {
            "best" => FinalWeights::Best,
            "last" => FinalWeights::Last,
            _ => anyhow::bail!("--final-weights {f:?}: use best or last"),
        };
    }
    for t in &a.teachers {
        let (agent, ckpt) = t
            .split_once('=')
            .with_context(|| format!("--teacher {t:?}: expected AGENT=CHECKPOINT"))?;
        if agent.is_empty() || ckpt.is_empty() {
            anyhow::bail!("--teacher {t:?}: expected AGENT=CHECKPOINT");
        }
        c.teachers.insert(agent.to_string(), PathBuf::from(ckpt));
    }
    c.bf16 |= a.bf16;
    c.resume |= a.resume;
    if a.no_role_embeddings {
        c.role_embeddings = false;
    }
    if a.no_plots {
        c.plots = false;
    }
    if a.no_progress {
        c.progress = false;
    }
    c.validate()?;
    Ok(c)
}

pub fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Train(a) => {
            let c = build_config(&a)?;
            let s = afm_train::train_with(
                &c,
                &mut crate::progress::TrainBar::new(c.progress, "train"),
            )?;
            println!(
                "trained {} steps ({:?}) in {:.1}s, {:.0} tokens/s",
                s.steps, s.stop, s.wall_secs, s.tokens_per_s
            );
            if let Some(v) = s.final_val_loss {
                println!("val loss {v:.4}");
            }
            if let (Some(b), Some(st)) = (s.best_val_loss, s.best_step) {
                println!("best val loss {b:.4} at step {st}");
            }
            for (agent, l) in &s.per_agent_val_loss {
                println!("  {agent:>12}: {l:.4}");
            }
            println!("final weights: {}", s.checkpoint.display());
            Ok(())
        }
    }
}
