//! `afm convert`: an AG2 log to native JSONL, native to ShareGPT and back,
//! axolotl with one trained agent, a prepared dataset as input, and the
//! errors (each names what is wrong).

use afm_data::ingest::{normalise, read_file, Format, IngestLimits};
use afm_data::AgentsMap;
use afm_format::Trajectory;
use std::path::{Path, PathBuf};

mod common;
use common::afm;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/convert")
        .join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The valid records of a file, read as `afm prepare` reads them (default
/// agents map).
fn read(path: &Path, fmt: Format) -> Vec<Trajectory> {
    read_file(path, fmt, &IngestLimits::default())
        .unwrap()
        .into_iter()
        .filter_map(|p| p.result.ok())
        .map(|t| normalise(t, &AgentsMap::default()).unwrap())
        .collect()
}

#[test]
fn ag2_log_to_native() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("ag2.jsonl");
    let (ok, stdout, err) = afm(&[
        "convert",
        "--input",
        s(&fixture("ag2_chat.json")),
        "--to",
        "native",
        "--out",
        s(&out),
    ]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("read 1 records from 1 input(s): written 1, rejected 0"),
        "{stdout}"
    );
    let back = read(&out, Format::Native);
    assert_eq!(back, read(&fixture("ag2_chat.json"), Format::Auto));
    let t = &back[0];
    assert_eq!(t.id, "wnw-even-1");
    assert_eq!(t.success, Some(true));
    assert!(t.task.starts_with("How many of the numbers"));
    let who: Vec<(&str, afm_format::StepKind)> =
        t.steps.iter().map(|s| (s.agent.as_str(), s.kind)).collect();
    use afm_format::StepKind::{Agent, Observation};
    assert_eq!(
        who,
        [
            ("Math_Expert", Agent),
            ("Python_Expert", Agent),
            ("Computer_terminal", Observation),
            ("Verification_Expert", Agent),
            ("Verification_Expert", Agent),
        ]
    );
    // No rejects: an empty rejects file beside the output.
    assert_eq!(
        std::fs::read_to_string(d.path().join("ag2.rejects.jsonl")).unwrap(),
        ""
    );
}

#[test]
fn native_to_sharegpt_and_back() {
    let d = tempfile::tempdir().unwrap();
    let input = fixture("native.jsonl");
    let sg = d.path().join("afm.jsonl");
    let (ok, stdout, err) = afm(&[
        "convert",
        "--input",
        s(&input),
        "--to",
        "sharegpt",
        "--out",
        s(&sg),
    ]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains(
            "read 4 records from 1 input(s): written 2, rejected 2 (broken_json 1, empty_trajectory 1)"
        ),
        "{stdout}"
    );
    // Every reject with its file, line, reason and message.
    let rejects = std::fs::read_to_string(d.path().join("afm.rejects.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = rejects
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["line"], 3);
    assert_eq!(lines[0]["reason"], "empty_trajectory");
    assert_eq!(lines[1]["line"], 4);
    assert_eq!(lines[1]["reason"], "broken_json");
    assert!(lines[1]["file"].as_str().unwrap().ends_with("native.jsonl"));
    // The rows are LLaMA-Factory's, with the dataset_info.json entry beside them.
    let row: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&sg)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(row["conversations"][0]["from"], "human");
    // Consecutive turns of two agents: one gpt message, who spoke kept as markers.
    assert_eq!(
        row["conversations"][1]["value"],
        "<|agent:Planner|>Coder, add them.<|agent:Coder|><tool_call>add({\"a\":2,\"b\":3})</tool_call>"
    );
    assert_eq!(row["conversations"][2]["value"], "<|obs:python|>5");
    let info: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.path().join("afm.dataset_info.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(info["afm"]["formatting"], "sharegpt");
    assert_eq!(info["afm"]["file_name"], "afm.jsonl");
    assert!(stdout.contains("dataset_info.json"), "{stdout}");
    // And back: the same turns, task, id, outcome and answer; meta is lost.
    let back = d.path().join("back.jsonl");
    let (ok, stdout, err) = afm(&[
        "convert",
        "--input",
        s(&sg),
        "--format",
        "sharegpt",
        "--to",
        "native",
        "--out",
        s(&back),
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("written 2, rejected 0"), "{stdout}");
    let orig = read(&input, Format::Native);
    let back = read(&back, Format::Native);
    assert_eq!(back.len(), orig.len());
    for (b, o) in back.iter().zip(&orig) {
        assert_eq!(
            (&b.id, &b.task, &b.steps, b.success, &b.answer),
            (&o.id, &o.task, &o.steps, o.success, &o.answer)
        );
        assert_eq!(b.meta, None);
    }
}

#[test]
fn axolotl_with_one_trained_agent() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("ax.jsonl");
    let (ok, stdout, err) = afm(&[
        "convert",
        "--input",
        s(&fixture("native.jsonl")),
        "--to",
        "axolotl",
        "--only-agent",
        "Coder",
        "--out",
        s(&out),
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("axolotl.yml"), "{stdout}");
    for line in std::fs::read_to_string(&out).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for m in v["messages"].as_array().unwrap() {
            assert_eq!(m["train"], m["name"] == "Coder", "{m}");
        }
    }
    let yml = std::fs::read_to_string(d.path().join("ax.axolotl.yml")).unwrap();
    assert!(yml.contains("message_field_training: train"), "{yml}");
}

#[test]
fn a_prepared_dataset_as_input() {
    let d = tempfile::tempdir().unwrap();
    let prep = d.path().join("prep");
    let (ok, _, err) = afm(&[
        "prepare",
        "--input",
        s(&fixture("native.jsonl")),
        "--val-fraction",
        "0",
        "--out",
        s(&prep),
    ]);
    assert!(ok, "{err}");
    let out = d.path().join("coa.jsonl");
    let (ok, stdout, err) = afm(&[
        "convert",
        "--input",
        s(&prep),
        "--to",
        "coa",
        "--out",
        s(&out),
    ]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("read 4 records from 1 input(s): written 2, rejected 2"),
        "{stdout}"
    );
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["instruction"], "Add 2 and 3.");
    assert!(first["output"]
        .as_str()
        .unwrap()
        .starts_with("<planner>Coder, add them.</planner>\n\n<coder>"));
    // --format does not apply to a prepared dataset.
    let (ok, _, err) = afm(&[
        "convert",
        "--input",
        s(&prep),
        "--format",
        "native",
        "--to",
        "coa",
        "--out",
        s(&out),
    ]);
    assert!(!ok);
    assert!(err.contains("manifest.json fixes them"), "{err}");
}

