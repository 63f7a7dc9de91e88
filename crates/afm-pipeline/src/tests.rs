//! The crate's tests: the stage runner, fingerprints, the `data` stage, and
//! end-to-end runs of the whole pipeline on the `tiny` preset. One test
//! binary for the crate (see Cargo.toml).

use crate::data::inputs;
use crate::prepare::PrepareKey;
use crate::progress::{Event, Progress, Quiet, StageStatus};
use crate::stage::{fingerprint, run, MARKER};
use crate::{DataSummary, PipelineConfig, Start, SHIPPED_TRAJECTORIES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct N {
    n: u32,
}

fn n(n: u32) -> anyhow::Result<N> {
    Ok(N { n })
}

#[test]
fn skips_when_complete_and_reruns_when_changed_or_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("s");
    let mut calls = 0;
    let q = &Quiet;
    let a = run("s", &d, "fp1", q, |_| {
        calls += 1;
        n(1)
    })
    .unwrap();
    assert!(!a.cached);
    let b = run("s", &d, "fp1", q, |_| {
        calls += 1;
        n(2)
    })
    .unwrap();
    assert!(b.cached);
    assert_eq!(b.summary, N { n: 1 });
    let c = run("s", &d, "fp2", q, |_| {
        calls += 1;
        n(3)
    })
    .unwrap();
    assert!(!c.cached);
    // Changed inputs start over in an emptied directory.
    std::fs::write(d.join("old-checkpoint"), "x").unwrap();
    let c2 = run("s", &d, "fp2b", q, |dir| {
        calls += 1;
        assert!(!dir.join("old-checkpoint").exists(), "stale output kept");
        n(0)
    })
    .unwrap();
    assert!(!c2.cached);
    // A failing (or killed) body leaves an incomplete marker: the next run
    // with the same inputs runs again over what is there.
    assert!(run("s", &d, "fp3", q, |dir| -> anyhow::Result<N> {
        std::fs::write(dir.join("partial"), "x").unwrap();
        anyhow::bail!("boom")
    })
    .is_err());
    let e = run("s", &d, "fp3", q, |dir| {
        calls += 1;
        assert!(
            dir.join("partial").exists(),
            "an interrupted run's output was lost"
        );
        n(0)
    })
    .unwrap();
    assert!(!e.cached);
    assert!(
        run("s", &d, "fp3", q, |_| -> anyhow::Result<N> {
            anyhow::bail!("not run")
        })
        .unwrap()
        .cached
    );
    // A directory without a marker is emptied before running.
    let u = dir.path().join("u");
    std::fs::create_dir_all(&u).unwrap();
    std::fs::write(u.join("stray"), "x").unwrap();
    run("u", &u, "fp", q, |dir| {
        assert!(!dir.join("stray").exists());
        n(0)
    })
    .unwrap();
    assert_eq!(calls, 4);
}

/// A complete marker whose summary is not the stage's summary type (written
/// by another afm) is not trusted: the stage reruns in an emptied directory.
#[test]
fn a_summary_of_another_type_reruns_the_stage() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("s");
    run("s", &d, "fp", &Quiet, |dir| {
        std::fs::write(dir.join("out"), "x").unwrap();
        n(1)
    })
    .unwrap();
    let seen = Mutex::new(Vec::new());
    let rec = |e: Event<'_>| {
        if let Event::Stage { status, .. } = e {
            seen.lock().unwrap().push(status);
        }
    };
    let r = run("s", &d, "fp", &rec, |dir| {
        assert!(!dir.join("out").exists());
        Ok(DataSummary {
            tasks: 1,
            seed: 2,
            scripted_success: 0.5,
            file: "f".into(),
        })
    })
    .unwrap();
    assert!(!r.cached);
    assert_eq!(*seen.lock().unwrap(), [StageStatus::InputsChanged]);
    let again = run("s", &d, "fp", &Quiet, |_| -> anyhow::Result<DataSummary> {
        anyhow::bail!("not run")
    })
    .unwrap();
    assert!(again.cached && again.summary.seed == 2);
}

