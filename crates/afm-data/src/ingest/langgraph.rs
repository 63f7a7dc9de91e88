//! `langgraph`: LangGraph state messages and LangSmith run trees.
//!
//! **State messages** (`{"messages": [...]}`, a graph's state or output, or
//! a bare array of messages as a document). A message is a LangChain message
//! in any of its serialised forms (`langchain_core/messages`,
//! `langchain_core/load`): `messages_to_dict`'s `{"type": "ai", "data":
//! {...}}`, `model_dump()`'s flat `{"type": "ai", "content", "name",
//! "tool_calls": [{"name", "args", "id"}], "id"}`, or `dumpd()`'s
//! `{"lc": 1, "type": "constructor", "id": [..., "AIMessage"], "kwargs":
//! {...}}`. Types: `human`, `ai`, `system`, `tool` (`tool_call_id`,
//! `name`), `function`, `chat` (with `role`), `developer`, `remove`, and
//! the `*MessageChunk` types. Who spoke is the AI message's `name`
//! (LangGraph's prebuilt agents set it to the agent's name); an AI message
//! without one is agent `assistant`.
//!
//! **Run trees** (`langsmith` `Run`/`RunTree`, `schemas.py`,
//! `run_trees.py`): a root run `{"id", "name", "run_type", "inputs",
//! "outputs", "parent_run_id", "dotted_order", "start_time", "extra":
//! {"metadata": {"langgraph_node"}}, "child_runs": [...]}`, or `{"runs":
//! [...]}`, a flat list of a trace's runs (`parent_run_id` links them).
//! Runs are read in `dotted_order` (when every run has one), else depth
//! first from the roots, siblings by `start_time`. An `llm`/`chat_model`
//! run's output message is an agent turn; a `tool` run's output is an
//! observation named after the tool (the run's `name`); other runs give no
//! step. The agent of an LLM run: the output message's `name`; else the
//! `name` the graph state gave the message with the same `id` (any run's
//! `outputs.messages`); else the run's `langgraph_node` or an ancestor's,
//! the innermost one that is not `agent`/`model` (the prebuilt agents' model
//! node, the same in every agent: langgraph #5633), else the innermost;
//! else `assistant`.

use super::fields::{
    answer_of, args_text, array_field, id_of, opt_str, optional_task, push_tool_call, record,
    text_blocks, tree_order, type_name, wrong,
};
use super::{Invalid, RejectReason};
use afm_format::{Step, StepKind, Trajectory};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// The agent of an AI message that names none (and, in a run tree, has no node).
const DEFAULT_AGENT: &str = "assistant";
/// Node names LangGraph's prebuilt agents give their model node.
const GENERIC_NODES: &[&str] = &["agent", "model"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Human,
    Ai,
    System,
    Tool,
    Function,
    Remove,
}

fn kind_of(t: &str) -> Option<Kind> {
    let t = t.strip_suffix("Chunk").unwrap_or(t);
    Some(match t {
        "human" | "user" | "HumanMessage" => Kind::Human,
        "ai" | "assistant" | "AIMessage" => Kind::Ai,
        "system" | "developer" | "SystemMessage" | "DeveloperMessage" => Kind::System,
        "tool" | "ToolMessage" => Kind::Tool,
        "function" | "FunctionMessage" => Kind::Function,
        "remove" | "RemoveMessage" => Kind::Remove,
        _ => return None,
    })
}

/// One message, whatever its serialised form.
struct Msg {
    kind: Kind,
    name: Option<String>,
    id: Option<String>,
    text: String,
    /// (name, arguments text, call id)
    calls: Vec<(String, String, Option<String>)>,
    tool_call_id: Option<String>,
}

