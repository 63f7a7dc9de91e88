//! `afm serve` end to end: a live server on a free port, driven by the
//! official `openai` Python client (`python/tests/test_serve.py`, which
//! also sends the SIGTERM); the server must then drain and exit 0.

mod common;

use common::{ok, s};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn openai_client_against_a_live_server() {
    let d = tempfile::tempdir().unwrap();
    let logs = d.path().join("logs.jsonl");
    common::write_agent_logs(&logs, 24);
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
