//! `sharegpt`: LLaMA-Factory's ShareGPT rows (`{"conversations":[{"from","value"}], "system", "tools"}`).
//!
//! Roles (`from`, LLaMA-Factory's default tags): `human` (also `user`),
//! `gpt` (also `assistant`), `observation` (also `tool`), `function_call`,
//! `system`. The first `human` message is the task; `system` messages are
//! dropped. afm's role markers written as text, `<|agent:NAME|>` and
//! `<|obs:NAME|>` (or `<|obs|>`), split a message into steps of those
//! agents: this is how afm's own ShareGPT export (`afm_data::export::sharegpt`)
//! keeps who spoke when it merges turns. Text before the first marker is a
//! step of the message's own role: `gpt` -> an agent step of `assistant`
//! (or the message's `agent` key), a later `human` -> an observation of
//! `human`, `observation` -> an observation of `tool`. A `function_call`
//! value is JSON (`{"name","arguments"}` or a list of them) and becomes the
//! agent's tool calls in afm's one text form.

use super::fields::{
    answer_of, args_text, array_field, content_text, id_of, push_tool_call, record, type_name,
    wrong,
};
use super::{Invalid, RejectReason};
use afm_format::{Step, StepKind, Trajectory};
use serde_json::{Map, Value};

/// Agent of an unmarked `gpt`/`function_call` message without an `agent` key.
pub(crate) const DEFAULT_AGENT: &str = "assistant";
/// Agent of an unmarked `observation` message.
pub(crate) const DEFAULT_TOOL: &str = "tool";
/// Agent of an unmarked `human` message after the task.
pub(crate) const DEFAULT_HUMAN: &str = "human";

/// A record with `conversations` whose first message has `from`.
pub(super) fn detects(o: &Map<String, Value>) -> bool {
    match o.get("conversations") {
        Some(Value::Array(items)) => items
            .first()
            .and_then(Value::as_object)
            .is_none_or(|m| m.contains_key("from")),
        _ => false,
    }
}

/// The role a message's `from` names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Human,
    Gpt,
    Observation,
    FunctionCall,
    System,
}

fn role_of(from: &str) -> Option<Role> {
    Some(match from {
        "human" | "user" => Role::Human,
        "gpt" | "assistant" => Role::Gpt,
        "observation" | "tool" => Role::Observation,
        "function_call" | "function" => Role::FunctionCall,
        "system" => Role::System,
        _ => return None,
    })
}

pub(super) fn read(o: &Map<String, Value>, default_id: &str) -> Result<Trajectory, Invalid> {
    let items = array_field(o, "conversations", RejectReason::UnknownRecordShape)?;
    if items.is_empty() {
        return Err(Invalid::new(
            RejectReason::EmptyTrajectory,
            "field `conversations` is an empty array",
        ));
    }
    let mut task: Option<String> = None;
    let mut steps = Vec::new();
    for (i, m) in items.iter().enumerate() {
        let at = format!("conversations[{i}]");
        let mo = m.as_object().ok_or_else(|| wrong(&at, "an object", m))?;
        let from = match mo.get("from") {
            Some(Value::String(s)) => s.as_str(),
            Some(v) => return Err(wrong(&format!("{at}.from"), "a string", v)),
            None => {
                return Err(Invalid::new(
                    RejectReason::UnknownStepShape,
                    format!("{at}: missing `from`"),
                ))
            }
        };
        let role = role_of(from).ok_or_else(|| {
            Invalid::new(
                RejectReason::UnknownStepShape,
                format!(
                    "field `{at}.from`: unknown role {from:?} (human, gpt, observation, function_call, system)"
                ),
            )
        })?;
        if !mo.contains_key("value") {
            return Err(Invalid::new(
                RejectReason::UnknownStepShape,
                format!("{at}: missing `value`"),
            ));
        }
        let value_at = format!("{at}.value");
        if role == Role::System {
            content_text(mo.get("value"), &value_at)?;
            continue;
        }
        let agent_key = match mo.get("agent") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(v) => return Err(wrong(&format!("{at}.agent"), "a non-empty string", v)),
        };
        if role == Role::FunctionCall {
            if task.is_none() {
                return Err(first_not_human(&at, from));
            }
            let text = function_call_text(mo.get("value").unwrap_or(&Value::Null), &value_at)?;
            steps.push(Step {
                agent: agent_key.unwrap_or_else(|| DEFAULT_AGENT.into()),
                kind: StepKind::Agent,
                text,
            });
            continue;
        }
        let text = content_text(mo.get("value"), &value_at)?;
        let (prefix, marked) = split_markers(&text);
        if task.is_none() {
            if role != Role::Human {
                return Err(first_not_human(&at, from));
            }
            if prefix.trim().is_empty() {
                return Err(Invalid::new(
                    RejectReason::MissingTask,
                    format!("field `{value_at}`: the first `human` message (the task) is empty"),
                ));
            }
            task = Some(prefix.to_string());
        } else if !prefix.is_empty() || marked.is_empty() {
            // Unmarked text: a step of the message's own role.
            let (agent, kind) = match role {
                Role::Gpt => (
                    agent_key.clone().unwrap_or_else(|| DEFAULT_AGENT.into()),
                    StepKind::Agent,
                ),
                Role::Observation => (
                    agent_key.clone().unwrap_or_else(|| DEFAULT_TOOL.into()),
                    StepKind::Observation,
                ),
                _ => (
                    agent_key.clone().unwrap_or_else(|| DEFAULT_HUMAN.into()),
                    StepKind::Observation,
                ),
            };
            steps.push(Step {
                agent,
                kind,
                text: prefix.to_string(),
            });
        }
        steps.extend(marked.into_iter().map(|(kind, agent, text)| Step {
            agent: agent.to_string(),
            kind,
            text: text.to_string(),
        }));
    }
    let task = task.ok_or_else(|| {
        Invalid::new(
            RejectReason::MissingTask,
            "field `conversations`: only `system` messages, no `human` message (the task)",
        )
    })?;
    record(
        o,
        id_of(o, &["id"], default_id)?,
        task,
        steps,
        answer_of(o)?,
    )
}

