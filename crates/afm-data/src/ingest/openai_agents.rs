//! `openai-agents`: OpenAI Agents SDK (openai-agents-python) run items and
//! exported traces.
//!
//! **Run items.** Each item is the form `RunState._serialize_item` writes
//! (`src/agents/run_state.py`): `{"type", "raw_item", "agent": {"name"}}`,
//! plus `source_agent`/`target_agent` on `handoff_output_item`, `tool_name`
//! on `tool_call_item` and `output` on `tool_call_output_item`; `agent` may
//! also be a plain string. A record is either what
//! `result.to_state().to_json()` writes (`generated_items`, the task in
//! `original_input`) or a dump of a `RunResult` (`{"input", "new_items",
//! "final_output"}`). `raw_item` is the Responses API item
//! (`model_dump(exclude_unset=True)`): a `message` with `output_text` and
//! `refusal` parts, a `function_call` (`name`, `arguments`, `call_id`), a
//! `function_call_output` (`call_id`, `output`), or a hosted tool call.
//!
//! **Traces.** `{"trace": TRACE, "spans": [SPAN..]}`, the body the SDK's
//! `BackendSpanExporter` posts (`{"data": [TRACE, SPAN..]}`), or a bare
//! array `[TRACE, SPAN..]` (a document). TRACE is `Trace.export()`
//! (`{"object": "trace", "id", "workflow_name", ...}`), SPAN is
//! `Span.export()` (`{"object": "trace.span", "id", "trace_id",
//! "parent_id", "started_at", "ended_at", "span_data", "error"}`, see
//! `src/agents/tracing/spans.py` and `span_data.py`). Spans are read depth
//! first from the roots, siblings by `started_at`. `agent` spans name who
//! speaks inside them; `generation` spans give the model's messages and the
//! task; `function` spans give tool calls (`input`) and results (`output`);
//! `handoff` spans give hand-offs. A hand-off's `step` in `meta.handoffs`
//! is the step holding its call (`handoff_call_item`, or the transfer call
//! in a generation's output), else the last step before it (0 when there is
//! none: in the default export the handing-off agent may have no step).
//! `response` spans (all the default export
//! keeps of a Responses model call: the response id and usage) carry no
//! text, so such a trace has the agents' tool calls only.

use super::fields::{
    answer_of, args_text, id_of, opt_bool, opt_f64, opt_str, optional_task, push_tool_call,
    text_blocks, tree_order, wrong, Handoff,
};
use super::{fields, Invalid, RejectReason};
use afm_format::{Step, StepKind, Trajectory};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// Run item types read as steps or skipped on purpose.
const SKIPPED_ITEMS: &[&str] = &[
    "reasoning_item",
    "mcp_list_tools_item",
    "mcp_approval_request_item",
    "mcp_approval_response_item",
    "tool_approval_item",
    "tool_search_call_item",
    "tool_search_output_item",
    "compaction_item",
];

fn is_export(v: &Value, object: &str) -> bool {
    v.get("object").and_then(Value::as_str) == Some(object)
}

/// A run-items record, a trace with its spans, or a lone trace/span export
/// (read only to be rejected with a clear reason).
pub(super) fn detects(o: &Map<String, Value>) -> bool {
    let first_is = |key: &str, f: &dyn Fn(&Value) -> bool| {
        o.get(key)
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .is_some_and(f)
    };
    o.contains_key("generated_items")
        || o.contains_key("new_items")
        || (o.contains_key("spans")
            && (o.contains_key("trace") || first_is("spans", &|s| s.get("span_data").is_some())))
        || first_is("data", &|s| {
            is_export(s, "trace") || is_export(s, "trace.span")
        })
        || o.get("object").and_then(Value::as_str) == Some("trace.span")
        || (o.get("object").and_then(Value::as_str) == Some("trace")
            && o.contains_key("workflow_name"))
}

