//! `native`: afm's own JSONL (`{"id","task","trajectory":[{"agent","output"}|{"agent","observation"}],...}`).

use super::fields::{answer_of, array_field, id_of, record, required_task, wrong};
use super::{Invalid, RejectReason};
use afm_format::{Step, StepKind, Trajectory};
use serde_json::{Map, Value};

pub(super) fn read(o: &Map<String, Value>, default_id: &str) -> Result<Trajectory, Invalid> {
    let task = required_task(o, &["task"])?;
    let items = array_field(o, "trajectory", RejectReason::EmptyTrajectory)?;
    let mut steps = Vec::with_capacity(items.len());
    for (i, s) in items.iter().enumerate() {
        let so = s
            .as_object()
            .ok_or_else(|| wrong(&format!("trajectory[{i}]"), "an object", s))?;
        let agent = match so.get("agent") {
            Some(Value::String(a)) => a.clone(),
            Some(v) => return Err(wrong(&format!("trajectory[{i}].agent"), "a string", v)),
            None => {
                return Err(Invalid::new(
                    RejectReason::UnknownStepShape,
                    format!("trajectory[{i}]: missing `agent`"),
                ))
            }
        };
        let (kind, field) = match (so.get("output"), so.get("observation")) {
            (Some(_), None) => (StepKind::Agent, "output"),
            (None, Some(_)) => (StepKind::Observation, "observation"),
            _ => {
                return Err(Invalid::new(
                    RejectReason::UnknownStepShape,
                    format!(
                        "trajectory[{i}]: a step needs exactly one of `output` or `observation`"
                    ),
                ))
            }
        };
        let text = match &so[field] {
            Value::String(t) => t.clone(),
            v => return Err(wrong(&format!("trajectory[{i}].{field}"), "a string", v)),
        };
        steps.push(Step { agent, kind, text });
    }
    record(
        o,
        id_of(o, &["id"], default_id)?,
        task,
        steps,
        answer_of(o)?,
    )
}

/// A record with `trajectory`.
pub(super) fn detects(o: &Map<String, Value>) -> bool {
    o.contains_key("trajectory")
}
