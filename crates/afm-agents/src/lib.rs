//! afm-agents: the runtimes and their evaluation.
//!
//! - [`afm`]: the AFM runtime: one model plays every agent in one
//!   generation, with tool calls resumed in the same KV cache.
//! - [`mas`]: the multi-agent LM system (the baseline): one model per
//!   agent, an orchestrator calling them in order.
//! - [`evaluate`]: success rate, answer agreement, per-agent validity, token
//!   and call accounting, latency percentiles ([`EvalReport`]).
//! - [`Lm`]/[`Session`]: the traits both runtimes drive ([`ModelLm`] for a
//!   checkpoint, [`ScriptedLm`] a policy-driven fake model for tests).
//! - [`TaskRun`], the output record (native JSONL shape), and [`RunStats`],
//!   the accounting (definitions there).
//! - [`EvalConfig`]: the configuration of `afm eval` and `afm run`.
//! - What the runtimes use from `afm-tasks`: the tool ([`run_tool`]), tasks
//!   ([`Task`]); prompts and contexts are laid out by `afm_format::layout`.
//!
//! ```no_run
//! use afm_agents::{afm, evaluate, mas::Mas, ReferenceAnswer, RunOptions};
//! # fn main() -> anyhow::Result<()> {
//! let device = afm_model::parse_device("cpu")?;
//! let tasks = afm_tasks::load_tasks("datasets/tasks/test.jsonl".as_ref())?;
//! let opts = RunOptions { batch: 8, ..Default::default() }; // greedy
//! let model = afm_model::Model::load("runs/afm/final".as_ref(), device)?;
//! let afm_runs = afm::run_batch(&model, &tasks, &opts)?;
//! let mas = Mas::load(&Mas::parse_spec("Planner=runs/p,Coder=runs/c,Reviewer=runs/r")?, device)?;
//! let mas_runs = mas.run_batch(&tasks, &opts)?;
//! let reference = ReferenceAnswer::from_runs(&mas_runs);
//! let report = evaluate(&afm_runs, Some(&reference));
//! println!("{}", serde_json::to_string(&report)?);
//! # Ok(()) }
//! ```

pub mod afm;
mod config;
mod env;
mod eval;
mod format;
mod lm;
pub mod mas;
mod model_lm;
mod trajectory;

pub use afm::{Route, RunOptions};
pub use config::{EvalConfig, EvalConfigError};
pub use env::{run_tool, run_tool_with, Task, Tool, ToolResult};
pub use eval::{evaluate, load_reference, percentile, AgentReport, EvalReport, ReferenceAnswer};
pub use lm::{Lm, Policy, ScriptedLm, ScriptedSession, Session};
pub use model_lm::ModelLm;
pub use trajectory::{write_jsonl, RunStats, TaskRun, Validity};
