//! Hostile input for every ingest format, inside the normal test suite
//! (the coverage-guided `fuzz/` target is separate and runs by hand).
//!
//! Valid fixture records of each auto-detected format (native, AG2, OpenAI
//! messages, Chain-of-Agents tags, Magentic-One, AutoGen AgentChat; JSONL lines and whole JSON documents:
//! one record, an array of records, a bare array of messages) are mutated
//! with a seeded PRNG: fields dropped, duplicated, retyped, renamed, set to
//! null or empty; huge numbers; deep nesting; hostile Unicode and special-
//! token text; truncation, invalid UTF-8, NUL bytes, stray newlines. Then:
//!
//! - the reader never panics, with any format setting;
//! - every record is accounted for: records read = non-blank lines (JSONL),
//!   and `prepare`'s `total == kept + filtered + rejected` with `total` and
//!   `rejected` equal to what the reader returned;
//! - a second run gives the same manifest, rejects and shards, byte for byte.
#![cfg(feature = "pipeline")]

mod common;

use afm_data::ingest::{read_file, Format, IngestLimits};
use afm_data::{prepare, PrepareConfig};
use common::Lcg;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Mutated records per JSONL format.
const PER_FORMAT: usize = 600;
/// Mutated whole-document files.
const DOCUMENTS: usize = 120;

fn pick<'a, T>(rng: &mut Lcg, xs: &'a [T]) -> &'a T {
    &xs[rng.below(xs.len() as u64) as usize]
}

fn native(i: usize) -> Value {
    json!({
        "id": format!("n{i}"),
        "task": format!("Compute {i} squared and check it."),
        "trajectory": [
            {"agent": "Planner", "output": format!("Coder: square {i}.")},
            {"agent": "Coder", "output": format!("```python\nprint({i}*{i})\n```")},
            {"agent": "python", "observation": format!("{}", i * i)},
            {"agent": "Reviewer", "output": format!("<think>ok</think>{} is right.", i * i)},
        ],
        "score": 0.9,
        "success": true,
        "answer": format!("{}", i * i),
        "meta": {"family": "arith", "split": "train", "level": 1},
    })
}

fn ag2(i: usize) -> Value {
    json!({
        "question": format!("How many stations are on line {i}?"),
        "is_correct": i.is_multiple_of(2),
        "question_ID": format!("q-{i}"),
        "ground_truth": "12",
        "history": [
            {"content": format!("Solve: stations on line {i}."), "role": "assistant", "name": "DataAnalysis_Expert"},
            {"content": "```python\nprint(12)\n```", "role": "user", "name": "Computer_terminal"},
            {"content": "exitcode: 0\nCode output: 12", "role": "user", "name": "Computer_terminal"},
            {"content": "The answer is 12. TERMINATE", "role": "assistant", "name": "Verification_Expert"},
        ],
    })
}

fn messages(i: usize) -> Value {
    json!({
        "id": format!("m{i}"),
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": format!("What is {i} + 1?")},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "python", "arguments": format!("{{\"code\":\"print({i}+1)\"}}")}}
            ]},
            {"role": "tool", "content": format!("{}", i + 1), "name": "python"},
            {"role": "assistant", "content": [{"type": "text", "text": format!("It is {}.", i + 1)}]},
        ],
        "success": true,
    })
}

fn coa(i: usize) -> Value {
    json!({
        "id": format!("c{i}"),
        "question": format!("Reverse the string s{i}."),
        "response": format!("<think>use slicing</think><plan>one step</plan><code>print('s{i}'[::-1])</code><observation>{i}s</observation>free text<answer>{i}s</answer>"),
        "success": true,
    })
}

fn magentic(i: usize) -> Value {
    json!({
        "question": format!("Find the opening hours of shop {i}."),
        "is_corrected": false,
        "question_ID": format!("mo-{i}"),
        "ground_truth": "9-17",
        "history": [
            {"role": "human", "content": format!("Find the opening hours of shop {i}.")},
            {"role": "Orchestrator (thought)", "content": "Initial plan: ask WebSurfer."},
            {"role": "Orchestrator (-> WebSurfer)", "content": format!("Open the page of shop {i}.")},
            {"role": "WebSurfer", "content": "The page says 9-17."},
            {"source": "WebSurfer", "message": "visit_url", "type": "WebSurferEvent", "action": "visit_url", "arguments": {"url": format!("https://shop{i}.example")}},
            {"type": "LLMCallEvent", "prompt_tokens": 100, "completion_tokens": 10},
            {"role": "Orchestrator (-> ComputerTerminal)", "content": "Run it."},
            {"role": "ComputerTerminal", "content": "exitcode: 0"},
            {"role": "Orchestrator (termination condition)", "content": "No agent selected."},
        ],
    })
}

