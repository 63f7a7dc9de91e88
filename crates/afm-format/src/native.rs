//! afm's native trajectory JSONL: the one definition of the schema.
//!
//! One record per line:
//!
//! ```text
//! {"id", "task", "trajectory": [{"agent","output"} | {"agent","observation"}],
//!  "success", "answer", "score"?, "meta"}
//! ```
//!
//! - `trajectory`: the steps in order; an agent's step has an `output`, a
//!   tool's step an `observation` (exactly one of the two).
//! - `success`: the verifier accepted `answer`; `score` (optional) a quality
//!   score from the source; `meta` whatever the writer knows about the
//!   task (for `afm-tasks`, `afm_tasks::TrajMeta`: how to re-solve it, its
//!   split, the injected mistakes).
//!
//! Writers: `afm-tasks` (the scripted agents, as
//! `NativeTrajectory<afm_tasks::TrajMeta>`) and `afm-agents` (a model run's
//! `TaskRun::to_native`). Reader: `afm-data`'s `ingest` (format `native`),
//! which accepts more than is written here (an `id` that is a number,
//! `success` as `"true"`/`0`/`1`, a missing `success`/`answer`/`meta`)
//! and names the field of every error; [`NativeTrajectory::to_record`] is
//! what it makes of a record written by this type.

use crate::record::{Step, StepKind, Trajectory};
use serde::{Deserialize, Serialize};

/// One step of a native trajectory: agents have an `output`, the tool an
/// `observation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observation: Option<String>,
}

impl Turn {
    /// An agent turn.
    pub fn output(agent: &str, text: impl Into<String>) -> Self {
        Self {
            agent: agent.to_string(),
            output: Some(text.into()),
            observation: None,
        }
    }

    /// A tool turn.
    pub fn observation(agent: &str, text: impl Into<String>) -> Self {
        Self {
            agent: agent.to_string(),
            output: None,
            observation: Some(text.into()),
        }
    }

    /// The turn's text (output or observation).
    pub fn text(&self) -> &str {
        self.output
            .as_deref()
            .or(self.observation.as_deref())
            .unwrap_or("")
    }

    /// The record step of this turn; `index` names it in the error when the
    /// turn has both or neither of `output` and `observation`.
    pub fn to_step(&self, index: usize) -> Result<Step, NativeError> {
        let (kind, text) = match (&self.output, &self.observation) {
            (Some(t), None) => (StepKind::Agent, t),
            (None, Some(t)) => (StepKind::Observation, t),
            _ => return Err(NativeError::StepShape(index)),
        };
        Ok(Step {
            agent: self.agent.clone(),
            kind,
            text: text.clone(),
        })
    }
}

/// A trajectory in afm's native JSONL format (one per line); `M` is the
/// writer's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NativeTrajectory<M = serde_json::Value> {
    pub id: String,
    pub task: String,
    pub trajectory: Vec<Turn>,
    pub success: bool,
    pub answer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    pub meta: M,
}

/// Why a native trajectory is not a record.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error("trajectory[{0}]: a step needs exactly one of `output` or `observation`")]
    StepShape(usize),
    #[error("field `meta`: {0}")]
    Meta(serde_json::Error),
}

impl<M: Serialize> NativeTrajectory<M> {
    /// The normalised record (what `afm-data` reads from this record's JSON
    /// line before its agents map and size checks): `success` and `answer`
    /// become `Some`, `meta` its JSON value (`None` when it is null).
    pub fn to_record(&self) -> Result<Trajectory, NativeError> {
        let steps = self
            .trajectory
            .iter()
            .enumerate()
            .map(|(i, t)| t.to_step(i))
            .collect::<Result<Vec<_>, _>>()?;
        let meta = serde_json::to_value(&self.meta).map_err(NativeError::Meta)?;
        Ok(Trajectory {
            id: self.id.clone(),
            task: self.task.clone(),
            steps,
            success: Some(self.success),
            score: self.score,
            answer: Some(self.answer.clone()),
            meta: (!meta.is_null()).then_some(meta),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NativeTrajectory {
        NativeTrajectory {
            id: "t1".into(),
            task: "Add 2 and 3.".into(),
            trajectory: vec![
                Turn::output("Coder", "2 + 3"),
                Turn::observation("Interpreter", "5"),
                Turn::output("Reviewer", "Checked. ANSWER: 5"),
            ],
            success: true,
            answer: "5".into(),
            score: None,
            meta: serde_json::json!({"family": "arith"}),
        }
    }

    /// The JSON shape is the documented one, field order included (the
    /// committed dataset is byte-compared).
    #[test]
    fn serialises_in_the_documented_shape() {
        let line = serde_json::to_string(&sample()).unwrap();
        assert_eq!(
            line,
            r#"{"id":"t1","task":"Add 2 and 3.","trajectory":[{"agent":"Coder","output":"2 + 3"},{"agent":"Interpreter","observation":"5"},{"agent":"Reviewer","output":"Checked. ANSWER: 5"}],"success":true,"answer":"5","meta":{"family":"arith"}}"#
        );
        let back: NativeTrajectory = serde_json::from_str(&line).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn to_record_maps_turns_to_steps() {
        let r = sample().to_record().unwrap();
        let kinds: Vec<StepKind> = r.steps.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [StepKind::Agent, StepKind::Observation, StepKind::Agent]
        );
        assert_eq!(r.steps[1].text, "5");
        assert_eq!((r.success, r.answer.as_deref()), (Some(true), Some("5")));
        assert_eq!(r.meta.unwrap()["family"], "arith");
        let mut bad = sample();
        bad.trajectory[2].observation = Some("x".into());
        let e = bad.to_record().unwrap_err().to_string();
        assert!(e.contains("trajectory[2]"), "{e}");
        let s = sample();
        let none = NativeTrajectory {
            id: s.id,
            task: s.task,
            trajectory: s.trajectory,
            success: false,
            answer: String::new(),
            score: Some(1.5),
            meta: (),
        }
        .to_record()
        .unwrap();
        assert_eq!((none.success, none.score), (Some(false), Some(1.5)));
        assert_eq!(none.meta, None);
    }
}
