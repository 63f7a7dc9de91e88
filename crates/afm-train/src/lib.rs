//! afm-train: supervised fine-tuning of the one multi-agent model, with
//! per-agent teacher distillation.
//!
//! [`train`] (the recipe [`Trainer`]: setup, step, evaluate, checkpoint,
//! finish) reads a prepared dataset (`train`/`val` shards and
//! `vocab.json`, see `afm_format::shards`), builds or loads the student
//! (`afm_model::Model`), and optimises
//! `sum_i w_i * l_i / sum_i w_i` over the loss positions (see [`loss`]),
//! where each position's teacher is the checkpoint of the agent that owns
//! its target ([`teacher`]).
//!
//! The optimiser ([`optim::AdamW`]) is implemented here so that its state
//! is saved and restored exactly: a run killed at any point and resumed
//! with `resume = true` ends with the same bits as an uninterrupted one on
//! CPU (the data order and libtorch's RNG are functions of the seed, the
//! epoch and the step; see [`checkpoint`]).
//!
//! A run directory holds:
//!
//! | path                       | content                                              |
//! |----------------------------|------------------------------------------------------|
//! | `checkpoints/step-N/`      | last `keep_last` checkpoints and the best ([`checkpoint`]) |
//! | `best.json`                | step, validation loss and path of the best checkpoint |
//! | `final/`                   | final weights (`Model::save` layout; best or last per `final_weights`) |
//! | `metrics.jsonl`            | train and eval records ([`metrics`])                  |
//! | `loss.png`, `loss_per_agent.png` | loss curves                               |
//! | `train_config.toml`        | the effective configuration                          |
//! | `summary.json`             | [`TrainSummary`]                                     |
//!
//! ```no_run
//! let cfg = afm_train::TrainConfig {
//!     data: "data/prepared".into(),
//!     out: "runs/sft".into(),
//!     preset: Some("mini".into()),
//!     max_steps: 1000,
//!     ..Default::default()
//! };
//! let summary = afm_train::train(&cfg)?;
//! println!("best val loss {:?} at {:?}", summary.best_val_loss, summary.best_step);
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod loss;
pub mod metrics;
pub mod optim;
mod plot;
pub mod recipe;
pub mod speed;
pub mod synthetic;
pub mod teacher;
pub mod teacher_cache;
pub mod trainer;

pub use config::{
    parse_duration, ConfigError, Divergence, FinalWeights, LossConfig, OptimConfig, ShapeConfig,
    TrainConfig,
};
pub use recipe::{
    snapshot_dir, train, train_with, Evaluated, Lines, Progress, SnapshotInfo, Stepped, Trainer,
};
pub use trainer::{
    batch_loss, batch_loss_unfused, evaluate, train_step, val_sample, EvalResult, StepStats,
    StopReason, TrainSummary,
};