/// A message in LangChain's serialised forms (see the module doc), an
/// OpenAI-style `{"role", "content"}` dict, a `["role", "text"]` pair or a
/// bare string (a human message), as LangGraph accepts them as input.
fn message(v: &Value, at: &str) -> Result<Msg, Invalid> {
    let unknown = |what: &str| {
        Invalid::new(
            RejectReason::UnknownStepShape,
            format!("field `{at}`: {what}"),
        )
    };
    let (fields, at, ty): (&Map<String, Value>, String, Option<String>) = match v {
        Value::String(s) => {
            return Ok(Msg {
                kind: Kind::Human,
                name: None,
                id: None,
                text: s.clone(),
                calls: Vec::new(),
                tool_call_id: None,
            })
        }
        Value::Array(pair) => {
            let (Some(Value::String(role)), Some(content), 2) =
                (pair.first(), pair.get(1), pair.len())
            else {
                return Err(unknown("a message pair must be [\"role\", content]"));
            };
            let kind =
                kind_of(role).ok_or_else(|| unknown(&format!("unknown message role {role:?}")))?;
            return Ok(Msg {
                kind,
                name: None,
                id: None,
                text: text_blocks(Some(content), &format!("{at}[1]"))?,
                calls: Vec::new(),
                tool_call_id: None,
            });
        }
        Value::Object(o) if o.contains_key("lc") => {
            let kw = match o.get("kwargs") {
                Some(Value::Object(k)) => k,
                Some(v) => return Err(wrong(&format!("{at}.kwargs"), "an object", v)),
                None => return Err(unknown("an `lc` message without `kwargs`")),
            };
            let class = match o.get("id") {
                Some(Value::Array(path)) => path.last().and_then(Value::as_str).map(str::to_string),
                Some(v) => return Err(wrong(&format!("{at}.id"), "an array of strings", v)),
                None => None,
            };
            let ty = match opt_str(kw, &format!("{at}.kwargs"), "type")? {
                Some(t) => Some(t.to_string()),
                None => class,
            };
            (kw, format!("{at}.kwargs"), ty)
        }
        Value::Object(o) => match o.get("data") {
            Some(Value::Object(d)) if o.get("type").is_some_and(Value::is_string) => (
                d,
                format!("{at}.data"),
                opt_str(o, at, "type")?.map(str::to_string),
            ),
            _ => {
                let ty = match opt_str(o, at, "type")? {
                    Some(t) => Some(t.to_string()),
                    None => opt_str(o, at, "role")?.map(str::to_string),
                };
                (o, at.to_string(), ty)
            }
        },
        v => return Err(wrong(at, "a message object", v)),
    };
    let ty = ty.ok_or_else(|| unknown("a message needs a `type` (or `role`)"))?;
    let kind = if ty == "chat" || ty == "ChatMessage" {
        // A ChatMessage: its `role` says who.
        let role = opt_str(fields, &at, "role")?.unwrap_or("");
        kind_of(role).ok_or_else(|| unknown(&format!("unknown chat message role {role:?}")))?
    } else {
        kind_of(&ty).ok_or_else(|| unknown(&format!("unknown message type {ty:?}")))?
    };
    let mut text = text_blocks(fields.get("content"), &format!("{at}.content"))?;
    let mut calls = Vec::new();
    if kind == Kind::Ai {
        calls = tool_calls(fields.get("tool_calls"), &format!("{at}.tool_calls"))?;
        if calls.is_empty() {
            // Older messages and raw OpenAI dicts: `additional_kwargs.tool_calls`
            // / `function_call` ({"function": {"name", "arguments"}}).
            let (kw, kat) = match fields.get("additional_kwargs") {
                Some(Value::Object(k)) => (Some(k), format!("{at}.additional_kwargs")),
                None | Some(Value::Null) => (None, String::new()),
                Some(v) => return Err(wrong(&format!("{at}.additional_kwargs"), "an object", v)),
            };
            if let Some(kw) = kw {
                calls = tool_calls(kw.get("tool_calls"), &format!("{kat}.tool_calls"))?;
                if calls.is_empty() {
                    if let Some(f) = kw.get("function_call").filter(|f| !f.is_null()) {
                        calls = tool_calls(
                            Some(&Value::Array(vec![f.clone()])),
                            &format!("{kat}.function_call"),
                        )?;
                    }
                }
            }
        }
        if text.is_empty() {
            if let Some(Value::String(r)) = fields.get("refusal") {
                text = r.clone();
            }
        }
    }
    Ok(Msg {
        kind,
        name: opt_str(fields, &at, "name")?
            .filter(|n| !n.is_empty())
            .map(str::to_string),
        id: match fields.get("id") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        },
        text,
        calls,
        tool_call_id: opt_str(fields, &at, "tool_call_id")?.map(str::to_string),
    })
}

