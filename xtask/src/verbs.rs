//! The verbs besides `setup`: each one is a few cargo / afm invocations.

use crate::setup::{root, setup, target_dir, venv_python};
use std::process::Command;
use std::time::Instant;

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(mut cmd: Command) -> Result<(), String> {
    crate::setup::run(&mut cmd)
}

/// Every test in the workspace.
pub fn test(rest: &[String]) -> Result<(), String> {
    setup()?;
    crate::setup::ensure_python_packages()?;
    let mut c = cargo();
    c.args(["test", "--workspace", "--no-fail-fast"]).args(rest);
    // The tests that run Python (afm-data's TRL export test) use this one.
    c.env("AFM_TEST_PYTHON", venv_python());
    run(c)
}

fn build_release_cli() -> Result<std::path::PathBuf, String> {
    let mut c = cargo();
    c.args(["build", "--release", "--package", "afm-cli", "--bin", "afm"]);
    run(c)?;
    Ok(target_dir().join("release").join("afm"))
}

/// `rest` without a leading `--` (`cargo xtask pipeline -- --seed 1` reads
/// as `cargo xtask pipeline --seed 1`).
fn afm_args(rest: &[String]) -> &[String] {
    match rest.first() {
        Some(a) if a == "--" => &rest[1..],
        _ => rest,
    }
}

/// The main job: `afm pipeline` in release mode.
pub fn pipeline(rest: &[String]) -> Result<(), String> {
    setup()?;
    let afm = build_release_cli()?;
    let mut c = Command::new(afm);
    c.current_dir(root()).arg("pipeline").args(afm_args(rest));
    run(c)
}

/// The ablation study (longer than the pipeline).
pub fn ablation(rest: &[String]) -> Result<(), String> {
    setup()?;
    let afm = build_release_cli()?;
    let mut c = Command::new(afm);
    c.current_dir(root()).arg("ablation").args(afm_args(rest));
    run(c)
}

/// Criterion benches.
pub fn bench(rest: &[String]) -> Result<(), String> {
    setup()?;
    let mut c = cargo();
    c.arg("bench").args(rest);
    run(c)
}

/// Side-by-side comparison with HF transformers (PyTorch eager) in one run.
pub fn compare(rest: &[String]) -> Result<(), String> {
    setup()?;
    let python = venv_python();
    let mut pip = Command::new(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--quiet",
        "transformers",
        "safetensors",
    ]);
    run(pip)?;
    let afm = build_release_cli()?;
    let mut c = Command::new(python);
    c.current_dir(root())
        .arg("benches/compare_hf.py")
        .arg("--afm")
        .arg(afm)
        .args(rest);
    run(c)
}

/// Formatting and clippy, as CI reviewers expect.
pub fn lint() -> Result<(), String> {
    setup()?;
    let mut f = cargo();
    f.args(["fmt", "--all", "--", "--check"]);
    run(f)?;
    let mut c = cargo();
    c.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    run(c)
}

/// The packages whose tests `gpu-smoke` runs on the GPU.
const GPU_TEST_PACKAGES: [&str; 3] = ["afm-model", "afm-train", "afm-agents"];

/// The short pipeline `gpu-smoke` runs (arguments of `afm pipeline`; the
/// report lands in `runs/gpu-smoke/`).
const GPU_SMOKE_PIPELINE: [&str; 11] = [
    "--device",
    "cuda",
    "--name",
    "gpu-smoke",
    "--fresh",
    "--mas-time-budget",
    "20s",
    "--afm-time-budget",
    "60s",
    "--eval-limit",
    "50",
];

/// GPU smoke test, for a CUDA machine: setup, the tests of the model,
/// training and agents crates with `AFM_TEST_DEVICE=cuda`, then a short
/// `afm pipeline --device cuda`, and a table of the seconds each phase took.
///
/// It refuses to start without a CUDA device (`nvidia-smi -L` fails or lists
/// nothing). Setup and the builds stop the smoke test when they fail; failing
/// tests do not stop the pipeline (device time is scarce and both results
/// are wanted), but the verb then still fails at the end. The timing table
/// is printed in every case.
pub fn gpu_smoke(rest: &[String]) -> Result<(), String> {
    if !rest.is_empty() {
        return Err(format!(
            "gpu-smoke takes no arguments (got {rest:?}); run `afm pipeline` for other settings"
        ));
    }
    let gpus = cuda_devices()?;
    eprintln!("xtask: gpu-smoke on {}", gpus.join("; "));
    let mut phases = Phases::default();
    let result = gpu_smoke_phases(&mut phases);
    print!("{}", phases.table());
    let report = root().join("runs").join("gpu-smoke").join("report.md");
    if report.is_file() {
        println!("\nreport: {}", report.display());
    }
    result
}

