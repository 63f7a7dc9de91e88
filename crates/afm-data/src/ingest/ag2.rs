//! `ag2`: AG2 / AutoGen 0.2 group-chat logs (`{"question","is_correct","history":[{"content","role","name"}]}`).

use super::fields::{
    array_field, content_text, id_of, name_or_role, opt_bool, opt_f64, required_task, wrong,
};
use super::{Invalid, RejectReason};
use afm_format::{Step, StepKind, Trajectory};
use serde_json::{Map, Value};

pub(super) fn read(o: &Map<String, Value>, default_id: &str) -> Result<Trajectory, Invalid> {
    let items = array_field(o, "history", RejectReason::EmptyTrajectory)?;
    let mut steps = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let at = format!("history[{i}]");
        let mo = m.as_object().ok_or_else(|| wrong(&at, "an object", m))?;
        let (agent, role) = name_or_role(mo, &at)?;
        if !mo.contains_key("content") {
            return Err(Invalid::new(
                RejectReason::UnknownStepShape,
                format!("{at}: missing `content`"),
            ));
        }
        let text = content_text(mo.get("content"), &format!("{at}.content"))?;
        let kind = if role.as_deref() == Some("tool") {
            StepKind::Observation
        } else {
            StepKind::Agent
        };
        steps.push(Step { agent, kind, text });
    }
    // The task: `question` (Who&When), `task`, else the first message.
    let task = match required_task(o, &["question", "task"]) {
        Ok(t) => t,
        Err(e)
            if e.reason == RejectReason::MissingTask
                && !steps.is_empty()
                && !o.contains_key("question")
                && !o.contains_key("task") =>
        {
            let first = steps.remove(0);
            if first.text.trim().is_empty() {
                return Err(Invalid::new(
                    RejectReason::MissingTask,
                    "no `question`/`task` and the first message is empty",
                ));
            }
            first.text
        }
        Err(e) => return Err(e),
    };
    let success = match opt_bool(o, "is_correct")? {
        Some(b) => Some(b),
        None => opt_bool(o, "success")?,
    };
    Ok(Trajectory {
        id: id_of(o, &["question_ID", "id"], default_id)?,
        task,
        steps,
        success,
        score: opt_f64(o, "score")?,
        answer: None,
        meta: None,
    })
}

/// A record with `history`.
pub(super) fn detects(o: &Map<String, Value>) -> bool {
    o.contains_key("history")
}