/// `[{"name", "args", "id"}]` (LangChain) or `[{"id", "function": {"name",
/// "arguments"}}]` (OpenAI).
fn tool_calls(
    v: Option<&Value>,
    at: &str,
) -> Result<Vec<(String, String, Option<String>)>, Invalid> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(l)) => l,
        Some(v) => return Err(wrong(at, "an array", v)),
    };
    let mut out = Vec::with_capacity(list.len());
    for (k, c) in list.iter().enumerate() {
        let cat = format!("{at}[{k}]");
        let co = c.as_object().ok_or_else(|| wrong(&cat, "an object", c))?;
        let f = match co.get("function") {
            Some(Value::Object(f)) => f,
            None | Some(Value::Null) => co,
            Some(v) => return Err(wrong(&format!("{cat}.function"), "an object", v)),
        };
        let name = opt_str(f, &cat, "name")?.ok_or_else(|| {
            Invalid::new(
                RejectReason::WrongType,
                format!("field `{cat}`: no string `name`"),
            )
        })?;
        let args = f.get("args").or_else(|| f.get("arguments"));
        let id = opt_str(co, &cat, "id")?.map(str::to_string);
        out.push((name.to_string(), args_text(args), id));
    }
    Ok(out)
}

/// Is `v` a LangChain message (not an OpenAI `role` dict)?
fn is_lc_message(v: &Value) -> bool {
    let Some(o) = v.as_object() else {
        return false;
    };
    if o.contains_key("role") {
        return false;
    }
    (o.get("lc").is_some() && o.get("type").and_then(Value::as_str) == Some("constructor"))
        || o.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| kind_of(t).is_some() || t == "chat" || t == "ChatMessage")
}

/// A record with LangChain `messages`, a LangSmith run, or `{"runs": [run..]}`.
pub(super) fn detects(o: &Map<String, Value>) -> bool {
    let first = |k: &str| o.get(k).and_then(Value::as_array).and_then(|a| a.first());
    o.contains_key("run_type")
        || first("runs").is_some_and(|r| r.get("run_type").is_some())
        || first("messages").is_some_and(is_lc_message)
}

/// A bare array of LangChain messages (one conversation).
pub(super) fn is_message_list(items: &[Value]) -> bool {
    items.first().is_some_and(is_lc_message)
}

pub(super) fn read_message_list(items: &[Value], default_id: &str) -> Result<Trajectory, Invalid> {
    read_state(items, "", &Map::new(), default_id)
}

pub(super) fn read(o: &Map<String, Value>, default_id: &str) -> Result<Trajectory, Invalid> {
    if o.contains_key("run_type") {
        return read_runs(&[Value::Object(o.clone())], None, o, default_id);
    }
    if let Some(runs) = o.get("runs") {
        let list = runs
            .as_array()
            .ok_or_else(|| wrong("runs", "an array", runs))?;
        return read_runs(list, Some("runs"), o, default_id);
    }
    let items = array_field(o, "messages", RejectReason::UnknownRecordShape)?;
    read_state(items, "messages", o, default_id)
}

fn finish(
    o: &Map<String, Value>,
    id: String,
    task: Option<String>,
    steps: Vec<Step>,
    why: &str,
) -> Result<Trajectory, Invalid> {
    let task = task
        .ok_or_else(|| Invalid::new(RejectReason::MissingTask, format!("missing task: {why}")))?;
    record(o, id, task, steps, answer_of(o)?)
}

