//! Field readers shared by the importers: each error names the field.

use super::{Invalid, RejectReason};
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
    for f in fields {
        match o.get(*f) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) if s.trim().is_empty() => {
                return Err(Invalid::new(
                    RejectReason::MissingTask,
                    format!("field `{f}` (the task) is empty"),
                ))
            }
            Some(Value::String(s)) => return Ok(s.clone()),
            Some(v) => return Err(wrong(f, "a string", v)),
        }
    }
    Err(Invalid::new(
        RejectReason::MissingTask,
        format!("missing task: none of the fields {fields:?} is present"),
    ))
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
#[allow(dead_code)] // until the first importer with hand-offs lands
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Handoff {
    pub step: usize,
    pub from: String,
    pub to: String,
}

/// `meta` with `handoffs` added (an object `meta` keeps its other keys; a
/// non-object `meta` is kept under `source_meta`). No hand-offs: `meta` as is.
#[allow(dead_code)] // until the first importer with hand-offs lands
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

/// Appends OpenAI-style `tool_calls` (`[{"function": {"name", "arguments"}}]`,
/// or `{"name", "arguments"}` directly) to an agent's text with
/// [`push_tool_call`]; `at` names the message in errors. Absent or null: nothing.
pub(super) fn push_openai_tool_calls(
    text: &mut String,
    calls: Option<&Value>,
    at: &str,
) -> Result<(), Invalid> {
    match calls {
        None | Some(Value::Null) => Ok(()),
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
            Ok(())
        }
        Some(v) => Err(wrong(&format!("{at}.tool_calls"), "an array", v)),
    }
}
