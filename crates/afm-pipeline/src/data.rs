//! The `data` stage: the training trajectories.

use crate::config::PipelineConfig;
use crate::progress::{Counter, Event, Progress};
use crate::stage::{self, Done};
use afm_tasks::{AgentConfig, Task, Trajectory};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The shipped trajectories (the first 4,000 of the generated default data).
pub const SHIPPED_TRAJECTORIES: &str = "datasets/scripted/train.jsonl";

/// The `data` stage's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    /// Train tasks generated.
    pub tasks: usize,
    /// Their generator seed.
    pub seed: u64,
    /// Fraction the scripted agents solved.
    pub scripted_success: f64,
    /// The trajectories, relative to the stage's directory.
    pub file: String,
}

/// Everything that determines the `data` stage's output.
#[derive(Serialize)]
struct DataKey {
    stage: &'static str,
    train_tasks: usize,
    task_repeats: usize,
    seed: u64,
    held_out: Vec<stage::FileStamp>,
}

/// The training trajectories: the user's `input`; else the scripted
/// agents' trajectories on `train_tasks` generated tasks (the `data` stage,
/// cached in `<run>/data`); else (`train_tasks = 0`) the shipped
/// [`SHIPPED_TRAJECTORIES`]. The stage's result comes back when the stage
/// ran (or was found complete).
pub(crate) fn inputs(
    root: &Path,
    c: &PipelineConfig,
    progress: &dyn Progress,
) -> Result<(Vec<PathBuf>, Option<Done<DataSummary>>)> {
    if !c.input.is_empty() {
        return Ok((c.input.clone(), None));
    }
    if c.train_tasks == 0 {
        return Ok((vec![PathBuf::from(SHIPPED_TRAJECTORIES)], None));
    }
    let (n, seed) = (c.train_tasks, afm_tasks::DEFAULT_DATASET_SEED);
    let dir = root.join("data");
    let fp = stage::fingerprint(&DataKey {
        stage: "data-v3",
        train_tasks: n,
        task_repeats: c.task_repeats,
        seed,
        held_out: stage::stamps(std::slice::from_ref(&c.tasks)),
    })?;
    let d = stage::run("data", &dir, &fp, progress, |out| {
        let tasks = match c.task_repeats {
            1 => afm_tasks::generate(seed, n, 0)?.0,
            r => afm_tasks::sample_train(seed, n, r)?,
        };
        check_disjoint(&tasks, &c.tasks)?;
        let mut bar = Counter::new(progress, "data", tasks.len() as u64);
        let trajs = solve_scripted(
            &tasks,
            &afm_tasks::default_dataset_config(),
            "generated train tasks",
            &mut || bar.inc(""),
        )?;
        drop(bar);
        afm_tasks::save_trajectories(&out.join("scripted.jsonl"), &trajs)?;
        let ok = trajs.iter().filter(|t| t.success).count();
        Ok(DataSummary {
            tasks: n,
            seed,
            scripted_success: ok as f64 / n.max(1) as f64,
            file: "scripted.jsonl".into(),
        })
    })?;
    Ok((vec![dir.join("scripted.jsonl")], Some(d)))
}

/// The generator's split is a function of the task, so no train task can
/// be held out; check it against the file actually evaluated.
fn check_disjoint(tasks: &[Task], held_out: &Path) -> Result<()> {
    let held: std::collections::HashSet<String> = afm_tasks::load_tasks(held_out)?
        .iter()
        .map(Task::key)
        .collect();
    if let Some(t) = tasks.iter().find(|t| held.contains(&t.key())) {
        bail!(
            "generated train task {} ({:?}) is also in the held-out file {}",
            t.id,
            t.prompt,
            held_out.display()
        );
    }
    Ok(())
}

/// Check that the inputs exist and report them.
pub(crate) fn check_inputs(
    ins: &[PathBuf],
    c: &PipelineConfig,
    progress: &dyn Progress,
) -> Result<()> {
    for p in ins.iter().chain([&c.tasks]) {
        if !p.exists() {
            bail!(
                "{}: not found (run from the repository root, or pass --input/--tasks)",
                p.display()
            );
        }
    }
    progress.event(Event::Note(&format!(
        "[data] trajectories: {:?}; held-out tasks: {}",
        ins,
        c.tasks.display()
    )));
    Ok(())
}

/// The scripted agents' trajectory on every task; `on_task` is called after
/// each. An error names `origin`, the task's line (1-based) and its family
/// and op when a task has no reference solution.
pub fn solve_scripted(
    tasks: &[Task],
    cfg: &AgentConfig,
    origin: &str,
    on_task: &mut dyn FnMut(),
) -> Result<Vec<Trajectory>> {
    let mut trajs = Vec::with_capacity(tasks.len());
    for (i, t) in tasks.iter().enumerate() {
        let tr = afm_tasks::solve(t, cfg).with_context(|| {
            format!(
                "{origin}:{}: task {} has no reference solution (family {:?}, op {:?})",
                i + 1,
                t.id,
                t.family,
                t.op
            )
        })?;
        trajs.push(tr);
        on_task();
    }
    Ok(trajs)
}