/// A full disk while the `complete` marker is written: the stage fails with
/// the marker's path in the error, the old (incomplete) marker stays whole,
/// and the next run redoes the stage instead of trusting it.
#[test]
fn failed_marker_write_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("s");
    let Err(e) = run("s", &d, "fp", &Quiet, |dir| {
        std::fs::write(dir.join("out"), "x").unwrap();
        // The disk is full from here on: the `complete` marker fails.
        std::mem::forget(afm_tokenizer::atomic::testing::fail_after(0));
        n(1)
    }) else {
        panic!("the `complete` marker write must fail")
    };
    drop(afm_tokenizer::atomic::testing::fail_after(0)); // disarms
    let msg = format!("{e:#}");
    assert!(msg.contains(".afm-stage.json"), "{msg}");
    assert!(msg.contains("no space left"), "{msg}");
    let text = std::fs::read_to_string(d.join(MARKER)).unwrap();
    let m: serde_json::Value = serde_json::from_str(&text).expect("the old marker is whole");
    assert_eq!(m["complete"], false);
    let leftovers: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let mut ran = false;
    let r = run("s", &d, "fp", &Quiet, |dir| {
        ran = true;
        assert!(dir.join("out").exists());
        n(2)
    })
    .unwrap();
    assert!(ran && !r.cached, "an incomplete stage was trusted");
    // Temporaries a killed run left are removed when the stage resumes.
    std::fs::create_dir_all(d.join("sub/.x.tmp-1-2")).unwrap();
    std::fs::write(d.join(".out.tmp-3-4"), "x").unwrap();
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join(MARKER)).unwrap()).unwrap();
    m["complete"] = false.into();
    std::fs::write(d.join(MARKER), m.to_string()).unwrap();
    run("s", &d, "fp", &Quiet, |_| n(3)).unwrap();
    assert!(!d.join("sub/.x.tmp-1-2").exists() && !d.join(".out.tmp-3-4").exists());
    assert!(d.join("out").exists());
    assert!(
        run("s", &d, "fp", &Quiet, |_| -> anyhow::Result<N> {
            anyhow::bail!("not run")
        })
        .unwrap()
        .cached
    );
}

/// The prepare fingerprint covers every field, delimited: seq_len 25 +
/// seed 6 and seq_len 2 + seed 56 (the same digits run together) differ,
/// and so does a change of any one setting.
#[test]
fn prepare_fingerprints_cover_every_field_without_collisions() {
    let ins = [PathBuf::from("no-such-file.jsonl")];
    let fp = |c: &PipelineConfig, only: Option<&str>| {
        fingerprint(&PrepareKey::new(c, &ins, only)).unwrap()
    };
    let base = PipelineConfig {
        seq_len: 25,
        seed: 6,
        ..Default::default()
    };
    let collide = PipelineConfig {
        seq_len: 2,
        seed: 56,
        ..base.clone()
    };
    assert_ne!(fp(&base, None), fp(&collide, None));
    let changed: Vec<PipelineConfig> = vec![
        PipelineConfig {
            min_score: 0.0,
            ..base.clone()
        },
        PipelineConfig {
            curriculum: !base.curriculum,
            ..base.clone()
        },
        PipelineConfig {
            augment: !base.augment,
            ..base.clone()
        },
        PipelineConfig {
            corpus_vocab: !base.corpus_vocab,
            ..base.clone()
        },
        PipelineConfig {
            vocab_min_count: 7,
            ..base.clone()
        },
        PipelineConfig {
            seq_len: 26,
            ..base.clone()
        },
        PipelineConfig {
            seed: 7,
            ..base.clone()
        },
    ];
    let mut all: Vec<String> = changed.iter().map(|c| fp(c, None)).collect();
    all.push(fp(&base, None));
    all.push(fp(&base, Some("Coder")));
    all.push(fp(&base, Some("Planner")));
    let distinct: std::collections::BTreeSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "{all:?}");
    // Settings the prepared data does not depend on leave it alone.
    let other = PipelineConfig {
        eval_batch: 3,
        max_steps: 9,
        ..base.clone()
    };
    assert_eq!(fp(&base, None), fp(&other, None));
    // The agents' context weight changes their data, not the AFM's.
    let own_only = PipelineConfig {
        mas_context_weight: 0.0,
        ..base.clone()
    };
    assert_ne!(fp(&base, Some("Coder")), fp(&own_only, Some("Coder")));
    assert_eq!(fp(&base, None), fp(&own_only, None));
}

