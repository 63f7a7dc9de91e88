//! Evaluation: aggregate [`TaskRun`]s into an [`EvalReport`].
//!
//! - `success_rate`: fraction of runs whose chain finished and whose final
//!   answer the task verifier accepts.
//! - `answer_agreement`: against a reference run (a previous eval's
//!   trajectories, or any JSONL/JSON of `{"id","answer"}` records), the
//!   fraction of task ids present in both whose final answers are equal
//!   (compared after trimming whitespace; `""` is no answer; two missing
//!   answers count as equal: both runs gave none). 0 when no id is shared
//!   (`compared` says how many were).
//! - `tokens_prefill`, `tokens_decode`, `calls`, `tool_calls`,
//!   `tool_successes`: totals over the runs (definitions in
//!   [`crate::trajectory::RunStats`]), plus per-task means.
//! - `latency_ms_p50` / `latency_ms_p95`: nearest-rank percentiles of the
//!   per-task latency (amortised over the batch, see `RunStats`).
//! - `validity`: per agent (and per tool), turns and the fraction well-formed.

use crate::trajectory::TaskRun;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Validity of one agent's turns over a whole evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentReport {
    pub turns: usize,
    pub valid: usize,
    /// `valid / turns` (0 when there were no turns).
    pub rate: f64,
}

/// The aggregate numbers of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// `"afm"`, `"mas"` (or `"mixed"`).
    pub runtime: String,
    pub tasks: usize,
    pub successes: usize,
    pub success_rate: f64,
    /// Present when a reference was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer_agreement: Option<f64>,
    /// Task ids shared with the reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compared: Option<usize>,
    pub tokens_prefill: usize,
    pub tokens_decode: usize,
    pub calls: usize,
    pub tool_calls: usize,
    pub tool_successes: usize,
    pub tokens_prefill_per_task: f64,
    pub tokens_decode_per_task: f64,
    pub calls_per_task: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p95: f64,
    pub latency_ms_mean: f64,
    /// Largest batch used.
    pub batch_size: usize,
    /// Sum of the batches' wall-clock times.
    pub wall_ms: f64,
    pub validity: BTreeMap<String, AgentReport>,
    /// Failure reasons and how many runs had each.
    pub failures: BTreeMap<String, usize>,
}

/// One reference answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceAnswer {
    pub id: String,
    #[serde(default)]
    pub answer: Option<String>,
}