/// A bare array of trace and span exports (one trace).
pub(super) fn is_export_list(items: &[Value]) -> bool {
    items
        .first()
        .is_some_and(|v| is_export(v, "trace") || is_export(v, "trace.span"))
}

/// Read a bare array of trace and span exports as one trace.
pub(super) fn read_export_list(items: &[Value], default_id: &str) -> Result<Trajectory, Invalid> {
    read_exports(items, "", &Map::new(), default_id)
}

pub(super) fn read(o: &Map<String, Value>, default_id: &str) -> Result<Trajectory, Invalid> {
    if o.contains_key("generated_items") {
        return read_run_items(o, "generated_items", "original_input", default_id);
    }
    if o.contains_key("new_items") {
        return read_run_items(o, "new_items", "input", default_id);
    }
    if o.contains_key("spans") {
        let spans = o.get("spans").unwrap_or(&Value::Null);
        let spans = spans
            .as_array()
            .ok_or_else(|| wrong("spans", "an array", spans))?;
        let trace = match o.get("trace") {
            None | Some(Value::Null) => None,
            Some(Value::Object(t)) => Some(t),
            Some(v) => return Err(wrong("trace", "an object", v)),
        };
        let spans = spans
            .iter()
            .enumerate()
            .map(|(i, v)| (v, format!("spans[{i}]")))
            .collect();
        return read_trace(trace, "trace", spans, o, default_id);
    }
    if let Some(data) = o.get("data") {
        let items = data
            .as_array()
            .ok_or_else(|| wrong("data", "an array", data))?;
        return read_exports(items, "data", o, default_id);
    }
    if o.get("object").and_then(Value::as_str) == Some("trace.span") {
        return Err(Invalid::new(
            RejectReason::UnknownRecordShape,
            "a lone span export (`object: \"trace.span\"`): one record must hold a whole trace, \
             `{\"trace\": {...}, \"spans\": [...]}` or the exporter's `{\"data\": [trace, spans...]}`",
        ));
    }
    Err(Invalid::new(
        RejectReason::EmptyTrajectory,
        "a trace export without spans (`object: \"trace\"`): put its spans in the record, \
         `{\"trace\": {...}, \"spans\": [...]}`",
    ))
}

/// `[TRACE, SPAN, ...]` (the exporter's `data`): split the trace from the spans.
fn read_exports(
    items: &[Value],
    at: &str,
    o: &Map<String, Value>,
    default_id: &str,
) -> Result<Trajectory, Invalid> {
    let path = |i: usize| {
        if at.is_empty() {
            format!("[{i}]")
        } else {
            format!("{at}[{i}]")
        }
    };
    let mut trace = None;
    let mut trace_at = String::new();
    let mut spans = Vec::new();
    for (i, v) in items.iter().enumerate() {
        let vo = v
            .as_object()
            .ok_or_else(|| wrong(&path(i), "an object", v))?;
        match vo.get("object").and_then(Value::as_str) {
            Some("trace") => {
                if trace.is_some() {
                    return Err(Invalid::new(
                        RejectReason::UnknownRecordShape,
                        format!(
                            "{}: a second trace in one record (one record is one trace)",
                            path(i)
                        ),
                    ));
                }
                trace = Some(vo);
                trace_at = path(i);
            }
            Some("trace.span") => spans.push((v, path(i))),
            _ => {
                return Err(Invalid::new(
                    RejectReason::UnknownStepShape,
                    format!(
                        "field `{}.object`: expected \"trace\" or \"trace.span\"",
                        path(i)
                    ),
                ))
            }
        }
    }
    read_trace(trace, &trace_at, spans, o, default_id)
}

/// One span, its fields checked.
struct Span<'a> {
    at: &'a str,
    id: Option<&'a str>,
    trace_id: Option<&'a str>,
    parent: Option<&'a str>,
    started: Option<&'a str>,
    data: &'a Map<String, Value>,
    kind: &'a str,
    error: Option<&'a Value>,
}

