//! Every input format on hand-written records, agent naming and the agents map.

use afm_data::ingest::{parse_coa_tags, read_file, Format, IngestLimits};
use afm_data::AgentsMap;
use afm_format::{StepKind, Trajectory};
use std::path::Path;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn ok(path: &Path, fmt: Format) -> Vec<Trajectory> {
    read_file(path, fmt, &IngestLimits::default())
        .unwrap()
        .into_iter()
        .map(|p| p.result.unwrap_or_else(|e| panic!("{}: {e:?}", p.loc)))
        .collect()
}

fn kinds(t: &Trajectory) -> Vec<(String, StepKind)> {
    t.steps.iter().map(|s| (s.agent.clone(), s.kind)).collect()
}

/// The native reader and the native schema (`afm_format::native`) agree:
/// a record written by `NativeTrajectory` reads back as its `to_record`,
/// with and without a score and metadata.
#[test]
fn native_reader_reads_what_the_schema_writes() {
    use afm_format::{NativeTrajectory, Turn};
    let mk = |score, meta| NativeTrajectory {
        id: "n1".into(),
        task: "Add 2 and 3.".into(),
        trajectory: vec![
            Turn::output("Planner", "Add them."),
            Turn::output("Coder", "2 + 3"),
            Turn::observation("Interpreter", "5"),
            Turn::output("Reviewer", "Checked. ANSWER: 5"),
        ],
        success: false,
        answer: String::new(),
        score,
        meta,
    };
    for n in [
        mk(
            Some(0.5),
            serde_json::json!({"family": "arith", "level": 2}),
        ),
        mk(None, serde_json::Value::Null),
    ] {
        let v = serde_json::to_value(&n).unwrap();
        for fmt in [Format::Auto, Format::Native] {
            let read =
                afm_data::ingest::convert(&v, fmt, &IngestLimits::default(), "unused").unwrap();
            assert_eq!(read, n.to_record().unwrap());
        }
    }
}

#[test]
fn native_jsonl() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "a.jsonl",
        r#"{"id":"t1","task":"add 1 and 2","trajectory":[{"agent":"Planner","output":"add"},{"agent":"Coder","output":"1+2"},{"agent":"python","observation":"3"},{"agent":"Reviewer","output":"3"}],"success":true,"score":0.9,"answer":"3","meta":{"k":1}}

{"task":"second","trajectory":[{"agent":"Coder","output":"x"}],"answer":7}
"#,
    );
    for fmt in [Format::Auto, Format::Native] {
        let ts = ok(&p, fmt);
        assert_eq!(ts.len(), 2, "blank lines are skipped");
        assert_eq!(ts[0].id, "t1");
        assert_eq!(ts[0].success, Some(true));
        assert_eq!(ts[0].score, Some(0.9));
        assert_eq!(ts[0].answer.as_deref(), Some("3"));
        assert_eq!(ts[0].steps[2].kind, StepKind::Observation);
        assert_eq!(ts[0].steps[2].text, "3");
        assert_eq!(ts[1].id, "a:3", "default id is file:line");
        assert_eq!(ts[1].answer.as_deref(), Some("7"));
    }
}

#[test]
fn ag2_log() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "run.json",
        r#"{"question":"How many?","is_correct":false,"question_ID":"q-1","history":[
            {"content":"plan it","role":"assistant","name":"Planner_Expert"},
            {"content":"exitcode: 0\nCode output: 4","role":"user","name":"Computer_terminal"},
            {"content":"verified 4","role":"user","name":"VerificationExpert"},
            {"content":null,"role":"user","name":"Verification_Expert"},
            {"content":"ok","role":"assistant"}]}"#,
    );
    let t = &ok(&p, Format::Auto)[0];
    assert_eq!(t.task, "How many?");
    assert_eq!(t.id, "q-1");
    assert_eq!(t.success, Some(false));
    assert_eq!(t.steps[3].text, "", "null content is an empty turn");
    let map =
        AgentsMap::from_toml("[rename]\nVerificationExpert = \"Verification_Expert\"\n").unwrap();
    let t = afm_data::ingest::normalise(t.clone(), &map).unwrap();
    assert_eq!(
        kinds(&t),
        vec![
            ("Planner_Expert".into(), StepKind::Agent),
            ("Computer_terminal".into(), StepKind::Observation),
            ("Verification_Expert".into(), StepKind::Agent),
            ("Verification_Expert".into(), StepKind::Agent),
            ("assistant".into(), StepKind::Agent),
        ]
    );
    // Without `question`, the first message is the task.
    let p = write(
        d.path(),
        "b.json",
        r#"{"history":[{"content":"the task","role":"user","name":"Admin"},{"content":"done","role":"assistant","name":"A"}]}"#,
    );
    let t = &ok(&p, Format::Ag2)[0];
    assert_eq!((t.task.as_str(), t.steps.len()), ("the task", 1));
}

