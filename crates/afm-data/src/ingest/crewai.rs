//! `crewai`: a CrewAI run, from its `CrewOutput` (`crew.kickoff()`'s result,
//! `model_dump()`ed), from the events of its event bus, or from both in one
//! record.
//!
//! Record: `{"task", "raw", "tasks_output": [TASK_OUTPUT...], "events":
//! [EVENT...], "answer", "id", "success", "score", "meta"}`, with at least
//! one of `tasks_output` and `events`; a JSON document may also be the bare
//! list of events. A JSONL file is one record per line, so a file of one
//! event per line is not a run: wrap the events in one record.
//!
//! TASK_OUTPUT (crewAI `tasks/task_output.py`): `{"description", "name",
//! "expected_output", "raw", "agent", "json_dict", "messages", ...}`.
//! EVENT (crewAI `events/types/*.py`): `{"type", "agent_role", "task_name",
//! "task_id", ...}`; `type` is the event's value (`tool_usage_started`) or
//! its class name (`ToolUsageStartedEvent`, old `ToolUsageFinished`).
//!
//! The run is a list of tasks. Each task gives, in order:
//! - its instruction: `description`, plus `expected_output` after a blank
//!   line as `Expected output: ...`. The first task's is the trajectory's
//!   task (unless a `task` field gives it; an identical first instruction is
//!   then dropped); later ones are observations of `user` (they are the
//!   crew's instructions to the agent, not its output).
//! - its steps: from the task's `messages` (crewAI >= 1.5 records the agent's
//!   whole conversation there) when it has any, else from its events, then
//!   the task's `raw` as a turn of its `agent` unless that agent's final
//!   output already came from an event.
//!
//! `messages`: `system` dropped; the first `user` message (the instruction,
//! as crewAI phrased it) dropped, later ones observations of `user`;
//! `assistant` = a turn of the task's agent, `tool_calls` rendered with
//! `push_tool_call`; in ReAct mode crewAI appends `\nObservation: RESULT` to
//! the agent's own message, so the text from there on is an observation
//! named after the `Action:` line; `tool` = an observation named `name`.
//!
//! Events (in file order; other types are skipped):
//! - `tool_usage_started`: a turn of `agent_role` with the call
//!   (`tool_name`, `tool_args`); calls started back to back by one agent
//!   share a turn.
//! - `tool_usage_finished`: its `output` is an observation named
//!   `tool_name` (none when the event has no `output`, as before crewAI 0.114).
//! - `tool_usage_error`, `tool_selection_error`, `tool_validate_input_error`,
//!   `tool_execution_error`: `Error: ERROR` as that observation. A result
//!   without a started call gets its call first (from its own `tool_args`).
//! - `agent_execution_completed`: `output` as a turn of the agent (`agent_role`,
//!   else `agent.role`); `task_completed`: `output.raw` as a turn of
//!   `output.agent`, unless that agent's output came already.
//! - `task_started`: starts a task (its instruction from `task.description`
//!   and `task.expected_output`, else `task_name`) when it names none known.
//! - `crew_kickoff_completed`: its `output` (`.raw`) is the answer when the
//!   record has no `answer` or `raw`.
//!
//! An event belongs to the task its `task_id`/`task_name` (or `task.name`,
//! `task.description`) names; an event naming no known task stays in the
//! current one (work delegated to a coworker names the delegated task), and
//! the first event opens a task when there is none. An agent is `agent_role`,
//! else `agent.role`, else the task's agent.

use super::fields::{
    answer_of, args_text, content_text, id_of, opt_str, push_tool_call, record, wrong,
};
use super::{Invalid, RejectReason};
use afm_format::{Step, StepKind, Trajectory};
use serde_json::{Map, Value};

/// The observation agent of a later instruction.
const USER: &str = "user";
/// The observation agent of a result whose tool is not known.
const TOOL: &str = "tool";

/// crewAI event types (snake case, `_event` dropped) a list of events is
/// recognised by.
const EVENT_TYPES: &[&str] = &[
    "tool_usage_started",
    "tool_usage_finished",
    "tool_usage_error",
    "tool_selection_error",
    "tool_validate_input_error",
    "tool_execution_error",
    "tool_failure_detected",
    "task_started",
    "task_completed",
    "task_failed",
    "agent_execution_started",
    "agent_execution_completed",
    "agent_execution_error",
    "crew_kickoff_started",
    "crew_kickoff_completed",
    "crew_kickoff_failed",
    "llm_call_started",
    "llm_call_completed",
    "llm_call_failed",
];