fn req_str<'a>(o: &'a Map<String, Value>, key: &str, at: &str) -> Result<&'a str, Invalid> {
    opt_str(o, at, key)?.ok_or_else(|| {
        Invalid::new(
            RejectReason::UnknownStepShape,
            format!("{at}: missing string `{key}`"),
        )
    })
}

fn span<'a>(v: &'a Value, at: &'a str) -> Result<Span<'a>, Invalid> {
    let o = v.as_object().ok_or_else(|| wrong(at, "an object", v))?;
    let data = match o.get("span_data") {
        Some(Value::Object(d)) => d,
        None | Some(Value::Null) => {
            return Err(Invalid::new(
                RejectReason::UnknownStepShape,
                format!("{at}: missing `span_data`"),
            ))
        }
        Some(v) => return Err(wrong(&format!("{at}.span_data"), "an object", v)),
    };
    Ok(Span {
        at,
        id: opt_str(o, at, "id")?,
        trace_id: opt_str(o, at, "trace_id")?,
        parent: opt_str(o, at, "parent_id")?,
        started: opt_str(o, at, "started_at")?,
        kind: req_str(data, "type", &format!("{at}.span_data"))?,
        data,
        error: o.get("error").filter(|e| !e.is_null()),
    })
}

/// Steps under construction, shared by run items and traces.
#[derive(Default)]
struct Steps {
    steps: Vec<Step>,
    handoffs: Vec<Handoff>,
}

impl Steps {
    /// The agent's text: a new agent step.
    fn text(&mut self, agent: &str, text: String) {
        self.steps.push(Step {
            agent: agent.to_string(),
            kind: StepKind::Agent,
            text,
        });
    }

    /// A tool call of `agent`: appended to its step when the last step is
    /// that agent's (text and calls of one model response), else a new
    /// step. Returns the step's index.
    fn call(&mut self, agent: &str, name: &str, args: &str) -> usize {
        match self.steps.last_mut() {
            Some(s) if s.kind == StepKind::Agent && s.agent == agent => {
                push_tool_call(&mut s.text, name, args)
            }
            _ => {
                let mut text = String::new();
                push_tool_call(&mut text, name, args);
                self.text(agent, text);
            }
        }
        self.steps.len() - 1
    }

    fn observation(&mut self, agent: &str, text: String) {
        self.steps.push(Step {
            agent: agent.to_string(),
            kind: StepKind::Observation,
            text,
        });
    }

    /// A hand-off at `step` (default: the last step so far).
    fn handoff(&mut self, step: Option<usize>, from: &str, to: &str) {
        self.handoffs.push(Handoff {
            step: step.unwrap_or(self.steps.len().saturating_sub(1)),
            from: from.to_string(),
            to: to.to_string(),
        });
    }
}

/// An agent reference: `{"name": "..."}` (how the SDK serialises it) or a string.
fn agent_ref(v: Option<&Value>, at: &str) -> Result<String, Invalid> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Object(a)) => Ok(req_str(a, "name", at)?.to_string()),
        None | Some(Value::Null) => Err(Invalid::new(
            RejectReason::UnknownStepShape,
            format!("{at}: missing (who spoke is unknown)"),
        )),
        Some(v) => Err(wrong(at, "an agent `{\"name\"}` or a string", v)),
    }
}

/// Text of a Responses `message`: its `output_text`/`input_text` parts, and
/// the text of a `refusal` part.
fn message_text(raw: &Map<String, Value>, at: &str) -> Result<String, Invalid> {
    let content = raw.get("content");
    let Some(Value::Array(parts)) = content else {
        return text_blocks(content, &format!("{at}.content"));
    };
    let mut out = String::new();
    for (k, p) in parts.iter().enumerate() {
        let pat = format!("{at}.content[{k}]");
        let po = p.as_object().ok_or_else(|| wrong(&pat, "an object", p))?;
        match req_str(po, "type", &pat)? {
            "refusal" => out.push_str(req_str(po, "refusal", &pat)?),
            _ => match po.get("text") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => out.push_str(s),
                Some(v) => return Err(wrong(&format!("{pat}.text"), "a string", v)),
            },
        }
    }
    Ok(out)
}

