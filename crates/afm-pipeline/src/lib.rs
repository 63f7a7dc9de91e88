//! The afm recipe as a library: the resumable stage graph that turns
//! trajectories into a multi-agent system (one model per agent) and an
//! agent foundation model (one model for all), measures both, and writes
//! the report; and the ablation of the recipe's ingredients.
//!
//! ```text
//! data ──> prepare-afm ──────────────────────────────> train-afm ─┐
//!      └─> prepare-mas-<Agent> ─> train-mas-<Agent> ──(teachers)─┘
//!                                                                  v
//!                     report <── reference <── curve <── bench <── eval
//! ```
//!
//! 1. `data`: the scripted agents' trajectories on `train_tasks` generated
//!    tasks, drawn as `task_repeats` says (the shipped `datasets/scripted/train.jsonl` are the first
//!    4,000; `train_tasks = 0` uses that file; `input` replaces it);
//! 2. `prepare-afm`, `prepare-mas-<Agent>`: filter, (curriculum,) augment,
//!    pack (one dataset for the AFM, one per agent for its own model);
//! 3. `train-mas-<Agent>`: one model per agent (the multi-agent system);
//! 4. `train-afm`: the one model, SFT (+ per-agent KL distillation from the
//!    agents' models with `distill`);
//! 5. `eval`: AFM and MAS on the held-out tasks;
//! 6. `bench`: latency and throughput, interleaved;
//! 7. `curve`: both systems' training snapshots on a subset;
//! 8. the scripted reference, then `report.md`, `report.json`, charts.
//!
//! Every stage but the reference records a fingerprint of its whole
//! configuration and its inputs' markers in `<stage dir>/.afm-stage.json`;
//! a rerun skips complete stages, resumes interrupted ones and redoes
//! exactly the stages whose configuration or inputs changed.
//!
//! The API: a validated [`PipelineConfig`], a [`Progress`] for events
//! (the library draws and prints nothing), then [`run`] or [`ablation`].

mod ablation;
mod config;
mod data;
mod eval;
mod loss_policy;
mod prepare;
mod progress;
mod run;
mod stage;
mod train;
mod world;

#[cfg(test)]
mod tests;

pub use ablation::{ablation, variants, Ablation, AblationOptions, AblationRow, INGREDIENTS};
pub use config::{PipelineConfig, MAS_AGENTS};
pub use data::{solve_scripted, DataSummary, SHIPPED_TRAJECTORIES};
pub use eval::EvalSummary;
pub use loss_policy::{boundary_loss, BOUNDARY_DEFAULTS};
pub use prepare::PrepareSummary;
pub use progress::{Event, Progress, Quiet, StageStatus};
pub use run::{run, Start};
pub use world::{prepare_in_task_world, TaskWorld};
