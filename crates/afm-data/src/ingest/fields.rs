//! Field readers shared by the importers: each error names the field.

use super::{Invalid, RejectReason};
use afm_format::{Step, Trajectory};
use serde_json::{Map, Value};

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn wrong(field: &str, expected: &str, got: &Value) -> Invalid {
    Invalid::new(
        RejectReason::WrongType,
        format!(
            "field `{field}`: expected {expected}, got {}",
            type_name(got)
        ),
    )
}

pub(super) fn opt_bool(o: &Map<String, Value>, field: &str) -> Result<Option<bool>, Invalid> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        // Some logs write "true"/"false" or 0/1.
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(Value::Number(n)) if n.as_i64() == Some(0) || n.as_i64() == Some(1) => {
            Ok(Some(n.as_i64() == Some(1)))
        }
        Some(v) => Err(wrong(field, "a boolean", v)),
    }
}

pub(super) fn opt_f64(o: &Map<String, Value>, field: &str) -> Result<Option<f64>, Invalid> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| {
                Invalid::new(
                    RejectReason::WrongType,
                    format!("field `{field}`: number {n} is not finite"),
                )
            }),
        Some(v) => Err(wrong(field, "a number", v)),
    }
}

pub(super) fn id_of(
    o: &Map<String, Value>,
    fields: &[&str],
    default_id: &str,
) -> Result<String, Invalid> {
    for f in fields {
        match o.get(*f) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => return Ok(s.clone()),
            Some(Value::Number(n)) => return Ok(n.to_string()),
            Some(v) => return Err(wrong(f, "a string or number", v)),
        }
    }
    Ok(default_id.to_string())
}

pub(super) fn required_task(o: &Map<String, Value>, fields: &[&str]) -> Result<String, Invalid> {
    optional_task(o, fields)?.ok_or_else(|| {
        Invalid::new(
            RejectReason::MissingTask,
            format!("missing task: none of the fields {fields:?} is present"),
        )
    })
}

/// The task from the first of `fields` present (absent or null: the next
/// one; none present: `None`, for formats with another place for the task).
/// An empty task or one that is not a string is an error naming the field.
pub(super) fn optional_task(
    o: &Map<String, Value>,
    fields: &[&str],
) -> Result<Option<String>, Invalid> {
    for f in fields {
        match o.get(*f) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) if s.trim().is_empty() => {
                return Err(Invalid::new(
                    RejectReason::MissingTask,
                    format!("field `{f}` (the task) is empty"),
                ))
            }
            Some(Value::String(s)) => return Ok(Some(s.clone())),
            Some(v) => return Err(wrong(f, "a string", v)),
        }
    }
    Ok(None)
}

pub(super) fn answer_of(o: &Map<String, Value>) -> Result<Option<String>, Invalid> {
    match o.get("answer") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
        Some(v) => Err(wrong("answer", "a string or number", v)),
    }
}

/// Message content: a string, null (empty), or a list of `{type:"text", text}` parts.
pub(super) fn content_text(v: Option<&Value>, field: &str) -> Result<String, Invalid> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for (k, p) in parts.iter().enumerate() {
                match p {
                    Value::String(s) => out.push_str(s),
                    Value::Object(po) => match po.get("text") {
                        Some(Value::String(s)) => out.push_str(s),
                        _ => {
                            return Err(Invalid::new(
                                RejectReason::WrongType,
                                format!("field `{field}[{k}]`: content part has no string `text`"),
                            ))
                        }
                    },
                    v => {
                        return Err(wrong(
                            &format!("{field}[{k}]"),
                            "a string or a text part",
                            v,
                        ))
                    }
                }
            }
            Ok(out)
        }
        Some(v) => Err(wrong(field, "a string, null or a list of text parts", v)),
    }
}

pub(super) fn name_or_role(
    m: &Map<String, Value>,
    at: &str,
) -> Result<(String, Option<String>), Invalid> {
    let role = match m.get("role") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) => Some(r.clone()),
        Some(v) => return Err(wrong(&format!("{at}.role"), "a string", v)),
    };
    let name = match m.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) if !n.is_empty() => Some(n.clone()),
        Some(Value::String(_)) => None,
        Some(v) => return Err(wrong(&format!("{at}.name"), "a string", v)),
    };
    match name.or_else(|| role.clone()) {
        Some(a) => Ok((a, role)),
        None => Err(Invalid::new(
            RejectReason::UnknownStepShape,
            format!("{at}: neither `name` nor `role`"),
        )),
    }
}

