//! afm-agents: the runtimes and their evaluation.
//!
//! - [`afm`]: the AFM runtime: one model plays every agent in one
//!   generation, with tool calls resumed in the same KV cache.
//! - [`mas`]: the multi-agent LM system (the baseline): one model per
//!   agent, an orchestrator calling them in order.
//! - [`eval`]: success rate, answer agreement, per-agent validity, token
//!   and call accounting, latency percentiles.
//! - [`lm`]: the [`lm::Lm`]/[`lm::Session`] traits both runtimes drive, and
//!   [`lm::ScriptedLm`], a policy-driven fake model for tests.
//! - [`trajectory`]: [`TaskRun`], the output record (native JSONL shape).

pub mod afm;
pub mod env;
pub mod eval;
pub mod format;
pub mod lm;
pub mod mas;
pub mod model_lm;
pub mod trajectory;

pub use afm::RunOptions;
pub use eval::{evaluate, EvalReport};
pub use trajectory::{RunStats, TaskRun, Validity};
