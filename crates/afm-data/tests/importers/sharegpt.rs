//! The `sharegpt` importer (LLaMA-Factory's ShareGPT rows): fixtures
//! written from LLaMA-Factory's documented schema (`data/README.md`,
//! `SharegptDatasetConverter` in `src/llamafactory/data/converter.py`),
//! afm's role markers, hostile rows (each rejected with its reason and a
//! message naming the field), detection, accounting and the native round trip.

use afm_data::export::native;
use afm_data::ingest::{convert, detect, read_file, Format, IngestLimits};
use afm_format::{Step, StepKind, Trajectory};
use serde_json::json;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sharegpt")
        .join(name)
}

fn ok(path: &Path, fmt: Format) -> Vec<Trajectory> {
    read_file(path, fmt, &IngestLimits::default())
        .unwrap()
        .into_iter()
        .map(|p| p.result.unwrap_or_else(|e| panic!("{}: {e:?}", p.loc)))
        .collect()
}

fn step(agent: &str, kind: StepKind, text: &str) -> Step {
    Step {
        agent: agent.into(),
        kind,
        text: text.into(),
    }
}

use StepKind::{Agent, Observation};

#[test]
fn format_names() {
    for n in ["sharegpt", "llama-factory"] {
        assert_eq!(n.parse::<Format>().unwrap(), Format::Sharegpt);
    }
    assert_eq!(Format::Sharegpt.name(), "sharegpt");
    let e = "sharegtp".parse::<Format>().unwrap_err();
    assert!(e.contains("sharegpt"), "{e}");
}

/// LLaMA-Factory's own shape (the glaive tool-call demo's fields): the
/// first `human` message is the task, later `human` turns are observations,
/// a `function_call` is the assistant's tool call in afm's text form, the
/// `system` message and `system`/`tools` columns are dropped.
#[test]
fn llama_factory_rows() {
    for fmt in [Format::Auto, Format::Sharegpt] {
        let ts = ok(&fixture("glaive.json"), fmt);
        assert_eq!(ts.len(), 2);
        assert_eq!(ts[0].task, "I have rice and eggs. Find me a recipe.");
        assert_eq!(
            ts[0].steps,
            [
                step("assistant", Agent, "Sure. Any allergies?"),
                step("human", Observation, "No allergies."),
                step(
                    "assistant",
                    Agent,
                    r#"<tool_call>search_recipes({"ingredients":["rice","eggs"]})</tool_call>"#
                ),
                step(
                    "tool",
                    Observation,
                    r#"{"recipes": [{"name": "Egg fried rice"}]}"#
                ),
                step("assistant", Agent, "Try egg fried rice."),
            ]
        );
        assert_eq!(ts[0].id, "glaive#0");
        // A list of calls is one turn with one call per line.
        assert_eq!(ts[1].task, "What time is it in Paris?");
        assert_eq!(
            ts[1].steps[0].text,
            "<tool_call>clock({\"tz\":\"Europe/Paris\"})</tool_call>\n<tool_call>clock({\"tz\":\"UTC\"})</tool_call>"
        );
        assert_eq!(ts[1].steps.len(), 3);
    }
}

/// afm's role markers split messages into the steps of their agents.
#[test]
fn role_markers() {
    let ts = ok(&fixture("markers.jsonl"), Format::Auto);
    assert_eq!(ts[0].task, "Add 2 and 3.");
    assert_eq!(
        ts[0].steps,
        [
            step("Planner", Agent, "Coder, add them."),
            step("Coder", Agent, "2 + 3"),
            step("python", Observation, "5"),
            step("tool", Observation, "ok"),
            step("assistant", Agent, "Looks right."),
            step("Reviewer", Agent, "ANSWER: 5"),
        ]
    );
    assert_eq!(
        (
            &ts[0].id,
            ts[0].success,
            ts[0].score,
            ts[0].answer.as_deref()
        ),
        (&"m1".to_string(), Some(true), Some(0.5), Some("5"))
    );
    // `user`/`assistant`/`tool`/`function` are accepted for the default
    // tags; a marker without a valid name stays text; a `function_call`
    // value may be the JSON itself; `agent` names its caller.
    assert_eq!(ts[1].id, "7");
    assert_eq!(
        ts[1].steps,
        [
            step("assistant", Agent, "<|agent:|>hi <|agent:Bad\nName|>there"),
            step("tool", Observation, "no marker"),
            step(
                "Greeter",
                Agent,
                "<tool_call>wave({\"times\": 2})</tool_call>"
            ),
        ]
    );
}

