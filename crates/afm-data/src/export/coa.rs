//! Chain-of-Agents' SFT form (OPPO-PersonalAI/Agent_Foundation_Models): a
//! LLaMA-Factory alpaca row whose response holds the whole trajectory as
//! tags, trained by CoA's fork of LLaMA-Factory with `--ignore_observation
//! true --ignore_observation_token observation`, which masks every
//! `<observation>...</observation>` span of the response
//! (`IgnoreObsSupervisedDatasetProcessor` in
//! `LLaMA-Factory/src/llamafactory/data/processor/supervised.py`; the data
//! is registered in `dataset_info.json` by `file_name` alone, so alpaca).
//!
//! One row per trajectory: `{"instruction": TASK, "input": "", "output":
//! "<planner>...</planner>\n\n<coder>...</coder>\n\n<observation>...</observation>\n\n...",
//! "id", "success"?, "score"?, "answer"?}`:
//!
//! - an agent's turn is `<TAG>TEXT</TAG>` with TAG = [`tag`] of its name
//!   (ASCII lower case; characters other than `a-z`, `0-9`, `_`, `-`
//!   become `_`; a name not starting with a letter gets `agent_` in front);
//! - an observation is `<observation>TEXT</observation>` (the tool's name is
//!   not kept);
//! - segments are separated by a blank line, and a last observation is
//!   followed by one too: CoA's mask ends an observation at
//!   `observation>\n\n`.
//!
//! The `coa-tags` importer reads it back (task from `instruction`, steps
//! from `output`): agents come back under their tags (`Coder` ->
//! `coder`), observations as agent `observation`. CoA trains every tag but
//! `<observation>`: agent weights are not carried (an agent of weight 0 is
//! trained). A text that holds its own closing tag (`</coder>` inside a
//! `coder` turn) ends the turn early when read back. Lost besides: name
//! case, tool names, `meta`.

use afm_format::{StepKind, Trajectory};
use serde_json::{json, Map, Value};

/// The tag of an agent: its name in ASCII lower case, other characters
/// than `a-z0-9_-` as `_`, `agent_` in front when it does not start with a
/// letter (the `coa-tags` importer reads tags `[a-z][a-z0-9_-]*`).
pub fn tag(agent: &str) -> String {
    let mut t: String = agent
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !t.starts_with(|c: char| c.is_ascii_lowercase()) {
        t.insert_str(0, "agent_");
    }
    t
}

/// The tagged response of a trajectory.
pub fn response(t: &Trajectory) -> String {
    let mut out = String::new();
    for (i, s) in t.steps.iter().enumerate() {
        if i > 0 {
            out.push_str("\n\n");
        }
        let name = match s.kind {
            StepKind::Agent => tag(&s.agent),
            StepKind::Observation => "observation".to_string(),
        };
        out.push('<');
        out.push_str(&name);
        out.push('>');
        out.push_str(&s.text);
        out.push_str("</");
        out.push_str(&name);
        out.push('>');
    }
    if t.steps
        .last()
        .is_some_and(|s| s.kind == StepKind::Observation)
    {
        out.push_str("\n\n");
    }
    out
}

/// The row of one trajectory.
pub fn record(t: &Trajectory) -> Value {
    let mut o = Map::new();
    o.insert("instruction".into(), Value::String(t.task.clone()));
    o.insert("input".into(), Value::String(String::new()));
    o.insert("output".into(), Value::String(response(t)));
    super::insert_outcome(&mut o, t);
    Value::Object(o)
}

/// The `dataset_info.json` entry for an export file `file_name`: alpaca
/// columns spelled out (train with CoA's `--ignore_observation true
/// --ignore_observation_token observation`).
pub fn dataset_info(file_name: &str) -> Value {
    json!({
        "file_name": file_name,
        "formatting": "alpaca",
        "columns": {"prompt": "instruction", "query": "input", "response": "output"}
    })
}
