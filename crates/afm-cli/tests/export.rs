//! `afm export-sft`: the verb end to end on a dataset `afm prepare` wrote.

use std::io::Write;
use std::path::Path;

mod common;
use common::afm;

fn write_logs(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    for i in 0..30 {
        let r = serde_json::json!({
            "id": format!("r{i}"),
            "task": format!("Task {i}: what is {i} plus 2?"),
            "trajectory": [
                {"agent": "Planner", "output": format!("Add {i} and 2.")},
                {"agent": "Coder", "output": format!("print({i} + 2)")},
                {"agent": "python", "observation": format!("{}", i + 2)},
                {"agent": "Coder", "output": format!("ANSWER: {}", i + 2)},
            ],
            "success": true,
        });
        writeln!(f, "{r}").unwrap();
    }
}

#[test]
fn export_sft_trl_writes_rows_and_sidecar() {
    let d = tempfile::tempdir().unwrap();
    let logs = d.path().join("logs.jsonl");
    write_logs(&logs);
    let prep = d.path().join("prep");
    let out = d.path().join("trl");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (ok, _, err) = afm(&[
        "prepare",
        "--input",
        &s(&logs),
        "--out",
        &s(&prep),
        "--seq-len",
        "128",
        "--val-fraction",
        "0.2",
    ]);
    assert!(ok, "{err}");
    let (ok, stdout, err) = afm(&[
        "export-sft",
        "--format",
        "trl",
        "--input",
        &s(&prep),
        "--out",
        &s(&out),
    ]);
    assert!(ok, "{err}");
    for f in ["train.jsonl", "val.jsonl", "afm_export.json"] {
        assert!(stdout.contains(f), "{stdout}");
        assert!(out.join(f).is_file(), "{f}");
    }
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("afm_export.json")).unwrap())
            .unwrap();
    assert_eq!(meta["format"], "trl");
    assert_eq!(meta["agents"], serde_json::json!(["Planner", "Coder"]));
    let rows = std::fs::read_to_string(out.join("train.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(rows.lines().next().unwrap()).unwrap();
    for k in [
        "input_ids",
        "labels",
        "position_ids",
        "seq_lengths",
        "agent_ids",
        "owner_ids",
        "loss_weights",
    ] {
        assert!(first[k].is_array(), "{k}: {first}");
    }
    assert_eq!(
        rows.lines().count() as u64,
        meta["splits"]["train"]["rows"].as_u64().unwrap()
    );

    // Errors: an unknown format names the known ones; a directory that is
    // not a prepared dataset says what to run.
    let (ok, _, err) = afm(&[
        "export-sft",
        "--format",
        "parquet",
        "--input",
        &s(&prep),
        "--out",
        &s(&out),
    ]);
    assert!(
        !ok && err.contains("trl, llama-factory, axolotl, coa"),
        "{err}"
    );
    let (ok, _, err) = afm(&[
        "export-sft",
        "--format",
        "trl",
        "--input",
        &s(d.path()),
        "--out",
        &s(&out),
    ]);
    assert!(!ok && err.contains("not a prepared dataset"), "{err}");
    let (ok, help, _) = afm(&["export-sft", "--help"]);
    assert!(ok && help.contains("padding_free"), "{help}");
}
