//! Measuring the trained systems: the `eval`, `bench` and `curve` stages.

use crate::config::{PipelineConfig, MAS_AGENTS};
use crate::progress::{Counter, Progress};
use crate::stage::{self, Done};
use afm_agents::mas::Mas;
use afm_agents::{evaluate, EvalReport, Route, RunOptions, TaskRun};
use afm_bench::compare::{self, BenchOptions, System, TimingRun};
use afm_bench::CurvePoint;
use afm_model::Model;
use afm_tasks::Task;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};

/// The `eval` stage's result: both systems on the held-out tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    /// The AFM, with its answer agreement with the MAS.
    pub afm: EvalReport,
    pub mas: EvalReport,
}

/// The held-out tasks evaluated (the first `eval_limit`).
pub(crate) fn load_tasks(c: &PipelineConfig) -> Result<Vec<Task>> {
    let mut tasks = afm_tasks::load_tasks(&c.tasks)?;
    if c.eval_limit > 0 {
        tasks.truncate(c.eval_limit);
    }
    if tasks.is_empty() {
        bail!("{}: no tasks to evaluate", c.tasks.display());
    }
    Ok(tasks)
}

/// libtorch's thread count for decoding (`decode_threads`) while alive;
/// the previous count is restored on drop, so a training that follows (the
/// ablation's next variant) gets all its threads back.
pub(crate) struct DecodeThreads(i32);

impl DecodeThreads {
    pub(crate) fn set(c: &PipelineConfig) -> Self {
        let prev = tch::get_num_threads();
        if c.decode_threads > 0 {
            tch::set_num_threads(c.decode_threads as i32);
        }
        DecodeThreads(prev)
    }
}

impl Drop for DecodeThreads {
    fn drop(&mut self) {
        tch::set_num_threads(self.0);
    }
}

pub(crate) fn run_opts(c: &PipelineConfig, batch: usize) -> RunOptions {
    RunOptions {
        batch,
        max_new_tokens: c.max_new_tokens,
        bf16: false,
        seed: c.seed,
        // The AFM writes the hand-offs the MAS orchestrator fixes (the
        // Planner opens, the Reviewer reads observations) as prefill.
        route: Route::task_world(),
        ..RunOptions::default()
    }
}

/// `sys` on every task, one progress unit per task.
pub(crate) fn eval_system(
    sys: &System,
    tasks: &[Task],
    opts: &RunOptions,
    progress: &dyn Progress,
) -> Result<Vec<TaskRun>> {
    let what = format!("eval {}", sys.name());
    let mut bar = Counter::new(progress, &what, tasks.len() as u64);
    sys.run(tasks, opts, &mut |_| bar.inc(""))
}

/// Agent name -> its model's `final/` directory, in chain order.
pub(crate) fn mas_map(root: &Path) -> Vec<(String, PathBuf)> {
    MAS_AGENTS
        .iter()
        .map(|a| (a.to_string(), root.join(format!("models/mas-{a}/final"))))
        .collect()
}

/// What every measuring stage depends on: the four models (their training
/// stages' markers: AFM, then the agents), the held-out file and the
/// decoding settings.
#[derive(Serialize)]
pub(crate) struct Measured {
    models: Vec<String>,
    tasks: Vec<stage::FileStamp>,
    max_new_tokens: usize,
    seed: u64,
    decode_threads: usize,
}

impl Measured {
    pub(crate) fn new(c: &PipelineConfig, root: &Path) -> Self {
        let mut models = vec![stage::marker_text(&root.join("models/afm"))];
        for a in MAS_AGENTS {
            models.push(stage::marker_text(&root.join(format!("models/mas-{a}"))));
        }
        Measured {
            models,
            tasks: stage::stamps(std::slice::from_ref(&c.tasks)),
            max_new_tokens: c.max_new_tokens,
            seed: c.seed,
            decode_threads: c.decode_threads,
        }
    }
}

/// The fingerprints of stages `eval`, `bench` and `curve`: each covers
/// exactly the settings its outputs depend on (`tasks`: how many of the
/// held-out tasks it runs).
pub(crate) fn measure_fingerprints(
    c: &PipelineConfig,
    on: &Measured,
    tasks: usize,
) -> Result<[String; 3]> {
    #[derive(Serialize)]
    struct Key<'a> {
        stage: &'static str,
        on: &'a Measured,
        tasks: usize,
        settings: serde_json::Value,
    }
    let key = |stage, tasks, settings| {
        stage::fingerprint(&Key {
            stage,
            on,
            tasks,
            settings,
        })
    };
    Ok([
        key("eval-v2", tasks, json!({ "eval_batch": c.eval_batch }))?,
        key(
            "bench-v2",
            c.bench_tasks.min(tasks),
            json!({ "bench_batches": c.bench_batches }),
        )?,
        key(
            "curve-v2",
            c.curve_tasks.min(tasks),
            json!({ "eval_batch": c.eval_batch, "curve_points": c.curve_points }),
        )?,
    ])
}