/// Event types whose result is an error observation.
const ERROR_TYPES: &[&str] = &[
    "tool_usage_error",
    "tool_selection_error",
    "tool_validate_input_error",
    "tool_execution_error",
];

/// Keys that make an object a record of some format, not an event (LLM
/// events have `messages`).
const RECORD_KEYS: &[&str] = &["tasks_output", "events", "steps", "trajectory", "history"];

/// `ToolUsageStartedEvent` -> `tool_usage_started`; a snake-case type as is.
fn norm_type(t: &str) -> String {
    let mut s = String::with_capacity(t.len() + 4);
    let cs: Vec<char> = t.chars().collect();
    for (i, &c) in cs.iter().enumerate() {
        if c.is_uppercase() {
            let prev = i.checked_sub(1).map(|j| cs[j]);
            let next = cs.get(i + 1);
            let boundary = prev.is_some_and(|p| p.is_lowercase() || p.is_ascii_digit())
                || (prev.is_some_and(char::is_uppercase) && next.is_some_and(|n| n.is_lowercase()));
            if boundary {
                s.push('_');
            }
            s.extend(c.to_lowercase());
        } else {
            s.push(c);
        }
    }
    match s.strip_suffix("_event") {
        Some(x) => x.to_string(),
        None => s,
    }
}

fn is_event(v: &Value) -> bool {
    v.get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| EVENT_TYPES.contains(&norm_type(t).as_str()))
}

/// A record with `tasks_output`, or with `events` holding crewAI events;
/// also a single crewAI event (so that a JSONL file of events is rejected
/// as such, not read as another format).
pub(super) fn detects(o: &Map<String, Value>) -> bool {
    o.contains_key("tasks_output")
        || o.get("events")
            .and_then(Value::as_array)
            .is_some_and(|e| e.iter().any(is_event))
        || (!RECORD_KEYS.iter().any(|k| o.contains_key(*k))
            && o.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| EVENT_TYPES.contains(&norm_type(t).as_str())))
}

/// A bare JSON array of crewAI events (one record).
pub(super) fn is_event_list(items: &[Value]) -> bool {
    items.iter().any(is_event)
        && !items.iter().any(|v| {
            v.as_object()
                .is_some_and(|o| RECORD_KEYS.iter().any(|k| o.contains_key(*k)))
        })
}

/// A bare list of events: the record is the events alone.
pub(super) fn read_events(items: &[Value], default_id: &str) -> Result<Trajectory, Invalid> {
    read_run(&Map::new(), None, Some(items), default_id)
}

pub(super) fn read(o: &Map<String, Value>, default_id: &str) -> Result<Trajectory, Invalid> {
    let tasks = match o.get("tasks_output") {
        None | Some(Value::Null) => None,
        Some(Value::Array(t)) => Some(t.as_slice()),
        Some(v) => return Err(wrong("tasks_output", "an array", v)),
    };
    let events = match o.get("events") {
        None | Some(Value::Null) => None,
        Some(Value::Array(e)) => Some(e.as_slice()),
        Some(v) => return Err(wrong("events", "an array", v)),
    };
    if tasks.is_none() && events.is_none() {
        if let Some(t) = o.get("type").and_then(Value::as_str) {
            return Err(Invalid::new(
                RejectReason::UnknownRecordShape,
                format!(
                    "record is one crewAI event (`type` {t:?}), not a run: put a run's events in one record, `{{\"events\": [...]}}`, or a JSON file holding their list"
                ),
            ));
        }
        return Err(Invalid::new(
            RejectReason::UnknownRecordShape,
            "record has neither `tasks_output` nor `events`",
        ));
    }
    read_run(o, tasks, events, default_id)
}

/// One task of the run and what it gave.
#[derive(Default)]
struct Task<'a> {
    /// Task names, descriptions and `id:TASK_ID`s events may refer to it by.
    keys: Vec<String>,
    instruction: Option<String>,
    /// The instruction came from a description, not only a `task_name`.
    described: bool,
    /// The agent that executed it.
    agent: Option<String>,
    /// `raw` of its TaskOutput.
    raw: Option<String>,
    /// Its TaskOutput's `messages` and their field path.
    messages: Option<(&'a [Value], String)>,
    /// Steps from its events.
    steps: Vec<Step>,
    /// Agents whose final output came from an event.
    finals: Vec<String>,
    /// Started calls not answered yet: (agent, tool).
    pending: Vec<(String, String)>,
    /// A step holding only calls, which the next call of its agent joins.
    open_call: Option<usize>,
    /// The tool of the last error observation, which a second error event joins.
    last_error: Option<String>,
}

