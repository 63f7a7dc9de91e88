//! `smolagents`: the memory of a Hugging Face smolagents agent, as its steps'
//! `dict()` forms (`agent.memory.get_full_steps()`, `get_succinct_steps()`,
//! or `RunResult.steps` from `agent.run(..., return_full_result=True)`).
//!
//! Record: `{"agent"|"name", "task", "steps": [STEP...], "output"|"answer",
//! "managed_agents", "id", "success", "score", "meta"}`, every field but
//! `steps` optional; a JSON document may also be the bare list of steps.
//!
//! A step's `dict()` has no type field (smolagents `memory.py`), so the
//! kind is read from its keys, in this order:
//! - `step_type`/`type` naming the class (`TaskStep`, `ActionStep`, ...),
//!   when a dump adds one;
//! - `plan` (and `facts` before 1.12): PlanningStep;
//! - `step_number`, `step` (before 1.19), `model_output`, `tool_calls`,
//!   `observations`, `code_action`, `action_output`, `is_final_answer`,
//!   `error`: ActionStep;
//! - `task`: TaskStep; `system_prompt`: SystemPromptStep; `output`
//!   (`final_answer` before 1.17): FinalAnswerStep;
//! - anything else is rejected (`unknown_step_shape`).
//!
//! Mapping (the agent is the record's `agent`/`name`, else `agent`):
//! - ActionStep: `model_output` plus every tool call (`push_tool_call`) =
//!   one agent step; `observations` and `error` (as `Error: MESSAGE`) = one
//!   observation, named after the step's tool (`tool` when it called none
//!   or several). A CodeAgent's code is already in its `model_output`, so
//!   the `python_interpreter` call smolagents records for it (arguments =
//!   `code_action`, or found verbatim in `model_output`) is not repeated.
//! - PlanningStep: an agent step of the same agent (smolagents replays the
//!   plan as that agent's own assistant message); `facts` is a step before it.
//! - TaskStep: the first is the task (unless a `task` field gives it; an
//!   identical first TaskStep is then dropped); later ones are observations
//!   of `user`. SystemPromptStep: dropped. FinalAnswerStep: the answer.
//! - Answer: `answer`, else `output` (RunResult), else the last
//!   FinalAnswerStep, else the `action_output` of the last ActionStep with
//!   `is_final_answer`.
//!
//! Managed agents are nested agents. A manager calls one as a tool (its
//! name) or, in a CodeAgent, as `NAME(...)` in its code. Its memory is read
//! from a RUN (`{"steps": [...], "task", "managed_agents"}` or a bare list
//! of steps) given in one of two places:
//! - `managed_agents` of a run: `{NAME: RUN}` (or `[RUN]` with `agent`/`name`),
//!   what a recursive dump of `agent.managed_agents` gives. smolagents resets
//!   a managed agent's memory on every call, so this is its last run: it is
//!   inserted at the last step of the manager that calls NAME (rejected when
//!   no step calls it).
//! - `managed_agents` of an ActionStep, same shapes: runs made during that step.
//!
//! A nested run's steps sit after the calling step's agent step and before
//! its observation (the report the manager got back): its own turns under
//! NAME, its tools' results as observations, and its task (what the manager
//! asked, as smolagents phrased it) as an observation under the manager's name.

use super::fields::{
    answer_of, args_text, array_field, content_text, field_path, id_of, opt_bool, opt_str,
    push_tool_call, record, wrong,
};
use super::{Invalid, RejectReason};
use afm_format::{Step, StepKind, Trajectory};
use serde_json::{Map, Value};

/// The agent of a record without `agent`/`name`.
const DEFAULT_AGENT: &str = "agent";
/// The observation agent of a later task.
const USER: &str = "user";
/// The observation agent of a step that called no tool, or several.
const TOOL: &str = "tool";

/// Keys only smolagents memory steps have: any one marks a list of steps.
const STEP_KEYS: &[&str] = &[
    "step_number",
    "model_output",
    "model_output_message",
    "model_input_messages",
    "code_action",
    "observations",
    "action_output",
    "is_final_answer",
    "task_images",
    "plan",
];

/// Keys of an ActionStep's `dict()`, current and older versions.
const ACTION_KEYS: &[&str] = &[
    "step_number",
    "step",
    "model_output",
    "tool_calls",
    "observations",
    "code_action",
    "action_output",
    "is_final_answer",
    "error",
];

/// Keys that make an object a record of some format, not a step.
const RECORD_KEYS: &[&str] = &["steps", "trajectory", "history", "messages"];