/// The one text form of a tool call inside an agent's turn, used by every
/// importer: `<tool_call>NAME(ARGS)</tool_call>`, on its own line after
/// any text the agent wrote. The result of the call is the next step, an
/// observation (never trained).
pub(super) fn push_tool_call(text: &mut String, name: &str, args: &str) {
    if !text.is_empty() {
        text.push('\n');
    }
    text.push_str("<tool_call>");
    text.push_str(name);
    text.push('(');
    text.push_str(args);
    text.push_str(")</tool_call>");
}

/// Tool-call arguments as text: a string as is, null or absent as empty,
/// anything else as compact JSON.
pub(super) fn args_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// A hand-off from one agent to another, kept as metadata: the trajectory's
/// `meta.handoffs` holds `{"step", "from", "to"}` for each, `step` being
/// the index of the step that handed off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Handoff {
    pub step: usize,
    pub from: String,
    pub to: String,
}

/// `meta` with `handoffs` added (an object `meta` keeps its other keys; a
/// non-object `meta` is kept under `source_meta`). No hand-offs: `meta` as is.
pub(super) fn with_handoffs(meta: Option<Value>, handoffs: &[Handoff]) -> Option<Value> {
    if handoffs.is_empty() {
        return meta;
    }
    let mut m = match meta {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => Map::from_iter([("source_meta".to_string(), other)]),
    };
    let list = handoffs
        .iter()
        .map(|h| serde_json::json!({"step": h.step, "from": h.from, "to": h.to}))
        .collect();
    m.insert("handoffs".into(), Value::Array(list));
    Some(Value::Object(m))
}

/// Message text that may hold blocks other than text: a string, null
/// (empty), or a list whose strings and `{"text": "..."}` blocks are joined;
/// a block with no `text` but a string `type` (an image, a tool-use block,
/// a reasoning block) is skipped. Anything else is an error naming `field`.
pub(super) fn text_blocks(v: Option<&Value>, field: &str) -> Result<String, Invalid> {
    match v {
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for (k, p) in parts.iter().enumerate() {
                match p {
                    Value::String(s) => out.push_str(s),
                    Value::Object(po) => match (po.get("text"), po.get("type")) {
                        (Some(Value::String(s)), _) => out.push_str(s),
                        (None | Some(Value::Null), Some(Value::String(_))) => {}
                        (None | Some(Value::Null), _) => {
                            return Err(Invalid::new(
                                RejectReason::WrongType,
                                format!(
                                    "field `{field}[{k}]`: a block needs a string `text` or `type`"
                                ),
                            ))
                        }
                        (Some(t), _) => {
                            return Err(wrong(&format!("{field}[{k}].text"), "a string", t))
                        }
                    },
                    v => {
                        return Err(wrong(
                            &format!("{field}[{k}]"),
                            "a string or a content block",
                            v,
                        ))
                    }
                }
            }
            Ok(out)
        }
        _ => content_text(v, field),
    }
}

/// Order the nodes of a forest (spans, runs) depth first, parents before
/// their children. `parents[i]` is the index of node i's parent (None: a
/// root). Siblings are ordered by `keys` (timestamps that compare as text)
/// when every sibling has one, else they keep their input order. Returns
/// the order, or the index of the first node no root reaches (its parents
/// form a cycle).
pub(super) fn tree_order(
    parents: &[Option<usize>],
    keys: &[Option<&str>],
) -> Result<Vec<usize>, usize> {
    let n = parents.len();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut roots = Vec::new();
    for (i, p) in parents.iter().enumerate() {
        match p {
            Some(p) if *p < n && *p != i => children[*p].push(i),
            _ => roots.push(i),
        }
    }
    let sort = |list: &mut Vec<usize>| {
        if list
            .iter()
            .all(|&i| keys.get(i).copied().flatten().is_some())
        {
            list.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
        }
    };
    sort(&mut roots);
    for c in &mut children {
        sort(c);
    }
    let mut order = Vec::with_capacity(n);
    let mut seen = vec![false; n];
    // Iterative, so a deep tree cannot overflow the stack.
    let mut stack: Vec<usize> = roots.into_iter().rev().collect();
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        order.push(i);
        stack.extend(children[i].iter().rev());
    }
    match seen.iter().position(|s| !s) {
        Some(i) => Err(i),
        None => Ok(order),
    }
}

/// An optional string field of `o`: absent or null is `None`. `at` is the
/// path of `o` in the record ("" at the top), used to name the field.
pub(super) fn opt_str<'a>(
    o: &'a Map<String, Value>,
    at: &str,
    field: &str,
) -> Result<Option<&'a str>, Invalid> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(wrong(&field_path(at, field), "a string", v)),
    }
}