impl Task<'_> {
    fn push(&mut self, agent: &str, kind: StepKind, text: String) {
        self.steps.push(Step {
            agent: agent.to_string(),
            kind,
            text,
        });
        self.open_call = None;
        self.last_error = None;
    }

    fn call(&mut self, agent: &str, tool: &str, args: &str) {
        if let Some(i) = self.open_call {
            if self.steps[i].agent == agent {
                push_tool_call(&mut self.steps[i].text, tool, args);
                return;
            }
        }
        let mut text = String::new();
        push_tool_call(&mut text, tool, args);
        self.push(agent, StepKind::Agent, text);
        self.open_call = Some(self.steps.len() - 1);
    }

    /// The result of a call: pairs with a started call, else a second error
    /// joins the first, else the call is added before it.
    fn result(&mut self, agent: &str, tool: &str, args: &str, text: String, error: bool) {
        if let Some(p) = self
            .pending
            .iter()
            .position(|(a, t)| a == agent && t == tool)
        {
            self.pending.remove(p);
        } else if error && self.last_error.as_deref() == Some(tool) {
            let last = self
                .steps
                .last_mut()
                .expect("an error observation came before");
            last.text.push('\n');
            last.text.push_str(&text);
            return;
        } else {
            self.call(agent, tool, args);
        }
        if text.is_empty() {
            self.open_call = None;
            self.last_error = None;
        } else {
            self.push(tool, StepKind::Observation, text);
        }
        if error {
            self.last_error = Some(tool.to_string());
        }
    }
}

/// `description`, and `Expected output: ...` after a blank line.
fn instruction(description: &str, expected: Option<&str>) -> String {
    match expected.filter(|e| !e.trim().is_empty()) {
        Some(e) => format!("{description}\n\nExpected output: {e}"),
        None => description.to_string(),
    }
}

fn read_task_output<'a>(v: &'a Value, at: &str) -> Result<Task<'a>, Invalid> {
    let to = v.as_object().ok_or_else(|| wrong(at, "an object", v))?;
    let need = |f: &str| -> Result<&'a str, Invalid> {
        match to.get(f) {
            Some(Value::String(s)) => Ok(s),
            None | Some(Value::Null) => Err(Invalid::new(
                RejectReason::UnknownStepShape,
                format!("{at}: a task output needs `{f}`"),
            )),
            Some(v) => Err(wrong(&format!("{at}.{f}"), "a string", v)),
        }
    };
    let description = need("description")?;
    let agent = need("agent")?;
    let name = opt_str(to, at, "name")?;
    let expected = opt_str(to, at, "expected_output")?;
    let mut raw = opt_str(to, at, "raw")?.unwrap_or("").to_string();
    if raw.is_empty() {
        // A JSON or pydantic output without its raw text.
        for f in ["json_dict", "pydantic"] {
            if let Some(v) = to.get(f).filter(|v| !v.is_null()) {
                raw = args_text(Some(v));
                break;
            }
        }
    }
    let messages = match to.get("messages") {
        None | Some(Value::Null) => None,
        Some(Value::Array(m)) if m.is_empty() => None,
        Some(Value::Array(m)) => Some((m.as_slice(), format!("{at}.messages"))),
        Some(v) => return Err(wrong(&format!("{at}.messages"), "an array", v)),
    };
    let mut keys = vec![description.to_string()];
    keys.extend(name.filter(|n| !n.is_empty()).map(str::to_string));
    Ok(Task {
        keys,
        instruction: Some(instruction(description, expected)),
        described: true,
        agent: Some(agent.to_string()),
        raw: Some(raw),
        messages,
        ..Task::default()
    })
}

/// The task keys an event names: `id:TASK_ID`, `task_name`, and `name`,
/// `description`, `id` of its `task` (and of a `task_completed`'s `output`).
fn event_keys(eo: &Map<String, Value>, at: &str) -> Result<Vec<String>, Invalid> {
    let mut keys = Vec::new();
    if let Some(id) = opt_str(eo, at, "task_id")? {
        keys.push(format!("id:{id}"));
    }
    if let Some(n) = opt_str(eo, at, "task_name")? {
        keys.push(n.to_string());
    }
    for f in ["task", "output"] {
        if let Some(Value::Object(t)) = eo.get(f) {
            if f == "output" && !t.contains_key("description") {
                continue;
            }
            let tat = format!("{at}.{f}");
            if let Some(id) = t.get("id").and_then(Value::as_str) {
                keys.push(format!("id:{id}"));
            }
            for k in ["name", "description"] {
                if let Some(s) = opt_str(t, &tat, k)? {
                    keys.push(s.to_string());
                }
            }
        }
    }
    keys.retain(|k| !k.is_empty() && k != "id:");
    Ok(keys)
}

