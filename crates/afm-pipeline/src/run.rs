//! The stage graph of one pipeline run, and its report.
//!
//! data -> prepare-afm, prepare-mas-AGENT -> train-mas-AGENT ->
//! train-afm -> eval -> bench -> curve -> reference -> report.

use crate::config::{afm_budget, mas_budget, mas_lanes, PipelineConfig, MAS_AGENTS};
use crate::data;
use crate::eval::{self, DecodeThreads};
use crate::prepare::prepare_stage;
use crate::progress::Progress;
use crate::stage::{self, Done};
use crate::train::{train_stage, TrainSpec};
use afm_agents::mas::Mas;
use afm_bench::compare::{self, System};
use afm_bench::{Machine, Report};
use afm_model::Model;
use afm_train::TrainSummary;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// Skip the stages recorded complete with the same fingerprint, resume
    /// interrupted ones, redo the rest.
    #[default]
    Resume,
    /// Delete the run's directory first.
    Fresh,
}

/// The stages' records for the report: wall times, summaries, notes.
#[derive(Default)]
struct Book {
    wall: BTreeMap<String, f64>,
    stages: BTreeMap<String, serde_json::Value>,
    notes: Vec<String>,
}

impl Book {
    /// Record stage `key` ("4 train-afm"; "... (cached)" when skipped).
    fn record<S: Serialize>(&mut self, key: &str, d: &Done<S>) -> Result<()> {
        let k = if d.cached {
            format!("{key} (cached)")
        } else {
            key.to_string()
        };
        self.wall.insert(k.clone(), d.wall_s);
        self.stages.insert(k, serde_json::to_value(&d.summary)?);
        Ok(())
    }
}

/// Run the pipeline on `config` (validated here again), reporting through
/// `progress`; writes `report.json`, `report.md` and the charts into the
/// run's directory and returns the report.
pub fn run(config: &PipelineConfig, start: Start, progress: &dyn Progress) -> Result<Report> {
    let c = config.clone().validated()?;
    let root = c.root();
    if start == Start::Fresh && root.exists() {
        std::fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let cfg_path = root.join("pipeline_config.toml");
    afm_tokenizer::atomic::write(&cfg_path, toml::to_string_pretty(&c)?)
        .with_context(|| format!("writing {}", cfg_path.display()))?;
    let t_all = std::time::Instant::now();
    let mut book = Book::default();
    let mas_ok = prepare_all(&c, &root, &mut book, progress)?;
    train_all(&c, &root, mas_ok, &mut book, progress)?;
    let mut report = Report {
        name: c.name.clone(),
        machine: Machine::detect(),
        preset: c.preset.clone(),
        device: c.device.clone(),
        price_table: c.prices,
        ..Report::default()
    };
    if mas_ok {
        measure(&c, &root, &mut report, &mut book, progress)?;
    }
    report.compute_ratios();
    book.wall.insert(
        "total (this invocation)".into(),
        t_all.elapsed().as_secs_f64(),
    );
    report.wall_s = book.wall;
    report.stages = book.stages;
    book.notes.push(
        "latency is wall-clock per task at batch 1 on the bench subset; tokens, calls, cost and success \
         are totals over the evaluated held-out tasks; cost uses the price table above (assumed prices, not measured); \
         answer agreement counts a task as agreeing when both systems give the same final answer, or both give none"
            .into(),
    );
    report.notes = book.notes;
    report.write(&root)?;
    Ok(report)
}

/// Stages `data` and `prepare-*`. Returns whether the data's agents are the
/// task world's chain (else the MAS, distillation, eval and bench are
/// skipped, with a note).
fn prepare_all(
    c: &PipelineConfig,
    root: &Path,
    book: &mut Book,
    progress: &dyn Progress,
) -> Result<bool> {
    let (ins, d) = data::inputs(root, c, progress)?;
    if let Some(d) = &d {
        book.record("0 data", d)?;
    }
    data::check_inputs(&ins, c, progress)?;
    let afm_dir = root.join("prepared/afm");
    let d = prepare_stage("prepare-afm", &afm_dir, c, &ins, None, progress)?;
    book.record("1 prepare-afm", &d)?;
    let roles = &d.summary.roles;
    let mas_ok = MAS_AGENTS.iter().all(|a| roles.iter().any(|r| r == a));
    if !mas_ok {
        book.notes.push(format!(
            "the data's agents {roles:?} are not the task world's Planner/Coder/Reviewer chain: \
             the MAS baseline, distillation, evaluation and bench need that chain and were skipped"
        ));
        return Ok(false);
    }
    for ag in MAS_AGENTS {
        let name = format!("prepare-mas-{ag}");
        let dir = root.join(format!("prepared/mas-{ag}"));
        let d = prepare_stage(&name, &dir, c, &ins, Some(ag), progress)?;
        book.record(&format!("2 {name}"), &d)?;
    }
    Ok(true)
}

/// Stages `train-mas-<Agent>` (one model per agent: the multi-agent
/// system) and `train-afm` (the one model).
fn train_all(
    c: &PipelineConfig,
    root: &Path,
    mas_ok: bool,
    book: &mut Book,
    progress: &dyn Progress,
) -> Result<()> {
    if mas_ok {
        for (ag, d) in train_mas(c, root, progress)? {
            book.record(&format!("3 train-mas-{ag}"), &d)?;
        }
    }
    let teachers: BTreeMap<String, PathBuf> = if c.distill && mas_ok {
        eval::mas_map(root).into_iter().collect()
    } else {
        BTreeMap::new()
    };
    let spec = TrainSpec {
        data: &root.join("prepared/afm"),
        budget: &afm_budget(c)?,
        teachers,
        role_embeddings: c.role_embeddings,
        boundary: c.boundary,
        seed: c.seed,
        threads: None,
        best_of: None,
    };
    let d = train_stage("train-afm", &root.join("models/afm"), c, spec, progress)?;
    book.record("4 train-afm", &d)
}

/// Stages `train-mas-<Agent>`: the agents' models, side by side in
/// `mas_lanes` lanes (one thread each, sharing the cores), or one after
/// another with every core. Returns each stage's result in chain order.
fn train_mas(
    c: &PipelineConfig,
    root: &Path,
    progress: &dyn Progress,
) -> Result<Vec<(&'static str, Done<TrainSummary>)>> {
    let lanes = mas_lanes(c)?;
    let threads = lane_threads(c, lanes.len());
    let lane = |agents: &[&'static str]| -> Result<Vec<(&'static str, Done<TrainSummary>)>> {
        let mut done = Vec::new();
        for &ag in agents {
            let spec = TrainSpec {
                data: &root.join(format!("prepared/mas-{ag}")),
                budget: &mas_budget(c, ag)?,
                teachers: BTreeMap::new(),
                role_embeddings: c.role_embeddings,
                boundary: false,
                seed: c.seed,
                threads,
                best_of: Some(ag.to_string()),
            };
            let name = format!("train-mas-{ag}");
            let dir = root.join(format!("models/mas-{ag}"));
            done.push((ag, train_stage(&name, &dir, c, spec, progress)?));
        }
        Ok(done)
    };
    let mut done = if lanes.len() == 1 {
        lane(&lanes[0].agents)?
    } else {
        // libtorch's thread count is per OS thread (OpenMP) and global
        // (its default for new threads): each lane sets its own, and this
        // thread's is put back for the AFM.
        let before = tch::get_num_threads();
        let results: Vec<Result<_>> = std::thread::scope(|s| {
            let handles: Vec<_> = lanes.iter().map(|l| s.spawn(|| lane(&l.agents))).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a MAS training lane panicked")))
                })
                .collect()
        });
        tch::set_num_threads(before);
        let mut all = Vec::new();
        for r in results {
            all.extend(r?);
        }
        all
    };
    done.sort_by_key(|(ag, _)| MAS_AGENTS.iter().position(|a| a == ag));
    Ok(done)
}