/// `afm export-sft --format llama-factory|axolotl|coa` writes what `afm
/// convert --to sharegpt|axolotl|coa` writes (the same writers), per split
/// of a prepared dataset; `--format trl` writes the token rows.
#[test]
fn export_sft_writes_each_format() {
    let d = tempfile::tempdir().unwrap();
    let prep = d.path().join("prep");
    let (ok, _, err) = afm(&[
        "prepare",
        "--input",
        s(&fixture("native.jsonl")),
        "--val-fraction",
        "0",
        "--out",
        s(&prep),
    ]);
    assert!(ok, "{err}");
    for (format, to) in [
        ("llama-factory", "sharegpt"),
        ("axolotl", "axolotl"),
        ("coa", "coa"),
    ] {
        let out = d.path().join(format);
        let (ok, _, err) = afm(&[
            "export-sft",
            "--format",
            format,
            "--input",
            s(&prep),
            "--out",
            s(&out),
        ]);
        assert!(ok, "{format}: {err}");
        let conv = d.path().join(format!("{to}.jsonl"));
        let (ok, _, err) = afm(&[
            "convert",
            "--input",
            s(&prep),
            "--to",
            to,
            "--out",
            s(&conv),
        ]);
        assert!(ok, "{to}: {err}");
        let exported = std::fs::read_to_string(out.join("train.jsonl")).unwrap();
        assert!(!exported.is_empty(), "{format}");
        assert_eq!(
            exported,
            std::fs::read_to_string(&conv).unwrap(),
            "{format}"
        );
        assert!(out.join("val.jsonl").exists(), "{format}");
    }
    let out = d.path().join("trl");
    let (ok, stdout, err) = afm(&[
        "export-sft",
        "--format",
        "trl",
        "--input",
        s(&prep),
        "--out",
        s(&out),
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("train.jsonl"), "{stdout}");
    let row: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(out.join("train.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    for key in [
        "input_ids",
        "labels",
        "position_ids",
        "seq_lengths",
        "agent_ids",
        "loss_weights",
    ] {
        assert!(row.get(key).is_some(), "trl row has no {key}");
    }
    // Weights are fixed when the dataset is prepared.
    let (ok, _, err) = afm(&[
        "export-sft",
        "--format",
        "trl",
        "--input",
        s(&prep),
        "--out",
        s(&out),
        "--only-agent",
        "Coder",
    ]);
    assert!(!ok);
    assert!(err.contains("prepare it again"), "{err}");
}

#[test]
fn errors_name_what_is_wrong() {
    let d = tempfile::tempdir().unwrap();
    let input = fixture("native.jsonl");
    let out = d.path().join("o.jsonl");
    let cases: [(&[&str], &str); 5] = [
        (
            &["--input", "/nonexistent/x.jsonl", "--to", "native"],
            "/nonexistent/x.jsonl",
        ),
        (
            &[
                "--input",
                s(&input),
                "--to",
                "sharegpt",
                "--only-agent",
                "Nobody",
            ],
            "\"Nobody\"",
        ),
        (
            &[
                "--input",
                s(&input),
                "--to",
                "native",
                "--only-agent",
                "Coder",
            ],
            "carries no weights",
        ),
        (&["--input", s(&input), "--to", "parquet"], "parquet"),
        (
            &[
                "--input",
                s(&input),
                "--to",
                "axolotl",
                "--agent-weight",
                "Coder",
            ],
            "NAME=WEIGHT",
        ),
    ];
    for (args, want) in cases {
        let mut argv = vec!["convert"];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--out", s(&out)]);
        let (ok, _, err) = afm(&argv);
        assert!(!ok, "{argv:?}");
        assert!(err.contains(want), "{argv:?}: {err}");
        assert!(!out.exists(), "{argv:?}: no output on error");
    }
    // The output may not overwrite an input.
    let copy = d.path().join("in.jsonl");
    std::fs::copy(&input, &copy).unwrap();
    let (ok, _, err) = afm(&[
        "convert",
        "--input",
        s(&copy),
        "--to",
        "native",
        "--out",
        s(&copy),
    ]);
    assert!(!ok);
    assert!(err.contains("is also an input"), "{err}");
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&input).unwrap()
    );
}
