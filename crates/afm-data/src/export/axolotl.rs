//! axolotl's `chat_template` dataset type (`docs/dataset-formats/conversation.qmd`,
//! `src/axolotl/prompt_strategies/chat_template.py`).
//!
//! One row per trajectory: `{"messages": [{"role", "content", "name"?,
//! "train"}...], "id", "success"?, "score"?, "answer"?}`, one message per
//! step (nothing is merged, so no character offsets are needed):
//!
//! - the task: `{"role": "user", "content": TASK, "train": false}`;
//! - an agent's turn: `{"role": "assistant", "name": AGENT, "content":
//!   TEXT, "train": W > 0}` with W the agent's weight; its tool calls stay
//!   in the text in afm's `<tool_call>NAME(ARGS)</tool_call>` form (a
//!   template that does not render `tool_calls` would silently drop them);
//! - an observation: `{"role": "tool", "name": TOOL, "content": TEXT,
//!   "train": false}`.
//!
//! axolotl reads `train` when the dataset sets
//! `message_field_training: train` ([`config`] writes that snippet); it
//! passes `name` to the template only when the template uses it (or
//! `message_property_mappings` maps it), so with a template that ignores
//! `name` the model does not see who spoke. The `messages` importer reads
//! the row back: `name` is the agent, `role: tool` an observation, the
//! first `user` message the task. `train` is not read back (a record has
//! no per-step weight): prepare the import with the same agent weights to
//! get the same mask.
//!
//! Lost: weights between 0 and 1 (a turn is trained or not), `meta`.

use afm_format::layout::AgentWeights;
use afm_format::{StepKind, Trajectory};
use serde_json::{json, Map, Value};

/// The row of one trajectory.
pub fn record(t: &Trajectory, weights: &AgentWeights) -> Value {
    let mut messages = Vec::with_capacity(t.steps.len() + 1);
    messages.push(json!({"role": "user", "content": t.task, "train": false}));
    for s in &t.steps {
        messages.push(match s.kind {
            StepKind::Agent => json!({
                "role": "assistant",
                "name": s.agent,
                "content": s.text,
                "train": weights.weight(&s.agent) > 0.0,
            }),
            StepKind::Observation => json!({
                "role": "tool",
                "name": s.agent,
                "content": s.text,
                "train": false,
            }),
        });
    }
    let mut o = Map::new();
    o.insert("messages".into(), Value::Array(messages));
    super::insert_outcome(&mut o, t);
    Value::Object(o)
}

/// The axolotl `datasets:` entry for an export at `path` (YAML text):
/// `chat_template` with the per-message `train` field.
pub fn config(path: &str) -> String {
    format!(
        "datasets:\n  - path: {}\n    type: chat_template\n    field_messages: messages\n    message_field_training: train\n    roles_to_train: []\n",
        serde_json::to_string(path).unwrap_or_default()
    )
}
