//! `messages`: OpenAI chat messages (`{"messages":[{"role","content","name","tool_calls"}]}` or a bare array).

use super::fields::{
    answer_of, array_field, content_text, id_of, name_or_role, optional_task, push_tool_calls,
    record, wrong,
};
use super::{Invalid, RejectReason};
use afm_format::{Step, StepKind, Trajectory};
use serde_json::{Map, Value};

fn messages_from_list(
    items: &[Value],
    o: Option<&Map<String, Value>>,
    default_id: &str,
) -> Result<Trajectory, Invalid> {
    let empty = Map::new();
    let o = o.unwrap_or(&empty);
    let mut task = optional_task(o, &["task", "question", "prompt"])?;
    let mut steps = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let at = format!("messages[{i}]");
        let mo = m.as_object().ok_or_else(|| wrong(&at, "an object", m))?;
        let (agent, role) = name_or_role(mo, &at)?;
        let role = role.unwrap_or_default();
        let mut text = content_text(mo.get("content"), &format!("{at}.content"))?;
        if role == "system" {
            continue;
        }
        // The first user message without an explicit task field is the task.
        if task.is_none() && role == "user" {
            if text.trim().is_empty() {
                return Err(Invalid::new(
                    RejectReason::MissingTask,
                    format!("{at}: the first user message (the task) is empty"),
                ));
            }
            task = Some(text);
            continue;
        }
        push_tool_calls(&mut text, mo, &at)?;
        // Tool results and later user turns are never trained.
        let kind = if role == "tool" || role == "function" || role == "user" {
            StepKind::Observation
        } else {
            StepKind::Agent
        };
        steps.push(Step { agent, kind, text });
    }
    let task = task.ok_or_else(|| {
        Invalid::new(
            RejectReason::MissingTask,
            "missing task: no `task` field and no `user` message",
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

/// `{"messages": [...]}`.
pub(super) fn read(o: &Map<String, Value>, default_id: &str) -> Result<Trajectory, Invalid> {
    let items = array_field(o, "messages", RejectReason::UnknownRecordShape)?;
    messages_from_list(items, Some(o), default_id)
}

/// A record with `messages`.
pub(super) fn detects(o: &Map<String, Value>) -> bool {
    o.contains_key("messages")
}

/// A bare array of messages (its first item has a `role`) is one conversation.
pub(super) fn is_message_list(items: &[Value]) -> bool {
    items
        .first()
        .and_then(Value::as_object)
        .is_some_and(|o| o.contains_key("role"))
}

/// One conversation given as a bare array of messages.
pub(super) fn read_message_list(items: &[Value], default_id: &str) -> Result<Trajectory, Invalid> {
    messages_from_list(items, None, default_id)
}
