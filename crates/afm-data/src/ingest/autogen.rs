//! `autogen-agentchat`: AutoGen 0.4+ AgentChat, a `TaskResult`
//! (`{"messages": [{"source", "type", "content", "models_usage", ...}], "stop_reason"}`)
//! or a saved team state (`team.save_state()`: `{"type": "TeamState",
//! "agent_states": {NAME: {..., "message_thread": [...]}}}`, the thread of
//! the group chat manager).
//!
//! Message types and fields checked against microsoft/autogen
//! `python/packages/autogen-agentchat/src/autogen_agentchat/messages.py`
//! (`MessageFactory`'s registered types), `base/_task.py` (`TaskResult`),
//! `state/_states.py` (`TeamState`, `BaseGroupChatManagerState.message_thread`),
//! `agents/_assistant_agent.py` (the order an agent emits them in) and
//! `autogen-core`'s `FunctionCall{id, arguments, name}`,
//! `FunctionExecutionResult{content, name, call_id, is_error}`,
//! `RequestUsage{prompt_tokens, completion_tokens}`, `CodeResult{exit_code, output}`
//! and `Image` (serialised as `{"data": BASE64}`).
//!
//! | `type` | becomes |
//! |---|---|
//! | `TextMessage`, `MultiModalMessage` (images as `<image>`), `StructuredMessage[..]` (content as JSON) | the `source`'s turn; from a human source: the task (the first message, before any step) or an observation |
//! | `ThoughtEvent` | the `source`'s turn; the next message of the same `source`, when it is the same model reply (`ToolCallRequestEvent`, `TextMessage`, `MultiModalMessage`, `StructuredMessage`, `CodeGenerationEvent`, `HandoffMessage`), is appended to that turn |
//! | `ToolCallRequestEvent` | the `source`'s turn, one `<tool_call>NAME(ARGS)</tool_call>` per call |
//! | `ToolCallExecutionEvent` | one observation per result (agent = the tool `name`, else the name of the call with that `call_id`, else `tool`); the text as the model saw it, errors unmarked; `is_error` results' steps listed in `meta.error_steps` |
//! | `HandoffMessage` | `meta.handoffs` gets `{step, from: source, to: target}`; its text is the `source`'s turn, except when it repeats a result of the tool call just before it (AssistantAgent's `transfer_to_X`), then the hand-off points at the turn holding that call and the text is dropped (counted) |
//! | `ToolCallSummaryMessage` | dropped and counted when it repeats results already read (its `results`' `call_id`s all seen, or it follows its source's `ToolCallExecutionEvent`); else an observation (agent `tool`) |
//! | `CodeGenerationEvent` / `CodeExecutionEvent` | the `source`'s turn / an observation of `result.output` (non-zero `exit_code`: listed in `meta.error_steps`) |
//! | `MemoryQueryEvent` | an observation (agent `memory`) |
//! | `StopMessage` | an observation (a termination reason, not model output) |
//! | `SelectSpeakerEvent` | hand-offs from `source` to each selected speaker when `source` spoke the step just before (MagenticOne's orchestrator); else dropped (counted) |
//! | `UserInputRequestedEvent` | marks its `source` (a UserProxyAgent) as human; dropped (counted) |
//! | `ModelClientStreamingChunkEvent`, `SelectorEvent` | dropped (counted): the full message follows / the speaker selector's own reply |
//! | anything else | the record is rejected (`unknown_step_shape`, naming `messages[i].type`) |
//!
//! Human sources: `user` and any source that emitted a `UserInputRequestedEvent`.
//! `meta` gets `handoffs`, `stop_reason`, `models_usage` (summed
//! `{calls, prompt_tokens, completion_tokens}`), `dropped` (`{type: count}`)
//! and `error_steps`. Without a human first message the task is the record's `task` field.