/// A tool call's name, arguments text and call id. `function_call` and
/// `custom_tool_call` have a `name` (and `arguments`/`input`); a hosted
/// tool call (web search, file search, computer, ...) is named by its
/// `type` and its arguments are the rest of the item as JSON.
fn call_of(
    raw: &Map<String, Value>,
    tool_name: Option<&str>,
    at: &str,
) -> Result<(String, String, Option<String>), Invalid> {
    let call_id = match opt_str(raw, at, "call_id")? {
        Some(c) => Some(c.to_string()),
        None => opt_str(raw, at, "id")?.map(str::to_string),
    };
    let name = match (opt_str(raw, at, "name")?, tool_name) {
        (Some(n), _) | (None, Some(n)) => Some(n),
        _ => None,
    };
    if let Some(name) = name {
        let args = raw.get("arguments").or_else(|| raw.get("input"));
        return Ok((name.to_string(), args_text(args), call_id));
    }
    let ty = req_str(raw, "type", at)?;
    let rest: Map<String, Value> = raw
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "id" | "type" | "status" | "call_id"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok((ty.to_string(), Value::Object(rest).to_string(), call_id))
}

/// A tool result: `raw_item.output` (a string, or a list of content parts),
/// else the item's `output` (the tool's return value).
fn output_text(
    item: &Map<String, Value>,
    raw: &Map<String, Value>,
    at: &str,
) -> Result<String, Invalid> {
    let v = match raw.get("output") {
        None | Some(Value::Null) => item.get("output"),
        some => some,
    };
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(_)) => text_blocks(v, &format!("{at}.raw_item.output")),
        Some(v) => Ok(v.to_string()),
    }
}

/// The task from the run's input: a string, or the first user message of a
/// list of Responses input items (the rest of such a list is history
/// without agent names, not read).
fn task_of_input(v: Option<&Value>, at: &str) -> Result<Option<String>, Invalid> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(items)) => {
            for (i, it) in items.iter().enumerate() {
                let iat = format!("{at}[{i}]");
                let io = it.as_object().ok_or_else(|| wrong(&iat, "an object", it))?;
                if opt_str(io, &iat, "role")? == Some("user") {
                    return text_blocks(io.get("content"), &format!("{iat}.content")).map(Some);
                }
            }
            Ok(None)
        }
        Some(v) => Err(wrong(at, "a string or a list of input items", v)),
    }
}

fn task_or_reject(task: Option<String>, why: &str) -> Result<String, Invalid> {
    match task {
        Some(t) if !t.trim().is_empty() => Ok(t),
        Some(_) => Err(Invalid::new(
            RejectReason::MissingTask,
            format!("the task ({why}) is empty"),
        )),
        None => Err(Invalid::new(
            RejectReason::MissingTask,
            format!("missing task: {why}"),
        )),
    }
}

fn finish(
    o: &Map<String, Value>,
    id: String,
    task: String,
    b: Steps,
    answer: Option<String>,
) -> Result<Trajectory, Invalid> {
    Ok(Trajectory {
        id,
        task,
        steps: b.steps,
        success: opt_bool(o, "success")?,
        score: opt_f64(o, "score")?,
        answer,
        meta: fields::with_handoffs(o.get("meta").filter(|m| !m.is_null()).cloned(), &b.handoffs),
    })
}

