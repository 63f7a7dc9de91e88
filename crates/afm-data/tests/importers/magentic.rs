//! The Magentic-One importer (`magentic-one`) on fixtures written from the
//! framework's log shapes (autogen-magentic-one's orchestrator and
//! `LogHandler`, Who&When's Hand-Crafted records), hostile variants
//! included; and the AG2 records it must leave to `ag2`.

use crate::common;

use afm_data::ingest::{
    convert, detect, expand_inputs, normalise, read_file, Format, IngestLimits,
};
use afm_data::AgentsMap;
use afm_format::{StepKind, Trajectory};
use serde_json::json;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/magentic")
        .join(name)
}

fn read_one(name: &str, fmt: Format) -> Trajectory {
    let recs = read_file(&fixture(name), fmt, &IngestLimits::default()).unwrap();
    assert_eq!(recs.len(), 1, "{name}");
    recs[0]
        .result
        .clone()
        .unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

fn steps(t: &Trajectory) -> Vec<(&str, StepKind)> {
    t.steps.iter().map(|s| (s.agent.as_str(), s.kind)).collect()
}

fn json_of(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

/// One `Orchestrator` agent holds every Orchestrator turn; no human turn
/// and no ComputerTerminal turn carries loss (through afm_format's layout).
fn assert_orchestrator_and_no_human_loss(t: &Trajectory, humans: &[&str]) {
    let agents: std::collections::BTreeSet<&str> = t
        .steps
        .iter()
        .filter(|s| s.kind == StepKind::Agent)
        .map(|s| s.agent.as_str())
        .collect();
    assert!(agents.contains("Orchestrator"), "{agents:?}");
    assert!(
        !agents
            .iter()
            .any(|a| a.contains('(') || humans.contains(a) || *a == "ComputerTerminal"),
        "{agents:?}"
    );
    let (task_loss, by_step) = common::loss_by_step(t);
    assert_eq!(
        task_loss, 0.0,
        "the task (first human turn) carries no loss"
    );
    for (s, w) in t.steps.iter().zip(&by_step) {
        match s.kind {
            StepKind::Observation => assert_eq!(*w, 0.0, "{}: {:?}", s.agent, s.text),
            StepKind::Agent => assert!(*w > 0.0, "{}: {:?}", s.agent, s.text),
        }
    }
}

#[test]
fn who_and_when_style_record() {
    let v = json_of("who_and_when_style.json");
    assert_eq!(detect(&v), Some(Format::MagenticOne));
    let t = read_one("who_and_when_style.json", Format::Auto);
    assert_eq!(t, read_one("who_and_when_style.json", Format::MagenticOne));
    assert_eq!(t.id, "m1-demo-0001");
    assert_eq!(
        t.task,
        "Which bakery closest to the Old Town station opens before 7 am on Sundays? Give its name."
    );
    assert_eq!(t.success, Some(false), "Who&When's `is_corrected`");
    use StepKind::{Agent as A, Observation as O};
    assert_eq!(
        steps(&t),
        vec![
            ("Orchestrator", A),
            ("Orchestrator", A),
            ("Orchestrator", A),
            ("WebSurfer", A),
            ("Orchestrator", A),
            ("Orchestrator", A),
            ("Assistant", A),
            ("Orchestrator", A),
            ("ComputerTerminal", O),
            ("Orchestrator", A),
            ("FileSurfer", A),
            ("Orchestrator", A),
            ("Orchestrator", A),
        ]
    );
    assert_eq!(t.steps[2].text, "Please search for bakeries within 500 m of the Old Town station and list their Sunday opening hours.");
    assert_eq!(t.steps[12].text, "No agent selected.");
    assert_eq!(
        t.meta,
        Some(json!({
            "handoffs": [
                {"step": 2, "from": "Orchestrator", "to": "WebSurfer"},
                {"step": 5, "from": "Orchestrator", "to": "Assistant"},
                {"step": 7, "from": "Orchestrator", "to": "ComputerTerminal"},
                {"step": 9, "from": "Orchestrator", "to": "FileSurfer"},
            ],
            "question": "Which bakery closest to the Old Town station opens before 7 am on Sundays?",
            "ground_truth": "Bakery Nord",
        }))
    );
    assert_eq!(t.answer, None);
    // Who&When's annotations are not read: every history item but the task is a step.
    assert_eq!(t.steps.len() + 1, v["history"].as_array().unwrap().len());
    assert_orchestrator_and_no_human_loss(&t, &["human"]);
    // The agents map changes nothing here (ComputerTerminal already an
    // observation), and an `agent` exemption cannot make it trained.
    assert_eq!(normalise(t.clone(), &AgentsMap::default()).unwrap(), t);
    let exempt = AgentsMap::from_toml("agent = [\"ComputerTerminal\"]").unwrap();
    assert_eq!(
        normalise(t.clone(), &exempt).unwrap().steps[8].kind,
        StepKind::Observation
    );
}

#[test]
fn log_handler_events() {
    let v = json_of("log_events.json");
    assert_eq!(detect(&v), Some(Format::MagenticOne));
    let t = read_one("log_events.json", Format::Auto);
    assert_eq!(t.id, "m1-log-7");
    assert_eq!(t.success, Some(true));
    assert_eq!(
        t.task,
        "What is the title of the top story on the example news site?"
    );
    use StepKind::{Agent as A, Observation as O};
    assert_eq!(
        steps(&t),
        vec![
            ("Orchestrator", A),
            ("Orchestrator", A),
            ("WebSurfer", A),
            ("WebSurfer", A),
            ("human", O),
            ("Orchestrator", A),
            ("Orchestrator", A),
        ]
    );
    assert_eq!(
        t.steps[2].text,
        r#"<tool_call>visit_url({"url":"https://news.example.org"})</tool_call>"#
    );
    assert_eq!(
        t.steps[4].text,
        "Also give me the date of the story, please."
    );
    assert_eq!(
        t.answer.as_deref(),
        Some("Harbour bridge reopens (5 November 2024)"),
        "the last `(final answer)` turn"
    );
    assert_eq!(
        t.meta,
        Some(json!({
            "handoffs": [{"step": 1, "from": "Orchestrator", "to": "WebSurfer"}],
            "usage": {"calls": 2, "prompt_tokens": 2342, "completion_tokens": 105},
            "dropped": {"WebSurferEvent": 1, "empty": 1},
        }))
    );
    assert_orchestrator_and_no_human_loss(&t, &["human"]);
}

/// Each line of `hostile.jsonl`: read, or rejected with its reason and a
/// message naming the field. Every line is accounted for.
#[test]
fn hostile_lines_are_read_or_rejected_by_field() {
    type Want = Result<(), (&'static str, &'static str)>;
    let want: Vec<Want> = vec![
        Ok(()),
        Ok(()),
        Err(("wrong_type", "field `history[1].role`: expected a string, got a number")),
        Err(("wrong_type", "field `history`: expected an array, got an object")),
        Err(("empty_trajectory", "field `history` is an empty list")),
        Err(("empty_trajectory", "no steps")),
        Err(("missing_task", "history[0]: the first `human` turn (the task) is empty")),
        Err(("missing_task", "none of the fields [\"question\", \"task\"]")),
        Ok(()),
        Err(("unknown_step_shape", "field `history[1].type`: unknown Magentic-One event type \"ScreenshotEvent\"")),
        Err(("wrong_type", "field `history[1]`: expected an object, got a string")),
        Err(("wrong_type", "field `history[1].content`: expected a string, null or a list of text parts, got a number")),
        Err(("unknown_step_shape", "history[1]: missing `content` (or `message`)")),
        Err(("nul_byte", "contains a NUL")),
        Err(("bad_agent_name", "step[0]")),
        Err(("wrong_type", "field `is_corrected`: expected a boolean, got a string")),
        Err(("wrong_type", "field `ground_truth`: expected a string or number, got an object")),
        Err(("wrong_type", "field `history[1].prompt_tokens`: expected a non-negative integer, got a number")),
        Err(("unknown_step_shape", "history[1]: none of `role`, `name` or `source` names the speaker")),
        Ok(()),
        Err(("wrong_type", "field `history[1].action`: expected a string, got a number")),
        Ok(()),
        Err(("wrong_type", "field `history[1].type`: expected a string, got a number")),
        Err(("broken_json", "broken JSON")),
        Err(("wrong_type", "record: expected a JSON object, got an array")),
        Ok(()),
        Err(("wrong_type", "field `history[1].tool_calls`: expected an array, got an object")),
    ];
    let recs = read_file(
        &fixture("hostile.jsonl"),
        Format::Auto,
        &IngestLimits::default(),
    )
    .unwrap();
    assert_eq!(recs.len(), want.len(), "one result per line");
    let (mut kept, mut rejected) = (0, 0);
    for (r, w) in recs.iter().zip(&want) {
        let line = r.loc.line.unwrap();
        match (&r.result, w) {
            (Ok(_), Ok(())) => kept += 1,
            (Err(e), Err((reason, msg))) => {
                assert_eq!(e.reason.key(), *reason, "line {line}: {}", e.message);
                assert!(
                    e.message.contains(msg),
                    "line {line}: {:?} does not contain {msg:?}",
                    e.message
                );
                rejected += 1;
            }
            (got, w) => panic!("line {line}: got {got:?}, want {w:?}"),
        }
    }
    assert_eq!(kept + rejected, recs.len());
    assert_eq!((kept, rejected), (6, 21));

    // What the kept lines hold.
    let ok: Vec<&Trajectory> = recs.iter().filter_map(|r| r.result.as_ref().ok()).collect();
    assert_eq!(ok[0].task, "Find X.");
    assert_eq!(
        ok[0].meta,
        Some(json!({"handoffs": [{"step": 1, "from": "Orchestrator", "to": "WebSurfer"}]})),
        "`question` equal to the task is not repeated"
    );
    // `messages`, role `user` as the task, a system prompt dropped, a later
    // human turn an observation, `(-> )` without a target no hand-off.
    assert_eq!(ok[1].task, "Task two");
    assert_eq!(
        steps(ok[1]),
        vec![
            ("Orchestrator", StepKind::Agent),
            ("human", StepKind::Observation),
            ("Orchestrator", StepKind::Agent)
        ]
    );
    assert_eq!(ok[1].meta, None);
    // No human first: the task is `question`; the human turn is an observation.
    assert_eq!(ok[2].task, "from the field");
    assert_eq!(ok[2].steps[1].kind, StepKind::Observation);
    // A null content turn is dropped and counted.
    assert_eq!(steps(ok[3]), vec![("Coder", StepKind::Agent)]);
    assert_eq!(ok[3].meta, Some(json!({"dropped": {"empty": 1}})));
    assert_eq!(ok[4].task, "multi part");
    // OpenAI-style tool calls on a message are the speaker's, in the one text form.
    assert_eq!(
        steps(ok[5]),
        vec![
            ("Coder", StepKind::Agent),
            ("python", StepKind::Observation),
            ("Orchestrator", StepKind::Agent)
        ]
    );
    assert_eq!(
        ok[5].steps[0].text,
        r#"<tool_call>python({"code":"1"})</tool_call>"#
    );
}

#[test]
fn huge_text_and_deep_nesting_are_rejected() {
    let limits = IngestLimits::default();
    let big = "x".repeat(limits.max_field_bytes + 1);
    let v = json!({"history": [
        {"role": "human", "content": "t"},
        {"role": "Orchestrator (thought)", "content": big},
    ]});
    let e = convert(&v, Format::Auto, &limits, "big").unwrap_err();
    assert_eq!(e.reason.key(), "field_too_long", "{}", e.message);
    assert!(
        e.message.contains("step 0 (Orchestrator) text"),
        "{}",
        e.message
    );

    let d = tempfile::tempdir().unwrap();
    let deep = format!(
        r#"{{"history":[{{"role":"human","content":"t"}},{{"role":"WebSurfer","content":{}"x"{}}}]}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let p = d.path().join("deep.json");
    std::fs::write(&p, deep).unwrap();
    let r = read_file(&p, Format::Auto, &limits).unwrap();
    let e = r[0].result.as_ref().unwrap_err();
    assert_eq!(e.reason.key(), "broken_json", "{}", e.message);
    // Nested just under serde_json's limit: a content part that is not text.
    let v = json!({"history": [{"role": "human", "content": "t"}, {"role": "WebSurfer", "content": [[["x"]]]}]});
    let e = convert(&v, Format::Auto, &limits, "nested").unwrap_err();
    assert_eq!(e.reason.key(), "wrong_type");
    assert!(e.message.contains("history[1].content[0]"), "{}", e.message);
}

#[test]
fn names_and_forced_format() {
    for n in ["magentic-one", "magentic"] {
        assert_eq!(n.parse::<Format>().unwrap(), Format::MagenticOne);
    }
    assert_eq!(Format::MagenticOne.name(), "magentic-one");
    // Forced on a record of another format: a clear reject, never a panic.
    let v = json!({"id": "n", "task": "t", "trajectory": [{"agent": "a", "output": "o"}]});
    let e = convert(&v, Format::MagenticOne, &IngestLimits::default(), "x").unwrap_err();
    assert_eq!(e.reason.key(), "empty_trajectory");
    assert!(
        e.message.contains("`history` (or `messages`) is missing"),
        "{}",
        e.message
    );
}

/// Read -> native JSON -> read as native gives the same record.
#[test]
fn round_trip_through_native() {
    for name in ["who_and_when_style.json", "log_events.json"] {
        let t = read_one(name, Format::Auto);
        let v = common::native_json(&t);
        let back = convert(&v, Format::Native, &IngestLimits::default(), "unused").unwrap();
        assert_eq!(back, t, "{name}");
        assert_eq!(detect(&v), Some(Format::Native));
    }
}

/// Records of the other formats are detected as before; a `history` of
/// plain chat roles stays `ag2`.
#[test]
fn other_formats_are_not_taken() {
    let cases = [
        (
            json!({"question": "q", "history": [{"role": "user", "name": "Planner", "content": "x"}, {"role": "assistant", "name": "Coder", "content": "y"}]}),
            Format::Ag2,
        ),
        (
            json!({"history": [{"role": "assistant", "content": "x"}]}),
            Format::Ag2,
        ),
        (json!({"history": []}), Format::Ag2),
        (
            json!({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}),
            Format::Messages,
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "name": "Coder (v2)", "content": "y"}]}),
            Format::Messages,
        ),
        (
            json!({"id": "n", "task": "t", "trajectory": []}),
            Format::Native,
        ),
        (
            json!({"task": "t", "response": "<think>a</think>"}),
            Format::CoaTags,
        ),
        (
            json!({"messages": [{"source": "user", "type": "TextMessage", "content": "x"}]}),
            Format::AutogenAgentchat,
        ),
        (
            json!({"messages": [{"source": "Orchestrator (thought)", "message": "x", "type": "OrchestrationEvent"}]}),
            Format::MagenticOne,
        ),
        (
            json!({"history": [{"role": "human", "content": "x"}]}),
            Format::MagenticOne,
        ),
    ];
    for (v, want) in cases {
        assert_eq!(detect(&v), Some(want), "{v}");
    }
}