fn read_state(
    items: &[Value],
    key: &str,
    o: &Map<String, Value>,
    default_id: &str,
) -> Result<Trajectory, Invalid> {
    let mut task = optional_task(o, &["task", "question", "prompt"])?;
    let mut steps = Vec::with_capacity(items.len());
    let mut call_names: HashMap<String, String> = HashMap::new();
    for (i, v) in items.iter().enumerate() {
        let at = format!("{key}[{i}]");
        let m = message(v, &at)?;
        match m.kind {
            Kind::System | Kind::Remove => {}
            Kind::Human if task.is_none() => {
                if m.text.trim().is_empty() {
                    return Err(Invalid::new(
                        RejectReason::MissingTask,
                        format!("{at}: the first human message (the task) is empty"),
                    ));
                }
                task = Some(m.text);
            }
            Kind::Human => steps.push(Step {
                agent: m.name.unwrap_or_else(|| "human".into()),
                kind: StepKind::Observation,
                text: m.text,
            }),
            Kind::Ai => {
                let mut text = m.text;
                for (name, args, id) in m.calls {
                    push_tool_call(&mut text, &name, &args);
                    if let Some(id) = id {
                        call_names.insert(id, name);
                    }
                }
                steps.push(Step {
                    agent: m.name.unwrap_or_else(|| DEFAULT_AGENT.into()),
                    kind: StepKind::Agent,
                    text,
                });
            }
            Kind::Tool | Kind::Function => {
                let agent = m
                    .name
                    .or_else(|| m.tool_call_id.and_then(|c| call_names.get(&c).cloned()))
                    .unwrap_or_else(|| {
                        if m.kind == Kind::Tool {
                            "tool"
                        } else {
                            "function"
                        }
                        .into()
                    });
                steps.push(Step {
                    agent,
                    kind: StepKind::Observation,
                    text: m.text,
                });
            }
        }
    }
    finish(
        o,
        id_of(o, &["id"], default_id)?,
        task,
        steps,
        "no `task` field and no human message",
    )
}

/// One run, its fields checked.
struct Run<'a> {
    /// Path of the run in the record ("" for the record itself).
    at: String,
    o: &'a Map<String, Value>,
    run_type: &'a str,
    id: Option<&'a str>,
    /// `parent_run_id`, else the run it is nested in (`child_runs`).
    parent_id: Option<&'a str>,
    nested_in: Option<usize>,
    dotted: Option<&'a str>,
    start: Option<&'a str>,
    node: Option<&'a str>,
}