fn read_run_items(
    o: &Map<String, Value>,
    key: &str,
    input_key: &str,
    default_id: &str,
) -> Result<Trajectory, Invalid> {
    let list = &o[key];
    let items = list
        .as_array()
        .ok_or_else(|| wrong(key, "an array", list))?;
    let mut b = Steps::default();
    // call id -> (tool name, step index of the call)
    let mut calls: HashMap<String, (String, usize)> = HashMap::new();
    for (i, it) in items.iter().enumerate() {
        let at = format!("{key}[{i}]");
        let io = it.as_object().ok_or_else(|| wrong(&at, "an object", it))?;
        let ty = req_str(io, "type", &at)?;
        if SKIPPED_ITEMS.contains(&ty) {
            continue;
        }
        let raw_at = format!("{at}.raw_item");
        let raw = match io.get("raw_item") {
            Some(Value::Object(r)) => r,
            None | Some(Value::Null) => {
                return Err(Invalid::new(
                    RejectReason::UnknownStepShape,
                    format!("{at}: missing `raw_item`"),
                ))
            }
            Some(v) => return Err(wrong(&raw_at, "an object", v)),
        };
        match ty {
            "message_output_item" => {
                let agent = agent_ref(io.get("agent"), &format!("{at}.agent"))?;
                b.text(&agent, message_text(raw, &raw_at)?);
            }
            "tool_call_item" | "handoff_call_item" => {
                let agent = agent_ref(io.get("agent"), &format!("{at}.agent"))?;
                let (name, args, call_id) = call_of(raw, opt_str(io, &at, "tool_name")?, &raw_at)?;
                let step = b.call(&agent, &name, &args);
                if let Some(c) = call_id {
                    calls.insert(c, (name, step));
                }
            }
            "tool_call_output_item" | "handoff_output_item" => {
                let call = opt_str(raw, &raw_at, "call_id")?
                    .and_then(|c| calls.get(c))
                    .cloned();
                let name = call
                    .as_ref()
                    .map_or("tool", |(n, _)| n.as_str())
                    .to_string();
                let text = output_text(io, raw, &at)?;
                if ty == "handoff_output_item" {
                    let from = agent_ref(io.get("source_agent"), &format!("{at}.source_agent"))?;
                    let to = agent_ref(io.get("target_agent"), &format!("{at}.target_agent"))?;
                    b.handoff(call.map(|(_, s)| s), &from, &to);
                }
                b.observation(&name, text);
            }
            "input_item" => {
                // Input admitted while resuming a run: a later user turn.
                if opt_str(raw, &raw_at, "role")? == Some("user") {
                    b.observation(
                        "user",
                        text_blocks(raw.get("content"), &format!("{raw_at}.content"))?,
                    );
                }
            }
            other => {
                return Err(Invalid::new(
                    RejectReason::UnknownStepShape,
                    format!("field `{at}.type`: unknown run item type {other:?}"),
                ))
            }
        }
    }
    let task = match optional_task(o, &["task"])? {
        Some(t) => Some(t),
        None => task_of_input(o.get(input_key), input_key)?,
    };
    let task = task_or_reject(
        task,
        &format!("no `task` and no string or user message in `{input_key}`"),
    )?;
    let answer = match o.get("final_output") {
        None | Some(Value::Null) => answer_of(o)?,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => Some(v.to_string()),
    };
    finish(o, id_of(o, &["id"], default_id)?, task, b, answer)
}

/// Who speaks at each span: the nearest `agent` span (or the SDK's `turn`
/// custom span, whose data holds `agent_name`) at or above it.
fn speaker<'a>(s: &Span<'a>) -> Result<Option<&'a str>, Invalid> {
    match s.kind {
        "agent" => Ok(Some(req_str(
            s.data,
            "name",
            &format!("{}.span_data", s.at),
        )?)),
        "custom" => match s.data.get("data") {
            Some(Value::Object(d))
                if d.get("sdk_span_type").and_then(Value::as_str) == Some("turn") =>
            {
                opt_str(d, &format!("{}.span_data.data", s.at), "agent_name")
            }
            _ => Ok(None),
        },
        _ => Ok(None),
    }
}

