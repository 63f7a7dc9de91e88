//! `coa-tags`: Chain-of-Agents tag format (one response with `<think>`, `<code>`, `<observation>`, `<answer>`... tags).

use super::fields::{answer_of, id_of, record, required_task, wrong};
use super::{Invalid, RejectReason};
use crate::agents::is_default_observation;
use afm_format::{Step, StepKind, Trajectory};
use serde_json::{Map, Value};

pub(super) const COA_TEXT_FIELDS: [&str; 4] = ["response", "output", "completion", "text"];

pub(super) fn read(o: &Map<String, Value>, default_id: &str) -> Result<Trajectory, Invalid> {
    let task = coa_task(o)?;
    let (field, text) = COA_TEXT_FIELDS
        .iter()
        .find_map(|k| o.get(*k).map(|v| (*k, v)))
        .ok_or_else(|| {
            Invalid::new(
                RejectReason::EmptyTrajectory,
                format!("none of the fields {COA_TEXT_FIELDS:?} is present"),
            )
        })?;
    let text = text
        .as_str()
        .ok_or_else(|| wrong(field, "a string", text))?;
    let steps = parse_coa_tags(text);
    record(
        o,
        id_of(o, &["id"], default_id)?,
        task,
        steps,
        answer_of(o)?,
    )
}

/// The task: `task`, `question` or `prompt`; else LLaMA-Factory's alpaca
/// prompt (how CoA's SFT data is laid out): `instruction`, joined to a
/// non-empty `input` by a newline as LLaMA-Factory joins them; else `input`.
fn coa_task(o: &Map<String, Value>) -> Result<String, Invalid> {
    let present = |k: &str| o.get(k).is_some_and(|v| !v.is_null());
    if ["task", "question", "prompt"].iter().any(|k| present(k)) || !present("instruction") {
        return required_task(o, &["task", "question", "prompt", "input"]);
    }
    let instruction = match &o["instruction"] {
        Value::String(s) => s,
        v => return Err(wrong("instruction", "a string", v)),
    };
    let task = match o.get("input") {
        None | Some(Value::Null) => instruction.clone(),
        Some(Value::String(s)) if s.is_empty() => instruction.clone(),
        Some(Value::String(s)) => format!("{instruction}\n{s}"),
        Some(v) => return Err(wrong("input", "a string", v)),
    };
    if task.trim().is_empty() {
        return Err(Invalid::new(
            RejectReason::MissingTask,
            "field `instruction` (the task) is empty",
        ));
    }
    Ok(task)
}

/// Split a Chain-of-Agents response into steps: each `<tag>...</tag>`
/// segment is a step of agent `tag`; `<observation>` (and tags the default
/// observation rule matches, e.g. `<tool_response>`) become observations.
/// An unclosed tag runs to the next opening tag or the end; non-blank text
/// outside tags becomes a step of agent `response`.
pub fn parse_coa_tags(text: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut rest = text;
    let push_free = |steps: &mut Vec<Step>, s: &str| {
        if !s.trim().is_empty() {
            steps.push(Step {
                agent: "response".into(),
                kind: StepKind::Agent,
                text: s.to_string(),
            });
        }
    };
    while !rest.is_empty() {
        let Some((start, name, after)) = next_open_tag(rest) else {
            push_free(&mut steps, rest);
            break;
        };
        push_free(&mut steps, &rest[..start]);
        let body = &rest[after..];
        let close = format!("</{name}>");
        let (content, next) = match body.find(&close) {
            Some(i) => (&body[..i], &body[i + close.len()..]),
            None => match next_open_tag(body) {
                Some((j, _, _)) => (&body[..j], &body[j..]),
                None => (body, ""),
            },
        };
        let kind = if name == "observation" || is_default_observation(name) {
            StepKind::Observation
        } else {
            StepKind::Agent
        };
        steps.push(Step {
            agent: name.to_string(),
            kind,
            text: content.to_string(),
        });
        rest = next;
    }
    steps
}

/// Finds `<name>` with name = [a-z][a-z0-9_-]*; returns (start, name, index after `>`).
pub(super) fn next_open_tag(s: &str) -> Option<(usize, &str, usize)> {
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(off) = s[i..].find('<') {
        let st = i + off;
        let mut j = st + 1;
        if j < b.len() && b[j].is_ascii_lowercase() {
            j += 1;
            while j < b.len()
                && (b[j].is_ascii_lowercase()
                    || b[j].is_ascii_digit()
                    || b[j] == b'_'
                    || b[j] == b'-')
            {
                j += 1;
            }
            if j < b.len() && b[j] == b'>' {
                return Some((st, &s[st + 1..j], j + 1));
            }
        }
        i = st + 1;
    }
    None
}

/// A record with a text field holding tags.
pub(super) fn detects(o: &Map<String, Value>) -> bool {
    COA_TEXT_FIELDS.iter().any(|k| {
        o.get(*k)
            .and_then(Value::as_str)
            .is_some_and(|s| s.contains('<'))
    })
}