/// The phases of [`gpu_smoke`], each timed into `phases`.
fn gpu_smoke_phases(phases: &mut Phases) -> Result<(), String> {
    phases.run("setup", || setup().map(|_| ()))?;
    let gpu_tests = |extra: &[&str]| {
        let mut c = cargo();
        c.args(["test", "--release"]).args(extra);
        for p in GPU_TEST_PACKAGES {
            c.args(["-p", p]);
        }
        c.env("AFM_TEST_DEVICE", "cuda");
        c
    };
    let build_tests = gpu_tests(&["--no-run"]);
    phases.run("build tests (release)", || run(build_tests))?;
    let tests = gpu_tests(&["--no-fail-fast"]);
    let tests_result = phases.run("tests (AFM_TEST_DEVICE=cuda)", || run(tests));
    let afm = phases.run("build afm (release)", build_release_cli)?;
    let mut pipeline = Command::new(afm);
    pipeline
        .current_dir(root())
        .arg("pipeline")
        .args(GPU_SMOKE_PIPELINE);
    let pipeline_result = phases.run("pipeline (cuda, short)", || run(pipeline));
    tests_result.and(pipeline_result)
}

/// The CUDA devices `nvidia-smi -L` lists; an error when it cannot run,
/// fails, or lists none.
fn cuda_devices() -> Result<Vec<String>, String> {
    const NONE: &str = "no CUDA device found (nvidia-smi -L): gpu-smoke needs a CUDA machine";
    let out = Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .map_err(|e| format!("{NONE} ({e})"))?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{NONE} ({}: {})", out.status, why.trim()));
    }
    let gpus = gpu_lines(&String::from_utf8_lossy(&out.stdout));
    if gpus.is_empty() {
        return Err(NONE.to_string());
    }
    Ok(gpus)
}

/// The device lines of `nvidia-smi -L` output (`GPU 0: NVIDIA H200 (UUID: ...)`).
fn gpu_lines(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("GPU "))
        .map(str::to_string)
        .collect()
}

/// Wall-clock seconds of named phases, in run order, with their outcome.
#[derive(Default)]
struct Phases {
    done: Vec<(String, f64, bool)>,
}

impl Phases {
    /// Run one phase, timed with [`Instant`]; its result is passed through.
    fn run<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
        let t0 = Instant::now();
        let result = f();
        let secs = t0.elapsed().as_secs_f64();
        self.done.push((name.to_string(), secs, result.is_ok()));
        result
    }

    /// A markdown table: phase, seconds, result, then the total.
    fn table(&self) -> String {
        let mut s =
            String::from("\ngpu-smoke timings\n\n| phase | seconds | result |\n|---|---:|---|\n");
        for (name, secs, ok) in &self.done {
            let result = if *ok { "ok" } else { "FAILED" };
            s.push_str(&format!("| {name} | {secs:.1} | {result} |\n"));
        }
        let total: f64 = self.done.iter().map(|p| p.1).sum();
        s.push_str(&format!("| total | {total:.1} |  |\n"));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leading_double_dash_is_dropped_for_afm() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(afm_args(&a(&["--", "--seed", "1"])), a(&["--seed", "1"]));
        assert_eq!(afm_args(&a(&["--seed", "1"])), a(&["--seed", "1"]));
        assert!(afm_args(&[]).is_empty());
    }

    #[test]
    fn gpu_lines_keeps_only_devices() {
        let out = "GPU 0: NVIDIA H200 (UUID: GPU-1)\n  MIG 1g.18gb Device 0: (UUID: MIG-2)\nGPU 1: NVIDIA H200 (UUID: GPU-3)\n";
        assert_eq!(
            gpu_lines(out),
            [
                "GPU 0: NVIDIA H200 (UUID: GPU-1)",
                "GPU 1: NVIDIA H200 (UUID: GPU-3)"
            ]
        );
        assert!(gpu_lines("").is_empty());
        assert!(gpu_lines("No devices were found\n").is_empty());
    }

    #[test]
    fn phases_time_and_tabulate() {
        let mut p = Phases::default();
        assert_eq!(p.run("a", || Ok(7)), Ok(7));
        assert!(p.run("b", || Err::<(), _>("boom".into())).is_err());
        let t = p.table();
        assert!(t.contains("| a | 0.0 | ok |"), "{t}");
        assert!(t.contains("| b | 0.0 | FAILED |"), "{t}");
        assert!(t.contains("| total | 0.0 |  |"), "{t}");
    }
}