use super::fields::{
    answer_of, args_text, id_of, opt_bool, opt_f64, opt_str, push_tool_call, required_task,
    with_handoffs, with_meta, wrong, Handoff, Usage,
};
use super::{Invalid, RejectReason};
use afm_format::{Step, StepKind, Trajectory};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Magentic-One's `LogHandler` event types (read by `magentic-one`, not here).
const MAGENTIC_LOG_TYPES: [&str; 4] = [
    "OrchestrationEvent",
    "AgentEvent",
    "WebSurferEvent",
    "LLMCallEvent",
];

/// An AgentChat message: `source` and a string `type` (not a Magentic-One log event).
fn is_agentchat_item(m: &Map<String, Value>) -> bool {
    m.contains_key("source")
        && !m.contains_key("role")
        && m.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| !MAGENTIC_LOG_TYPES.contains(&t))
}

/// A `TaskResult` (`messages` of AgentChat messages) or a `TeamState`.
pub(super) fn detects(o: &Map<String, Value>) -> bool {
    if let Some(Value::Object(states)) = o.get("agent_states") {
        return o.get("type").and_then(Value::as_str) == Some("TeamState")
            || states
                .values()
                .any(|s| s.get("message_thread").is_some_and(Value::is_array));
    }
    match o.get("messages") {
        Some(Value::Array(items)) => items
            .iter()
            .any(|m| m.as_object().is_some_and(is_agentchat_item)),
        _ => false,
    }
}