fn agentchat(i: usize) -> Value {
    json!({
        "messages": [
            {"source": "user", "models_usage": null, "content": format!("What is {i} * 2?"), "type": "TextMessage"},
            {"source": "solver", "content": "Use the tool.", "type": "ThoughtEvent"},
            {"source": "solver", "models_usage": {"prompt_tokens": 50, "completion_tokens": 9}, "content": [
                {"id": "c1", "arguments": format!("{{\"x\": {i}}}"), "name": "double"}
            ], "type": "ToolCallRequestEvent"},
            {"source": "solver", "content": [
                {"content": format!("{}", i * 2), "name": "double", "call_id": "c1", "is_error": false}
            ], "type": "ToolCallExecutionEvent"},
            {"source": "solver", "content": format!("{}", i * 2), "type": "ToolCallSummaryMessage", "tool_calls": [], "results": [{"content": format!("{}", i * 2), "name": "double", "call_id": "c1", "is_error": false}]},
            {"source": "solver", "content": "Over to checker.", "target": "checker", "type": "HandoffMessage"},
            {"source": "checker", "content": ["Checked.", {"data": "iVBORw0KGgo="}], "type": "MultiModalMessage"},
        ],
        "stop_reason": "done",
    })
}

/// A valid record of one format, numbered.
type Fixture = fn(usize) -> Value;

const FIXTURES: [(&str, Fixture); 6] = [
    ("native", native),
    ("ag2", ag2),
    ("messages", messages),
    ("coa", coa),
    ("magentic", magentic),
    ("agentchat", agentchat),
];

/// Values that replace a node: every JSON type, edge numbers, hostile text.
fn hostile_value(rng: &mut Lcg) -> Value {
    match rng.below(16) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(0),
        3 => json!(-1),
        4 => json!(u64::MAX),
        5 => json!(i64::MIN),
        6 => json!(1.7976931348623157e308),
        7 => json!(""),
        8 => json!([]),
        9 => json!({}),
        10 => json!(hostile_string(rng)),
        11 => json!([hostile_string(rng), null, 3]),
        12 => json!({"text": hostile_string(rng)}),
        13 => {
            // Nested well inside serde_json's depth limit (it still parses).
            let mut v = json!("deep");
            for _ in 0..(20 + rng.below(80)) {
                v = json!([v]);
            }
            v
        }
        14 => json!(" \t\n "),
        _ => json!(0.5),
    }
}

fn hostile_string(rng: &mut Lcg) -> String {
    let parts = [
        "",
        " ",
        "é",
        "日本語",
        "🦀👩‍💻",
        "\u{202e}rtl",
        "a\u{0301}",
        "\u{200b}",
        "\u{feff}",
        "<|end|>",
        "<|agent:Coder|>",
        "<|endoftext|>",
        "<|task|><|obs|>",
        "<think>",
        "</code>",
        "<observation>",
        "```",
        "\\",
        "\"",
        "\r\n",
        "\t",
        "Computer_terminal",
        "tool",
        "\u{7f}",
        "\u{10ffff}",
    ];
    let n = rng.below(6) as usize;
    let mut s = String::new();
    for _ in 0..n {
        s.push_str(pick::<&str>(rng, &parts));
    }
    if rng.below(8) == 0 {
        s.push_str(&"x".repeat(1 + rng.below(5000) as usize));
    }
    s
}

