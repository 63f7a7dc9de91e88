//! afm's native JSONL (`afm_format::native`'s schema): every record field
//! kept, `meta` included. The `native` importer reads a row back as the
//! same [`Trajectory`].

use afm_format::Turn;
use afm_format::{StepKind, Trajectory};
use serde::Serialize;

/// A native row in the schema's field order; `success`, `answer`, `score`
/// and `meta` only when the record has them (the importer takes them as
/// optional, `afm_format::NativeTrajectory` requires the first two).
#[derive(Serialize)]
struct Row<'a> {
    id: &'a str,
    task: &'a str,
    trajectory: Vec<Turn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    success: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    answer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a serde_json::Value>,
}

/// The native JSON line of one trajectory (no newline).
pub fn line(t: &Trajectory) -> String {
    let row = Row {
        id: &t.id,
        task: &t.task,
        trajectory: t
            .steps
            .iter()
            .map(|s| match s.kind {
                StepKind::Agent => Turn::output(&s.agent, s.text.as_str()),
                StepKind::Observation => Turn::observation(&s.agent, s.text.as_str()),
            })
            .collect(),
        success: t.success,
        answer: t.answer.as_deref(),
        score: t.score,
        meta: t.meta.as_ref(),
    };
    serde_json::to_string(&row).expect("a native row serialises")
}