/// The message list and its path: `messages`, or the manager's
/// `agent_states.NAME.message_thread`.
fn thread(o: &Map<String, Value>) -> Result<(String, &Vec<Value>), Invalid> {
    let Some(states) = o.get("agent_states") else {
        let list = o.get("messages").ok_or_else(|| {
            Invalid::new(
                RejectReason::UnknownRecordShape,
                "neither `messages` (a TaskResult) nor `agent_states` (a TeamState)",
            )
        })?;
        let items = list
            .as_array()
            .ok_or_else(|| wrong("messages", "an array", list))?;
        return Ok(("messages".into(), items));
    };
    let states = states
        .as_object()
        .ok_or_else(|| wrong("agent_states", "an object", states))?;
    let mut found = Vec::new();
    for (name, st) in states {
        if let Some(t) = st.as_object().and_then(|s| s.get("message_thread")) {
            let path = format!("agent_states.{name}.message_thread");
            let items = t.as_array().ok_or_else(|| wrong(&path, "an array", t))?;
            found.push((path, items));
        }
    }
    match found.len() {
        0 => Err(Invalid::new(
            RejectReason::EmptyTrajectory,
            "field `agent_states`: no agent state has a `message_thread` (the group chat manager's)",
        )),
        1 => Ok(found.remove(0)),
        _ => Err(Invalid::new(
            RejectReason::UnknownRecordShape,
            format!(
                "field `agent_states`: {} states have a `message_thread` ({}); a team has one group chat manager",
                found.len(),
                found
                    .iter()
                    .map(|(p, _)| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

fn req_str<'a>(m: &'a Map<String, Value>, at: &str, k: &str) -> Result<&'a str, Invalid> {
    match m.get(k) {
        Some(Value::String(s)) => Ok(s),
        None => Err(Invalid::new(
            RejectReason::UnknownStepShape,
            format!("{at}: missing `{k}`"),
        )),
        Some(v) => Err(wrong(&format!("{at}.{k}"), "a string", v)),
    }
}

fn req_array<'a>(m: &'a Map<String, Value>, at: &str, k: &str) -> Result<&'a Vec<Value>, Invalid> {
    match m.get(k) {
        Some(Value::Array(a)) => Ok(a),
        None => Err(Invalid::new(
            RejectReason::UnknownStepShape,
            format!("{at}: missing `{k}`"),
        )),
        Some(v) => Err(wrong(&format!("{at}.{k}"), "an array", v)),
    }
}

/// Reading state over one message list.
#[derive(Default)]
struct Reader {
    task: Option<String>,
    steps: Vec<Step>,
    handoffs: Vec<Handoff>,
    dropped: BTreeMap<String, u64>,
    usage: Usage,
    error_steps: Vec<usize>,
    humans: HashSet<String>,
    /// call id -> tool name, from the requests.
    call_names: HashMap<String, String>,
    /// call ids whose results were read.
    seen_calls: HashSet<String>,
    task_handoff_to: Option<String>,
}

/// What the message just before the current one left open.
#[derive(Default)]
struct Prev {
    /// A `ThoughtEvent`: (source, its step).
    thought: Option<(String, usize)>,
    /// A `ToolCallExecutionEvent`: (source, the results' texts).
    exec: Option<(String, Vec<String>)>,
}

impl Reader {
    fn drop_one(&mut self, what: &str) {
        *self.dropped.entry(what.to_string()).or_default() += 1;
    }

    fn observation(&mut self, agent: &str, text: String) -> usize {
        self.steps.push(Step {
            agent: agent.to_string(),
            kind: StepKind::Observation,
            text,
        });
        self.steps.len() - 1
    }

    /// A chat message's text from `source`: the task, an observation (human
    /// sources) or the source's turn (appended to the open thought of the
    /// same source). Returns its step, if any.
    fn said(
        &mut self,
        source: &str,
        text: String,
        thought: Option<&(String, usize)>,
        at: &str,
    ) -> Result<Option<usize>, Invalid> {
        if self.humans.contains(source) {
            if self.task.is_none() && self.steps.is_empty() {
                if text.trim().is_empty() {
                    return Err(Invalid::new(
                        RejectReason::MissingTask,
                        format!("{at}: the first `{source}` message (the task) is empty"),
                    ));
                }
                self.task = Some(text);
                return Ok(None);
            }
            if text.trim().is_empty() {
                self.drop_one("empty");
                return Ok(None);
            }
            return Ok(Some(self.observation(source, text)));
        }
        if let Some((src, k)) = thought {
            if src == source {
                if !text.is_empty() {
                    let t = &mut self.steps[*k].text;
                    t.push('\n');
                    t.push_str(&text);
                }
                return Ok(Some(*k));
            }
        }
        if text.trim().is_empty() {
            self.drop_one("empty");
            return Ok(None);
        }
        self.steps.push(Step {
            agent: source.to_string(),
            kind: StepKind::Agent,
            text,
        });
        Ok(Some(self.steps.len() - 1))
    }

    /// The last step, when it is `source`'s turn.
    fn last_turn_of(&self, source: &str) -> Option<usize> {
        self.steps
            .last()
            .filter(|s| s.kind == StepKind::Agent && s.agent == source)
            .map(|_| self.steps.len() - 1)
    }

    /// The latest turn of `source`.
    fn latest_turn_of(&self, source: &str) -> Option<usize> {
        self.steps
            .iter()
            .rposition(|s| s.kind == StepKind::Agent && s.agent == source)
    }

    fn message(&mut self, mo: &Map<String, Value>, at: &str, prev: Prev) -> Result<Prev, Invalid> {
        let ty = req_str(mo, at, "type")?;
        let source = req_str(mo, at, "source")?;
        match mo.get("models_usage") {
            None | Some(Value::Null) => {}
            Some(Value::Object(u)) => self.usage.add(u, &format!("{at}.models_usage"))?,
            Some(v) => return Err(wrong(&format!("{at}.models_usage"), "an object or null", v)),
        }
        let thought = prev.thought.as_ref();
        let mut next = Prev::default();
        match ty {
            // Events that carry nothing a step needs: counted, and they leave
            // what the previous message opened as it was.
            "ModelClientStreamingChunkEvent" | "SelectorEvent" => {
                self.drop_one(ty);
                return Ok(prev);
            }
            "UserInputRequestedEvent" => {
                self.humans.insert(source.to_string());
                self.drop_one(ty);
                return Ok(prev);
            }
            "TextMessage" => {
                let text = req_str(mo, at, "content")?.to_string();
                self.said(source, text, thought, at)?;
            }
            "MultiModalMessage" => {
                let parts = req_array(mo, at, "content")?;
                let mut out = Vec::with_capacity(parts.len());
                for (k, p) in parts.iter().enumerate() {
                    match p {
                        Value::String(s) => out.push(s.as_str()),
                        Value::Object(img) if img.contains_key("data") => out.push("<image>"),
                        v => {
                            return Err(wrong(
                                &format!("{at}.content[{k}]"),
                                "a string or an image `{\"data\": ...}`",
                                v,
                            ))
                        }
                    }
                }
                self.said(source, out.join("\n"), thought, at)?;
            }
            t if t.starts_with("StructuredMessage") => {
                let text = match mo.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v @ (Value::Object(_) | Value::Array(_))) => v.to_string(),
                    None => {
                        return Err(Invalid::new(
                            RejectReason::UnknownStepShape,
                            format!("{at}: missing `content`"),
                        ))
                    }
                    Some(v) => return Err(wrong(&format!("{at}.content"), "an object", v)),
                };
                self.said(source, text, thought, at)?;
            }
            "ThoughtEvent" => {
                let text = req_str(mo, at, "content")?.to_string();
                if let Some(k) = self.said(source, text, None, at)? {
                    if self.steps[k].kind == StepKind::Agent {
                        next.thought = Some((source.to_string(), k));
                    }
                }
            }
            "ToolCallRequestEvent" => {
                let calls = req_array(mo, at, "content")?;
                let mut text = String::new();
                for (k, c) in calls.iter().enumerate() {
                    let cat = format!("{at}.content[{k}]");
                    let co = c.as_object().ok_or_else(|| wrong(&cat, "an object", c))?;
                    let name = req_str(co, &cat, "name")?;
                    if let Some(id) = opt_str(co, &cat, "id")? {
                        self.call_names.insert(id.to_string(), name.to_string());
                    }
                    push_tool_call(&mut text, name, &args_text(co.get("arguments")));
                }
                if calls.is_empty() {
                    self.drop_one("empty");
                } else if self.humans.contains(source) {
                    self.observation(source, text);
                } else {
                    self.said(source, text, thought, at)?;
                }
            }
            "ToolCallExecutionEvent" => {
                let results = req_array(mo, at, "content")?;
                let mut texts = Vec::with_capacity(results.len());
                for (k, r) in results.iter().enumerate() {
                    let rat = format!("{at}.content[{k}]");
                    let ro = r.as_object().ok_or_else(|| wrong(&rat, "an object", r))?;
                    let content = req_str(ro, &rat, "content")?;
                    let call_id = opt_str(ro, &rat, "call_id")?;
                    let name = match opt_str(ro, &rat, "name")?.filter(|n| !n.is_empty()) {
                        Some(n) => n.to_string(),
                        None => call_id
                            .and_then(|id| self.call_names.get(id))
                            .cloned()
                            .unwrap_or_else(|| "tool".into()),
                    };
                    let is_error = opt_bool(ro, "is_error")
                        .map_err(|_| wrong(&format!("{rat}.is_error"), "a boolean", &ro["is_error"]))?;
                    if let Some(id) = call_id {
                        self.seen_calls.insert(id.to_string());
                    }
                    let step = self.observation(&name, content.to_string());
                    if is_error == Some(true) {
                        self.error_steps.push(step);
                    }
                    texts.push(content.to_string());
                }
                next.exec = Some((source.to_string(), texts));
            }
            "HandoffMessage" => {
                let text = req_str(mo, at, "content")?.to_string();
                let target = req_str(mo, at, "target")?.to_string();
                let repeats_result = prev
                    .exec
                    .as_ref()
                    .is_some_and(|(src, texts)| src == source && texts.contains(&text));
                let step = if self.humans.contains(source) && self.task.is_none() && self.steps.is_empty() {
                    self.said(source, text, None, at)?;
                    self.task_handoff_to = Some(target.clone());
                    None
                } else if let (true, Some(k)) = (repeats_result, self.latest_turn_of(source)) {
                    self.drop_one("HandoffMessage");
                    Some(k)
                } else {
                    self.said(source, text, thought, at)?
                };
                if let Some(step) = step {
                    self.handoffs.push(Handoff {
                        step,
                        from: source.to_string(),
                        to: target,
                    });
                }
            }
            "ToolCallSummaryMessage" => {
                let text = req_str(mo, at, "content")?.to_string();
                let after_exec = prev.exec.as_ref().is_some_and(|(src, _)| src == source);
                let mut all_seen = false;
                if let Some(rs) = mo.get("results").filter(|v| !v.is_null()) {
                    let rs = rs
                        .as_array()
                        .ok_or_else(|| wrong(&format!("{at}.results"), "an array", rs))?;
                    all_seen = !rs.is_empty()
                        && rs.iter().all(|r| {
                            r.get("call_id")
                                .and_then(Value::as_str)
                                .is_some_and(|id| self.seen_calls.contains(id))
                        });
                }
                if after_exec || all_seen {
                    self.drop_one(ty);
                } else {
                    self.observation("tool", text);
                }
            }
            "CodeGenerationEvent" => {
                let text = req_str(mo, at, "content")?.to_string();
                self.said(source, text, thought, at)?;
            }
            "CodeExecutionEvent" => {
                let rat = format!("{at}.result");
                let r = mo.get("result").ok_or_else(|| {
                    Invalid::new(
                        RejectReason::UnknownStepShape,
                        format!("{at}: missing `result`"),
                    )
                })?;
                let ro = r.as_object().ok_or_else(|| wrong(&rat, "an object", r))?;
                let output = req_str(ro, &rat, "output")?.to_string();
                let exit = match ro.get("exit_code") {
                    None | Some(Value::Null) => None,
                    Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64(),
                    Some(v) => return Err(wrong(&format!("{rat}.exit_code"), "an integer", v)),
                };
                let step = self.observation(source, output);
                if exit.is_some_and(|c| c != 0) {
                    self.error_steps.push(step);
                }
            }
            "MemoryQueryEvent" => {
                let items = req_array(mo, at, "content")?;
                let mut out = Vec::with_capacity(items.len());
                for (k, it) in items.iter().enumerate() {
                    let c = it.get("content").ok_or_else(|| {
                        Invalid::new(
                            RejectReason::UnknownStepShape,
                            format!("{at}.content[{k}]: missing `content`"),
                        )
                    })?;
                    out.push(match c {
                        Value::String(s) => s.clone(),
                        v => v.to_string(),
                    });
                }
                self.observation("memory", out.join("\n"));
            }
            "StopMessage" => {
                let text = req_str(mo, at, "content")?.to_string();
                if text.trim().is_empty() {
                    self.drop_one("empty");
                } else {
                    self.observation(source, text);
                }
            }
            "SelectSpeakerEvent" => {
                let targets: Vec<String> = match mo.get("content") {
                    Some(Value::String(s)) => vec![s.clone()],
                    Some(Value::Array(a)) => a
                        .iter()
                        .enumerate()
                        .map(|(k, v)| {
                            v.as_str().map(str::to_string).ok_or_else(|| {
                                wrong(&format!("{at}.content[{k}]"), "a string", v)
                            })
                        })
                        .collect::<Result<_, _>>()?,
                    None => {
                        return Err(Invalid::new(
                            RejectReason::UnknownStepShape,
                            format!("{at}: missing `content`"),
                        ))
                    }
                    Some(v) => {
                        return Err(wrong(
                            &format!("{at}.content"),
                            "a list of agent names",
                            v,
                        ))
                    }
                };
                match self.last_turn_of(source) {
                    Some(k) if !targets.is_empty() => {
                        for to in targets {
                            self.handoffs.push(Handoff {
                                step: k,
                                from: source.to_string(),
                                to,
                            });
                        }
                    }
                    _ => self.drop_one(ty),
                }
                // The orchestrator's turn stays the last step: keep no thought open.
            }
            other => {
                return Err(Invalid::new(
                    RejectReason::UnknownStepShape,
                    format!(
                        "field `{at}.type`: unknown AutoGen AgentChat message type {other:?} \
                         (known: TextMessage, MultiModalMessage, StructuredMessage[..], StopMessage, \
                         HandoffMessage, ToolCallSummaryMessage, ToolCallRequestEvent, \
                         ToolCallExecutionEvent, ThoughtEvent, CodeGenerationEvent, CodeExecutionEvent, \
                         MemoryQueryEvent, UserInputRequestedEvent, ModelClientStreamingChunkEvent, \
                         SelectSpeakerEvent, SelectorEvent)"
                    ),
                ))
            }
        }
        Ok(next)
    }
}