/// A random path to a node of `v` (objects by key, arrays by index).
fn random_path(v: &Value, rng: &mut Lcg) -> Vec<PathSeg> {
    let mut path = Vec::new();
    let mut cur = v;
    loop {
        // Stop here with some probability, or when there is nowhere to go.
        let children = match cur {
            Value::Object(o) => o.len(),
            Value::Array(a) => a.len(),
            _ => 0,
        };
        if children == 0 || (!path.is_empty() && rng.below(3) == 0) {
            return path;
        }
        let k = rng.below(children as u64) as usize;
        match cur {
            Value::Object(o) => {
                let (key, next) = o.iter().nth(k).unwrap();
                path.push(PathSeg::Key(key.clone()));
                cur = next;
            }
            Value::Array(a) => {
                path.push(PathSeg::Index(k));
                cur = &a[k];
            }
            _ => unreachable!(),
        }
    }
}

#[derive(Clone)]
enum PathSeg {
    Key(String),
    Index(usize),
}

fn node_mut<'a>(v: &'a mut Value, path: &[PathSeg]) -> &'a mut Value {
    let mut cur = v;
    for seg in path {
        cur = match seg {
            PathSeg::Key(k) => cur.get_mut(k.as_str()).unwrap(),
            PathSeg::Index(i) => cur.get_mut(*i).unwrap(),
        };
    }
    cur
}

/// One structural mutation of a record.
fn mutate_value(v: &mut Value, rng: &mut Lcg) {
    let path = random_path(v, rng);
    let op = rng.below(9);
    if let Some((last, parent)) = path.split_last() {
        let parent = node_mut(v, parent);
        match (op, last, parent) {
            // Drop the field or element.
            (0, PathSeg::Key(k), Value::Object(o)) => {
                o.remove(k);
                return;
            }
            (0, PathSeg::Index(i), Value::Array(a)) => {
                a.remove(*i);
                return;
            }
            // Duplicate an element (e.g. a step).
            (1, PathSeg::Index(i), Value::Array(a)) => {
                let x = a[*i].clone();
                a.insert(*i, x);
                return;
            }
            // Rename a field.
            (2, PathSeg::Key(k), Value::Object(o)) => {
                if let Some(x) = o.remove(k) {
                    o.insert(format!("{k}{}", hostile_string(rng)), x);
                }
                return;
            }
            _ => {}
        }
    }
    let node = node_mut(v, &path);
    match op {
        3 => *node = Value::Null,
        4 => {
            if let Value::String(s) = node {
                s.clear();
            } else {
                *node = json!("");
            }
        }
        5 => {
            if let Value::String(s) = node {
                let at = rng.below(s.len() as u64 + 1) as usize;
                let at = (0..=at).rev().find(|&j| s.is_char_boundary(j)).unwrap_or(0);
                s.insert_str(at, &hostile_string(rng));
            } else {
                *node = json!(hostile_string(rng));
            }
        }
        _ => *node = hostile_value(rng),
    }
}

/// Byte-level damage to one serialised record. May add newlines (a JSONL
/// line then becomes several records: each is still accounted for).
fn mutate_bytes(b: &mut Vec<u8>, rng: &mut Lcg) {
    let at = |rng: &mut Lcg, b: &Vec<u8>| rng.below(b.len() as u64 + 1) as usize;
    match rng.below(11) {
        0 => {
            let k = at(rng, b);
            b.truncate(k);
        }
        1 => {
            let k = at(rng, b);
            b.insert(k, *pick(rng, &[0xff, 0xc3, 0x80, 0xed, 0xf4]));
        }
        2 => {
            let k = at(rng, b);
            b.insert(k, 0);
        }
        3 => {
            let k = at(rng, b);
            b.insert(k, b'\n');
        }
        4 => {
            if !b.is_empty() {
                let k = rng.below(b.len() as u64) as usize;
                b.remove(k);
            }
        }
        5 => {
            // Numbers serde_json cannot hold, and escapes it rejects.
            let k = at(rng, b);
            let junk = *pick(
                rng,
                &[
                    &b"1e400"[..],
                    b"-1e400",
                    b"123456789012345678901234567890",
                    b"\"\\ud800\"",
                    b"\"\\u0000\"",
                    b"NaN",
                    b"Infinity",
                    b",,",
                    b"}",
                    b"]",
                ],
            );
            b.splice(k..k, junk.iter().copied());
        }
        6 => {
            // A field nested 100..2100 deep (serde_json stops at 128):
            // `"k":[[..]],"pad":<the original value>`.
            let depth = 100 + rng.below(2000) as usize;
            let mut deep = vec![b'['; depth];
            deep.resize(2 * depth, b']');
            deep.extend_from_slice(b",\"pad\":");
            if let Some(k) = b.iter().position(|&c| c == b':') {
                b.splice(k + 1..k + 1, deep);
            }
        }
        7 => {
            // A duplicate key: `{"task":..., "task": ...}`.
            if b.first() == Some(&b'{') {
                let k = *pick(rng, &["task", "trajectory", "history", "messages", "id"]);
                let dup = format!("\"{k}\":{},", hostile_value(rng));
                b.splice(1..1, dup.into_bytes());
            }
        }
        8 => {
            // A UTF-8 byte-order mark, or whitespace around the record.
            let pre = *pick(rng, &[&b"\xef\xbb\xbf"[..], b"   ", b"\t", b"\r"]);
            b.splice(0..0, pre.iter().copied());
        }
        9 => b.extend_from_slice(b"\r"),
        _ => {
            let k = at(rng, b);
            let s = hostile_string(rng);
            b.splice(k..k, s.into_bytes());
        }
    }
}

