//! `afm serve` end to end: a live server on a free port, driven by the
//! official `openai` Python client (`python/tests/test_serve.py`, which
//! also sends the SIGTERM); the server must then drain and exit 0.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn ok(args: &[&str]) {
    let (ok, out, err) = common::afm(args);
    assert!(ok, "afm {args:?} failed:\n{out}\n{err}");
}

#[test]
fn openai_client_against_a_live_server() {
    let d = tempfile::tempdir().unwrap();
    let logs = d.path().join("logs.jsonl");
    let mut f = std::fs::File::create(&logs).unwrap();
    for i in 0..24 {
        let r = serde_json::json!({
            "id": format!("r{i}"),
            "task": format!("What is {i} + 2?"),
            "trajectory": [
                {"agent": "Planner", "output": format!("Add {i} and 2.")},
                {"agent": "Coder", "output": format!("print({i} + 2)")},
                {"agent": "python", "observation": format!("{}", i + 2)},
                {"agent": "Reviewer", "output": format!("ANSWER: {}", i + 2)},
            ],
            "success": true,
        });
        writeln!(f, "{r}").unwrap();
    }
    drop(f);
    let prep = d.path().join("prep");
    ok(&[
        "prepare",
        "--input",
        &s(&logs),
        "--out",
        &s(&prep),
        "--seq-len",
        "96",
        "--val-fraction",
        "0.1",
    ]);
    let run = d.path().join("run");
    ok(&[
        "train",
        "--data",
        &s(&prep),
        "--out",
        &s(&run),
        "--preset",
        "tiny",
        "--max-steps",
        "5",
        "--eval-interval",
        "0",
        "--final-weights",
        "last",
        "--threads",
        "1",
        "--no-plots",
        "--no-progress",
        "--set",
        "snapshots=0",
    ]);
    let mut server = Command::new(env!("CARGO_BIN_EXE_afm"))
        .args([
            "serve",
            "--checkpoint",
            &s(&run.join("final")),
            "--port",
            "0",
            "--max-batch",
            "4",
            "--max-queue",
            "32",
            "--threads",
            "1",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(server.stderr.take().unwrap());
    let mut line = String::new();
    let started = Instant::now();
    let base = loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "afm serve exited before listening"
        );
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "afm serve did not start"
        );
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../python/tests/test_serve.py");
    let out = Command::new(common::python())
        .current_dir(d.path())
        .arg(&script)
        .args(["--base-url", &base, "--pid", &server.id().to_string()])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    if !out.status.success() {
        let _ = server.kill();
        panic!("test_serve.py failed:\n{stdout}\n{stderr}");
    }
    // SIGTERM was sent by the script: the server drains and exits 0.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = server.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = server.kill();
            panic!("afm serve did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut err, &mut rest);
    assert!(status.success(), "afm serve exited with {status}: {rest}");
    assert!(rest.contains("drained"), "{rest}");
}