fn first_not_human(at: &str, from: &str) -> Invalid {
    Invalid::new(
        RejectReason::MissingTask,
        format!("field `{at}.from`: the first message (the task) must be `human`, got {from:?}"),
    )
}

/// The text of a `function_call` value: JSON `{"name","arguments"}` or a
/// list of them (a string holding that JSON, as LLaMA-Factory writes it),
/// each call in afm's one tool-call text form.
pub(crate) fn function_call_text(v: &Value, at: &str) -> Result<String, Invalid> {
    let parsed;
    let calls = match v {
        Value::String(s) => {
            parsed = serde_json::from_str::<Value>(s).map_err(|e| {
                Invalid::new(
                    RejectReason::WrongType,
                    format!("field `{at}`: a function_call value must be JSON ({{\"name\",\"arguments\"}} or a list of them): {e}"),
                )
            })?;
            &parsed
        }
        other => other,
    };
    let one = std::slice::from_ref(calls);
    let list: &[Value] = match calls {
        Value::Array(xs) if !xs.is_empty() => xs,
        Value::Object(_) => one,
        other => {
            return Err(Invalid::new(
                RejectReason::WrongType,
                format!(
                    "field `{at}`: expected a call {{\"name\",\"arguments\"}} or a non-empty list of them, got {}",
                    type_name(other)
                ),
            ))
        }
    };
    let mut text = String::new();
    for (k, c) in list.iter().enumerate() {
        let name = c.get("name").and_then(Value::as_str).ok_or_else(|| {
            Invalid::new(
                RejectReason::WrongType,
                format!("field `{at}`: call {k} has no string `name`"),
            )
        })?;
        push_tool_call(&mut text, name, &args_text(c.get("arguments")));
    }
    Ok(text)
}

/// True for a name afm's role markers can hold (what the tokenizer accepts
/// as an agent name: non-empty, at most 128 bytes, no `<|`, `|>` or control
/// characters).
fn marker_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.contains("<|")
        && !name.chars().any(char::is_control)
}

/// The text before the first role marker, and each marked step (kind,
/// agent, text) after it. Markers: `<|agent:NAME|>` (agent step),
/// `<|obs:NAME|>` and `<|obs|>` (observation of NAME, or `tool`). Text that
/// looks like a marker but holds no valid name stays text.
pub(crate) fn split_markers(text: &str) -> (&str, Vec<(StepKind, &str, &str)>) {
    let mut marks: Vec<(usize, usize, StepKind, &str)> = Vec::new();
    let mut from = 0;
    while let Some(off) = text[from..].find("<|") {
        let start = from + off;
        let rest = &text[start + 2..];
        let found = if let Some(r) = rest.strip_prefix("obs|>") {
            Some((StepKind::Observation, DEFAULT_TOOL, text.len() - r.len()))
        } else {
            [("agent:", StepKind::Agent), ("obs:", StepKind::Observation)]
                .into_iter()
                .find_map(|(p, kind)| {
                    let r = rest.strip_prefix(p)?;
                    let end = r.find("|>")?;
                    let name = &r[..end];
                    marker_name_ok(name).then(|| (kind, name, text.len() - r.len() + end + 2))
                })
        };
        match found {
            Some((kind, name, after)) => {
                marks.push((start, after, kind, name));
                from = after;
            }
            None => from = start + 2,
        }
    }
    let prefix = &text[..marks.first().map_or(text.len(), |m| m.0)];
    let steps = marks
        .iter()
        .enumerate()
        .map(|(k, &(_, after, kind, name))| {
            let end = marks.get(k + 1).map_or(text.len(), |m| m.0);
            (kind, name, &text[after..end])
        })
        .collect();
    (prefix, steps)
}