pub(super) fn read(o: &Map<String, Value>, default_id: &str) -> Result<Trajectory, Invalid> {
    let (path, items) = thread(o)?;
    if items.is_empty() {
        return Err(Invalid::new(
            RejectReason::EmptyTrajectory,
            format!("field `{path}` is an empty list"),
        ));
    }
    let mut r = Reader {
        humans: HashSet::from(["user".to_string()]),
        ..Default::default()
    };
    let mut prev = Prev::default();
    for (i, m) in items.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let mo = m.as_object().ok_or_else(|| wrong(&at, "an object", m))?;
        prev = r.message(mo, &at, prev)?;
    }

    let mut extra = Map::new();
    let field_task = match required_task(o, &["task"]) {
        Ok(t) => Some(t),
        Err(e) if e.reason == RejectReason::MissingTask && r.task.is_some() => None,
        Err(e) if e.reason == RejectReason::MissingTask => {
            return Err(Invalid::new(
                RejectReason::MissingTask,
                format!(
                    "missing task: `{path}` has no `user` message before the first agent message, and there is no `task` field"
                ),
            ))
        }
        Err(e) => return Err(e),
    };
    let task = match (r.task.take(), field_task) {
        (Some(t), Some(f)) => {
            if f.trim() != t.trim() {
                extra.insert("task".into(), Value::String(f));
            }
            t
        }
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => unreachable!("handled above"),
    };
    match o.get("stop_reason") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            extra.insert("stop_reason".into(), Value::String(s.clone()));
        }
        Some(v) => return Err(wrong("stop_reason", "a string or null", v)),
    }
    if let Some(to) = r.task_handoff_to {
        extra.insert("task_handoff_to".into(), Value::String(to));
    }
    if let Some(u) = r.usage.to_value() {
        extra.insert("models_usage".into(), u);
    }
    if !r.dropped.is_empty() {
        let d = r
            .dropped
            .into_iter()
            .map(|(k, n)| (k, Value::from(n)))
            .collect();
        extra.insert("dropped".into(), Value::Object(d));
    }
    if !r.error_steps.is_empty() {
        extra.insert("error_steps".into(), Value::from(r.error_steps));
    }
    let meta = match o.get("meta") {
        None | Some(Value::Null) => None,
        Some(m) => Some(m.clone()),
    };
    Ok(Trajectory {
        id: id_of(o, &["id"], default_id)?,
        task,
        steps: r.steps,
        success: opt_bool(o, "success")?,
        score: opt_f64(o, "score")?,
        answer: answer_of(o)?,
        meta: with_meta(with_handoffs(meta, &r.handoffs), extra),
    })
}