#[test]
fn openai_messages() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "m.jsonl",
        r#"{"id":"c1","messages":[{"role":"system","content":"be nice"},{"role":"user","content":"2+2?"},{"role":"assistant","name":"Coder","content":null,"tool_calls":[{"id":"x","type":"function","function":{"name":"python","arguments":"{\"code\":\"2+2\"}"}}]},{"role":"tool","name":"python","content":"4"},{"role":"Orchestrator (-> WebSurfer)","content":[{"type":"text","text":"answer 4"}]}],"success":true}
"#,
    );
    let t = &ok(&p, Format::Auto)[0];
    assert_eq!(t.task, "2+2?");
    // A Magentic-One speaker among the roles: read by `magentic-one` (issue
    // 13): agent `Orchestrator`, the hand-off kept as metadata.
    assert_eq!(
        kinds(t),
        vec![
            ("Coder".into(), StepKind::Agent),
            ("python".into(), StepKind::Observation),
            ("Orchestrator".into(), StepKind::Agent),
        ]
    );
    assert_eq!(
        t.meta,
        Some(
            serde_json::json!({"handoffs": [{"step": 2, "from": "Orchestrator", "to": "WebSurfer"}]})
        )
    );
    // Forced to `messages`, the role stays the name (the generic reading).
    assert_eq!(
        ok(&p, Format::Messages)[0].steps[2].agent,
        "Orchestrator (-> WebSurfer)"
    );
    assert!(t.steps[0]
        .text
        .contains("<tool_call>python({\"code\":\"2+2\"})</tool_call>"));
    assert_eq!(t.steps[2].text, "answer 4");
    // A bare JSON array of messages is one conversation.
    let p = write(
        d.path(),
        "arr.json",
        r#"[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]"#,
    );
    let ts = ok(&p, Format::Auto);
    assert_eq!(
        (ts.len(), ts[0].task.as_str(), ts[0].steps[0].agent.as_str()),
        (1, "hi", "assistant")
    );
    // An array of conversations.
    let p = write(
        d.path(),
        "arr2.json",
        r#"[{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]},{"messages":[{"role":"user","content":"c"},{"role":"assistant","content":"d"}]}]"#,
    );
    let ts = ok(&p, Format::Messages);
    assert_eq!(
        ts.iter().map(|t| t.task.as_str()).collect::<Vec<_>>(),
        ["a", "c"]
    );
    // The first user message is the task; a later one is an observation
    // (never trained), like a tool result.
    let p = write(
        d.path(),
        "later_user.jsonl",
        r#"{"messages":[{"role":"user","content":"task"},{"role":"assistant","content":"a"},{"role":"user","content":"more"},{"role":"assistant","content":"b"}]}"#,
    );
    let t = &ok(&p, Format::Auto)[0];
    assert_eq!(
        kinds(t),
        [
            ("assistant".to_string(), StepKind::Agent),
            ("user".to_string(), StepKind::Observation),
            ("assistant".to_string(), StepKind::Agent)
        ]
    );
}

#[test]
fn chain_of_agents_tags() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "coa.jsonl",
        r#"{"question":"2*3?","response":"<think>multiply</think>\n<plan>use code</plan><code>2*3</code><observation>6</observation><reflection>fine</reflection><answer>6</answer>","success":true}
"#,
    );
    let t = &ok(&p, Format::Auto)[0];
    assert_eq!(
        kinds(t),
        vec![
            ("think".into(), StepKind::Agent),
            ("plan".into(), StepKind::Agent),
            ("code".into(), StepKind::Agent),
            ("observation".into(), StepKind::Observation),
            ("reflection".into(), StepKind::Agent),
            ("answer".into(), StepKind::Agent),
        ]
    );
    assert_eq!(t.steps[3].text, "6");
    // Unclosed tags run to the next tag; free text is a `response` step.
    let s = parse_coa_tags("intro <think>a<code>b</code><tool_response>r</tool_response>");
    let got: Vec<_> = s
        .iter()
        .map(|x| (x.agent.as_str(), x.kind, x.text.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("response", StepKind::Agent, "intro "),
            ("think", StepKind::Agent, "a"),
            ("code", StepKind::Agent, "b"),
            ("tool_response", StepKind::Observation, "r"),
        ]
    );
}

#[test]
fn bom_and_crlf_are_tolerated() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("w.jsonl");
    std::fs::write(&p, b"\xef\xbb\xbf{\"task\":\"t\",\"trajectory\":[{\"agent\":\"A\",\"output\":\"o\"}]}\r\n{\"task\":\"u\",\"trajectory\":[{\"agent\":\"A\",\"output\":\"o\"}]}\r\n").unwrap();
    let ts = ok(&p, Format::Auto);
    assert_eq!(
        ts.iter().map(|t| t.task.as_str()).collect::<Vec<_>>(),
        ["t", "u"]
    );
}

#[test]
fn forced_format_mismatch_is_a_clear_reject() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "x.jsonl",
        "{\"task\":\"t\",\"trajectory\":[{\"agent\":\"A\",\"output\":\"o\"}]}\n",
    );
    let r = read_file(&p, Format::Ag2, &IngestLimits::default()).unwrap();
    let e = r[0].result.clone().unwrap_err();
    assert!(e.message.contains("history"), "{}", e.message);
}
