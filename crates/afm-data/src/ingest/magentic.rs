//! `magentic-one`: Magentic-One logs, where the speaker is in `role` with a
//! parenthetical: `{"question", "history": [{"role": "Orchestrator (-> WebSurfer)", "content"}]}`.
//!
//! Shapes read (checked against microsoft/autogen's original
//! `autogen-magentic-one` package, `agents/base_orchestrator.py`,
//! `agents/orchestrator.py`, `utils.py` `LogHandler`, and the Who&When
//! Hand-Crafted logs):
//!
//! - the list is `history` (Who&When) or `messages`;
//! - an item is `{"role", "content", "name"?}` (Who&When: `role` is the
//!   speaker, `name` absent or null) or a `LogHandler` event
//!   `{"source", "message", "type", "timestamp"}` (`type` one of
//!   `OrchestrationEvent`, `AgentEvent`, `WebSurferEvent`, `LLMCallEvent`),
//!   so a `log.jsonl` collected into one list (`jq -s '{history: .}'`) reads too.
//!
//! Rules:
//!
//! - the agent is the name before the parenthetical: `Orchestrator (thought)`,
//!   `Orchestrator (-> WebSurfer)`, `Orchestrator (termination condition)`,
//!   `Orchestrator (final answer)` are all agent `Orchestrator`;
//! - `(-> Target)` is a hand-off: the step stays the speaker's trained turn
//!   and `meta.handoffs` gets `{step, from, to}`; other parentheticals are
//!   dropped (the text is kept);
//! - `human`/`user`/`UserProxy` turns: the first, when it opens the log, is
//!   the task; every later one is an observation (never trained); without
//!   one the task is `question`/`task`; a `question` that differs from the
//!   task taken from the log is kept as `meta.question`;
//! - `ComputerTerminal` (the code executor) and `tool`/`function` roles are
//!   observations; `system` messages are dropped; OpenAI-style `tool_calls`
//!   on a message are appended to its text as `<tool_call>NAME(ARGS)</tool_call>`;
//! - `WebSurferEvent` with an `action`: a WebSurfer step holding the tool call
//!   (`<tool_call>ACTION(ARGS)</tool_call>`); without one (screenshots,
//!   resets, new tabs) it is dropped and counted in `meta.dropped`;
//!   `LLMCallEvent`s are summed into `meta.usage`; turns with empty text
//!   (e.g. `WebSurfer (deactivated)`) are dropped and counted;
//! - outcome: `is_correct`, Who&When's `is_corrected`, else `success`;
//!   `ground_truth` goes to `meta.ground_truth`; `answer`, else the last
//!   `(final answer)` turn, is the answer.

use super::fields::{
    answer_of, args_text, content_text, id_of, opt_bool, opt_f64, push_tool_call, push_tool_calls,
    required_task, with_handoffs, with_meta, wrong, Handoff, Usage,
};
use super::{Invalid, RejectReason};
use afm_format::{Step, StepKind, Trajectory};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// `type`s written by Magentic-One's `LogHandler`.
const LOG_TYPES: [&str; 4] = [
    "OrchestrationEvent",
    "AgentEvent",
    "WebSurferEvent",
    "LLMCallEvent",
];

/// Speakers that are the person giving the task (case-insensitive).
const HUMAN: [&str; 4] = ["human", "user", "userproxy", "user_proxy"];

/// Agents of a Magentic-One team whose turns are tool output.
const OBSERVATION_AGENTS: [&str; 1] = ["ComputerTerminal"];