/// The agent of an event: `agent_role`, else `agent.role`.
fn event_agent(eo: &Map<String, Value>, at: &str) -> Result<Option<String>, Invalid> {
    if let Some(r) = opt_str(eo, at, "agent_role")?.filter(|r| !r.is_empty()) {
        return Ok(Some(r.to_string()));
    }
    if let Some(Value::Object(a)) = eo.get("agent") {
        if let Some(r) = opt_str(a, &format!("{at}.agent"), "role")?.filter(|r| !r.is_empty()) {
            return Ok(Some(r.to_string()));
        }
    }
    Ok(None)
}

fn read_run(
    o: &Map<String, Value>,
    tasks_output: Option<&[Value]>,
    events: Option<&[Value]>,
    default_id: &str,
) -> Result<Trajectory, Invalid> {
    let mut tasks: Vec<Task<'_>> = Vec::new();
    for (i, t) in tasks_output.unwrap_or_default().iter().enumerate() {
        tasks.push(read_task_output(t, &format!("tasks_output[{i}]"))?);
    }
    let from_outputs = tasks.len();
    let mut kickoff_answer = None;
    let mut cur: Option<usize> = (!tasks.is_empty()).then_some(0);
    for (i, ev) in events.unwrap_or_default().iter().enumerate() {
        let at = format!("events[{i}]");
        let eo = ev.as_object().ok_or_else(|| wrong(&at, "an object", ev))?;
        let ty = match eo.get("type") {
            Some(Value::String(t)) => norm_type(t),
            None | Some(Value::Null) => {
                return Err(Invalid::new(
                    RejectReason::UnknownStepShape,
                    format!("{at}: an event needs `type`"),
                ))
            }
            Some(v) => return Err(wrong(&format!("{at}.type"), "a string", v)),
        };
        let tool_event = ty == "tool_usage_started"
            || ty == "tool_usage_finished"
            || ERROR_TYPES.contains(&ty.as_str());
        let handled = tool_event
            || matches!(
                ty.as_str(),
                "task_started"
                    | "task_completed"
                    | "agent_execution_started"
                    | "agent_execution_completed"
            );
        if ty == "crew_kickoff_completed" {
            kickoff_answer = match eo.get("output") {
                Some(Value::Object(out)) => match out.get("raw") {
                    Some(Value::String(r)) => Some(r.clone()),
                    v => Some(args_text(v)),
                },
                v => Some(args_text(v)),
            }
            .filter(|a| !a.is_empty());
            continue;
        }
        if !handled {
            continue;
        }

        // The task this event belongs to.
        let keys = event_keys(eo, &at)?;
        let named = tasks
            .iter()
            .position(|t| t.keys.iter().any(|k| keys.contains(k)));
        let named = match (cur, named) {
            (Some(c), Some(_)) if tasks[c].keys.iter().any(|k| keys.contains(k)) => Some(c),
            (_, n) => n,
        };
        let (t, opened) = match named {
            Some(n) => (n, false),
            // A crew task the events start (when `tasks_output` does not list the tasks).
            None if cur.is_none()
                || (ty == "task_started" && !keys.is_empty() && from_outputs == 0) =>
            {
                tasks.push(Task::default());
                (tasks.len() - 1, true)
            }
            None => (cur.expect("checked above"), false),
        };
        cur = Some(t);
        let task = &mut tasks[t];
        // An event naming another task (delegated work) adds nothing to this
        // one's identity; a task known by no name yet takes the first given.
        let own = named.is_some() || opened || task.keys.is_empty();
        if own {
            for k in keys {
                if !task.keys.contains(&k) {
                    task.keys.push(k);
                }
            }
        }
        // An instruction for a task the events opened.
        if own && t >= from_outputs && !task.described {
            if let Some(Value::Object(to)) = eo.get("task") {
                let tat = format!("{at}.task");
                if let Some(d) = opt_str(to, &tat, "description")?.filter(|d| !d.is_empty()) {
                    let e = opt_str(to, &tat, "expected_output")?;
                    task.instruction = Some(instruction(d, e));
                    task.described = true;
                }
            }
            if task.instruction.is_none() {
                task.instruction = opt_str(eo, &at, "task_name")?
                    .filter(|n| !n.is_empty())
                    .map(str::to_string);
            }
        }

        let agent = event_agent(eo, &at)?;
        match ty.as_str() {
            "task_started" => {}
            "agent_execution_started" => {
                if task.agent.is_none() {
                    task.agent = agent;
                }
            }
            "agent_execution_completed" => {
                let agent = agent.or_else(|| task.agent.clone()).ok_or_else(|| {
                    Invalid::new(
                        RejectReason::UnknownStepShape,
                        format!("{at}: no `agent_role` or `agent.role`"),
                    )
                })?;
                let text = args_text(eo.get("output"));
                if !text.is_empty() {
                    task.push(&agent, StepKind::Agent, text);
                    task.finals.push(agent);
                }
            }
            "task_completed" => {
                let out = match eo.get("output") {
                    Some(Value::Object(out)) => out,
                    Some(v) => return Err(wrong(&format!("{at}.output"), "an object", v)),
                    None => {
                        return Err(Invalid::new(
                            RejectReason::UnknownStepShape,
                            format!("{at}: a task_completed event needs `output`"),
                        ))
                    }
                };
                let oat = format!("{at}.output");
                let who = opt_str(out, &oat, "agent")?
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .or(agent)
                    .or_else(|| task.agent.clone())
                    .ok_or_else(|| {
                        Invalid::new(RejectReason::UnknownStepShape, format!("{oat}: no `agent`"))
                    })?;
                let raw = opt_str(out, &oat, "raw")?.unwrap_or("").to_string();
                if !raw.is_empty() && !task.finals.contains(&who) {
                    task.push(&who, StepKind::Agent, raw);
                    task.finals.push(who);
                }
            }
            _ => {
                // A tool event.
                let agent = agent.or_else(|| task.agent.clone()).ok_or_else(|| {
                    Invalid::new(
                        RejectReason::UnknownStepShape,
                        format!(
                            "{at}: no `agent_role` or `agent.role`, and no agent known for its task"
                        ),
                    )
                })?;
                let tool = match eo.get("tool_name") {
                    Some(Value::String(n)) if !n.is_empty() => n.as_str(),
                    Some(Value::String(_)) | None | Some(Value::Null) => {
                        return Err(Invalid::new(
                            RejectReason::UnknownStepShape,
                            format!("{at}: a tool event needs `tool_name`"),
                        ))
                    }
                    Some(v) => return Err(wrong(&format!("{at}.tool_name"), "a string", v)),
                };
                let args = args_text(eo.get("tool_args"));
                if ty == "tool_usage_started" {
                    task.call(&agent, tool, &args);
                    task.pending.push((agent, tool.to_string()));
                } else if ty == "tool_usage_finished" {
                    let text = args_text(eo.get("output"));
                    task.result(&agent, tool, &args, text, false);
                } else {
                    let text = format!("Error: {}", args_text(eo.get("error")));
                    task.result(&agent, tool, &args, text, true);
                }
            }
        }
    }

    // The trajectory: each task's instruction, then its steps.
    let field_task = opt_str(o, "", "task")?;
    if field_task.is_some_and(|t| t.trim().is_empty()) {
        return Err(Invalid::new(
            RejectReason::MissingTask,
            "field `task` (the task) is empty",
        ));
    }
    let mut task_text = field_task.map(str::to_string);
    let mut first = true;
    let mut steps = Vec::new();
    for t in tasks {
        if let Some(ins) = t.instruction {
            let was_first = std::mem::replace(&mut first, false);
            if was_first && task_text.is_none() {
                task_text = Some(ins);
            } else if !(was_first && field_task == Some(ins.as_str())) {
                push(&mut steps, USER, StepKind::Observation, ins);
            }
        }
        let mut agent_spoke = false;
        if let (Some((msgs, mat)), Some(agent)) = (t.messages, t.agent.as_deref()) {
            agent_spoke = read_messages(msgs, &mat, agent, &mut steps)?;
        } else {
            steps.extend(t.steps);
        }
        if let (Some(agent), Some(raw)) = (t.agent.as_deref(), t.raw) {
            let said = agent_spoke || t.finals.iter().any(|f| f == agent);
            if !said {
                push(&mut steps, agent, StepKind::Agent, raw);
            }
        }
    }
    let task = task_text.ok_or_else(|| {
        Invalid::new(
            RejectReason::MissingTask,
            "missing task: no `task` field, no `tasks_output[0].description` and no task named by the events",
        )
    })?;
    let answer = match answer_of(o)? {
        Some(a) => Some(a),
        None => opt_str(o, "", "raw")?
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .or(kickoff_answer),
    };
    record(o, id_of(o, &["id"], default_id)?, task, steps, answer)
}

