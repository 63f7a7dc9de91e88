//! LangGraph / LangSmith importer (`langgraph`): state messages in each of
//! LangChain's serialised forms and LangSmith run trees, on fixtures written
//! from langchain_core (`messages`, `load`) and langsmith (`schemas.Run`,
//! `RunTree`, the LangChain tracer's run inputs and outputs).

use afm_data::ingest::{convert, detect, read_file, Format, IngestLimits, RejectReason};
use afm_format::{StepKind, Trajectory};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/langgraph")
        .join(name)
}

fn read_all(name: &str, fmt: Format) -> Vec<Trajectory> {
    read_file(&fixture(name), fmt, &IngestLimits::default())
        .unwrap()
        .into_iter()
        .map(|p| {
            p.result
                .unwrap_or_else(|e| panic!("{name} {}: {e:?}", p.loc))
        })
        .collect()
}

fn steps(t: &Trajectory) -> Vec<(&str, StepKind, &str)> {
    t.steps
        .iter()
        .map(|s| (s.agent.as_str(), s.kind, s.text.as_str()))
        .collect()
}

fn json_of(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

/// `t` in afm's native JSON (`{"id","task","trajectory":[{"agent","output"
/// | "observation"}],"success","score","answer","meta"}`, absent fields left
/// out) reads back as `t` (`Trajectory`'s own serde form is not the native one).
fn round_trips(t: &Trajectory) {
    let turns: Vec<Value> = t
        .steps
        .iter()
        .map(|s| match s.kind {
            StepKind::Agent => json!({"agent": s.agent, "output": s.text}),
            StepKind::Observation => json!({"agent": s.agent, "observation": s.text}),
        })
        .collect();
    let mut v = json!({"id": t.id, "task": t.task, "trajectory": turns});
    let o = v.as_object_mut().unwrap();
    if let Some(b) = t.success {
        o.insert("success".into(), json!(b));
    }
    if let Some(s) = t.score {
        o.insert("score".into(), json!(s));
    }
    if let Some(a) = &t.answer {
        o.insert("answer".into(), json!(a));
    }
    if let Some(m) = &t.meta {
        o.insert("meta".into(), m.clone());
    }
    let back = convert(&v, Format::Native, &IngestLimits::default(), "unused").unwrap();
    assert_eq!(&back, t);
}

const A: StepKind = StepKind::Agent;
const O: StepKind = StepKind::Observation;
const TASK: &str = "Find the population of Lyon and double it.";

/// The supervisor conversation of the state fixtures.
fn state_steps() -> Vec<(&'static str, StepKind, &'static str)> {
    vec![
        (
            "supervisor",
            A,
            "<tool_call>transfer_to_researcher({})</tool_call>",
        ),
        (
            "transfer_to_researcher",
            O,
            "Successfully transferred to researcher",
        ),
        (
            "researcher",
            A,
            "<tool_call>web_search({\"query\":\"population of Lyon\"})</tool_call>",
        ),
        ("web_search", O, "Lyon, France: population 522,250 (2021)."),
        (
            "researcher",
            A,
            "Lyon has 522,250 inhabitants.\n<tool_call>transfer_back_to_supervisor({})</tool_call>",
        ),
        (
            "transfer_back_to_supervisor",
            O,
            "Successfully transferred back to supervisor",
        ),
        ("human", O, "Use the 2021 figure."),
        ("math_expert", A, "522,250 doubled is 1,044,500."),
        (
            "supervisor",
            A,
            "The population of Lyon doubled is 1,044,500.",
        ),
    ]
}

#[test]
fn state_messages_in_every_serialised_form_keep_the_agent_names() {
    // messages_to_dict: {"type", "data"}
    for fmt in [Format::Auto, Format::Langgraph] {
        let ts = read_all("state_dict.json", fmt);
        let t = &ts[0];
        assert_eq!(t.id, "thread-42");
        assert_eq!(t.task, TASK);
        assert_eq!(t.success, Some(true));
        assert_eq!(steps(t), state_steps());
        round_trips(t);
    }
    // model_dump(), a bare array: one conversation
    let ts = read_all("state_flat.json", Format::Auto);
    assert_eq!(ts.len(), 1);
    assert_eq!(ts[0].id, "state_flat");
    assert_eq!(steps(&ts[0]), state_steps());
    // dumpd(): {"lc": 1, "type": "constructor", ...}, one record per line
    let ts = read_all("state_lc.jsonl", Format::Auto);
    assert_eq!(ts.len(), 2);
    assert_eq!(steps(&ts[0]), state_steps());
    assert_eq!(ts[1].task, "Say hi.");
    assert_eq!(steps(&ts[1]), vec![("greeter", A, "hi")]);
}

fn tree_steps() -> Vec<(&'static str, StepKind, &'static str)> {
    vec![
        // The model's message has no name: the graph state names it (same id).
        (
            "supervisor",
            A,
            "<tool_call>transfer_to_researcher({})</tool_call>",
        ),
        (
            "transfer_to_researcher",
            O,
            "Successfully transferred to researcher",
        ),
        (
            "researcher",
            A,
            "<tool_call>web_search({\"query\":\"population of Lyon\"})</tool_call>",
        ),
        ("web_search", O, "Lyon, France: population 522,250 (2021)."),
        // No state output for this one: the innermost node that is not the
        // prebuilt model node `agent` names it.
        ("researcher", A, "Lyon has 522,250 inhabitants."),
        ("math_expert", A, "522,250 doubled is 1,044,500."),
        ("calculator", O, "ZeroDivisionError('boom')"),
        (
            "supervisor",
            A,
            "The population of Lyon doubled is 1,044,500.",
        ),
    ]
}

#[test]
fn run_tree_is_read_in_dotted_order_with_agents_from_state_and_nodes() {
    for fmt in [Format::Auto, Format::Langgraph] {
        let ts = read_all("run_tree.json", fmt);
        let t = &ts[0];
        assert_eq!(t.id, "00000000-0000-4000-8000-000000000001");
        assert_eq!(t.task, TASK, "the root run's input messages");
        assert_eq!(steps(t), tree_steps());
        round_trips(t);
    }
}

#[test]
fn flat_runs_without_dotted_order_follow_parents_and_start_times() {
    let ts = read_all("runs_flat.json", Format::Auto);
    let t = &ts[0];
    assert_eq!(t.id, "00000000-0000-4000-8000-000000000001", "the trace id");
    assert_eq!(steps(t), tree_steps());
    // Without the wrapper's task, the root run's inputs give it.
    let mut v = json_of("runs_flat.json");
    v.as_object_mut().unwrap().remove("task");
    let r = convert(&v, Format::Auto, &IngestLimits::default(), "x").unwrap();
    assert_eq!(r.task, TASK);
}

#[test]
fn without_message_names_or_state_the_node_names_the_agent() {
    // Strip every run's state outputs: the supervisor's turns fall back to
    // the innermost non-generic node, `supervisor`; a run with no node at
    // all is `assistant`.
    let mut v = json_of("runs_flat.json");
    for r in v["runs"].as_array_mut().unwrap() {
        if r["run_type"] == "chain" {
            r["outputs"] = Value::Null;
        }
    }
    let t = convert(&v, Format::Auto, &IngestLimits::default(), "x").unwrap();
    assert_eq!(steps(&t), tree_steps());
    let lone = json!({"id": "r", "name": "ChatOpenAI", "run_type": "llm",
        "inputs": {"messages": [[{"lc": 1, "type": "constructor", "id": ["langchain", "schema", "messages", "HumanMessage"], "kwargs": {"content": "hi"}}]]},
        "outputs": {"generations": [[{"text": "hello", "message": {"lc": 1, "type": "constructor", "id": ["langchain", "schema", "messages", "AIMessage"], "kwargs": {"content": "hello"}}}]]}});
    let t = convert(&lone, Format::Auto, &IngestLimits::default(), "x").unwrap();
    assert_eq!(
        t.task, "hi",
        "the class name gives the type when kwargs has none"
    );
    assert_eq!(steps(&t), vec![("assistant", A, "hello")]);
    // A node named `agent` and nothing above it: `agent`.
    let mut lone = lone;
    lone["extra"] = json!({"metadata": {"langgraph_node": "agent"}});
    let t = convert(&lone, Format::Auto, &IngestLimits::default(), "x").unwrap();
    assert_eq!(steps(&t), vec![("agent", A, "hello")]);
}

#[test]
fn auto_detection_picks_langgraph_and_leaves_openai_messages() {
    for f in ["state_dict.json", "run_tree.json", "runs_flat.json"] {
        assert_eq!(detect(&json_of(f)), Some(Format::Langgraph), "{f}");
    }
    let others = [
        (
            json!({"task": "t", "trajectory": [{"agent": "A", "output": "x"}]}),
            Format::Native,
        ),
        (
            json!({"question": "q", "history": [{"content": "x", "role": "assistant"}]}),
            Format::Ag2,
        ),
        // OpenAI messages have `role`: never LangChain's.
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            Format::Messages,
        ),
        (
            json!({"messages": [{"role": "user", "type": "human", "content": "x"}]}),
            Format::Messages,
        ),
        (
            json!({"messages": [{"type": "message", "role": "user", "content": "x"}]}),
            Format::Messages,
        ),
        (json!({"messages": []}), Format::Messages),
        (
            json!({"task": "t", "response": "<think>x</think>"}),
            Format::CoaTags,
        ),
        (
            json!({"runs": [{"id": 1}], "messages": [{"role": "user", "content": "x"}]}),
            Format::Messages,
        ),
    ];
    for (v, f) in others {
        assert_eq!(detect(&v), Some(f), "{v}");
    }
    // A bare array of OpenAI messages is still one `messages` conversation.
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("chat.json");
    std::fs::write(
        &p,
        r#"[{"role":"user","content":"hi"},{"role":"assistant","name":"Bot","content":"hello"}]"#,
    )
    .unwrap();
    let r = read_file(&p, Format::Auto, &IngestLimits::default()).unwrap();
    assert_eq!(
        steps(r[0].result.as_ref().unwrap()),
        vec![("Bot", A, "hello")]
    );
    for name in ["langgraph", "langsmith"] {
        assert_eq!(name.parse::<Format>().unwrap(), Format::Langgraph);
    }
    assert_eq!(Format::Langgraph.name(), "langgraph");
}