fn who_and_when(dir: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/datasets/who-and-when")
        .join(dir);
    p.is_dir().then_some(p)
}

/// The real AG2 half of Who&When: every file is still `ag2`, read exactly
/// as the `ag2` reader reads it, 126 of 126 with no reject.
#[test]
fn who_and_when_ag2_half_is_still_ag2() {
    let Some(dir) = who_and_when("Algorithm-Generated") else {
        eprintln!(
            "note: Who&When absent; skipped (tests/who_and_when.rs fails on that under CI=true)"
        );
        return;
    };
    let files = expand_inputs(&[dir]).unwrap();
    assert_eq!(files.len(), 126);
    let limits = IngestLimits::default();
    for f in &files {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        assert_eq!(detect(&v), Some(Format::Ag2), "{}", f.display());
        let auto = read_file(f, Format::Auto, &limits).unwrap();
        let ag2 = read_file(f, Format::Ag2, &limits).unwrap();
        assert_eq!(auto.len(), 1);
        let (a, b) = (auto[0].result.as_ref(), ag2[0].result.as_ref());
        assert!(a.is_ok(), "{}: {a:?}", f.display());
        assert_eq!(a, b, "{}", f.display());
    }
}

/// Who&When's Hand-Crafted half (Magentic-One logs), when it is beside the
/// checkout (`../shared/datasets/who-and-when/Hand-Crafted`, or the folder
/// in `AFM_WW_HAND_CRAFTED`). It is not part of the shipped data set, so
/// the test is ignored by default and fails when asked for without it:
/// `cargo test -p afm-data --test importers -- --ignored`.
#[test]
#[ignore = "needs Who&When's Hand-Crafted half (not in ../shared); set AFM_WW_HAND_CRAFTED"]
fn who_and_when_hand_crafted() {
    let dir = std::env::var_os("AFM_WW_HAND_CRAFTED")
        .map(PathBuf::from)
        .or_else(|| who_and_when("Hand-Crafted"))
        .filter(|d| d.is_dir())
        .expect("Who&When Hand-Crafted: no folder in AFM_WW_HAND_CRAFTED or ../shared");
    let files = expand_inputs(&[dir]).unwrap();
    assert!(!files.is_empty());
    let map = AgentsMap::default();
    let mut handoffs = 0;
    for f in &files {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        assert_eq!(detect(&v), Some(Format::MagenticOne), "{}", f.display());
        let recs = read_file(f, Format::Auto, &IngestLimits::default()).unwrap();
        let t = recs[0]
            .result
            .clone()
            .unwrap_or_else(|e| panic!("{}: {e:?}", f.display()));
        let history = v["history"].as_array().unwrap();
        assert_eq!(t.steps.len() + 1, history.len(), "{}", f.display());
        assert_eq!(Some(t.task.as_str()), history[0]["content"].as_str());
        let n = normalise(t, &map).unwrap();
        handoffs += n
            .meta
            .as_ref()
            .and_then(|m| m.get("handoffs"))
            .map_or(0, |h| h.as_array().unwrap().len());
        assert_orchestrator_and_no_human_loss(&n, &["human"]);
    }
    assert!(handoffs > 0);
    eprintln!("Hand-Crafted: {} files, {handoffs} hand-offs", files.len());
}