impl ReferenceAnswer {
    /// The final answers of runs, as a reference for [`evaluate`].
    pub fn from_runs(runs: &[TaskRun]) -> Vec<ReferenceAnswer> {
        runs.iter()
            .map(|r| ReferenceAnswer {
                id: r.id.clone(),
                answer: r.answer.clone(),
            })
            .collect()
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted values; 0 when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// A trimmed answer; empty counts as none (native records write `""`).
fn norm(a: &Option<String>) -> Option<&str> {
    a.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Aggregate runs, optionally against reference answers.
pub fn evaluate(runs: &[TaskRun], reference: Option<&[ReferenceAnswer]>) -> EvalReport {
    let n = runs.len();
    let per = |x: usize| if n == 0 { 0.0 } else { x as f64 / n as f64 };
    let sum = |f: fn(&TaskRun) -> usize| runs.iter().map(f).sum::<usize>();
    let successes = runs.iter().filter(|r| r.success).count();
    let lat: Vec<f64> = runs.iter().map(|r| r.stats.latency_ms).collect();

    let mut runtimes: Vec<&str> = runs.iter().map(|r| r.runtime.as_str()).collect();
    runtimes.sort_unstable();
    runtimes.dedup();
    let runtime = match runtimes.as_slice() {
        [one] => one.to_string(),
        [] => String::new(),
        _ => "mixed".into(),
    };

    let mut validity: BTreeMap<String, AgentReport> = BTreeMap::new();
    for r in runs {
        for (agent, v) in &r.validity {
            let e = validity.entry(agent.clone()).or_insert(AgentReport {
                turns: 0,
                valid: 0,
                rate: 0.0,
            });
            e.turns += v.turns;
            e.valid += v.valid;
        }
    }
    for e in validity.values_mut() {
        e.rate = if e.turns == 0 {
            0.0
        } else {
            e.valid as f64 / e.turns as f64
        };
    }

    let mut failures = BTreeMap::new();
    for r in runs {
        if let Some(f) = &r.failure {
            *failures.entry(f.clone()).or_insert(0) += 1;
        }
    }

    // Wall time: each batch once (its runs share batch_latency_ms).
    let wall_ms = runs
        .iter()
        .map(|r| r.stats.batch_latency_ms / r.stats.batch_size.max(1) as f64)
        .sum();

    let (answer_agreement, compared) = match reference {
        None => (None, None),
        Some(reference) => {
            let refs: HashMap<&str, &Option<String>> = reference
                .iter()
                .map(|r| (r.id.as_str(), &r.answer))
                .collect();
            let mut common = 0;
            let mut same = 0;
            for r in runs {
                if let Some(a) = refs.get(r.id.as_str()) {
                    common += 1;
                    same += usize::from(norm(a) == norm(&r.answer));
                }
            }
            let agreement = if common == 0 {
                0.0
            } else {
                same as f64 / common as f64
            };
            (Some(agreement), Some(common))
        }
    };

    EvalReport {
        runtime,
        tasks: n,
        successes,
        success_rate: per(successes),
        answer_agreement,
        compared,
        tokens_prefill: sum(|r| r.stats.tokens_prefill),
        tokens_decode: sum(|r| r.stats.tokens_decode),
        calls: sum(|r| r.stats.calls),
        tool_calls: sum(|r| r.stats.tool_calls),
        tool_successes: sum(|r| r.stats.tool_successes),
        tokens_prefill_per_task: per(sum(|r| r.stats.tokens_prefill)),
        tokens_decode_per_task: per(sum(|r| r.stats.tokens_decode)),
        calls_per_task: per(sum(|r| r.stats.calls)),
        latency_ms_p50: percentile(&lat, 50.0),
        latency_ms_p95: percentile(&lat, 95.0),
        latency_ms_mean: if n == 0 {
            0.0
        } else {
            lat.iter().sum::<f64>() / n as f64
        },
        batch_size: runs.iter().map(|r| r.stats.batch_size).max().unwrap_or(0),
        wall_ms,
        validity,
        failures,
    }
}

/// Read reference answers: JSON lines (one record per line) or one JSON
/// array of records, each with an `id` and an `answer` (string or null;
/// other fields are ignored). Errors name the file and line.
pub fn load_reference(path: &Path) -> Result<Vec<ReferenceAnswer>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading reference {}", path.display()))?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        return serde_json::from_str(trimmed).with_context(|| {
            format!(
                "{}: expected a JSON array of {{\"id\", \"answer\"}} records",
                path.display()
            )
        });
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: ReferenceAnswer = serde_json::from_str(line).with_context(|| {
            format!(
                "{}:{}: expected a JSON record with \"id\" (string) and \"answer\" (string or null)",
                path.display(),
                i + 1
            )
        })?;
        out.push(r);
    }
    if out.is_empty() {
        bail!("{}: no reference records", path.display());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trajectory::{RunStats, Validity};

    fn run(id: &str, answer: Option<&str>, success: bool, lat: f64) -> TaskRun {
        TaskRun {
            id: id.into(),
            task: "t".into(),
            trajectory: vec![],
            answer: answer.map(String::from),
            success,
            runtime: "afm".into(),
            failure: (!success).then(|| "no final answer".to_string()),
            unattributed: None,
            stats: RunStats {
                tokens_prefill: 10,
                tokens_decode: 5,
                calls: 1,
                latency_ms: lat,
                batch_latency_ms: lat,
                batch_size: 1,
                ..Default::default()
            },
            validity: [("Coder".to_string(), Validity { turns: 2, valid: 1 })].into(),
        }
    }

    #[test]
    fn aggregates_and_agreement() {
        let runs = vec![
            run("a", Some("1"), true, 10.0),
            run("b", Some("2"), false, 20.0),
            run("c", None, false, 30.0),
            run("d", Some("4"), true, 40.0),
        ];
        let reference = vec![
            ReferenceAnswer {
                id: "a".into(),
                answer: Some(" 1 ".into()),
            },
            ReferenceAnswer {
                id: "b".into(),
                answer: Some("3".into()),
            },
            ReferenceAnswer {
                id: "c".into(),
                answer: None,
            },
            ReferenceAnswer {
                id: "z".into(),
                answer: Some("9".into()),
            },
        ];
        let r = evaluate(&runs, Some(&reference));
        assert_eq!(r.tasks, 4);
        assert_eq!(r.success_rate, 0.5);
        assert_eq!(r.compared, Some(3));
        assert!((r.answer_agreement.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.tokens_prefill, 40);
        assert_eq!(r.tokens_decode_per_task, 5.0);
        assert_eq!(r.latency_ms_p50, 20.0);
        assert_eq!(r.latency_ms_p95, 40.0);
        assert_eq!(r.validity["Coder"].rate, 0.5);
        assert_eq!(r.failures["no final answer"], 2);
        assert_eq!(r.wall_ms, 100.0);
    }

    #[test]
    fn reference_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ref.jsonl");
        std::fs::write(
            &p,
            "{\"id\":\"a\",\"answer\":\"1\",\"x\":3}\n\n{\"id\":\"b\",\"answer\":null}\n",
        )
        .unwrap();
        let r = load_reference(&p).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].answer, None);
        std::fs::write(&p, "{\"id\":\"a\"}\n{\"answer\":\"1\"}\n").unwrap();
        let e = format!("{:#}", load_reference(&p).unwrap_err());
        assert!(e.contains("ref.jsonl:2"), "{e}");
        let q = dir.path().join("ref.json");
        std::fs::write(&q, "[{\"id\":\"a\",\"answer\":\"1\"}]").unwrap();
        assert_eq!(load_reference(&q).unwrap().len(), 1);
    }
}