/// An agent's data weighs its own turns 1 and the others'
/// `mas_context_weight`; 0 keeps its turns only; the AFM's weighs all 1.
#[test]
fn agent_data_weighs_the_other_turns_by_the_context_weight() {
    use crate::prepare::agent_weights;
    let c = PipelineConfig {
        mas_context_weight: 0.25,
        ..Default::default()
    };
    let w = agent_weights(&c, Some("Coder"));
    let got: Vec<f32> = ["Planner", "Coder", "Reviewer"]
        .iter()
        .map(|a| w.weight(a))
        .collect();
    assert_eq!(got, [0.25, 1.0, 0.25]);
    let own = PipelineConfig {
        mas_context_weight: 0.0,
        ..c.clone()
    };
    let w = agent_weights(&own, Some("Reviewer"));
    assert_eq!((w.weight("Reviewer"), w.weight("Coder")), (1.0, 0.0));
    assert_eq!(agent_weights(&c, None).weight("Planner"), 1.0);
    let bad = PipelineConfig {
        mas_context_weight: 1.5,
        ..c
    };
    let e = bad.validated().unwrap_err().to_string();
    assert!(e.contains("mas_context_weight"), "{e}");
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `data` stage writes the scripted agents' trajectories on the
/// generated train tasks; with distinct tasks the shipped dataset is its
/// prefix; a rerun
/// reuses it; the user's `input` and `train_tasks = 0` bypass it.
#[test]
fn the_data_stage_extends_the_shipped_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let c = PipelineConfig {
        train_tasks: 60,
        task_repeats: 1,
        tasks: repo().join("datasets/tasks/test.jsonl"),
        ..Default::default()
    };
    let (ins, d) = inputs(dir.path(), &c, &Quiet).unwrap();
    assert_eq!(ins, vec![dir.path().join("data/scripted.jsonl")]);
    let d = d.unwrap();
    assert!(!d.cached);
    assert_eq!(
        (d.summary.tasks, d.summary.file.as_str()),
        (60, "scripted.jsonl")
    );
    let made = std::fs::read_to_string(&ins[0]).unwrap();
    let shipped = std::fs::read_to_string(repo().join(SHIPPED_TRAJECTORIES)).unwrap();
    assert_eq!(made.lines().count(), 60);
    assert!(made.lines().zip(shipped.lines()).all(|(a, b)| a == b));
    let (_, again) = inputs(dir.path(), &c, &Quiet).unwrap();
    assert!(again.unwrap().cached);
    let shipped_only = PipelineConfig {
        train_tasks: 0,
        ..c.clone()
    };
    let (ins, d) = inputs(dir.path(), &shipped_only, &Quiet).unwrap();
    assert_eq!(
        (ins, d.is_none()),
        (vec![PathBuf::from(SHIPPED_TRAJECTORIES)], true)
    );
    let user = PipelineConfig {
        input: vec![PathBuf::from("mine.jsonl")],
        ..c
    };
    assert_eq!(inputs(dir.path(), &user, &Quiet).unwrap().0, user.input);
}

/// `task_repeats = 0` or R >= 2: the `data` stage draws with repetition
/// (`afm_tasks::sample_train`), is a different stage result from the
/// distinct draw (`task_repeats = 1`), and prepare keeps the repeats (no
/// dedup) for it only.
#[test]
fn a_draw_with_repeats_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let c = PipelineConfig {
        train_tasks: 400,
        task_repeats: 0,
        tasks: repo().join("datasets/tasks/test.jsonl"),
        ..Default::default()
    };
    let (ins, d) = inputs(dir.path(), &c, &Quiet).unwrap();
    assert!(!d.unwrap().cached);
    let made: Vec<afm_tasks::Trajectory> = std::fs::read_to_string(&ins[0])
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let want = afm_tasks::sample_train(afm_tasks::DEFAULT_DATASET_SEED, 400, 0).unwrap();
    assert_eq!(made.len(), want.len());
    assert!(made.iter().zip(&want).all(|(t, w)| t.id == w.id));
    let ids: std::collections::HashSet<_> = made.iter().map(|t| &t.id).collect();
    assert!(ids.len() < made.len(), "400 natural draws repeat a task");
    // The distinct draw is another stage result.
    let distinct = PipelineConfig {
        task_repeats: 1,
        ..c.clone()
    };
    assert!(
        !inputs(dir.path(), &distinct, &Quiet)
            .unwrap()
            .1
            .unwrap()
            .cached
    );
    let key = |c: &PipelineConfig| serde_json::to_value(PrepareKey::new(c, &ins, None)).unwrap();
    assert_eq!(key(&c)["config"]["dedup"], false);
    assert_eq!(key(&distinct)["config"]["dedup"], true);
    // The user's own logs are always deduplicated.
    let user = PipelineConfig {
        input: vec![PathBuf::from("mine.jsonl")],
        ..c
    };
    assert_eq!(key(&user)["config"]["dedup"], true);
}

// ---- end to end, tiny preset ----

const TASKS: usize = 4;

fn head(src: &Path, n: usize, dst: &Path) {
    let text = std::fs::read_to_string(src).unwrap();
    let lines: Vec<&str> = text.lines().take(n).collect();
    assert_eq!(lines.len(), n, "{} is too short", src.display());
    std::fs::write(dst, lines.join("\n") + "\n").unwrap();
}