/// A mutated record: 1 in 8 stays valid; others get 1-3 structural and/or
/// byte-level mutations.
fn mutated(fixture: Fixture, i: usize, rng: &mut Lcg) -> Vec<u8> {
    let mut v = fixture(i);
    let r = rng.below(8);
    if r == 0 {
        return v.to_string().into_bytes();
    }
    for _ in 0..1 + rng.below(3) {
        mutate_value(&mut v, rng);
    }
    let mut b = v.to_string().into_bytes();
    if r >= 5 {
        mutate_bytes(&mut b, rng);
    }
    b
}

/// Writes the corpus: one JSONL file per format and `DOCUMENTS` whole JSON
/// documents. Returns the files and, for each JSONL file, its non-blank lines.
fn write_corpus(dir: &Path, seed: u64) -> (Vec<PathBuf>, Vec<(PathBuf, usize)>) {
    let mut rng = Lcg(seed);
    let mut files = Vec::new();
    let mut lines = Vec::new();
    for (name, fixture) in FIXTURES {
        let mut body = Vec::new();
        for i in 0..PER_FORMAT {
            body.extend(mutated(fixture, i, &mut rng));
            body.push(b'\n');
        }
        // Blank lines are not records; a last line without a newline is.
        body.extend_from_slice(b"\n  \n");
        body.extend(fixture(PER_FORMAT).to_string().into_bytes());
        let n = body
            .split(|&c| c == b'\n')
            .filter(|l| !l.iter().all(|c| c.is_ascii_whitespace()))
            .count();
        let p = dir.join(format!("{name}.jsonl"));
        std::fs::write(&p, &body).unwrap();
        files.push(p.clone());
        lines.push((p, n));
    }
    for d in 0..DOCUMENTS {
        let (_, fixture) = FIXTURES[d % FIXTURES.len()];
        let i = 10_000 + d;
        let body = match rng.below(4) {
            // One record.
            0 => mutated(fixture, i, &mut rng),
            // An array of records.
            1 => {
                let mut b = b"[".to_vec();
                for k in 0..1 + rng.below(4) as usize {
                    if k > 0 {
                        b.push(b',');
                    }
                    let mut r = fixture(i * 10 + k);
                    if rng.below(2) == 0 {
                        mutate_value(&mut r, &mut rng);
                    }
                    b.extend(r.to_string().into_bytes());
                }
                b.push(b']');
                if rng.below(3) == 0 {
                    mutate_bytes(&mut b, &mut rng);
                }
                b
            }
            // A bare array of messages (one conversation).
            2 => {
                let mut m = messages(i)["messages"].clone();
                mutate_value(&mut m, &mut rng);
                let mut b = m.to_string().into_bytes();
                if rng.below(3) == 0 {
                    mutate_bytes(&mut b, &mut rng);
                }
                b
            }
            // Not a record at all.
            _ => pick(
                &mut rng,
                &[
                    &b""[..],
                    b"null",
                    b"42",
                    b"[]",
                    b"{}",
                    b"\"x\"",
                    b"[[]]",
                    b"[null]",
                ],
            )
            .to_vec(),
        };
        let p = dir.join(format!("doc{d:03}.json"));
        std::fs::write(&p, body).unwrap();
        files.push(p);
    }
    files.sort();
    (files, lines)
}