/// Flatten runs and their `child_runs` (iteratively: a deep tree cannot
/// overflow the stack), parents before children.
fn flatten<'a>(list: &'a [Value], at: Option<&str>) -> Result<Vec<Run<'a>>, Invalid> {
    let mut out: Vec<Run<'a>> = Vec::new();
    let mut stack: Vec<(&'a Value, String, Option<usize>)> = list
        .iter()
        .enumerate()
        .rev()
        .map(|(i, v)| {
            let p = match at {
                Some(a) => format!("{a}[{i}]"),
                None => String::new(),
            };
            (v, p, None)
        })
        .collect();
    while let Some((v, at, nested_in)) = stack.pop() {
        let name = if at.is_empty() { "record" } else { at.as_str() };
        let o = v
            .as_object()
            .ok_or_else(|| wrong(name, "a run object", v))?;
        let p = |k: &str| {
            if at.is_empty() {
                k.to_string()
            } else {
                format!("{at}.{k}")
            }
        };
        let run_type = opt_str(o, name, "run_type")?.ok_or_else(|| {
            Invalid::new(
                RejectReason::UnknownStepShape,
                format!("{name}: missing string `run_type`"),
            )
        })?;
        let metadata = match o.get("extra") {
            None | Some(Value::Null) => None,
            Some(Value::Object(e)) => match e.get("metadata") {
                None | Some(Value::Null) => None,
                Some(Value::Object(m)) => Some((m, p("extra.metadata"))),
                Some(v) => return Err(wrong(&p("extra.metadata"), "an object", v)),
            },
            Some(v) => return Err(wrong(&p("extra"), "an object", v)),
        };
        let metadata = match (metadata, o.get("metadata")) {
            (Some(m), _) => Some(m),
            (None, Some(Value::Object(m))) => Some((m, p("metadata"))),
            _ => None,
        };
        let node = match metadata {
            Some((m, mat)) => opt_str(m, &mat, "langgraph_node")?,
            None => None,
        };
        let me = out.len();
        out.push(Run {
            run_type,
            id: opt_str(o, name, "id")?,
            parent_id: opt_str(o, name, "parent_run_id")?,
            nested_in,
            dotted: opt_str(o, name, "dotted_order")?.filter(|d| !d.is_empty()),
            start: opt_str(o, name, "start_time")?,
            node,
            o,
            at: at.clone(),
        });
        match o.get("child_runs") {
            None | Some(Value::Null) => {}
            Some(Value::Array(kids)) => {
                for (k, c) in kids.iter().enumerate().rev() {
                    stack.push((c, p(&format!("child_runs[{k}]")), Some(me)));
                }
            }
            Some(v) => return Err(wrong(&p("child_runs"), "an array", v)),
        }
    }
    Ok(out)
}

impl Run<'_> {
    /// Path of field `k` of this run.
    fn path(&self, k: &str) -> String {
        if self.at.is_empty() {
            k.to_string()
        } else {
            format!("{}.{k}", self.at)
        }
    }

    /// This run in messages.
    fn name(&self) -> &str {
        if self.at.is_empty() {
            "record"
        } else {
            &self.at
        }
    }
}

/// The message of an LLM run's outputs: `generations[0][0].message` (or its
/// `text`), OpenAI's `choices[0].message`, or a message under `output` /
/// `message`. None when the run has no outputs.
fn llm_output(run: &Run) -> Result<Option<Msg>, Invalid> {
    let at = run.path("outputs");
    let out = match run.o.get("outputs") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(v) => return Err(wrong(&at, "an object", v)),
    };
    if let Some(g) = out.get("generations") {
        let gat = format!("{at}.generations");
        let first = match g {
            Value::Array(b) => match b.first() {
                Some(Value::Array(inner)) => inner.first().map(|v| (v, format!("{gat}[0][0]"))),
                Some(v) => Some((v, format!("{gat}[0]"))),
                None => None,
            },
            v => return Err(wrong(&gat, "an array", v)),
        };
        let Some((gen, gat)) = first else {
            return Ok(None);
        };
        let go = gen
            .as_object()
            .ok_or_else(|| wrong(&gat, "an object", gen))?;
        if let Some(m) = go.get("message").filter(|m| !m.is_null()) {
            return ai_message(m, &format!("{gat}.message")).map(Some);
        }
        return Ok(Some(Msg {
            kind: Kind::Ai,
            name: None,
            id: None,
            text: text_blocks(go.get("text"), &format!("{gat}.text"))?,
            calls: Vec::new(),
            tool_call_id: None,
        }));
    }
    if let Some(c) = out.get("choices") {
        let cat = format!("{at}.choices[0].message");
        let m = c.get(0).and_then(|c| c.get("message")).ok_or_else(|| {
            Invalid::new(
                RejectReason::UnknownStepShape,
                format!("field `{cat}` is missing"),
            )
        })?;
        return ai_message(m, &cat).map(Some);
    }
    for k in ["output", "message"] {
        if let Some(m) = out.get(k).filter(|m| m.is_object()) {
            return ai_message(m, &format!("{at}.{k}")).map(Some);
        }
    }
    Err(Invalid::new(
        RejectReason::UnknownStepShape,
        format!("field `{at}`: an LLM run's outputs need `generations`, `choices` or an `output` message"),
    ))
}