fn is_step_like(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| STEP_KEYS.iter().any(|k| o.contains_key(*k)))
}

/// A record whose `steps` hold smolagents memory steps.
pub(super) fn detects(o: &Map<String, Value>) -> bool {
    o.get("steps")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().any(is_step_like))
}

/// A bare JSON array of smolagents memory steps (one record).
pub(super) fn is_step_list(items: &[Value]) -> bool {
    items.iter().any(is_step_like)
        && !items.iter().any(|v| {
            v.as_object()
                .is_some_and(|o| RECORD_KEYS.iter().any(|k| o.contains_key(*k)))
        })
}

/// A bare list of steps: the record is the steps alone.
pub(super) fn read_steps(items: &[Value], default_id: &str) -> Result<Trajectory, Invalid> {
    let mut top = Top::default();
    let mut steps = Vec::new();
    walk(None, items, "", DEFAULT_AGENT, None, &mut steps, &mut top)?;
    finish(&Map::new(), steps, top, default_id)
}

pub(super) fn read(o: &Map<String, Value>, default_id: &str) -> Result<Trajectory, Invalid> {
    let items = array_field(o, "steps", RejectReason::EmptyTrajectory)?;
    let agent = agent_of(o, "")?.unwrap_or(DEFAULT_AGENT);
    let mut top = Top::default();
    let mut steps = Vec::new();
    walk(Some(o), items, "", agent, None, &mut steps, &mut top)?;
    finish(o, steps, top, default_id)
}

/// What the top-level run gives besides steps.
#[derive(Default)]
struct Top {
    task: Option<String>,
    /// The last FinalAnswerStep's `output` (`final_answer`).
    final_step: Option<String>,
    /// The `action_output` of the last ActionStep with `is_final_answer`.
    final_action: Option<String>,
}

fn finish(
    o: &Map<String, Value>,
    steps: Vec<Step>,
    top: Top,
    default_id: &str,
) -> Result<Trajectory, Invalid> {
    let task = top.task.ok_or_else(|| {
        Invalid::new(
            RejectReason::MissingTask,
            "missing task: no `task` field and no TaskStep (a step with `task`)",
        )
    })?;
    let output = match o.get("output") {
        None | Some(Value::Null) => None,
        v => Some(args_text(v)),
    };
    let answer = answer_of(o)?
        .or(output)
        .or(top.final_step)
        .or(top.final_action);
    record(o, id_of(o, &["id"], default_id)?, task, steps, answer)
}

/// The agent name of a run: `agent`, else `name` (an empty string is absent).
fn agent_of<'a>(o: &'a Map<String, Value>, at: &str) -> Result<Option<&'a str>, Invalid> {
    for f in ["agent", "name"] {
        if let Some(a) = opt_str(o, at, f)? {
            if !a.is_empty() {
                return Ok(Some(a));
            }
        }
    }
    Ok(None)
}

/// The kinds of memory step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Task,
    Action,
    Planning,
    Final,
    System,
}

fn kind_of(so: &Map<String, Value>, at: &str) -> Result<Kind, Invalid> {
    for tag in ["step_type", "type"] {
        match so.get(tag) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => {
                return match s.as_str() {
                    "TaskStep" => Ok(Kind::Task),
                    "ActionStep" => Ok(Kind::Action),
                    "PlanningStep" => Ok(Kind::Planning),
                    "FinalAnswerStep" => Ok(Kind::Final),
                    "SystemPromptStep" => Ok(Kind::System),
                    other => Err(Invalid::new(
                        RejectReason::UnknownStepShape,
                        format!(
                            "field `{at}.{tag}`: unknown step type {other:?} (TaskStep, ActionStep, PlanningStep, FinalAnswerStep, SystemPromptStep)"
                        ),
                    )),
                };
            }
            Some(v) => return Err(wrong(&format!("{at}.{tag}"), "a string", v)),
        }
    }
    let has = |k: &str| so.contains_key(k);
    if has("plan") || has("facts") {
        Ok(Kind::Planning)
    } else if ACTION_KEYS.iter().any(|k| has(k)) {
        Ok(Kind::Action)
    } else if has("task") {
        Ok(Kind::Task)
    } else if has("system_prompt") {
        Ok(Kind::System)
    } else if has("output") || has("final_answer") {
        Ok(Kind::Final)
    } else {
        let keys: Vec<&str> = so.keys().take(8).map(String::as_str).collect();
        Err(Invalid::new(
            RejectReason::UnknownStepShape,
            format!("{at}: not a smolagents memory step (keys {keys:?})"),
        ))
    }
}

