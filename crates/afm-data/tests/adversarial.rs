//! Bad input: clear errors naming file/line/field, exact accounting, and a
//! run that never stops on a bad record (unless --strict).

mod common;

use afm_data::ingest::{read_file, Format, IngestLimits, RejectReason};
use afm_data::{prepare, PrepareConfig};
use afm_format::shards::Shards;
use std::io::Write;

fn good(i: usize) -> String {
    format!(
        r#"{{"id":"g{i}","task":"task number {i}","trajectory":[{{"agent":"Coder","output":"print({i})"}},{{"agent":"python","observation":"{i}"}},{{"agent":"Reviewer","output":"fine {i}"}}],"success":true}}"#
    )
}

/// One file with good records and every kind of bad record; returns (bytes, expected rejects by reason).
fn adversarial_file() -> (Vec<u8>, Vec<(usize, &'static str)>) {
    let mut f: Vec<u8> = Vec::new();
    let mut expect = Vec::new();
    let mut line = 0;
    let mut push = |f: &mut Vec<u8>, bytes: &[u8], why: Option<&'static str>| {
        line += 1;
        f.extend_from_slice(bytes);
        f.push(b'\n');
        if let Some(w) = why {
            expect.push((line, w));
        }
    };
    push(&mut f, good(1).as_bytes(), None);
    // Truncated JSON.
    let g = good(2);
    push(&mut f, &g.as_bytes()[..g.len() / 2], Some("broken_json"));
    // A 10 MB field.
    let big = format!(
        r#"{{"task":"big","trajectory":[{{"agent":"Coder","output":"{}"}}]}}"#,
        "a".repeat(10 << 20)
    );
    push(&mut f, big.as_bytes(), Some("field_too_long"));
    // Wrong types.
    push(
        &mut f,
        br#"{"task":42,"trajectory":[{"agent":"Coder","output":"x"}]}"#,
        Some("wrong_type"),
    );
    push(
        &mut f,
        br#"{"task":"t","trajectory":{"agent":"Coder"}}"#,
        Some("wrong_type"),
    );
    push(
        &mut f,
        br#"{"task":"t","trajectory":[{"agent":"Coder","output":["x"]}]}"#,
        Some("wrong_type"),
    );
    push(&mut f, br#"[1,2,3]"#, Some("wrong_type"));
    // Invalid UTF-8 inside a string.
    let mut bad = good(3).into_bytes();
    let k = bad.iter().position(|&b| b == b'p').unwrap();
    bad[k] = 0xff;
    push(&mut f, &bad, Some("invalid_utf8"));
    // NUL: raw and escaped.
    let mut nul = good(4).into_bytes();
    nul[k] = 0;
    push(&mut f, &nul, Some("nul_byte"));
    push(
        &mut f,
        br#"{"task":"t","trajectory":[{"agent":"Coder","output":"a\u0000b"}]}"#,
        Some("nul_byte"),
    );
    // Missing task, empty trajectory, unknown step shape, bad agent name.
    push(
        &mut f,
        br#"{"trajectory":[{"agent":"Coder","output":"x"}]}"#,
        Some("missing_task"),
    );
    push(
        &mut f,
        br#"{"task":"  ","trajectory":[{"agent":"Coder","output":"x"}]}"#,
        Some("missing_task"),
    );
    push(
        &mut f,
        br#"{"task":"t","trajectory":[]}"#,
        Some("empty_trajectory"),
    );
    push(
        &mut f,
        br#"{"task":"t","trajectory":[{"agent":"Coder","text":"x"}]}"#,
        Some("unknown_step_shape"),
    );
    push(
        &mut f,
        br#"{"task":"t","trajectory":[{"agent":"Coder","output":"x","observation":"y"}]}"#,
        Some("unknown_step_shape"),
    );
    push(
        &mut f,
        br#"{"task":"t","trajectory":[{"agent":"Co<|der","output":"x"}]}"#,
        Some("bad_agent_name"),
    );
    // Special-token text inside content stays text: a good record.
    push(
        &mut f,
        br#"{"task":"say <|end|>","trajectory":[{"agent":"Coder","output":"<|obs|><|agent:Reviewer|><|endoftext|><|task|>"}]}"#,
        None,
    );
    push(&mut f, good(5).as_bytes(), None);
    (f, expect)
}

#[test]
fn rejects_are_named_and_counted_exactly() {
    let d = tempfile::tempdir().unwrap();
    let (bytes, expect) = adversarial_file();
    let p = d.path().join("bad.jsonl");
    std::fs::write(&p, &bytes).unwrap();
    // Reader level: every bad line has its reason and line number.
    let recs = read_file(&p, Format::Native, &IngestLimits::default()).unwrap();
    let bad: Vec<(usize, &str)> = recs
        .iter()
        .filter_map(|r| {
            r.result
                .as_ref()
                .err()
                .map(|e| (r.loc.line.unwrap(), e.reason.key()))
        })
        .collect();
    assert_eq!(bad, expect);
    let msg = |line: usize| {
        recs.iter()
            .find(|r| r.loc.line == Some(line))
            .unwrap()
            .result
            .clone()
            .unwrap_err()
            .message
    };
    assert!(
        msg(3).contains("trajectory[0].output") && msg(3).contains("10485760"),
        "{}",
        msg(3)
    );
    assert!(
        msg(4).contains("`task`") && msg(4).contains("a number"),
        "{}",
        msg(4)
    );
    assert!(msg(8).contains("invalid UTF-8 at byte"), "{}", msg(8));

    // Pipeline level: exact accounting, rejects.jsonl, and the run completes.
    let out = d.path().join("out");
    let cfg = PrepareConfig {
        inputs: vec![p.clone()],
        out: out.clone(),
        val_fraction: 0.0,
        ..Default::default()
    };
    let m = prepare(&cfg).unwrap();
    assert_eq!(m.total, recs.len());
    assert_eq!(m.rejected.values().sum::<usize>(), expect.len());
    assert_eq!(m.kept, 3, "{:?}", m.filtered);
    assert_eq!(
        m.total,
        m.kept + m.filtered.values().sum::<usize>() + m.rejected.values().sum::<usize>()
    );
    assert_eq!(m.rejected["wrong_type"], 4);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("rejects.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), expect.len());
    for (l, (line, why)) in lines.iter().zip(&expect) {
        assert_eq!(l["line"], *line);
        assert_eq!(l["reason"], *why);
        assert!(l["file"].as_str().unwrap().ends_with("bad.jsonl"));
    }
    // Special-token text stayed text: only the real markers are special.
    let s = Shards::open(&out, "train").unwrap();
    let specials = s
        .tokens
        .iter()
        .filter(|&&t| t >= afm_tokenizer::TASK)
        .count();
    // 3 records: 2 good (task + 3 markers + end = 5) and the special-text one (task + 1 + end = 3).
    assert_eq!(specials, 2 * 5 + 3);

    // --strict: fails on the first reject, naming file:line and the reason.
    let cfg = PrepareConfig {
        strict: true,
        out: d.path().join("strict"),
        ..cfg
    };
    let e = prepare(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("bad.jsonl:2") && e.contains("broken_json"),
        "{e}"
    );
}

#[test]
fn whole_document_errors_and_limits() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("t.json");
    std::fs::write(
        &p,
        br#"{"question":"q","history":[{"content":"a","name":"A"},"#,
    )
    .unwrap();
    let r = read_file(&p, Format::Auto, &IngestLimits::default()).unwrap();
    assert_eq!(r.len(), 1);
    let e = r[0].result.clone().unwrap_err();
    assert_eq!(e.reason, RejectReason::BrokenJson);
    assert!(e.message.contains("EOF"), "{}", e.message);
    // A record over the size limit is rejected without being parsed.
    let p = d.path().join("l.jsonl");
    let mut f = std::fs::File::create(&p).unwrap();
    writeln!(f, "{}", good(1)).unwrap();
    writeln!(f, "{}", "x".repeat(5000)).unwrap();
    writeln!(f, "{}", good(2)).unwrap();
    drop(f);
    let lim = IngestLimits {
        max_record_bytes: 1000,
        ..Default::default()
    };
    let r = read_file(&p, Format::Native, &lim).unwrap();
    let reasons: Vec<_> = r
        .iter()
        .map(|x| x.result.as_ref().err().map(|e| e.reason))
        .collect();
    assert_eq!(reasons, vec![None, Some(RejectReason::RecordTooLong), None]);
    // A missing input is a clear error, not a reject.
    let cfg = PrepareConfig {
        inputs: vec![d.path().join("nope.jsonl")],
        out: d.path().join("o"),
        ..Default::default()
    };
    let e = prepare(&cfg).unwrap_err().to_string();
    assert!(e.contains("nope.jsonl"), "{e}");
}

#[test]
fn min_score_outside_the_score_range_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("g.jsonl");
    std::fs::write(&p, format!("{}\n{}\n", good(1), good(2))).unwrap();
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, 100.5, 1e9] {
        let out = d.path().join(format!("o{bad}"));
        let cfg = PrepareConfig {
            inputs: vec![p.clone()],
            min_score: bad,
            out: out.clone(),
            ..Default::default()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("--min-score") && e.contains("0..=100"), "{e}");
        let e = prepare(&cfg).unwrap_err().to_string();
        assert!(e.contains("--min-score"), "{e}");
        // Nothing is written for a config that cannot run.
        assert!(!out.exists(), "{bad}");
    }
    for ok in [0.0, 55.5, 100.0] {
        let cfg = PrepareConfig {
            min_score: ok,
            ..Default::default()
        };
        cfg.validate().unwrap();
    }
}