fn ai_message(v: &Value, at: &str) -> Result<Msg, Invalid> {
    let m = message(v, at)?;
    if m.kind != Kind::Ai {
        return Err(Invalid::new(
            RejectReason::UnknownStepShape,
            format!(
                "field `{at}`: an LLM run's output is a {:?} message, not an AI message",
                m.kind
            ),
        ));
    }
    Ok(m)
}

/// A tool run's result: `outputs.output` (a string, a ToolMessage in any
/// form, or other JSON), else its `error`.
fn tool_output(run: &Run) -> Result<String, Invalid> {
    let at = run.path("outputs");
    let out = match run.o.get("outputs") {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => Some(o),
        Some(v) => return Err(wrong(&at, "an object", v)),
    };
    match out.and_then(|o| o.get("output")) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v @ Value::Object(o))
            if o.contains_key("lc") || o.contains_key("tool_call_id") || o.contains_key("data") =>
        {
            Ok(message(v, &format!("{at}.output"))?.text)
        }
        Some(Value::Null) | None => match (out, run.o.get("error")) {
            (_, Some(Value::String(e))) => Ok(e.clone()),
            (Some(o), _) if !o.is_empty() => Ok(Value::Object(o.clone()).to_string()),
            _ => Ok(String::new()),
        },
        Some(v) => Ok(v.to_string()),
    }
}

/// The task in a run's inputs: a string `task`/`question`/`input`/`query`/
/// `prompt`, or the first human message of `messages` (a list, or a list of
/// lists as chat model runs record it).
fn task_of_inputs(run: &Run) -> Result<Option<String>, Invalid> {
    let at = run.path("inputs");
    let inputs = match run.o.get("inputs") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(v) => return Err(wrong(&at, "an object", v)),
    };
    for k in ["task", "question", "input", "query", "prompt"] {
        if let Some(Value::String(s)) = inputs.get(k) {
            if !s.trim().is_empty() {
                return Ok(Some(s.clone()));
            }
        }
    }
    let msgs = match inputs.get("messages") {
        Some(Value::Array(m)) => m,
        _ => return Ok(None),
    };
    let mut flat: Vec<(&Value, String)> = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        match m {
            // A batch (chat model runs): a list of messages, not a pair.
            Value::Array(b) if !b.first().is_some_and(Value::is_string) => {
                flat.extend(
                    b.iter()
                        .enumerate()
                        .map(|(k, x)| (x, format!("{at}.messages[{i}][{k}]"))),
                );
            }
            _ => flat.push((m, format!("{at}.messages[{i}]"))),
        }
    }
    for (m, mat) in flat {
        let m = message(m, &mat)?;
        if m.kind == Kind::Human && !m.text.trim().is_empty() {
            return Ok(Some(m.text));
        }
    }
    Ok(None)
}

