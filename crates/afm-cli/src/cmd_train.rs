//! Verbs of afm-train: `afm train`.

use crate::settings::Layers;
use afm_train::{Divergence, FinalWeights, TrainConfig};
use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum Cmd {
    /// Supervised fine-tuning with optional per-agent teacher distillation.
    ///
    /// Every field of the training config can come from a TOML file
    /// (--config), a flag, or --set KEY=VALUE, in that order of precedence
    /// (lowest first). See crates/afm-train/README.md for the full reference.
    Train(Box<TrainArgs>),
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub layers: Layers,
    #[command(flatten)]
    pub flags: TrainFlags,
    /// Start from this checkpoint (vocabulary extended to the data's).
    #[arg(long, conflicts_with = "preset")]
    pub init: Option<PathBuf>,
    /// Fresh model from a preset: tiny, mini, gpt2, gpt2-medium.
    #[arg(long)]
    pub preset: Option<String>,
    /// Per-agent teacher, AGENT=CHECKPOINT (repeat for several agents).
    #[arg(long = "teacher", value_name = "AGENT=CKPT")]
    pub teachers: Vec<String>,
    /// bf16 mixed precision (fp32 master weights).
    #[arg(long)]
    pub bf16: bool,
    /// Continue the run in --out from its latest checkpoint.
    #[arg(long)]
    pub resume: bool,
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

/// The flags that name a `TrainConfig` field (under its dotted name); only
/// those given are laid over the config (see `crate::settings`).
#[derive(Args, Debug, Serialize)]
pub struct TrainFlags {
    /// Prepared dataset directory (train/val shards and vocab.json).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// Run directory (checkpoints, metrics.jsonl, plots, final/).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out: Option<PathBuf>,
    /// Distil from the teachers' cached top-k logits (built once in
    /// RUN/teacher_cache; forward KL only); 0 = run the teachers every step.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub teacher_top_k: Option<usize>,
    /// Optimiser steps (0 = from --epochs).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<usize>,
    /// Passes over the train split when --max-steps is 0.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Wall-clock budget, e.g. 10m, 90s, 1h30m.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_budget: Option<String>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// libtorch CPU threads (0 = default).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Rows per micro-batch.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimiser step.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_accum: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    #[serde(rename = "optim.lr", skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Floor of the cosine decay.
    #[arg(long)]
    #[serde(rename = "optim.min_lr", skip_serializing_if = "Option::is_none")]
    pub min_lr: Option<f64>,
    #[arg(long)]
    #[serde(rename = "optim.warmup_steps", skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<usize>,
    #[arg(long)]
    #[serde(rename = "optim.weight_decay", skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// Global gradient-norm clip (0 = off).
    #[arg(long)]
    #[serde(rename = "optim.grad_clip", skip_serializing_if = "Option::is_none")]
    pub grad_clip: Option<f64>,
    /// Dropout of a fresh preset model.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
    /// Validate every N steps (0 = only at the end).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_interval: Option<usize>,
    /// At most N validation batches per evaluation (0 = all).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_batches: Option<usize>,
    /// Checkpoint every N steps (0 = at evaluations and at the end).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_interval: Option<usize>,
    /// Step checkpoints to keep (plus the best).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<usize>,
    /// Early stopping: evaluations without improvement (0 = off).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patience: Option<usize>,
    /// Log a train record every N steps.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_interval: Option<usize>,
    /// best or last: which weights go to RUN/final.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_weights: Option<FinalWeights>,
    /// Pick the best weights (and count patience) on this agent's own
    /// validation loss instead of the total.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_of: Option<String>,
    /// Weight of CE on distilled tokens.
    #[arg(long)]
    #[serde(rename = "loss.alpha", skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Weight of the distillation divergence.
    #[arg(long)]
    #[serde(rename = "loss.beta", skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    /// Distillation temperature.
    #[arg(long)]
    #[serde(rename = "loss.temperature", skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// forward, reverse or jsd.
    #[arg(long)]
    #[serde(rename = "loss.divergence", skip_serializing_if = "Option::is_none")]
    pub divergence: Option<Divergence>,
    /// Mixture weight of the JSD, in (0, 1).
    #[arg(long)]
    #[serde(rename = "loss.jsd_beta", skip_serializing_if = "Option::is_none")]
    pub jsd_beta: Option<f64>,
    /// Loss-weight multiplier on marker targets (agent/obs/end tokens).
    #[arg(long)]
    #[serde(
        rename = "loss.role_token_weight",
        skip_serializing_if = "Option::is_none"
    )]
    pub role_token_weight: Option<f64>,
    /// Number of targets after each agent hand-off to up-weight.
    #[arg(long)]
    #[serde(
        rename = "loss.handoff_tokens",
        skip_serializing_if = "Option::is_none"
    )]
    pub handoff_tokens: Option<usize>,
    /// Multiplier for those targets.
    #[arg(long)]
    #[serde(
        rename = "loss.handoff_weight",
        skip_serializing_if = "Option::is_none"
    )]
    pub handoff_weight: Option<f64>,
}

/// `TrainConfig::default()` <- `--config` <- the flags <- `--set`.
pub fn build_config(a: &TrainArgs) -> anyhow::Result<TrainConfig> {
    let mut c: TrainConfig = crate::settings::resolve(&a.layers, &a.flags)?;
    if let Some(p) = &a.init {
        c.init = Some(p.clone());
        c.preset = None;
    }
    if let Some(p) = &a.preset {
        c.preset = Some(p.clone());
        c.init = None;
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