/// A managed agent's run to insert at a step.
struct Nested<'a> {
    name: String,
    /// The run's object (`None` for a bare list of steps).
    run: Option<&'a Map<String, Value>>,
    items: &'a [Value],
    /// Field path of the run.
    at: String,
}

/// One ActionStep, read.
struct Action<'a> {
    /// Model output and tool calls; empty = no agent step.
    text: String,
    /// Observations and error; `None` or empty = no observation step.
    obs: Option<String>,
    obs_agent: String,
    /// Tool call names and argument texts, to find managed-agent calls.
    calls: Vec<(String, String)>,
    code: Option<String>,
    nested: Vec<Nested<'a>>,
    final_output: Option<String>,
}

impl Action<'_> {
    /// Where this step calls `name` (tool call index, byte offset in its
    /// code), for ordering; `None` when it does not call it.
    fn call_of(&self, name: &str) -> Option<(usize, usize)> {
        for (k, (n, args)) in self.calls.iter().enumerate() {
            if n == name {
                return Some((k, 0));
            }
            if let Some(off) = find_call(args, name) {
                return Some((k, off + 1));
            }
        }
        let code = self.code.as_deref()?;
        find_call(code, name).map(|off| (self.calls.len(), off))
    }
}

/// Byte offset of `name(` in `code` as a call of that name (not a suffix
/// of a longer identifier or a method).
fn find_call(code: &str, name: &str) -> Option<usize> {
    let pat = format!("{name}(");
    let mut from = 0;
    while let Some(i) = code[from..].find(&pat) {
        let at = from + i;
        let before = code[..at].chars().next_back();
        if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.') {
            return Some(at);
        }
        from = at + pat.len();
    }
    None
}

/// The runs in a `managed_agents` value: `{NAME: RUN}` or `[RUN with agent/name]`.
fn runs_of<'a>(v: &'a Value, at: &str) -> Result<Vec<Nested<'a>>, Invalid> {
    let mut out = Vec::new();
    match v {
        Value::Null => {}
        Value::Object(m) => {
            for (name, r) in m {
                let rat = format!("{at}.{name}");
                let (run, items) = run_parts(r, &rat)?;
                out.push(Nested {
                    name: name.clone(),
                    run,
                    items,
                    at: rat,
                });
            }
        }
        Value::Array(list) => {
            for (i, r) in list.iter().enumerate() {
                let rat = format!("{at}[{i}]");
                let ro = r.as_object().ok_or_else(|| wrong(&rat, "an object", r))?;
                let name = agent_of(ro, &rat)?.ok_or_else(|| {
                    Invalid::new(
                        RejectReason::UnknownStepShape,
                        format!("{rat}: a managed agent's run in a list needs `agent` or `name`"),
                    )
                })?;
                let (run, items) = run_parts(r, &rat)?;
                out.push(Nested {
                    name: name.to_string(),
                    run,
                    items,
                    at: rat,
                });
            }
        }
        v => return Err(wrong(at, "an object of NAME: RUN or a list of runs", v)),
    }
    Ok(out)
}

/// A run's object (`None` for a bare list of steps) and its steps.
type RunParts<'a> = (Option<&'a Map<String, Value>>, &'a [Value]);

/// A RUN: `{"steps": [...], ...}` or a bare list of steps.
fn run_parts<'a>(r: &'a Value, at: &str) -> Result<RunParts<'a>, Invalid> {
    match r {
        Value::Array(items) => Ok((None, items)),
        Value::Object(ro) => match ro.get("steps") {
            Some(Value::Array(items)) => Ok((Some(ro), items)),
            None | Some(Value::Null) => Err(Invalid::new(
                RejectReason::UnknownStepShape,
                format!("{at}: a managed agent's run needs `steps`"),
            )),
            Some(v) => Err(wrong(&format!("{at}.steps"), "an array", v)),
        },
        v => Err(wrong(at, "an object with `steps` or a list of steps", v)),
    }
}