fn read_runs(
    list: &[Value],
    at: Option<&str>,
    o: &Map<String, Value>,
    default_id: &str,
) -> Result<Trajectory, Invalid> {
    let runs = flatten(list, at)?;
    if runs.is_empty() {
        return Err(Invalid::new(
            RejectReason::EmptyTrajectory,
            "field `runs` is empty",
        ));
    }
    let index: HashMap<&str, usize> = runs
        .iter()
        .enumerate()
        .rev()
        .filter_map(|(i, r)| r.id.map(|id| (id, i)))
        .collect();
    let parents: Vec<Option<usize>> = runs
        .iter()
        .map(|r| match r.parent_id.and_then(|p| index.get(p).copied()) {
            Some(p) => Some(p),
            None => r.nested_in,
        })
        .collect();
    let cycle = |i: usize| {
        Invalid::new(
            RejectReason::UnknownRecordShape,
            format!(
                "field `{}`: the runs' parents form a cycle",
                runs[i].path("parent_run_id")
            ),
        )
    };
    // Order: `dotted_order` when every run has one, else the tree.
    let tree =
        tree_order(&parents, &runs.iter().map(|r| r.start).collect::<Vec<_>>()).map_err(cycle)?;
    let order = if runs.iter().all(|r| r.dotted.is_some()) {
        let mut o: Vec<usize> = (0..runs.len()).collect();
        o.sort_by(|&a, &b| runs[a].dotted.cmp(&runs[b].dotted));
        o
    } else {
        tree
    };
    // Names the graph state gave to messages, by message id.
    let mut state_names: HashMap<String, String> = HashMap::new();
    for r in &runs {
        if let Some(Value::Array(ms)) = r.o.get("outputs").and_then(|x| x.get("messages")) {
            for (k, m) in ms.iter().enumerate() {
                // Only well-formed AI messages with both an id and a name.
                if let Ok(m) = message(m, &format!("{}[{k}]", r.path("outputs.messages"))) {
                    if let (Kind::Ai, Some(id), Some(name)) = (m.kind, m.id, m.name) {
                        state_names.entry(id).or_insert(name);
                    }
                }
            }
        }
    }
    let node_of = |i: usize| -> Option<&str> {
        let mut nodes = Vec::new();
        let mut cur = Some(i);
        let mut hops = 0;
        while let Some(c) = cur {
            if let Some(n) = runs[c].node {
                nodes.push(n);
            }
            cur = parents[c];
            hops += 1;
            if hops > runs.len() {
                break;
            }
        }
        nodes
            .iter()
            .find(|n| !GENERIC_NODES.contains(n))
            .or(nodes.first())
            .copied()
    };
    let mut task = optional_task(o, &["task", "question", "prompt"])?;
    let mut steps = Vec::new();
    for &i in &order {
        let r = &runs[i];
        if task.is_none() {
            task = task_of_inputs(r)?;
        }
        match r.run_type {
            "llm" | "chat_model" => {
                let Some(m) = llm_output(r)? else {
                    continue;
                };
                let agent = m
                    .name
                    .clone()
                    .or_else(|| m.id.as_ref().and_then(|id| state_names.get(id).cloned()))
                    .or_else(|| node_of(i).map(str::to_string))
                    .unwrap_or_else(|| DEFAULT_AGENT.into());
                let mut text = m.text;
                for (name, args, _) in &m.calls {
                    push_tool_call(&mut text, name, args);
                }
                if text.is_empty() {
                    continue;
                }
                steps.push(Step {
                    agent,
                    kind: StepKind::Agent,
                    text,
                });
            }
            "tool" => {
                let name = match r.o.get("name") {
                    Some(Value::String(n)) if !n.is_empty() => n.clone(),
                    None | Some(Value::Null) | Some(Value::String(_)) => "tool".into(),
                    Some(v) => {
                        return Err(Invalid::new(
                            RejectReason::WrongType,
                            format!(
                                "field `{}`: expected a string, got {}",
                                r.path("name"),
                                type_name(v)
                            ),
                        ))
                    }
                };
                steps.push(Step {
                    agent: name,
                    kind: StepKind::Observation,
                    text: tool_output(r)?,
                });
            }
            _ => {}
        }
    }
    if !steps.iter().any(|s| s.kind == StepKind::Agent) {
        return Err(Invalid::new(
            RejectReason::EmptyTrajectory,
            format!(
                "no agent turn: none of the {} runs is an `llm` run with an output message",
                runs.len()
            ),
        ));
    }
    let id = match o.get("id") {
        Some(Value::String(_)) | Some(Value::Number(_)) => id_of(o, &["id"], default_id)?,
        _ => match runs
            .first()
            .and_then(|r| opt_str(r.o, r.name(), "trace_id").ok().flatten())
        {
            Some(t) => t.to_string(),
            None => id_of(o, &["id"], default_id)?,
        },
    };
    finish(
        o,
        id,
        task,
        steps,
        "no `task` field and no run whose inputs hold a task or a human message",
    )
}