fn is_human(name: &str) -> bool {
    HUMAN.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// `Name (suffix)` -> (`Name`, Some(`suffix`)); anything else -> (trimmed, None).
fn split_speaker(s: &str) -> (&str, Option<&str>) {
    let t = s.trim();
    if let (Some(open), true) = (t.find('('), t.ends_with(')')) {
        let name = t[..open].trim();
        if !name.is_empty() {
            return (name, Some(t[open + 1..t.len() - 1].trim()));
        }
    }
    (t, None)
}

/// The hand-off target of a `-> Target` suffix.
fn handoff_target(suffix: &str) -> Option<&str> {
    suffix
        .strip_prefix("->")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The list of turns and its field name.
fn list_of(o: &Map<String, Value>) -> Option<(&'static str, &Vec<Value>)> {
    ["history", "messages"]
        .into_iter()
        .find_map(|k| o.get(k).and_then(Value::as_array).map(|a| (k, a)))
}

fn str_field<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    m.get(k).and_then(Value::as_str)
}

/// True for a turn only Magentic-One writes: a `LogHandler` event, or a
/// speaker `Name (...)` or `human`.
fn is_magentic_item(m: &Map<String, Value>) -> bool {
    match str_field(m, "type") {
        Some(t) if LOG_TYPES.contains(&t) => return true,
        // Another framework's typed message (AutoGen AgentChat's `source` + `type`).
        Some(_) if m.contains_key("source") => return false,
        _ => {}
    }
    let Some(speaker) = str_field(m, "role").or_else(|| str_field(m, "source")) else {
        return false;
    };
    speaker == "human" || split_speaker(speaker).1.is_some()
}

/// A record whose `history` or `messages` holds a Magentic-One turn.
pub(super) fn detects(o: &Map<String, Value>) -> bool {
    list_of(o).is_some_and(|(_, items)| {
        items
            .iter()
            .any(|m| m.as_object().is_some_and(is_magentic_item))
    })
}

/// Who said a turn.
enum Speaker {
    Human(String),
    System,
    /// A tool's output (observation).
    Tool(String),
    /// An agent; `handoff` is the target of `(-> Target)`, `label` any other parenthetical.
    Agent {
        name: String,
        handoff: Option<String>,
        label: Option<String>,
    },
}

fn speaker_of(m: &Map<String, Value>, at: &str) -> Result<Speaker, Invalid> {
    let get = |k: &str| -> Result<Option<&str>, Invalid> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(wrong(&format!("{at}.{k}"), "a string", v)),
        }
    };
    let (role, name, source) = (get("role")?, get("name")?, get("source")?);
    let raw = match (role, name, source) {
        (Some("system"), _, _) => return Ok(Speaker::System),
        (Some("tool" | "function"), n, _) => {
            return Ok(Speaker::Tool(n.unwrap_or("tool").to_string()))
        }
        // A chat role with a name (AG2 style): the name is the speaker.
        (Some("assistant" | "user"), Some(n), _) => n,
        (Some(r), _, _) => r,
        (None, Some(n), _) => n,
        (None, None, Some(s)) => s,
        (None, None, None) => {
            return Err(Invalid::new(
                RejectReason::UnknownStepShape,
                format!("{at}: none of `role`, `name` or `source` names the speaker"),
            ))
        }
    };
    let (name, suffix) = split_speaker(raw);
    if is_human(name) {
        return Ok(Speaker::Human(name.to_string()));
    }
    if OBSERVATION_AGENTS.contains(&name) {
        return Ok(Speaker::Tool(name.to_string()));
    }
    let handoff = suffix.and_then(handoff_target).map(str::to_string);
    let label = suffix.filter(|_| handoff.is_none()).map(str::to_string);
    Ok(Speaker::Agent {
        name: name.to_string(),
        handoff,
        label,
    })
}

