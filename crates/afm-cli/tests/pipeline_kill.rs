//! `afm pipeline` killed with SIGKILL during prepare, training, evaluation
//! and the report, and rerun after each kill, ends with the same results as
//! an uninterrupted run: the same task-success numbers and bit-identical
//! weights.
//!
//! The runs are small (tiny preset, 80 trajectories, 4 held-out tasks) and
//! step-budgeted: `--max-steps` fixes every training's length, and a time
//! budget of 1000 days keeps the wall clock out of the learning-rate
//! schedule and the learning-curve snapshots (the schedule follows the
//! larger of the step fraction and the time fraction; 30 s of 1000 days is
//! ~3e-7), so two runs train the same weights bit for bit.
//!
//! Kill points (prepare, an agent model's training, the AFM's training,
//! eval, bench, report): each is a file-system event of the run (a stage's
//! marker appears, a training's checkpoint appears) plus a delay drawn from
//! a fixed-seed generator, so every run of the test kills in the same stage. The report is
//! reached deterministically: a FIFO stands where the report's first chart
//! goes, so the pipeline blocks opening it after `report.json` and
//! `report.md` are written, and is killed there.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TRAJECTORIES: usize = 80;
const TASKS: usize = 4;

struct Setup {
    dir: tempfile::TempDir,
    input: PathBuf,
    tasks: PathBuf,
    config: PathBuf,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn head(src: &Path, n: usize, dst: &Path) {
    let text = std::fs::read_to_string(src).unwrap();
    let lines: Vec<&str> = text.lines().take(n).collect();
    assert_eq!(lines.len(), n, "{} is too short", src.display());
    std::fs::write(dst, lines.join("\n") + "\n").unwrap();
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("train.jsonl");
    head(
        &repo().join("datasets/scripted/train.jsonl"),
        TRAJECTORIES,
        &input,
    );
    let tasks = dir.path().join("test.jsonl");
    head(&repo().join("datasets/tasks/test.jsonl"), TASKS, &tasks);
    let config = dir.path().join("pipeline.toml");
    std::fs::write(
        &config,
        r#"
max_new_tokens = 48
eval_batch = 4
bench_batches = [1]
curve_points = 2
curve_tasks = 2
reference = false

[train]
threads = 1
plots = false
progress = false
eval_interval = 6
checkpoint_interval = 3
"#,
    )
    .unwrap();
    Setup {
        dir,
        input,
        tasks,
        config,
    }
}

impl Setup {
    fn runs(&self) -> PathBuf {
        self.dir.path().join("runs")
    }

    fn root(&self, name: &str) -> PathBuf {
        self.runs().join(name)
    }

    /// Start `afm pipeline` for run `name`; output goes to `NAME.N.log`.
    fn spawn(&self, name: &str, attempt: usize) -> (Child, PathBuf) {
        let log = self.dir.path().join(format!("{name}.{attempt}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_afm"))
            .arg("pipeline")
            .arg("--config")
            .arg(&self.config)
            .arg("--runs-dir")
            .arg(self.runs())
            .args(["--name", name, "--preset", "tiny", "--seed", "7"])
            .arg("--input")
            .arg(&self.input)
            .arg("--tasks")
            .arg(&self.tasks)
            .args([
                "--max-steps",
                "12",
                "--mas-time-budget",
                "1000d",
                "--afm-time-budget",
                "1000d",
                "--eval-limit",
                &TASKS.to_string(),
                "--bench-tasks",
                "2",
            ])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        (child, log)
    }