/// A small, step-budgeted run: 80 shipped trajectories, 4 held-out tasks,
/// 8 optimiser steps per model (a budget of 1000 days keeps the wall clock
/// out of the schedule, so reruns train the same weights).
fn tiny(dir: &Path) -> PipelineConfig {
    let (train, tasks) = (dir.join("train.jsonl"), dir.join("test.jsonl"));
    head(&repo().join(SHIPPED_TRAJECTORIES), 80, &train);
    head(&repo().join("datasets/tasks/test.jsonl"), TASKS, &tasks);
    let d = PipelineConfig::default();
    PipelineConfig {
        name: "e2e".into(),
        runs_dir: dir.join("runs"),
        preset: "tiny".into(),
        input: vec![train],
        tasks,
        max_new_tokens: 48,
        eval_batch: 4,
        bench_tasks: 2,
        bench_batches: vec![1],
        curve_points: 2,
        curve_tasks: 2,
        reference: false,
        max_steps: 8,
        mas_time_budget: "1000d".into(),
        afm_time_budget: "1000d".into(),
        train: afm_train::TrainConfig {
            threads: 1,
            plots: false,
            progress: false,
            eval_interval: 4,
            checkpoint_interval: 4,
            ..d.train
        },
        ..d
    }
    .validated()
    .unwrap()
}

/// Records what happened to each stage; panics (an interruption) once work
/// named `interrupt_at` has made progress.
#[derive(Default)]
struct Recorder {
    stages: Mutex<BTreeMap<String, StageStatus>>,
    interrupt_at: Option<&'static str>,
}

impl Progress for Recorder {
    fn event(&self, e: Event<'_>) {
        match e {
            Event::Stage { stage, status, .. } => {
                self.stages.lock().unwrap().insert(stage.into(), status);
            }
            Event::Work { task, done, .. } if Some(task) == self.interrupt_at && done > 0 => {
                panic!("interrupted during {task}")
            }
            _ => {}
        }
    }
}

impl Recorder {
    fn take(&self) -> BTreeMap<String, StageStatus> {
        std::mem::take(&mut *self.stages.lock().unwrap())
    }
}

const TRAINING: [&str; 7] = [
    "prepare-afm",
    "prepare-mas-Planner",
    "prepare-mas-Coder",
    "prepare-mas-Reviewer",
    "train-mas-Planner",
    "train-mas-Coder",
    "train-mas-Reviewer",
];

/// `want`: the stages with another status than `rest`.
fn expect(got: &BTreeMap<String, StageStatus>, rest: StageStatus, want: &[(&str, StageStatus)]) {
    let mut all: BTreeMap<String, StageStatus> = TRAINING
        .iter()
        .chain(&["train-afm", "eval", "bench", "curve"])
        .map(|s| (s.to_string(), rest))
        .collect();
    for (s, st) in want {
        all.insert(s.to_string(), *st);
    }
    assert_eq!(got, &all);
}

/// The deterministic part of a report: success, tokens, calls, the curve.
fn outcome(r: &afm_bench::Report) -> serde_json::Value {
    let sys = |m: &afm_bench::SystemMetrics| {
        serde_json::json!([
            m.tasks,
            m.success_rate,
            m.tokens_prefill,
            m.tokens_decode,
            m.calls
        ])
    };
    let curve: Vec<_> = r
        .learning_curve
        .iter()
        .map(|p| serde_json::json!([p.system, p.step, p.success_rate]))
        .collect();
    serde_json::json!({"afm": sys(&r.afm), "mas": sys(&r.mas), "curve": curve})
}

/// The agents go to lanes longest budget first, each to the least loaded
/// lane; the AFM's "auto" budget is the MAS's wall time (its longest lane).
#[test]
fn mas_lanes_share_the_budget_and_set_the_afm_budget() {
    let with = |budget: &str, lanes: usize| {
        let c = PipelineConfig {
            mas_time_budget: budget.into(),
            mas_lanes: lanes,
            afm_time_budget: "auto".into(),
            ..PipelineConfig::default()
        };
        let lanes = crate::config::mas_lanes(&c).unwrap();
        (
            lanes.into_iter().map(|l| l.agents).collect::<Vec<_>>(),
            crate::config::afm_budget(&c).unwrap(),
        )
    };
    let d = PipelineConfig::default();
    assert_eq!(
        with(&d.mas_time_budget, d.mas_lanes),
        (
            vec![vec!["Coder"], vec!["Planner", "Reviewer"]],
            "265s".into()
        )
    );
    assert_eq!(
        with("Planner=30s,Coder=265s,Reviewer=235s", 1),
        (vec![vec!["Planner", "Coder", "Reviewer"]], "530s".into())
    );
    assert_eq!(
        with("Planner=10s,Coder=1m,Reviewer=40s", 3),
        (
            vec![vec!["Coder"], vec!["Reviewer"], vec!["Planner"]],
            "60s".into()
        )
    );
    // Ties go to the first least-loaded lane, in chain order.
    assert_eq!(
        with("60s", 2),
        (
            vec![vec!["Planner", "Reviewer"], vec!["Coder"]],
            "120s".into()
        )
    );
    // More lanes than agents: one agent each.
    assert_eq!(with("60s", 8).0.len(), 3);
    let zero = PipelineConfig {
        mas_lanes: 0,
        ..PipelineConfig::default()
    };
    let e = zero.validated().unwrap_err().to_string();
    assert!(e.contains("mas_lanes"), "{e}");
}