/// Stage `eval`: both systems on the held-out tasks; their runs and
/// reports are written to `dir`.
pub(crate) fn eval_stage(
    dir: &Path,
    fp: &str,
    c: &PipelineConfig,
    (afm, mas): (&Model, &Mas),
    tasks: &[Task],
    progress: &dyn Progress,
) -> Result<Done<EvalSummary>> {
    stage::run("eval", dir, fp, progress, |out| {
        let opts = run_opts(c, c.eval_batch);
        let mas_runs = eval_system(&System::Mas(mas), tasks, &opts, progress)?;
        let afm_runs = eval_system(&System::Afm(afm), tasks, &opts, progress)?;
        afm_agents::write_jsonl(&mas_runs, &out.join("mas.jsonl"))?;
        afm_agents::write_jsonl(&afm_runs, &out.join("afm.jsonl"))?;
        let reference: Vec<afm_agents::ReferenceAnswer> = mas_runs
            .iter()
            .map(|r| afm_agents::ReferenceAnswer {
                id: r.id.clone(),
                answer: r.answer.clone(),
            })
            .collect();
        let s = EvalSummary {
            afm: evaluate(&afm_runs, Some(&reference)),
            mas: evaluate(&mas_runs, None),
        };
        let write = |name: &str, r: &EvalReport| -> Result<()> {
            afm_tokenizer::atomic::write(&out.join(name), serde_json::to_string_pretty(r)?)?;
            Ok(())
        };
        write("afm.json", &s.afm)?;
        write("mas.json", &s.mas)?;
        Ok(s)
    })
}

/// Stage `bench`: latency and throughput of both systems, interleaved.
pub(crate) fn bench_stage(
    dir: &Path,
    fp: &str,
    c: &PipelineConfig,
    systems: &[System; 2],
    tasks: &[Task],
    progress: &dyn Progress,
) -> Result<Done<Vec<TimingRun>>> {
    let bopts = BenchOptions {
        bench_tasks: c.bench_tasks,
        batches: c.bench_batches.clone(),
        run: run_opts(c, 1),
        prices: c.prices,
    };
    stage::run("bench", dir, fp, progress, |out| {
        let n = c.bench_tasks.min(tasks.len()) as u64 * c.bench_batches.len() as u64 * 2;
        let mut bar = Counter::new(progress, "bench", n);
        let t = compare::timings(systems, tasks, &bopts, &mut |s, b, _| {
            bar.inc(&format!("{s} b{b}"))
        })?;
        drop(bar);
        afm_tokenizer::atomic::write(&out.join("timings.json"), serde_json::to_string_pretty(&t)?)?;
        Ok(t)
    })
}

/// The weights of training run `run` at curve point `k` of `n`: its
/// snapshot, or `final/` at `k == n`; with its training seconds and steps.
/// `None` when the run saved no such snapshot (a step longer than 1/n of
/// its budget skips one).
fn curve_model(run: &Path, k: usize, n: usize) -> Result<Option<(PathBuf, f64, usize)>> {
    fn read<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T> {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| p.display().to_string())
    }
    if k < n {
        let d = afm_train::snapshot_dir(run, k, n);
        if !d.join("snapshot.json").is_file() {
            return Ok(None);
        }
        let i: afm_train::SnapshotInfo = read(&d.join("snapshot.json"))?;
        Ok(Some((d, i.train_secs, i.step)))
    } else {
        let s: afm_train::TrainSummary = read(&run.join("summary.json"))?;
        Ok(Some((run.join("final"), s.train_secs, s.steps)))
    }
}

/// Evaluate every learning-curve snapshot of both systems on `subset`, and
/// the final models as the last point. A system's training seconds at a
/// point: the AFM's, or the sum of the three agent models'.
pub(crate) fn learning_curve(
    c: &PipelineConfig,
    root: &Path,
    subset: &[Task],
    progress: &dyn Progress,
) -> Result<Vec<CurvePoint>> {
    let device = afm_model::parse_device(&c.device)?;
    let n = c.curve_points;
    let lanes = crate::config::mas_lanes(c)?;
    let opts = run_opts(c, c.eval_batch);
    let mut points = Vec::new();
    let mut bar = Counter::new(progress, "curve", (2 * n) as u64);
    let mut point = |system: &System, secs: f64, step: usize| -> Result<()> {
        let runs = system.run(subset, &opts, &mut |_| {})?;
        points.push(CurvePoint {
            system: system.name().to_ascii_uppercase(),
            train_secs: secs,
            step,
            tasks: subset.len(),
            success_rate: evaluate(&runs, None).success_rate,
        });
        bar.inc("");
        Ok(())
    };
    for k in 1..=n {
        if let Some((dir, secs, step)) = curve_model(&root.join("models/afm"), k, n)? {
            point(&System::Afm(&Model::load(&dir, device)?), secs, step)?;
        }
        // The MAS: every agent's model at the same fraction of its budget;
        // its training wall time is the longest lane's.
        let (mut map, mut secs, mut step) = (Vec::new(), 0.0f64, 0);
        for lane in &lanes {
            let mut lane_secs = 0.0;
            for a in &lane.agents {
                let dir = root.join(format!("models/mas-{a}"));
                if let Some((dir, s, st)) = curve_model(&dir, k, n)? {
                    map.push((a.to_string(), dir));
                    lane_secs += s;
                    step += st;
                }
            }
            secs = secs.max(lane_secs);
        }
        if map.len() == MAS_AGENTS.len() {
            point(&System::Mas(&Mas::load(&map, device)?), secs, step)?;
        }
    }
    drop(bar);
    Ok(points)
}
