//! LLaMA-Factory's ShareGPT format (`formatting: sharegpt` in its
//! `dataset_info.json`; read by `SharegptDatasetConverter` in
//! `src/llamafactory/data/converter.py`).
//!
//! One row per trajectory: `{"conversations": [{"from", "value"}...], "id",
//! "success"?, "score"?, "answer"?}`. LLaMA-Factory wants `human` or
//! `observation` at odd positions (1st, 3rd...) and `gpt` or
//! `function_call` at even ones, ending on an even one; it trains every
//! `gpt`/`function_call` message and nothing else. It has no per-message
//! loss flag (only the global `mask_history`, which trains the last turn
//! alone), so afm's agent weights choose the side of each turn:
//!
//! - the task opens the first `human` message;
//! - a turn of an agent whose weight is above 0 goes to the even side
//!   (`gpt`, trained); every other step (observations, agents of weight 0)
//!   to the odd side (`observation` when the run holds an observation, else
//!   `human`; never trained). Untrained steps before the first trained turn
//!   join the task message;
//! - consecutive steps on one side are merged into one message, each step
//!   written as afm's role marker followed by its text, no separator:
//!   `<|agent:NAME|>TEXT` for an agent, `<|obs:NAME|>TEXT` for an
//!   observation. The ShareGPT importer (`--format sharegpt`) splits them
//!   back, so `afm prepare` on an export gives the record back;
//! - a trained turn that is only tool calls, alone on its side, becomes a
//!   `function_call` message (`{"name","arguments"}`, or a list) with the
//!   agent in an `agent` key, when reading it back gives the same text
//!   (arguments that are compact JSON with sorted keys); else it stays a
//!   `gpt` message in afm's `<tool_call>NAME(ARGS)</tool_call>` text;
//! - steps after the last trained turn are dropped (the row must end on a
//!   trained message). A trajectory with no trained turn has no row.
//!
//! Lost: the per-token agent id (the marker is text to the trainer), the
//! weights themselves (a weight is trained or not; 0.5 trains fully), the
//! steps after the last trained turn, `meta`. A text (task or step) that
//! holds a marker (`<|agent:X|>`) is split there when read back.

use crate::ingest::sharegpt::function_call_text;
use afm_format::layout::AgentWeights;
use afm_format::{Step, StepKind, Trajectory};
use serde_json::{json, Map, Value};

/// afm's role marker of a step, as text: `<|agent:NAME|>` (the text of the
/// agent's role token) or `<|obs:NAME|>` (afm's `<|obs|>` with the tool's name).
pub fn marker(s: &Step) -> String {
    match s.kind {
        StepKind::Agent => format!("<|agent:{}|>", s.agent),
        StepKind::Observation => format!("<|obs:{}|>", s.agent),
    }
}

/// Steps as one message value: each step's marker and text.
fn marked(steps: &[Step]) -> String {
    let mut v = String::new();
    for s in steps {
        v.push_str(&marker(s));
        v.push_str(&s.text);
    }
    v
}

fn message(from: &str, value: String) -> Value {
    json!({"from": from, "value": value})
}

/// The row of one trajectory; `None` when no turn is trained (every agent
/// of the trajectory weighs 0, or it has no agent turn).
pub fn record(t: &Trajectory, weights: &AgentWeights) -> Option<Value> {
    let trained = |s: &Step| s.kind == StepKind::Agent && weights.weight(&s.agent) > 0.0;
    let last = t.steps.iter().rposition(trained)?;
    let steps = &t.steps[..=last];
    let first_trained = steps.iter().position(trained).unwrap_or(last);
    let mut task = t.task.clone();
    task.push_str(&marked(&steps[..first_trained]));
    let mut conv = vec![message("human", task)];
    let mut i = first_trained;
    while i < steps.len() {
        let side = trained(&steps[i]);
        let j = i + steps[i..].iter().take_while(|s| trained(s) == side).count();
        let group = &steps[i..j];
        let msg = if !side {
            let obs = group.iter().any(|s| s.kind == StepKind::Observation);
            message(if obs { "observation" } else { "human" }, marked(group))
        } else if let [one] = group {
            match function_call(&one.text) {
                Some(v) => json!({"from": "function_call", "value": v, "agent": one.agent}),
                None => message("gpt", marked(group)),
            }
        } else {
            message("gpt", marked(group))
        };
        conv.push(msg);
        i = j;
    }
    let mut o = Map::new();
    o.insert("conversations".into(), Value::Array(conv));
    super::insert_outcome(&mut o, t);
    Some(Value::Object(o))
}

/// A `function_call` value for `text` when it is only tool calls in afm's
/// text form and the importer reads the value back as `text` exactly.
fn function_call(text: &str) -> Option<String> {
    let body = text
        .strip_prefix("<tool_call>")?
        .strip_suffix(")</tool_call>")?;
    let mut calls = Vec::new();
    for piece in body.split(")</tool_call>\n<tool_call>") {
        let (name, args) = piece.split_once('(')?;
        let arguments: Value = serde_json::from_str(args).ok()?;
        calls.push(json!({"name": name, "arguments": arguments}));
    }
    let v = match <[Value; 1]>::try_from(calls) {
        Ok([one]) => one,
        Err(many) => Value::Array(many),
    };
    let s = v.to_string();
    let back = function_call_text(&Value::String(s.clone()), "value").ok()?;
    (back == text).then_some(s)
}

/// The `dataset_info.json` entry for an export file `file_name` (relative
/// to LLaMA-Factory's `dataset_dir`): the ShareGPT formatting and its
/// default tags, spelled out.
pub fn dataset_info(file_name: &str) -> Value {
    json!({
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "conversations"},
        "tags": {
            "role_tag": "from",
            "content_tag": "value",
            "user_tag": "human",
            "assistant_tag": "gpt",
            "observation_tag": "observation",
            "function_tag": "function_call",
            "system_tag": "system"
        }
    })
}
