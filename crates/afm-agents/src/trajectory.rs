//! What a run produces: the structured trajectory of one task in the native
//! JSONL shape, plus the accounting numbers.
//!
//! One [`TaskRun`] serialises to one JSON line:
//! `{"id","task","trajectory":[{"agent","output"}|{"agent","observation"}],
//! "answer","success","runtime","failure","stats","validity"}`. The first
//! five fields are the native trajectory shape (`afm_format::native`, whose
//! [`Turn`] they use) that `afm-tasks` writes and `afm-data` ingests, so MAS
//! runs can feed training directly; [`TaskRun::to_native`] gives the native
//! record itself.
//!
//! [`TaskRun`] is not an `afm_format::NativeTrajectory`: it carries more
//! (runtime, failure reason, accounting, validity) and a run may end
//! without an answer (`answer: null`, where the native record has a
//! string), which evaluation tells apart from an empty answer.

use crate::env::{Task, Turn};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Accounting of one task. Every number is counted while running.
///
/// - `tokens_prefill`: tokens given to a forward pass that the model did not
///   sample itself: prompts (for the MAS, every call's whole context) and
///   injected observations.
/// - `tokens_decode`: tokens sampled (including the marker token that ends a
///   turn or the chain).
/// - `calls`: model calls. AFM: 1 per task (tool resumes continue the same
///   call and KV cache). MAS: 1 per agent turn (a fresh cache each).
/// - `tool_calls` / `tool_successes`: interpreter runs and how many
///   succeeded.
/// - `latency_ms`: wall-clock time per task. In a batch of `n` tasks this is
///   the batch's wall time divided by `n` (amortised); `batch_latency_ms` is
///   the batch's wall time and `finish_ms` the time from the batch start to
///   the moment this task finished.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunStats {
    pub tokens_prefill: usize,
    pub tokens_decode: usize,
    pub calls: usize,
    pub tool_calls: usize,
    pub tool_successes: usize,
    pub latency_ms: f64,
    pub batch_latency_ms: f64,
    pub batch_size: usize,
    pub finish_ms: f64,
}

impl RunStats {
    /// Close the timing of one task that ran in a batch of `batch_size`
    /// tasks taking `wall_ms` together (the amortised-latency rule above).
    pub fn close_batch(&mut self, wall_ms: f64, batch_size: usize, finish_ms: f64) {
        self.latency_ms = wall_ms / batch_size.max(1) as f64;
        self.batch_latency_ms = wall_ms;
        self.batch_size = batch_size;
        self.finish_ms = finish_ms;
    }
}

/// Per-agent validity counts: how many turns (or tool calls) and how many of
/// them were well-formed (see `turn_valid`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validity {
    pub turns: usize,
    pub valid: usize,
}

/// The result of running one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRun {
    /// Task id.
    pub id: String,
    /// The task prompt text.
    pub task: String,
    /// Agent turns and tool observations, in order (`afm_format::Turn`:
    /// `{"agent","output"}` or `{"agent","observation"}`).
    pub trajectory: Vec<Turn>,
    /// Final answer: `extract_answer` of the last turn that has one.
    pub answer: Option<String>,
    /// True when the chain finished normally and the verifier accepts the answer.
    #[serde(default)]
    pub success: bool,
    /// `"afm"` or `"mas"`.
    #[serde(default)]
    pub runtime: String,
    /// Why the chain did not finish normally (`context full`, `token
    /// budget`, `no final answer`...); `None` when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Text the model produced before its first role token (AFM only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unattributed: Option<String>,
    #[serde(default)]
    pub stats: RunStats,
    /// Per agent (and per tool) validity counts.
    #[serde(default)]
    pub validity: BTreeMap<String, Validity>,
}

impl TaskRun {
    /// This run as an `afm_tasks::Trajectory` (the native JSONL record that
    /// `afm-data` ingests), with metadata from `task`. A missing answer
    /// becomes `""`. `meta.attempts` counts Coder turns; `meta.mistakes`
    /// is empty and `meta.erred_agent` is `None`: a model run has no
    /// injected mistakes to attribute.
    pub fn to_native(&self, task: &Task) -> afm_tasks::Trajectory {
        afm_tasks::Trajectory {
            id: self.id.clone(),
            task: self.task.clone(),
            trajectory: self.trajectory.clone(),
            success: self.success,
            answer: self.answer.clone().unwrap_or_default(),
            score: None,
            meta: afm_tasks::TrajMeta {
                family: task.family.clone(),
                op: task.op.clone(),
                level: task.level,
                inputs: task.inputs.clone(),
                erred_agent: None,
                split: task.split(),
                task_id: task.id.clone(),
                expected: task.answer.clone(),
                attempts: self
                    .trajectory
                    .iter()
                    .filter(|t| t.agent == crate::env::CODER && t.output.is_some())
                    .count(),
                mistakes: Vec::new(),
            },
        }
    }
}

/// Write runs as JSON lines (the native trajectory shape plus accounting).
pub fn write_jsonl(runs: &[TaskRun], path: &Path) -> Result<()> {
    afm_tokenizer::atomic::write_with(path, |f| {
        let mut w = std::io::BufWriter::new(f);
        for r in runs {
            serde_json::to_writer(&mut w, r)?;
            w.write_all(b"\n")?;
        }
        w.flush()
    })
    .with_context(|| format!("writing {}", path.display()))
}