pub(super) fn read(o: &Map<String, Value>, default_id: &str) -> Result<Trajectory, Invalid> {
    let key = if o.contains_key("history") {
        "history"
    } else {
        "messages"
    };
    let list = o.get(key).ok_or_else(|| {
        Invalid::new(
            RejectReason::EmptyTrajectory,
            "field `history` (or `messages`) is missing",
        )
    })?;
    let items = list
        .as_array()
        .ok_or_else(|| wrong(key, "an array", list))?;
    if items.is_empty() {
        return Err(Invalid::new(
            RejectReason::EmptyTrajectory,
            format!("field `{key}` is an empty list"),
        ));
    }

    let mut task: Option<String> = None;
    let mut steps: Vec<Step> = Vec::with_capacity(items.len());
    let mut handoffs = Vec::new();
    let mut dropped: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut usage = Usage::default();
    let mut final_answer: Option<String> = None;
    for (i, m) in items.iter().enumerate() {
        let at = format!("{key}[{i}]");
        let mo = m.as_object().ok_or_else(|| wrong(&at, "an object", m))?;
        let kind = match mo.get("type") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => Some(t.as_str()),
            Some(v) => return Err(wrong(&format!("{at}.type"), "a string", v)),
        };
        match kind {
            None | Some("OrchestrationEvent" | "AgentEvent" | "WebSurferEvent") => {}
            Some("LLMCallEvent") => {
                usage.add(mo, &at)?;
                continue;
            }
            Some(t) => {
                return Err(Invalid::new(
                    RejectReason::UnknownStepShape,
                    format!(
                        "field `{at}.type`: unknown Magentic-One event type {t:?} (expected one of {LOG_TYPES:?}, or none)"
                    ),
                ))
            }
        }
        let speaker = speaker_of(mo, &at)?;
        // `content` (chat messages), else `message` (LogHandler events).
        let (field, value) = match (mo.get("content"), mo.get("message")) {
            (Some(c), _) => ("content", c),
            (None, Some(c)) => ("message", c),
            (None, None) => {
                return Err(Invalid::new(
                    RejectReason::UnknownStepShape,
                    format!("{at}: missing `content` (or `message`)"),
                ))
            }
        };
        let mut text = content_text(Some(value), &format!("{at}.{field}"))?;
        // OpenAI-style tool calls on a message (a Magentic-One role inside
        // an OpenAI message list): the speaker's calls, in the one text form.
        push_tool_calls(&mut text, mo, &at)?;
        if kind == Some("WebSurferEvent") {
            // A browser action is the WebSurfer's tool call; other WebSurfer
            // events (screenshots, resets, new tabs) are debugging notes.
            match mo.get("action") {
                Some(Value::String(a)) if !a.is_empty() => {
                    text.clear();
                    push_tool_call(&mut text, a, &args_text(mo.get("arguments")));
                }
                None | Some(Value::Null) | Some(Value::String(_)) => {
                    *dropped.entry("WebSurferEvent").or_default() += 1;
                    continue;
                }
                Some(v) => return Err(wrong(&format!("{at}.action"), "a string", v)),
            }
        }
        match speaker {
            Speaker::System => continue,
            Speaker::Human(name) => {
                if task.is_none() && steps.is_empty() {
                    if text.trim().is_empty() {
                        return Err(Invalid::new(
                            RejectReason::MissingTask,
                            format!("{at}: the first `{name}` turn (the task) is empty"),
                        ));
                    }
                    task = Some(text);
                } else if text.trim().is_empty() {
                    *dropped.entry("empty").or_default() += 1;
                } else {
                    steps.push(Step {
                        agent: name,
                        kind: StepKind::Observation,
                        text,
                    });
                }
            }
            Speaker::Tool(name) => {
                if text.trim().is_empty() {
                    *dropped.entry("empty").or_default() += 1;
                    continue;
                }
                steps.push(Step {
                    agent: name,
                    kind: StepKind::Observation,
                    text,
                });
            }
            Speaker::Agent {
                name,
                handoff,
                label,
            } => {
                if text.trim().is_empty() {
                    *dropped.entry("empty").or_default() += 1;
                    continue;
                }
                if let Some(to) = handoff {
                    handoffs.push(Handoff {
                        step: steps.len(),
                        from: name.clone(),
                        to,
                    });
                }
                if label.as_deref() == Some("final answer") {
                    final_answer = Some(text.trim().to_string());
                }
                steps.push(Step {
                    agent: name,
                    kind: StepKind::Agent,
                    text,
                });
            }
        }
    }

    let mut extra = Map::new();
    let field_task = match required_task(o, &["question", "task"]) {
        Ok(t) => Some(t),
        Err(e) if e.reason == RejectReason::MissingTask && task.is_some() => None,
        Err(e) => return Err(e),
    };
    let task = match (task, field_task) {
        (Some(t), Some(q)) => {
            if q.trim() != t.trim() {
                extra.insert("question".into(), Value::String(q));
            }
            t
        }
        (Some(t), None) => t,
        (None, Some(q)) => q,
        (None, None) => unreachable!("required_task errs when there is no task"),
    };
    match o.get("ground_truth") {
        None | Some(Value::Null) => {}
        Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => {
            extra.insert("ground_truth".into(), v.clone());
        }
        Some(v) => return Err(wrong("ground_truth", "a string or number", v)),
    }
    if let Some(u) = usage.to_value() {
        extra.insert("usage".into(), u);
    }
    if !dropped.is_empty() {
        let d = dropped
            .into_iter()
            .map(|(k, n)| (k.to_string(), Value::from(n)))
            .collect();
        extra.insert("dropped".into(), Value::Object(d));
    }
    let success = match opt_bool(o, "is_correct")? {
        Some(b) => Some(b),
        None => match opt_bool(o, "is_corrected")? {
            Some(b) => Some(b),
            None => opt_bool(o, "success")?,
        },
    };
    let meta = o.get("meta").filter(|m| !m.is_null()).cloned();
    Ok(Trajectory {
        id: id_of(o, &["question_ID", "id", "task_id"], default_id)?,
        task,
        steps,
        success,
        score: opt_f64(o, "score")?,
        answer: answer_of(o)?.or(final_answer),
        meta: with_meta(with_handoffs(meta, &handoffs), extra),
    })
}