fn read_action<'a>(so: &'a Map<String, Value>, at: &str) -> Result<Action<'a>, Invalid> {
    let mut text = content_text(so.get("model_output"), &format!("{at}.model_output"))?;
    let wrote = text.clone();
    let code = opt_str(so, at, "code_action")?.map(str::to_string);
    let mut calls = Vec::new();
    match so.get("tool_calls") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for (k, c) in list.iter().enumerate() {
                let cat = format!("{at}.tool_calls[{k}]");
                let co = c.as_object().ok_or_else(|| wrong(&cat, "an object", c))?;
                // `{"id","type","function":{"name","arguments"}}`, or flat `{"name","arguments","id"}`.
                let f = match co.get("function") {
                    None | Some(Value::Null) => co,
                    Some(Value::Object(f)) => f,
                    Some(v) => return Err(wrong(&format!("{cat}.function"), "an object", v)),
                };
                let name = match f.get("name") {
                    Some(Value::String(n)) if !n.is_empty() => n,
                    None | Some(Value::Null) | Some(Value::String(_)) => {
                        return Err(Invalid::new(
                            RejectReason::UnknownStepShape,
                            format!("{cat}: no tool name (`function.name`)"),
                        ))
                    }
                    Some(v) => return Err(wrong(&format!("{cat}.function.name"), "a string", v)),
                };
                let args = args_text(f.get("arguments"));
                // A CodeAgent's code is already in its model output (older
                // versions record no `code_action`: the code is found in the text).
                let repeat = name == "python_interpreter"
                    && !wrote.trim().is_empty()
                    && !args.is_empty()
                    && (code.as_deref() == Some(args.as_str()) || wrote.contains(args.as_str()));
                if !repeat {
                    push_tool_call(&mut text, name, &args);
                }
                calls.push((name.clone(), args));
            }
        }
        Some(v) => return Err(wrong(&format!("{at}.tool_calls"), "an array", v)),
    }
    let observations = opt_str(so, at, "observations")?;
    let error = match so.get("error") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        // AgentError.dict(): {"type", "message"}.
        Some(Value::Object(e)) => match e.get("message") {
            Some(Value::String(m)) => Some(m.as_str()),
            Some(v) => return Err(wrong(&format!("{at}.error.message"), "a string", v)),
            None => {
                return Err(Invalid::new(
                    RejectReason::UnknownStepShape,
                    format!("{at}.error: no `message`"),
                ))
            }
        },
        Some(v) => {
            return Err(wrong(
                &format!("{at}.error"),
                "an object with `message`, a string or null",
                v,
            ))
        }
    };
    let obs = match (observations, error) {
        (Some(o), Some(e)) if !o.is_empty() => Some(format!("{o}\nError: {e}")),
        (_, Some(e)) => Some(format!("Error: {e}")),
        (Some(o), None) => Some(o.to_string()),
        (None, None) => None,
    };
    let obs_agent = match calls.first() {
        Some((first, _)) if calls.iter().all(|(n, _)| n == first) => first.clone(),
        _ => TOOL.to_string(),
    };
    let is_final = opt_bool(so, "is_final_answer").map_err(|_| {
        wrong(
            &format!("{at}.is_final_answer"),
            "a boolean",
            &so["is_final_answer"],
        )
    })?;
    let final_output = if is_final == Some(true) {
        Some(args_text(so.get("action_output"))).filter(|s| !s.is_empty())
    } else {
        None
    };
    let mut nested = match so.get("managed_agents") {
        None => Vec::new(),
        Some(v) => runs_of(v, &format!("{at}.managed_agents"))?,
    };
    let action = Action {
        text,
        obs,
        obs_agent,
        calls,
        code,
        nested: Vec::new(),
        final_output,
    };
    if matches!(so.get("managed_agents"), Some(Value::Object(_))) {
        sort_by_call(&mut nested, &action);
    }
    Ok(Action { nested, ..action })
}