/// Every hostile row is rejected with its reason and a message naming the
/// field; every row is accounted for.
#[test]
fn hostile_rows_are_rejected_naming_the_field() {
    let path = fixture("hostile.jsonl");
    let expected: Vec<(String, String)> = std::fs::read_to_string(fixture("hostile.expected"))
        .unwrap()
        .lines()
        .map(|l| {
            let (k, m) = l.split_once('\t').unwrap();
            (k.to_string(), m.to_string())
        })
        .collect();
    let lines = std::fs::read_to_string(&path).unwrap().lines().count();
    assert_eq!(lines, expected.len());
    for fmt in [Format::Auto, Format::Sharegpt] {
        let recs = read_file(&path, fmt, &IngestLimits::default()).unwrap();
        assert_eq!(recs.len(), lines, "count in == kept + rejected");
        for (p, (key, msg)) in recs.iter().zip(&expected) {
            let e = match &p.result {
                Err(e) => e,
                Ok(t) => panic!("{}: accepted {t:?}", p.loc),
            };
            assert_eq!(e.reason.key(), key, "{}: {}", p.loc, e.message);
            assert!(
                e.message.contains(msg.as_str()),
                "{}: {:?} lacks {msg:?}",
                p.loc,
                e.message
            );
        }
    }
}

#[test]
fn huge_text_and_deep_nesting() {
    let limits = IngestLimits::default();
    let big = "x".repeat(limits.max_field_bytes + 1);
    let v =
        json!({"conversations": [{"from": "human", "value": "t"}, {"from": "gpt", "value": big}]});
    let e = convert(&v, Format::Auto, &limits, "d").unwrap_err();
    assert_eq!(e.reason.key(), "field_too_long", "{}", e.message);
    assert!(e.message.contains("(assistant) text"), "{}", e.message);
    // Deeper than serde_json's recursion limit: broken JSON, not a crash.
    let deep = format!(
        r#"{{"conversations":[{{"from":"human","value":{}1{}}}]}}"#,
        "[".repeat(300),
        "]".repeat(300)
    );
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("deep.jsonl");
    std::fs::write(&p, deep + "\n").unwrap();
    let recs = read_file(&p, Format::Auto, &limits).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(
        recs[0].result.as_ref().unwrap_err().reason.key(),
        "broken_json"
    );
}

/// `conversations` with `from` is sharegpt; the other formats are detected
/// as before (a `conversations` list of role/content messages is not
/// sharegpt).
#[test]
fn detection() {
    let cases = [
        (
            json!({"conversations": [{"from": "human", "value": "t"}]}),
            Some(Format::Sharegpt),
        ),
        (json!({"conversations": []}), Some(Format::Sharegpt)),
        (
            json!({"conversations": [{"role": "user", "content": "t"}]}),
            None,
        ),
        (json!({"task": "t", "trajectory": []}), Some(Format::Native)),
        (json!({"question": "q", "history": []}), Some(Format::Ag2)),
        (json!({"messages": []}), Some(Format::Messages)),
        (
            json!({"task": "t", "response": "<think>x</think>"}),
            Some(Format::CoaTags),
        ),
    ];
    for (v, want) in cases {
        assert_eq!(detect(&v), want, "{v}");
    }
    // Alone (not in a file already detected as sharegpt), a row whose
    // `conversations` is not a list has no format; the message says what
    // auto-detection looks for.
    let e = convert(
        &json!({"conversations": null}),
        Format::Auto,
        &IngestLimits::default(),
        "d",
    )
    .unwrap_err();
    assert_eq!(e.reason.key(), "unknown_record_shape");
    assert!(
        e.message.contains("`conversations` (sharegpt)"),
        "{}",
        e.message
    );
}

/// Reading a row, writing it as native JSON and reading that back gives
/// the same trajectory.
#[test]
fn native_round_trip() {
    let mut ts = ok(&fixture("glaive.json"), Format::Auto);
    ts.extend(ok(&fixture("markers.jsonl"), Format::Auto));
    for t in ts {
        let v: serde_json::Value = serde_json::from_str(&native::line(&t)).unwrap();
        let back = convert(&v, Format::Native, &IngestLimits::default(), "x").unwrap();
        assert_eq!(back, t);
    }
}