/// One trace: `spans` are the span exports with their paths in the record.
fn read_trace(
    trace: Option<&Map<String, Value>>,
    trace_at: &str,
    spans: Vec<(&Value, String)>,
    o: &Map<String, Value>,
    default_id: &str,
) -> Result<Trajectory, Invalid> {
    let trace_id = match trace {
        Some(t) => opt_str(t, trace_at, "id")?,
        None => None,
    };
    let spans: Vec<Span> = spans
        .iter()
        .map(|(v, at)| span(v, at))
        .collect::<Result<_, _>>()?;
    // One record is one trace.
    let mut first_trace = trace_id;
    for s in &spans {
        if let (Some(a), Some(b)) = (first_trace, s.trace_id) {
            if a != b {
                return Err(Invalid::new(
                    RejectReason::UnknownRecordShape,
                    format!(
                        "field `{}.trace_id`: {b:?} is not this record's trace {a:?} (one record is one trace)",
                        s.at
                    ),
                ));
            }
        }
        first_trace = first_trace.or(s.trace_id);
    }
    let index: HashMap<&str, usize> = spans
        .iter()
        .enumerate()
        .rev()
        .filter_map(|(i, s)| s.id.map(|id| (id, i)))
        .collect();
    let parents: Vec<Option<usize>> = spans
        .iter()
        .map(|s| s.parent.and_then(|p| index.get(p).copied()))
        .collect();
    let keys: Vec<Option<&str>> = spans.iter().map(|s| s.started).collect();
    let order = tree_order(&parents, &keys).map_err(|i| {
        Invalid::new(
            RejectReason::UnknownRecordShape,
            format!(
                "field `{}.parent_id`: the spans' parents form a cycle",
                spans[i].at
            ),
        )
    })?;
    let mut who: Vec<Option<&str>> = vec![None; spans.len()];
    let mut task = optional_task(o, &["task"])?;
    if task.is_none() {
        if let Some(Value::String(s)) = o.get("input") {
            task = Some(s.clone());
        }
    }
    let mut b = Steps::default();
    // Tool calls a generation already wrote, per agent, by name: the
    // matching function span adds only its result.
    let mut written: Vec<(String, String)> = Vec::new();
    let mut responses = 0usize;
    for &i in &order {
        let s = &spans[i];
        who[i] = match speaker(s)? {
            Some(a) => Some(a),
            None => parents[i].and_then(|p| who[p]),
        };
        let data_at = format!("{}.span_data", s.at);
        let need_agent = || {
            who[i].ok_or_else(|| {
                Invalid::new(
                    RejectReason::UnknownStepShape,
                    format!(
                        "{}: a {} span outside any agent span (who spoke is unknown)",
                        s.at, s.kind
                    ),
                )
            })
        };
        match s.kind {
            "generation" => {
                let agent = need_agent()?;
                // Calls of this agent's earlier response that no function
                // span answered (hand-offs) are not waited for any more.
                written.retain(|(a, _)| a != agent);
                if task.is_none() {
                    task = first_user_message(s.data.get("input"), &format!("{data_at}.input"))?;
                }
                match s.data.get("output") {
                    None | Some(Value::Null) => {}
                    Some(Value::Array(msgs)) => {
                        for (k, m) in msgs.iter().enumerate() {
                            let mat = format!("{data_at}.output[{k}]");
                            let mo = m.as_object().ok_or_else(|| wrong(&mat, "an object", m))?;
                            let (text, calls) = chat_message(mo, &mat)?;
                            if text.is_empty() && calls.is_empty() {
                                continue;
                            }
                            b.text(agent, text);
                            for (name, args) in calls {
                                b.call(agent, &name, &args);
                                written.push((agent.to_string(), name));
                            }
                        }
                    }
                    Some(v) => {
                        return Err(wrong(
                            &format!("{data_at}.output"),
                            "an array of messages",
                            v,
                        ))
                    }
                }
            }
            "function" => {
                let agent = need_agent()?;
                let name = req_str(s.data, "name", &data_at)?;
                match written.iter().position(|(a, n)| a == agent && n == name) {
                    Some(k) => {
                        written.remove(k);
                    }
                    None => {
                        b.call(agent, name, &args_text(s.data.get("input")));
                    }
                }
                let text = match (s.data.get("output"), s.error) {
                    (Some(Value::String(out)), _) => out.clone(),
                    // A failed call: the span's error (`{"message", "data"}`).
                    (None | Some(Value::Null), Some(Value::Object(e))) => {
                        let detail = e
                            .get("data")
                            .and_then(|d| d.get("error"))
                            .and_then(Value::as_str);
                        match (e.get("message"), detail) {
                            (Some(Value::String(m)), Some(d)) => format!("{m}: {d}"),
                            (Some(Value::String(m)), None) => m.clone(),
                            _ => Value::Object(e.clone()).to_string(),
                        }
                    }
                    (None | Some(Value::Null), _) => String::new(),
                    (Some(v), _) => v.to_string(),
                };
                b.observation(name, text);
            }
            "handoff" => {
                let from = opt_str(s.data, &data_at, "from_agent")?;
                let to = opt_str(s.data, &data_at, "to_agent")?;
                if let (Some(from), Some(to)) = (from, to) {
                    b.handoff(None, from, to);
                }
            }
            "response" => responses += 1,
            // agent, custom, guardrail, mcp_tools, speech, transcription, ...
            _ => {}
        }
    }
    if b.steps.is_empty() {
        return Err(Invalid::new(
            RejectReason::EmptyTrajectory,
            format!(
                "the trace has no usable steps: {} spans, none a function span or a generation \
                 span with output ({responses} response spans: the default export keeps only \
                 response ids for model calls, not their text)",
                spans.len()
            ),
        ));
    }
    let task = task_or_reject(
        task,
        "no `task` field and no generation span whose input has a user message (the default \
         trace export keeps only response ids for model calls; add a `task` field to the record)",
    )?;
    let id = match (o.get("id"), first_trace) {
        (None | Some(Value::Null), Some(t)) => t.to_string(),
        _ => id_of(o, &["id"], default_id)?,
    };
    finish(o, id, task, b, answer_of(o)?)
}