    /// Run to completion; panics with the log on failure.
    fn run_to_end(&self, name: &str, attempt: usize) {
        let (mut child, log) = self.spawn(name, attempt);
        let st = child.wait().unwrap();
        assert!(
            st.success(),
            "afm pipeline {name} failed ({st}):\n{}",
            tail(&log)
        );
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let n = text.len().saturating_sub(4000);
    let mut i = n;
    while !text.is_char_boundary(i) {
        i += 1;
    }
    text[i..].to_string()
}

/// Start the pipeline, wait until `trigger` holds, wait `delay` more, and
/// SIGKILL it. Panics when the pipeline exits before it is killed (the kill
/// point was not reached) or the trigger never holds.
fn kill_when(
    s: &Setup,
    name: &str,
    attempt: usize,
    what: &str,
    delay: Duration,
    trigger: impl Fn(&Path) -> bool,
) {
    let (mut child, log) = s.spawn(name, attempt);
    let root = s.root(name);
    let t0 = Instant::now();
    while !trigger(&root) {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "kill point `{what}`: the pipeline exited ({st}) before it was reached:\n{}",
                tail(&log)
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "kill point `{what}` never reached:\n{}",
            tail(&log)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(delay);
    assert!(
        child.try_wait().unwrap().is_none(),
        "kill point `{what}` (+{delay:?}): the pipeline finished before the kill:\n{}",
        tail(&log)
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    eprintln!(
        "killed at `{what}` +{delay:?}, {:.1}s into attempt {attempt}",
        t0.elapsed().as_secs_f64()
    );
}

fn marker_exists(root: &Path, stage_dir: &str) -> bool {
    root.join(stage_dir).join(".afm-stage.json").is_file()
}

/// The newest checkpoint step of training run `run` (0: none).
fn newest_checkpoint(run: &Path) -> usize {
    std::fs::read_dir(run.join("checkpoints"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_prefix("step-")
                        .and_then(|n| n.parse().ok())
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Every weights file of a run, relative path -> bytes.
fn weights(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for m in ["afm", "mas-Planner", "mas-Coder", "mas-Reviewer"] {
        let run = root.join("models").join(m);
        for rel in [
            "final/model.safetensors",
            "snapshots/1-of-2/model.safetensors",
        ] {
            let p = run.join(rel);
            let b = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            out.push((format!("{m}/{rel}"), b));
        }
    }
    out
}

/// The deterministic part of the report: task success, tokens, calls,
/// answer agreement, the learning curve's success rates.
fn outcome(root: &Path) -> serde_json::Value {
    let p = root.join("report.json");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let sys = |k: &str| {
        let m = &r[k];
        serde_json::json!({
            "tasks": m["tasks"],
            "success_rate": m["success_rate"],
            "tokens_prefill": m["tokens_prefill"],
            "tokens_decode": m["tokens_decode"],
            "calls": m["calls"],
            "tool_calls": m["tool_calls"],
        })
    };
    let curve: Vec<serde_json::Value> = r["learning_curve"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| serde_json::json!([p["system"], p["step"], p["success_rate"]]))
        .collect();
    serde_json::json!({
        "afm": sys("afm"),
        "mas": sys("mas"),
        "answer_agreement": r["answer_agreement"],
        "curve": curve,
    })
}

#[test]
fn pipeline_killed_at_random_points_resumes_to_the_same_results() {
    let t_all = Instant::now();
    let s = setup();

    let t = Instant::now();
    s.run_to_end("full", 0);
    let full_s = t.elapsed().as_secs_f64();
    let full = s.root("full");
    let want = outcome(&full);
    assert_eq!(want["afm"]["tasks"], TASKS, "{want}");
    assert_eq!(want["curve"].as_array().unwrap().len(), 4, "{want}");
    eprintln!("uninterrupted pipeline: {full_s:.1}s; outcome {want}");

    // One run directory, killed again and again at later points, each
    // kill followed by a rerun that goes on from what is there.
    let name = "cut";
    let root = s.root(name);
    // The kill delays: the same in every run of the test.
    let mut rng = afm_format::SplitMix64::new(0xAF3_2026);
    let mut attempt = 0;
    let mut next = || {
        attempt += 1;
        attempt
    };
    // 1. prepare: the AFM's dataset is being prepared.
    kill_when(
        &s,
        name,
        next(),
        "prepare-afm",
        Duration::from_millis(rng.below_mod(200) as u64),
        |r| marker_exists(r, "prepared/afm"),
    );
    // 2. training: a seeded one of the three agent models' trainings, after
    //    its first checkpoint (then a seeded delay: mid-training or just after).
    let models = ["mas-Planner", "mas-Coder", "mas-Reviewer"];
    let m = models[rng.below_mod(3)];
    kill_when(
        &s,
        name,
        next(),
        &format!("train-{m}"),
        Duration::from_millis(rng.below_mod(150) as u64),
        |r| newest_checkpoint(&r.join("models").join(m)) > 0,
    );
    // A second training kill in the AFM, after a checkpoint newer than any
    // before this attempt: the rerun must resume from it.
    let afm = root.join("models/afm");
    let before = newest_checkpoint(&afm);
    kill_when(
        &s,
        name,
        next(),
        "train-afm",
        Duration::from_millis(rng.below_mod(50) as u64),
        |_| newest_checkpoint(&afm) > before,
    );
    // 3. evaluation.
    kill_when(
        &s,
        name,
        next(),
        "eval",
        Duration::from_millis(rng.below_mod(300) as u64),
        |r| marker_exists(r, "eval"),
    );
    // 4. the bench (latency and throughput; its numbers are timings, not
    //    compared, but the stage must be redone, not trusted half-written).
    kill_when(
        &s,
        name,
        next(),
        "bench",
        Duration::from_millis(rng.below_mod(50) as u64),
        |r| marker_exists(r, "bench"),
    );
    // 5. the report: blocked on the FIFO standing where its first chart goes.
    let fifo = root.join("latency.png");
    let _ = std::fs::remove_file(&fifo);
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success(), "mkfifo {}", fifo.display());
    std::fs::remove_file(root.join("report.md")).ok();
    kill_when(
        &s,
        name,
        next(),
        "report",
        Duration::from_millis(200),
        |r| r.join("report.md").is_file(),
    );
    std::fs::remove_file(&fifo).unwrap();
    // The rerun finishes.
    s.run_to_end(name, next());

    let got = outcome(&root);
    assert_eq!(got, want, "task-success numbers differ after the kills");
    let (a, b) = (weights(&full), weights(&root));
    for ((name_a, wa), (_, wb)) in a.iter().zip(&b) {
        assert!(wa == wb, "{name_a}: weights differ after the kills");
    }
    // Every training's metrics log the same steps once each (a resumed run
    // continues its log from its checkpoint, without duplicates).
    for m in ["afm", "mas-Planner", "mas-Coder", "mas-Reviewer"] {
        let logged = |root: &Path| -> Vec<u64> {
            let p = root.join("models").join(m).join("metrics.jsonl");
            std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .filter(|v| v["kind"] == "train")
                .map(|v| v["step"].as_u64().unwrap())
                .collect()
        };
        let (a, b) = (logged(&full), logged(&root));
        assert_eq!(a.last(), Some(&12), "{m}: {a:?}");
        assert_eq!(a, b, "{m}: logged training steps differ after the kills");
    }
    eprintln!(
        "kill test total {:.1}s (uninterrupted run {full_s:.1}s)",
        t_all.elapsed().as_secs_f64()
    );
}