/// `at.field`, or `field` when `at` is empty (the record's top level).
pub(super) fn field_path(at: &str, field: &str) -> String {
    if at.is_empty() {
        field.to_string()
    } else {
        format!("{at}.{field}")
    }
}

/// The tool calls of an OpenAI-style chat message, each appended to `text`
/// with [`push_tool_call`]: `tool_calls[].function{name, arguments}`, then
/// the older single `function_call{name, arguments}`. `at` names the
/// message in errors (`request.messages[3]`).
pub(super) fn push_tool_calls(
    text: &mut String,
    m: &Map<String, Value>,
    at: &str,
) -> Result<(), Invalid> {
    match m.get("tool_calls") {
        None | Some(Value::Null) => {}
        Some(Value::Array(calls)) => {
            for (k, c) in calls.iter().enumerate() {
                let f = c.get("function").unwrap_or(c);
                let name = f.get("name").and_then(Value::as_str).ok_or_else(|| {
                    Invalid::new(
                        RejectReason::WrongType,
                        format!("field `{at}.tool_calls[{k}]`: no string `function.name`"),
                    )
                })?;
                push_tool_call(text, name, &args_text(f.get("arguments")));
            }
        }
        Some(v) => return Err(wrong(&format!("{at}.tool_calls"), "an array", v)),
    }
    match m.get("function_call") {
        None | Some(Value::Null) => {}
        Some(Value::Object(f)) => {
            let name = f.get("name").and_then(Value::as_str).ok_or_else(|| {
                Invalid::new(
                    RejectReason::WrongType,
                    format!("field `{at}.function_call`: no string `name`"),
                )
            })?;
            push_tool_call(text, name, &args_text(f.get("arguments")));
        }
        Some(v) => return Err(wrong(&format!("{at}.function_call"), "an object", v)),
    }
    Ok(())
}

/// `meta` with the keys of `extra` added (an object `meta` keeps its other
/// keys; a non-object `meta` is kept under `source_meta`, as in
/// [`with_handoffs`]). Nothing to add: `meta` as is.
pub(super) fn with_meta(meta: Option<Value>, extra: Map<String, Value>) -> Option<Value> {
    if extra.is_empty() {
        return meta;
    }
    let mut m = match meta {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => Map::from_iter([("source_meta".to_string(), other)]),
    };
    m.extend(extra);
    Some(Value::Object(m))
}

/// Token counts summed over a log's model calls (`prompt_tokens`,
/// `completion_tokens`), kept in `meta` when any call reported them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Usage {
    pub calls: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    /// Adds `{"prompt_tokens", "completion_tokens"}` found in `o` (`at` names
    /// the object in errors): each a non-negative integer, or absent/null.
    pub fn add(&mut self, o: &Map<String, Value>, at: &str) -> Result<(), Invalid> {
        let get = |k: &str| -> Result<u64, Invalid> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(0),
                Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64().unwrap_or(0)),
                Some(v) => Err(wrong(&format!("{at}.{k}"), "a non-negative integer", v)),
            }
        };
        let (p, c) = (get("prompt_tokens")?, get("completion_tokens")?);
        self.calls += 1;
        self.prompt_tokens = self.prompt_tokens.saturating_add(p);
        self.completion_tokens = self.completion_tokens.saturating_add(c);
        Ok(())
    }

    /// `{"calls", "prompt_tokens", "completion_tokens"}`, or None when no call was counted.
    pub fn to_value(self) -> Option<Value> {
        (self.calls > 0).then(|| {
            serde_json::json!({
                "calls": self.calls,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
            })
        })
    }
}

/// The trajectory of a record `o` from what the importer read (`id`, the
/// task, the steps, the answer) and the fields every format keeps as they
/// are: `success`, `score` and `meta`.
pub(super) fn record(
    o: &Map<String, Value>,
    id: String,
    task: String,
    steps: Vec<Step>,
    answer: Option<String>,
) -> Result<Trajectory, Invalid> {
    Ok(Trajectory {
        id,
        task,
        steps,
        success: opt_bool(o, "success")?,
        score: opt_f64(o, "score")?,
        answer,
        meta: o.get("meta").filter(|m| !m.is_null()).cloned(),
    })
}

/// The array in field `field` of `o`; a missing field is rejected for
/// `missing` (the record has no steps, or is not this shape).
pub(super) fn array_field<'a>(
    o: &'a Map<String, Value>,
    field: &str,
    missing: RejectReason,
) -> Result<&'a Vec<Value>, Invalid> {
    let v = o
        .get(field)
        .ok_or_else(|| Invalid::new(missing, format!("field `{field}` is missing")))?;
    v.as_array().ok_or_else(|| wrong(field, "an array", v))
}