#[test]
fn hostile_lines_are_each_read_or_rejected_with_the_field() {
    use RejectReason::*;
    let expect: Vec<Option<(RejectReason, &str)>> = vec![
        None,
        Some((
            UnknownStepShape,
            "field `messages[1]`: unknown message type \"robot\"",
        )),
        Some((WrongType, "field `messages`: expected an array")),
        Some((
            WrongType,
            "field `messages[1].tool_calls`: expected an array",
        )),
        Some((
            WrongType,
            "field `messages[1].tool_calls[0]`: no string `name`",
        )),
        Some((WrongType, "field `messages[1].content`")),
        Some((MissingTask, "no `task` field and no human message")),
        Some((
            MissingTask,
            "messages[0]: the first human message (the task) is empty",
        )),
        Some((WrongType, "field `messages[1].name`: expected a string")),
        Some((
            UnknownStepShape,
            "field `messages[1]`: an `lc` message without `kwargs`",
        )),
        Some((
            UnknownStepShape,
            "field `messages[1]`: unknown message role \"robot\"",
        )),
        Some((UnknownStepShape, "child_runs[0]: missing string `run_type`")),
        Some((WrongType, "field `child_runs`: expected an array")),
        Some((EmptyTrajectory, "no agent turn")),
        Some((
            UnknownStepShape,
            "field `child_runs[0].outputs`: an LLM run's outputs need",
        )),
        Some((
            UnknownRecordShape,
            "field `runs[0].parent_run_id`: the runs' parents form a cycle",
        )),
        Some((EmptyTrajectory, "field `runs` is empty")),
        Some((
            WrongType,
            "field `child_runs[0].extra.metadata`: expected an object",
        )),
        Some((NulByte, "contains a NUL")),
        Some((BadAgentName, "step[0]")),
        None,
        None,
        Some((UnknownStepShape, "not an AI message")),
        None,
        Some((EmptyTrajectory, "no agent turn")),
        Some((WrongType, "record: expected a JSON object, got an array")),
        None,
        None,
    ];
    let path = fixture("hostile.jsonl");
    let lines = std::fs::read_to_string(&path).unwrap().lines().count();
    assert_eq!(lines, expect.len());
    let recs = read_file(&path, Format::Auto, &IngestLimits::default()).unwrap();
    assert_eq!(recs.len(), lines, "every line is a record");
    let (mut kept, mut rejected) = (0, 0);
    for (p, want) in recs.iter().zip(&expect) {
        match (&p.result, want) {
            (Ok(_), None) => kept += 1,
            (Err(e), Some((reason, msg))) => {
                assert_eq!(e.reason, *reason, "{}: {}", p.loc, e.message);
                assert!(
                    e.message.contains(msg),
                    "{}: {:?} lacks {msg:?}",
                    p.loc,
                    e.message
                );
                rejected += 1;
            }
            (got, want) => panic!("{}: got {got:?}, want {want:?}", p.loc),
        }
    }
    assert_eq!(kept + rejected, lines);
    assert_eq!(kept, 6);
    let ok = |i: usize| recs[i].result.as_ref().unwrap();
    assert_eq!(
        steps(ok(20)),
        vec![("adder", A, "5")],
        "chunks read, remove skipped"
    );
    assert_eq!(steps(ok(21)), vec![("assistant", A, "5")]);
    assert_eq!(
        steps(ok(23)),
        vec![
            ("adder", A, "<tool_call>add({\"a\":2,\"b\":3})</tool_call>"),
            ("add", O, "5")
        ]
    );
    assert_eq!(
        ok(23).task,
        "Add 2 and 3.",
        "a [role, text] pair in the root's inputs"
    );
    assert_eq!(steps(ok(26))[1], ("tool", O, "5"));
    assert_eq!(
        steps(ok(27)),
        vec![
            ("assistant", A, "<tool_call>add({\"a\": 2})</tool_call>"),
            ("add", O, "5")
        ]
    );
}

