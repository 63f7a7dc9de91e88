//! afm-train: supervised fine-tuning of the one multi-agent model, with
//! per-agent teacher distillation.
//!
//! [`train`] (the recipe [`Trainer`]: setup, step, evaluate, checkpoint,
//! finish) reads a prepared dataset (`train`/`val` shards and
//! `vocab.json`, see `afm_format::shards`), builds or loads the student
//! (`afm_model::Model`), and optimises
//! `sum_i w_i * l_i / sum_i w_i` over the loss positions ([`batch_loss`]),
//! where each position's teacher is the checkpoint of the agent that owns
//! its target ([`Teachers`]). Per loss position `i` with weight `w_i`:
//!
//! ```text
//! l_i = alpha * CE_i + beta * T^2 * D_T(teacher_i, student_i)   if i's owner has a teacher
//! l_i = CE_i                                                    otherwise
//! loss = sum_i w_i * l_i / sum_i w_i
//! ```
//!
//! where the sums run over every micro-batch of the optimiser step, so
//! accumulating micro-batches equals one big batch. `D_T` is forward KL,
//! reverse KL or the generalised JSD at temperature `T`
//! ([`LossConfig`]).
//!
//! The optimiser ([`AdamW`]) is implemented here so that its state
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
//! | `metrics.jsonl`            | train and eval records ([`Record`])                   |
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
//!
//! The API is the items at this root. Two modules stay public as
//! namespaces: [`checkpoint`] (a run directory's files) and [`synthetic`]
//! (generated datasets for tests and benchmarks).

pub mod checkpoint;
mod config;
mod data;
mod loss;
mod metrics;
mod optim;
mod plot;
mod recipe;
mod speed;
pub mod synthetic;
mod teacher;
mod teacher_cache;
mod trainer;

pub use config::{
    parse_duration, ConfigError, Divergence, FinalWeights, LossConfig, OptimConfig, ShapeConfig,
    TrainConfig,
};
pub use data::{make_batch, Batch};
pub use loss::cross_entropy_per_token;
pub use metrics::Record;
pub use optim::AdamW;
pub use recipe::{
    snapshot_dir, train, train_with, Evaluated, Lines, Progress, SnapshotInfo, Stepped, Trainer,
};
pub use speed::trainer_step_speed;
pub use teacher::{Teacher, Teachers};
pub use teacher_cache::TeacherCache;
pub use trainer::{
    batch_loss, batch_loss_unfused, evaluate, train_step, val_sample, EvalResult, StepStats,
    StopReason, TrainSummary,
};