/// A task's `messages` as steps of `agent`; true when the agent said anything.
fn read_messages(
    msgs: &[Value],
    at: &str,
    agent: &str,
    steps: &mut Vec<Step>,
) -> Result<bool, Invalid> {
    let mut first_user = true;
    let mut spoke = false;
    for (k, m) in msgs.iter().enumerate() {
        let mat = format!("{at}[{k}]");
        let mo = m.as_object().ok_or_else(|| wrong(&mat, "an object", m))?;
        let role = match mo.get("role") {
            Some(Value::String(r)) => r.as_str(),
            None | Some(Value::Null) => {
                return Err(Invalid::new(
                    RejectReason::UnknownStepShape,
                    format!("{mat}: a message needs `role`"),
                ))
            }
            Some(v) => return Err(wrong(&format!("{mat}.role"), "a string", v)),
        };
        let mut text = content_text(mo.get("content"), &format!("{mat}.content"))?;
        match role {
            "system" => {}
            "user" => {
                if !std::mem::replace(&mut first_user, false) {
                    push(steps, USER, StepKind::Observation, text);
                }
            }
            "tool" => {
                let name = opt_str(mo, &mat, "name")?.filter(|n| !n.is_empty());
                push(steps, name.unwrap_or(TOOL), StepKind::Observation, text);
            }
            "assistant" => {
                let mut observed = None;
                match mo.get("tool_calls") {
                    None | Some(Value::Null) => {
                        // ReAct: crewAI appends the tool's result to the agent's message.
                        if let Some(p) = text.find("\nObservation:") {
                            let obs = text[p + "\nObservation:".len()..].to_string();
                            text.truncate(p);
                            let obs = obs.strip_prefix(' ').map(str::to_string).unwrap_or(obs);
                            observed = Some((react_action(&text), obs));
                        }
                    }
                    Some(Value::Array(calls)) => {
                        for (c, call) in calls.iter().enumerate() {
                            let cat = format!("{mat}.tool_calls[{c}]");
                            let co = call
                                .as_object()
                                .ok_or_else(|| wrong(&cat, "an object", call))?;
                            let f = match co.get("function") {
                                None | Some(Value::Null) => co,
                                Some(Value::Object(f)) => f,
                                Some(v) => {
                                    return Err(wrong(&format!("{cat}.function"), "an object", v))
                                }
                            };
                            let name = match f.get("name") {
                                Some(Value::String(n)) if !n.is_empty() => n,
                                Some(Value::String(_)) | None | Some(Value::Null) => {
                                    return Err(Invalid::new(
                                        RejectReason::UnknownStepShape,
                                        format!("{cat}: no tool name (`function.name`)"),
                                    ))
                                }
                                Some(v) => {
                                    return Err(wrong(
                                        &format!("{cat}.function.name"),
                                        "a string",
                                        v,
                                    ))
                                }
                            };
                            push_tool_call(&mut text, name, &args_text(f.get("arguments")));
                        }
                    }
                    Some(v) => return Err(wrong(&format!("{mat}.tool_calls"), "an array", v)),
                }
                spoke |= !text.is_empty();
                push(steps, agent, StepKind::Agent, text);
                if let Some((tool, obs)) = observed {
                    push(steps, &tool, StepKind::Observation, obs);
                }
            }
            other => {
                return Err(Invalid::new(
                    RejectReason::UnknownStepShape,
                    format!(
                        "field `{mat}.role`: unknown role {other:?} (system, user, assistant, tool)"
                    ),
                ))
            }
        }
    }
    Ok(spoke)
}

/// The tool of a ReAct message: its last `Action:` line, else `tool`.
fn react_action(text: &str) -> String {
    text.lines()
        .rev()
        .find_map(|l| l.trim_start().strip_prefix("Action:"))
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .unwrap_or(TOOL)
        .to_string()
}

/// Push a step unless its text is empty.
fn push(out: &mut Vec<Step>, agent: &str, kind: StepKind, text: String) {
    if !text.is_empty() {
        out.push(Step {
            agent: agent.to_string(),
            kind,
            text,
        });
    }
}
