//! The normalised trajectory every input format is converted to.

use serde::{Deserialize, Serialize};

/// Whether a step is an agent's output (trained) or a tool observation (never trained).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    /// Output of an agent: formatted as `<|agent:NAME|>` + text.
    Agent,
    /// A tool observation: formatted as `<|obs|>` + text, zero loss weight.
    Observation,
}

/// One step of a trajectory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Agent (or tool) name, after the agents map is applied.
    pub agent: String,
    /// Agent output or observation.
    pub kind: StepKind,
    /// The text.
    pub text: String,
}

/// A validated, normalised multi-agent trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    /// Record id (from the data, else `file:line` / `file#index`).
    pub id: String,
    /// The task prompt.
    pub task: String,
    /// Steps in order.
    pub steps: Vec<Step>,
    /// Outcome (`success`, AG2's `is_correct`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    /// A score field from the data, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Final answer, when the data has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Free-form metadata (e.g. how a generated task can be re-solved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
}

impl Trajectory {
    /// Number of agent steps.
    pub fn agent_turns(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.kind == StepKind::Agent)
            .count()
    }

    /// Number of observation steps (tool calls answered).
    pub fn tool_calls(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.kind == StepKind::Observation)
            .count()
    }
}