#[test]
fn huge_text_and_deep_trees_are_handled() {
    let limits = IngestLimits::default();
    let mut v = json_of("state_dict.json");
    v["messages"][2]["data"]["content"] = json!("x".repeat(limits.max_field_bytes + 1));
    let e = convert(&v, Format::Auto, &limits, "x").unwrap_err();
    assert_eq!(e.reason, RejectReason::FieldTooLong);
    assert!(
        e.message.contains("step 0 (supervisor) text"),
        "{}",
        e.message
    );
    // child_runs nested past serde_json's depth limit: broken JSON.
    let d = tempfile::tempdir().unwrap();
    let mut s = String::new();
    for _ in 0..100 {
        s.push_str(r#"{"run_type":"chain","child_runs":["#);
    }
    s.push_str(r#"{"run_type":"llm","outputs":{"generations":[[{"text":"x"}]]}}"#);
    for _ in 0..100 {
        s.push_str("]}");
    }
    let p = d.path().join("deep.jsonl");
    std::fs::write(&p, format!("{s}\n")).unwrap();
    let r = read_file(&p, Format::Langgraph, &limits).unwrap();
    assert_eq!(
        r[0].result.as_ref().unwrap_err().reason,
        RejectReason::BrokenJson
    );
    // A flat list of 3,000 runs chained by parent_run_id is read without
    // recursion; the innermost node names the agent.
    let mut runs = vec![json!({"id": "r0", "run_type": "chain", "inputs": {"input": "deep task"}})];
    for i in 1..3000 {
        runs.push(json!({"id": format!("r{i}"), "run_type": "chain", "parent_run_id": format!("r{}", i - 1),
            "extra": {"metadata": {"langgraph_node": format!("n{i}")}}}));
    }
    runs.push(
        json!({"id": "llm", "run_type": "llm", "parent_run_id": "r2999",
        "outputs": {"generations": [[{"text": "done"}]]}}),
    );
    let t = convert(&json!({"runs": runs}), Format::Auto, &limits, "x").unwrap();
    assert_eq!(t.task, "deep task");
    assert_eq!(steps(&t), vec![("n2999", A, "done")]);
}
