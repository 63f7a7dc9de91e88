//! The verbs besides `setup`: each one is a few cargo / afm invocations.

use crate::setup::{root, setup, target_dir, venv_python};
use std::process::Command;

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
    let mut c = cargo();
    c.args(["test", "--workspace", "--no-fail-fast"]).args(rest);
    run(c)
}

fn build_release_cli() -> Result<std::path::PathBuf, String> {
    let mut c = cargo();
    c.args(["build", "--release", "--package", "afm-cli", "--bin", "afm"]);
    run(c)?;
    Ok(target_dir().join("release").join("afm"))
}

/// The main job: `afm pipeline` in release mode.
pub fn pipeline(rest: &[String]) -> Result<(), String> {
    setup()?;
    let afm = build_release_cli()?;
    let mut c = Command::new(afm);
    c.current_dir(root()).arg("pipeline").args(rest);
    run(c)
}

/// The ablation study (longer than the pipeline).
pub fn ablation(rest: &[String]) -> Result<(), String> {
    setup()?;
    let afm = build_release_cli()?;
    let mut c = Command::new(afm);
    c.current_dir(root()).arg("ablation").args(rest);
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