/// Order runs by where the step calls them (then by name).
fn sort_by_call(runs: &mut [Nested<'_>], a: &Action<'_>) {
    runs.sort_by_cached_key(|r| {
        (
            a.call_of(&r.name).unwrap_or((usize::MAX, 0)),
            r.name.clone(),
        )
    });
}

/// A step read, in memory order.
enum Read<'a> {
    Task(String),
    Agent(String),
    Action(Action<'a>),
    Final(String),
}

/// Read one run (its steps and its managed agents' runs) into `out`.
/// `manager` is the agent that called this run (`None` for the top run,
/// whose task and answer go to `top`).
fn walk(
    run: Option<&Map<String, Value>>,
    items: &[Value],
    at: &str,
    agent: &str,
    manager: Option<&str>,
    out: &mut Vec<Step>,
    top: &mut Top,
) -> Result<(), Invalid> {
    let steps_at = field_path(at, "steps");
    let mut read = Vec::with_capacity(items.len());
    for (i, s) in items.iter().enumerate() {
        let sat = format!("{steps_at}[{i}]");
        let so = s.as_object().ok_or_else(|| wrong(&sat, "an object", s))?;
        match kind_of(so, &sat)? {
            Kind::Task => {
                let t = match so.get("task") {
                    Some(Value::String(t)) => t.clone(),
                    Some(v) => return Err(wrong(&format!("{sat}.task"), "a string", v)),
                    None => {
                        return Err(Invalid::new(
                            RejectReason::UnknownStepShape,
                            format!("{sat}: a TaskStep needs `task`"),
                        ))
                    }
                };
                read.push(Read::Task(t));
            }
            Kind::Planning => {
                if let Some(f) = opt_str(so, &sat, "facts")? {
                    read.push(Read::Agent(f.to_string()));
                }
                if let Some(p) = opt_str(so, &sat, "plan")? {
                    read.push(Read::Agent(p.to_string()));
                }
            }
            Kind::Action => read.push(Read::Action(read_action(so, &sat)?)),
            Kind::Final => {
                let v = so.get("output").or_else(|| so.get("final_answer"));
                read.push(Read::Final(args_text(v)));
            }
            Kind::System => {}
        }
    }

    // The run's own `managed_agents`: each run at the last step that calls it.
    if let Some(v) = run.and_then(|r| r.get("managed_agents")) {
        let mut placed: Vec<(usize, Nested<'_>)> = Vec::new();
        for n in runs_of(v, &field_path(at, "managed_agents"))? {
            if n.items.is_empty() {
                continue;
            }
            let attached = read
                .iter()
                .any(|r| matches!(r, Read::Action(a) if a.nested.iter().any(|m| m.name == n.name)));
            if attached {
                return Err(Invalid::new(
                    RejectReason::UnknownStepShape,
                    format!(
                        "field `{}`: `{}` also has runs attached to steps; give one or the other",
                        n.at, n.name
                    ),
                ));
            }
            let idx = read
                .iter()
                .rposition(|r| matches!(r, Read::Action(a) if a.call_of(&n.name).is_some()))
                .ok_or_else(|| {
                    Invalid::new(
                        RejectReason::UnknownStepShape,
                        format!(
                            "field `{}`: no step of `{agent}` calls `{}` (a tool call of that name or `{}(` in its code)",
                            n.at, n.name, n.name
                        ),
                    )
                })?;
            placed.push((idx, n));
        }
        // At one step, in call order (then by name).
        placed.sort_by_cached_key(|(idx, n)| {
            let pos = match &read[*idx] {
                Read::Action(a) => a.call_of(&n.name),
                _ => None,
            };
            (*idx, pos, n.name.clone())
        });
        for (idx, n) in placed {
            if let Read::Action(a) = &mut read[idx] {
                a.nested.push(n);
            }
        }
    }

    // The task: the top run's is the trajectory's; a nested run's is an
    // observation under its manager's name.
    let obs_name = manager.unwrap_or(USER);
    let field_task = match run {
        Some(r) => opt_str(r, at, "task")?,
        None => None,
    };
    if let Some(t) = field_task {
        match manager {
            None if t.trim().is_empty() => {
                return Err(Invalid::new(
                    RejectReason::MissingTask,
                    "field `task` (the task) is empty",
                ))
            }
            None => top.task = Some(t.to_string()),
            Some(m) => push(out, m, StepKind::Observation, t.to_string()),
        }
    }
    let mut first_task = true;
    for r in read {
        match r {
            Read::Task(t) => {
                let first = std::mem::replace(&mut first_task, false);
                if first && field_task == Some(t.as_str()) {
                    continue;
                }
                if first && field_task.is_none() && manager.is_none() {
                    top.task = Some(t);
                    continue;
                }
                push(out, obs_name, StepKind::Observation, t);
            }
            Read::Agent(t) => push(out, agent, StepKind::Agent, t),
            Read::Action(a) => {
                push(out, agent, StepKind::Agent, a.text);
                for n in a.nested {
                    walk(n.run, n.items, &n.at, &n.name, Some(agent), out, top)?;
                }
                if let Some(o) = a.obs {
                    push(out, &a.obs_agent, StepKind::Observation, o);
                }
                if manager.is_none() && a.final_output.is_some() {
                    top.final_action = a.final_output;
                }
            }
            Read::Final(t) => {
                if manager.is_none() && !t.is_empty() {
                    top.final_step = Some(t);
                }
            }
        }
    }
    Ok(())
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