/// Reader-level outcome of a file: (records, rejected, Debug of every record).
fn read_summary(p: &Path, format: Format) -> (usize, usize, String) {
    let recs = read_file(p, format, &IngestLimits::default()).unwrap();
    let rejected = recs.iter().filter(|r| r.result.is_err()).count();
    (recs.len(), rejected, format!("{recs:?}"))
}

fn run_prepare(input: &Path, out: &Path) -> afm_data::Manifest {
    prepare(&PrepareConfig {
        inputs: vec![input.to_path_buf()],
        out: out.to_path_buf(),
        val_fraction: 0.1,
        ..Default::default()
    })
    .unwrap()
}

/// Every file `prepare` writes, by name, except the manifest's output path.
fn outputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            let mut bytes = std::fs::read(&p).unwrap();
            if name == "manifest.json" {
                let mut m: Value = serde_json::from_slice(&bytes).unwrap();
                m["config"]["out"] = Value::Null;
                bytes = m.to_string().into_bytes();
            }
            (name, bytes)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn hostile_records_never_panic_and_are_all_accounted_for() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let (files, jsonl_lines) = write_corpus(&input, 0x5eed);

    // Reader: never panics with any format setting; JSONL: one record per
    // non-blank line; the same result twice.
    let (mut read, mut rejected) = (0usize, 0usize);
    for f in &files {
        let (n, r, dbg) = read_summary(f, Format::Auto);
        if let Some((_, lines)) = jsonl_lines.iter().find(|(p, _)| p == f) {
            assert_eq!(
                n,
                *lines,
                "{}: records read vs non-blank lines",
                f.display()
            );
        } else {
            assert!(
                n >= 1,
                "{}: a document yields at least one record",
                f.display()
            );
        }
        assert_eq!(read_summary(f, Format::Auto).2, dbg, "{}", f.display());
        for fmt in [
            Format::Native,
            Format::Ag2,
            Format::Messages,
            Format::CoaTags,
            Format::Smolagents,
            Format::Crewai,
            Format::MagenticOne,
            Format::AutogenAgentchat,
        ] {
            let (n2, _, _) = read_summary(f, fmt);
            if jsonl_lines.iter().any(|(p, _)| p == f) {
                assert_eq!(n2, n, "{} as {fmt:?}", f.display());
            }
        }
        read += n;
        rejected += r;
    }
    assert!(read >= FIXTURES.len() * PER_FORMAT + DOCUMENTS, "{read}");
    // The mutations really are hostile, and valid records survive them.
    assert!(rejected > read / 3, "{rejected} of {read} rejected");
    assert!(rejected < read, "{rejected} of {read} rejected");

    // Pipeline: exact accounting, the same outputs twice.
    let (o1, o2) = (d.path().join("o1"), d.path().join("o2"));
    let m = run_prepare(&input, &o1);
    let filtered: usize = m.filtered.values().sum();
    let rej: usize = m.rejected.values().sum();
    assert_eq!(m.total, read);
    assert_eq!(rej, rejected, "{:?}", m.rejected);
    assert_eq!(m.total, m.kept + filtered + rej, "{m:?}");
    assert!(m.kept > 0);
    let rejects = std::fs::read_to_string(o1.join("rejects.jsonl")).unwrap();
    assert_eq!(rejects.lines().count(), rej);
    for l in rejects.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(v["file"].as_str().is_some_and(|f| !f.is_empty()), "{l}");
        assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{l}");
        assert!(v["message"].as_str().is_some_and(|r| !r.is_empty()), "{l}");
        // JSONL rejects name their line.
        if v["file"].as_str().unwrap().ends_with(".jsonl") {
            assert!(v["line"].as_u64().is_some_and(|n| n >= 1), "{l}");
        }
    }
    eprintln!(
        "read {read}: kept {}, filtered {:?}, rejected {:?}",
        m.kept, m.filtered, m.rejected
    );
    let m2 = run_prepare(&input, &o2);
    assert_eq!(
        (m2.total, m2.kept, &m2.filtered, &m2.rejected),
        (m.total, m.kept, &m.filtered, &m.rejected)
    );
    assert!(outputs(&o1) == outputs(&o2), "second run differs");
}