/// The whole pipeline on the tiny preset; a rerun skips every stage; an
/// AFM setting reruns exactly train-afm and the stages after it; a run
/// interrupted during evaluation resumes it; an evaluation setting reruns
/// eval and the curve but not the bench.
#[test]
fn pipeline_end_to_end_resumes_and_reruns_exactly_what_changed() {
    use StageStatus::*;
    let dir = tempfile::tempdir().unwrap();
    let c = tiny(dir.path());
    let rec = Recorder::default();

    let t0 = std::time::Instant::now();
    let r = crate::run(&c, Start::Resume, &rec).unwrap();
    let full_s = t0.elapsed().as_secs_f64();
    eprintln!("tiny pipeline, full run: {full_s:.1}s");
    expect(&rec.take(), Fresh, &[]);
    assert_eq!((r.afm.tasks, r.mas.tasks), (TASKS, TASKS));
    assert_eq!(r.learning_curve.len(), 4, "{:?}", r.learning_curve);
    let train: afm_train::TrainSummary =
        serde_json::from_value(r.stages["4 train-afm"].clone()).unwrap();
    assert_eq!(train.steps, 8);
    let root = c.root();
    for f in [
        "report.json",
        "report.md",
        "eval/afm.jsonl",
        "bench/timings.json",
    ] {
        assert!(root.join(f).is_file(), "{f}");
    }

    // The agents' models one after another (same threads each) train the
    // same models as side by side: the same report.
    let one_lane = PipelineConfig {
        mas_lanes: 1,
        runs_dir: dir.path().join("one-lane"),
        ..c.clone()
    };
    let sequential = crate::run(&one_lane, Start::Resume, &Quiet).unwrap();
    assert_eq!(outcome(&sequential), outcome(&r));

    // Same config: every stage is skipped, the report is the same.
    let again = crate::run(&c, Start::Resume, &rec).unwrap();
    expect(&rec.take(), Skipped, &[]);
    assert_eq!(outcome(&again), outcome(&r));
    assert!(
        again.stages.keys().all(|k| k.ends_with("(cached)")),
        "{:?}",
        again.stages.keys()
    );

    // An AFM setting (its loss), interrupted during the AFM's evaluation.
    let no_boundary = PipelineConfig {
        boundary: false,
        ..c.clone()
    };
    let cut = Recorder {
        interrupt_at: Some("eval afm"),
        ..Recorder::default()
    };
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::run(&no_boundary, Start::Resume, &cut)
    }));
    assert!(crashed.is_err(), "the interruption did not happen");
    let mut got = cut.take();
    assert_eq!(got.remove("eval"), Some(InputsChanged));
    for s in TRAINING {
        assert_eq!(got.remove(s), Some(Skipped), "{s}");
    }
    assert_eq!(got.remove("train-afm"), Some(InputsChanged));
    assert!(got.is_empty(), "{got:?}");
    // The rerun resumes the evaluation and redoes what follows it.
    crate::run(&no_boundary, Start::Resume, &rec).unwrap();
    expect(
        &rec.take(),
        Skipped,
        &[
            ("eval", Resuming),
            ("bench", InputsChanged),
            ("curve", InputsChanged),
        ],
    );

    // An evaluation setting: eval and the curve, not the bench or training.
    let batch2 = PipelineConfig {
        eval_batch: 2,
        ..no_boundary.clone()
    };
    crate::run(&batch2, Start::Resume, &rec).unwrap();
    expect(
        &rec.take(),
        Skipped,
        &[("eval", InputsChanged), ("curve", InputsChanged)],
    );
    eprintln!("end-to-end test total: {:.1}s", t0.elapsed().as_secs_f64());
}