/// The first user message's text in a generation's input (chat messages).
fn first_user_message(v: Option<&Value>, at: &str) -> Result<Option<String>, Invalid> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(msgs)) => {
            for (k, m) in msgs.iter().enumerate() {
                let mat = format!("{at}[{k}]");
                let mo = m.as_object().ok_or_else(|| wrong(&mat, "an object", m))?;
                if opt_str(mo, &mat, "role")? == Some("user") {
                    return text_blocks(mo.get("content"), &format!("{mat}.content")).map(Some);
                }
            }
            Ok(None)
        }
        Some(v) => Err(wrong(at, "a list of messages", v)),
    }
}

/// A Chat Completions message of a generation's output: its text (content,
/// or its refusal) and its tool calls (`tool_calls[{function: {name,
/// arguments}}]`).
fn chat_message(
    m: &Map<String, Value>,
    at: &str,
) -> Result<(String, Vec<(String, String)>), Invalid> {
    let mut text = text_blocks(m.get("content"), &format!("{at}.content"))?;
    if text.is_empty() {
        if let Some(r) = opt_str(m, at, "refusal")? {
            text = r.to_string();
        }
    }
    let mut calls = Vec::new();
    match m.get("tool_calls") {
        None | Some(Value::Null) => {}
        Some(Value::Array(cs)) => {
            for (k, c) in cs.iter().enumerate() {
                let cat = format!("{at}.tool_calls[{k}]");
                let co = c.as_object().ok_or_else(|| wrong(&cat, "an object", c))?;
                let f = match co.get("function") {
                    Some(Value::Object(f)) => f,
                    None | Some(Value::Null) => co,
                    Some(v) => return Err(wrong(&format!("{cat}.function"), "an object", v)),
                };
                let name = req_str(f, "name", &cat)?;
                calls.push((name.to_string(), args_text(f.get("arguments"))));
            }
        }
        Some(v) => return Err(wrong(&format!("{at}.tool_calls"), "an array", v)),
    }
    Ok((text, calls))
}
