//! What the CLI test binaries share.

use std::process::Command;

/// Run the built `afm` with `args`: (success, stdout, stderr).
pub fn afm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_afm"))
        .args(args)
        .output()
        .expect("running afm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The venv python `cargo xtask test` passes as `AFM_TEST_PYTHON`; without
/// it, the venv `cargo xtask setup` makes (xtask/src/setup.rs, `venv_python`).
#[allow(dead_code)]
pub fn python() -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Some(p) = std::env::var_os("AFM_TEST_PYTHON") {
        return p.into();
    }
    let cache = if let Some(d) = std::env::var_os("AFM_TORCH_HOME") {
        PathBuf::from(d)
    } else if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(d).join("afm")
    } else {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache")
            .join("afm")
    };
    cache.join("torch-2.13.0").join("bin").join("python")
}

/// A path as the `&str` an argument list takes.
#[allow(dead_code)]
pub fn s(p: &std::path::Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Run `afm args`, panicking with its output when it fails.
#[allow(dead_code)]
pub fn ok(args: &[&str]) {
    let (ok, out, err) = afm(args);
    assert!(ok, "afm {args:?} failed:\n{out}\n{err}");
}

/// `n` native-JSONL records of a three-agent system with a tool: Planner,
/// Coder, an interpreter observation, Reviewer.
#[allow(dead_code)]
pub fn write_agent_logs(path: &std::path::Path, n: usize) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    for i in 0..n {
        let (a, b) = (i % 17 + 2, i % 5 + 1);
        let r = serde_json::json!({
            "id": format!("r{i}"),
            "task": format!("Task {i}: what is {a} times {b}?"),
            "trajectory": [
                {"agent": "Planner", "output": format!("Multiply {a} by {b}.")},
                {"agent": "Coder", "output": format!("print({a} * {b})")},
                {"agent": "python", "observation": format!("{}", a * b)},
                {"agent": "Reviewer", "output": format!("ANSWER: {}", a * b)},
            ],
            "success": true,
        });
        writeln!(f, "{r}").unwrap();
    }
}