/// libtorch threads of each of `lanes` concurrent trainings: an equal
/// share of `train.threads` (0 = every core), at least 1; `None` (the
/// trainer's own default) when the lanes run one after another.
fn lane_threads(c: &PipelineConfig, lanes: usize) -> Option<usize> {
    if lanes <= 1 {
        return None;
    }
    let cores = match c.train.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    Some((cores / lanes).max(1))
}

/// Stages `eval`, `bench`, `curve` and the scripted reference, into the report.
fn measure(
    c: &PipelineConfig,
    root: &Path,
    report: &mut Report,
    book: &mut Book,
    progress: &dyn Progress,
) -> Result<()> {
    let device = afm_model::parse_device(&c.device)?;
    let tasks = eval::load_tasks(c)?;
    let afm = Model::load(&root.join("models/afm/final"), device)?;
    let mas = Mas::load(&eval::mas_map(root), device)?;
    let on = eval::Measured::new(c, root);
    let [eval_fp, bench_fp, curve_fp] = eval::measure_fingerprints(c, &on, tasks.len())?;
    let _threads = DecodeThreads::set(c);
    let d = eval::eval_stage(
        &root.join("eval"),
        &eval_fp,
        c,
        (&afm, &mas),
        &tasks,
        progress,
    )?;
    book.record("5 eval", &d)?;
    let (afm_rep, mas_rep) = (d.summary.afm, d.summary.mas);

    let systems = [System::Afm(&afm), System::Mas(&mas)];
    let d = eval::bench_stage(
        &root.join("bench"),
        &bench_fp,
        c,
        &systems,
        &tasks,
        progress,
    )?;
    book.record("6 bench", &d)?;
    report.afm = compare::metrics(&systems[0], &afm_rep, &d.summary, &c.prices);
    report.mas = compare::metrics(&systems[1], &mas_rep, &d.summary, &c.prices);
    report.answer_agreement = afm_rep.answer_agreement.unwrap_or(f64::NAN);

    // The learning curve: both systems' snapshots on a fixed subset.
    if c.curve_points > 1 && c.curve_tasks > 0 {
        let subset = &tasks[..c.curve_tasks.min(tasks.len())];
        let d = stage::run("curve", &root.join("curve"), &curve_fp, progress, |_| {
            eval::learning_curve(c, root, subset, progress)
        })?;
        book.record("7 curve", &d)?;
        report.learning_curve = d.summary;
    }
    // The reference: the scripted agents the data came from.
    if c.reference && c.input.is_empty() {
        let t0 = std::time::Instant::now();
        report.reference = Some(afm_bench::scripted_reference(&tasks, c.seed)?);
        book.wall
            .insert("8 reference".into(), t0.elapsed().as_secs_f64());
    }
    Ok(())
}