#[test]
fn a_run_that_keeps_nothing_for_training_fails_loudly() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("g.jsonl");
    let lines: Vec<String> = (0..6).map(good).collect();
    std::fs::write(&p, lines.join("\n") + "\n{broken\n").unwrap();
    let cfg = PrepareConfig {
        inputs: vec![p.clone()],
        // No record scores 100: every one is filtered.
        min_score: 100.0,
        out: d.path().join("o"),
        ..Default::default()
    };
    let e = prepare(&cfg).unwrap_err().to_string();
    for want in [
        "no record kept for training",
        "read 7 records",
        "kept 0",
        "filtered 6 (low_score:",
        "rejected 1 (broken_json 1)",
        "rejects.jsonl",
        "--min-score is 100",
        "--allow-empty",
    ] {
        assert!(e.contains(want), "{want:?} not in: {e}");
    }
    // No manifest: the output does not look like a dataset.
    assert!(!d.path().join("o/manifest.json").exists());
    // Asked for: the empty dataset is written, every record accounted for.
    let m = prepare(&PrepareConfig {
        allow_empty: true,
        ..cfg.clone()
    })
    .unwrap();
    assert_eq!((m.total, m.kept, m.train.records), (7, 0, 0));
    assert_eq!(m.filtered.values().sum::<usize>(), 6);
    assert_eq!(m.rejected["broken_json"], 1);

    // Only rejects.
    let p2 = d.path().join("bad.jsonl");
    std::fs::write(&p2, "{\n[1]\n{\"task\":1,\"trajectory\":[]}\n").unwrap();
    let e = prepare(&PrepareConfig {
        inputs: vec![p2],
        min_score: 0.0,
        out: d.path().join("o2"),
        ..cfg.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("read 3 records")
            && e.contains("rejected 3 (wrong_type 2, broken_json 1)")
            && !e.contains("--min-score is"),
        "{e}"
    );

    // Every kept record is held out for validation: nothing to train on.
    let p3 = d.path().join("held.jsonl");
    let held: Vec<String> = (0..3)
        .map(|i| {
            let mut v: serde_json::Value = serde_json::from_str(&good(i)).unwrap();
            v["meta"] = serde_json::json!({"split": "test"});
            v.to_string()
        })
        .collect();
    std::fs::write(&p3, held.join("\n")).unwrap();
    let e = prepare(&PrepareConfig {
        inputs: vec![p3],
        min_score: 0.0,
        out: d.path().join("o3"),
        ..cfg
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("kept 3 (3 in validation only)"), "{e}");
}
