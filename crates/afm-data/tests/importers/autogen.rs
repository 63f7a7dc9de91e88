//! The AutoGen 0.4 AgentChat importer (`autogen-agentchat`) on fixtures
//! written from autogen-agentchat's message, `TaskResult` and `TeamState`
//! classes, hostile variants included.

use crate::common;

use afm_data::ingest::{convert, detect, normalise, read_file, Format, IngestLimits};
use afm_data::AgentsMap;
use afm_format::{StepKind, Trajectory};
use serde_json::json;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/autogen")
        .join(name)
}

fn json_of(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

fn read_one(name: &str, fmt: Format) -> Trajectory {
    let recs = read_file(&fixture(name), fmt, &IngestLimits::default()).unwrap();
    assert_eq!(recs.len(), 1, "{name}");
    recs[0]
        .result
        .clone()
        .unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

fn step(agent: &str, kind: StepKind, text: &str) -> (String, StepKind, String) {
    (agent.to_string(), kind, text.to_string())
}

fn all_steps(t: &Trajectory) -> Vec<(String, StepKind, String)> {
    t.steps
        .iter()
        .map(|s| (s.agent.clone(), s.kind, s.text.clone()))
        .collect()
}

/// No user turn and no observation carries loss; every agent turn does.
fn assert_loss_only_on_agents(t: &Trajectory) {
    let (task, by_step) = common::loss_by_step(t);
    assert_eq!(task, 0.0);
    for (s, w) in t.steps.iter().zip(&by_step) {
        match s.kind {
            StepKind::Observation => assert_eq!(*w, 0.0, "{}: {:?}", s.agent, s.text),
            StepKind::Agent => assert!(*w > 0.0, "{}: {:?}", s.agent, s.text),
        }
    }
}

#[test]
fn task_result_every_message_type() {
    let v = json_of("task_result.json");
    assert_eq!(detect(&v), Some(Format::AutogenAgentchat));
    let t = read_one("task_result.json", Format::Auto);
    assert_eq!(t, read_one("task_result.json", Format::AutogenAgentchat));
    assert_eq!(t.id, "task_result");
    assert_eq!(
        t.task,
        "What is the weather in Paris and in Oslo, in Celsius?"
    );
    use StepKind::{Agent as A, Observation as O};
    let structured = json!({"paris_c": 21, "oslo_c": 14}).to_string();
    assert_eq!(
        all_steps(&t),
        vec![
            // The thought and the tool calls of one model reply: one turn.
            step(
                "planner",
                A,
                "I need both cities; I will call the tool twice.\n\
                 <tool_call>get_weather({\"city\": \"Paris\"})</tool_call>\n\
                 <tool_call>get_weather({\"city\": \"Oslo\"})</tool_call>"
            ),
            step("get_weather", O, "Paris: 21 C, sunny"),
            step("get_weather", O, "Error: the weather service timed out"),
            // (the ToolCallSummaryMessage repeats both results: dropped)
            step(
                "planner",
                A,
                "<tool_call>transfer_to_researcher({})</tool_call>"
            ),
            step(
                "transfer_to_researcher",
                O,
                "Transferred to researcher, adopting the role of researcher immediately."
            ),
            // (the HandoffMessage repeats that result: dropped, hand-off kept)
            step(
                "researcher",
                A,
                "Oslo is usually about 14 C in June; here is the map:"
            ),
            step("researcher", A, "Map of Oslo:\n<image>"),
            // user_proxy asked for input: a human, so an observation.
            step("user_proxy", O, "Please also check the code runs."),
            step(
                "coder",
                A,
                "```python\nprint(round((57 - 32) * 5 / 9))\n```"
            ),
            step("coder", O, "NameError: name 'rnd' is not defined"),
            step("memory", O, "User prefers Celsius."),
            step("reporter", A, &structured),
            step("reporter", A, "Paris 21 C, Oslo about 14 C. TERMINATE"),
        ]
    );
    assert_eq!(
        t.meta,
        Some(json!({
            "handoffs": [{"step": 3, "from": "planner", "to": "researcher"}],
            "stop_reason": "Text 'TERMINATE' mentioned",
            "models_usage": {"calls": 4, "prompt_tokens": 840, "completion_tokens": 87},
            "dropped": {
                "HandoffMessage": 1,
                "ModelClientStreamingChunkEvent": 1,
                "ToolCallSummaryMessage": 1,
                "UserInputRequestedEvent": 1,
            },
            "error_steps": [2, 9],
        }))
    );
    // Every message is a step, the task, or counted as dropped.
    let n = v["messages"].as_array().unwrap().len();
    // (the two-result execution event gives one step more, the thought
    // merged into the tool-call turn one step less)
    assert_eq!(n, 1 + t.steps.len() + 4);
    assert_loss_only_on_agents(&t);
    assert_eq!(normalise(t.clone(), &AgentsMap::default()).unwrap(), t);
}

#[test]
fn magentic_one_group_chat_task_result() {
    let t = read_one("magentic_one_group_chat.json", Format::Auto);
    use StepKind::{Agent as A, Observation as O};
    let orch = "MagenticOneOrchestrator";
    assert_eq!(
        t.steps
            .iter()
            .map(|s| (s.agent.as_str(), s.kind))
            .collect::<Vec<_>>(),
        vec![
            (orch, A),
            (orch, A),
            ("WebSurfer", A),
            (orch, A),
            ("Coder", A),
            (orch, A),
            ("ComputerTerminal", A),
            (orch, A),
        ]
    );
    assert_eq!(
        t.meta,
        Some(json!({
            "handoffs": [
                {"step": 1, "from": orch, "to": "WebSurfer"},
                {"step": 3, "from": orch, "to": "Coder"},
                {"step": 5, "from": orch, "to": "ComputerTerminal"},
            ],
            "stop_reason": "Because the task is complete.",
            "models_usage": {"calls": 2, "prompt_tokens": 1300, "completion_tokens": 70},
        }))
    );
    // The code executor's output: an observation by the default agents map.
    let n = normalise(t, &AgentsMap::default()).unwrap();
    assert_eq!(n.steps[6].kind, O);
    assert_loss_only_on_agents(&n);
}

#[test]
fn saved_team_state() {
    let v = json_of("team_state.json");
    assert_eq!(detect(&v), Some(Format::AutogenAgentchat));
    let t = read_one("team_state.json", Format::Auto);
    assert_eq!(t.task, "Write a two-line poem about rain.");
    use StepKind::Agent as A;
    assert_eq!(
        all_steps(&t),
        vec![
            step(
                "writer",
                A,
                "Rain taps the glass,\nthe street forgets its dust."
            ),
            step("critic", A, "APPROVE"),
        ]
    );
    assert_eq!(
        t.meta,
        Some(json!({"models_usage": {"calls": 2, "prompt_tokens": 120, "completion_tokens": 20}}))
    );
}

#[test]
fn hostile_lines_are_read_or_rejected_by_field() {
    type Want = Result<(), (&'static str, &'static str)>;
    let want: Vec<Want> = vec![
        Ok(()),
        Err(("unknown_step_shape", "field `messages[1].type`: unknown AutoGen AgentChat message type \"FancyEvent\"")),
        Err(("unknown_step_shape", "messages[1]: missing `source`")),
        Err(("wrong_type", "field `messages[1].source`: expected a string, got a number")),
        Err(("unknown_step_shape", "messages[1]: missing `type`")),
        Err(("wrong_type", "field `messages[1].content`: expected a string, got a number")),
        Err(("wrong_type", "field `messages[1].content`: expected an array, got a string")),
        Err(("unknown_step_shape", "messages[1].content[0]: missing `name`")),
        Err(("wrong_type", "field `messages[1].content[0].content`: expected a string, got null")),
        Err(("wrong_type", "field `messages[1].models_usage`: expected an object or null, got a string")),
        Err(("wrong_type", "field `messages[1].models_usage.prompt_tokens`: expected a non-negative integer")),
        Err(("missing_task", "`messages` has no `user` message before the first agent message, and there is no `task` field")),
        Ok(()),
        Err(("empty_trajectory", "field `messages` is an empty list")),
        Err(("empty_trajectory", "no steps")),
        Err(("unknown_record_shape", "2 states have a `message_thread` (agent_states.m1.message_thread, agent_states.m2.message_thread)")),
        Err(("empty_trajectory", "no agent state has a `message_thread`")),
        Err(("wrong_type", "field `agent_states`: expected an object, got an array")),
        Err(("wrong_type", "field `stop_reason`: expected a string or null, got a number")),
        Err(("unknown_step_shape", "messages[1]: missing `target`")),
        Err(("nul_byte", "contains a NUL")),
        Err(("wrong_type", "field `messages[2].content`: expected a list of agent names, got a number")),
        Err(("wrong_type", "field `messages[1].content[0]`: expected a string or an image")),
        Err(("wrong_type", "field `messages`: expected an array, got a string")),
        Err(("wrong_type", "field `messages[1]`: expected an object, got a number")),
        Err(("bad_agent_name", "step[0]")),
        Err(("missing_task", "messages[0]: the first `user` message (the task) is empty")),
        Err(("unknown_step_shape", "messages[1]: missing `result`")),
        Err(("wrong_type", "field `messages[2].content[0].is_error`: expected a boolean, got a string")),
        Err(("broken_json", "broken JSON")),
        Ok(()),
        Ok(()),
        Ok(()),
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
    assert_eq!((kept, rejected), (5, 28));

    let ok: Vec<&Trajectory> = recs.iter().filter_map(|r| r.result.as_ref().ok()).collect();
    // A result without `name` (before AutoGen 0.4.8) takes its call's name.
    use StepKind::{Agent as A, Observation as O};
    assert_eq!(
        all_steps(ok[0]),
        vec![
            step("calc", A, "<tool_call>add({\"a\":2,\"b\":3})</tool_call>"),
            step("add", O, "5"),
            step("calc", A, "5"),
        ]
    );
    assert_eq!(ok[0].meta, None);
    assert_eq!(ok[1].task, "Given as a field.");
    // The user's hand-off is the task; its target is kept.
    assert_eq!(ok[2].task, "Help me book a table.");
    assert_eq!(ok[2].meta, Some(json!({"task_handoff_to": "booker"})));
    // A hand-off whose text is the agent's own: its turn, with the hand-off.
    assert_eq!(
        all_steps(ok[3]),
        vec![
            step("a", A, "Over to b, please check the units."),
            step("b", A, "Units checked."),
        ]
    );
    assert_eq!(
        ok[3].meta,
        Some(json!({"handoffs": [{"step": 0, "from": "a", "to": "b"}]}))
    );
    // A summary with nothing before it to repeat: kept, as an observation.
    assert_eq!(all_steps(ok[4]), vec![step("tool", O, "42")]);
}

#[test]
fn huge_text_and_deep_nesting_are_rejected() {
    let limits = IngestLimits::default();
    let big = "y".repeat(limits.max_field_bytes + 1);
    let v = json!({"messages": [
        {"source": "user", "type": "TextMessage", "content": "t"},
        {"source": "a", "type": "ToolCallExecutionEvent", "content": [{"content": big, "name": "f", "call_id": "1"}]},
    ]});
    let e = convert(&v, Format::Auto, &limits, "big").unwrap_err();
    assert_eq!(e.reason.key(), "field_too_long", "{}", e.message);
    assert!(e.message.contains("step 0 (f) text"), "{}", e.message);

    let d = tempfile::tempdir().unwrap();
    let deep = format!(
        r#"{{"messages":[{{"source":"user","type":"TextMessage","content":"t"}},{{"source":"a","type":"StructuredMessage[X]","content":{}1{}}}]}}"#,
        "{\"k\":".repeat(200),
        "}".repeat(200)
    );
    let p = d.path().join("deep.json");
    std::fs::write(&p, deep).unwrap();
    let r = read_file(&p, Format::Auto, &limits).unwrap();
    let e = r[0].result.as_ref().unwrap_err();
    assert_eq!(e.reason.key(), "broken_json", "{}", e.message);
}

#[test]
fn names_and_forced_format() {
    for n in ["autogen-agentchat", "autogen04"] {
        assert_eq!(n.parse::<Format>().unwrap(), Format::AutogenAgentchat);
    }
    assert_eq!(Format::AutogenAgentchat.name(), "autogen-agentchat");
    // `autogen` stays the AG2 / AutoGen 0.2 reader.
    assert_eq!("autogen".parse::<Format>().unwrap(), Format::Ag2);
    // OpenAI messages forced through this reader: a clear reject naming the field.
    let v = json!({"messages": [{"role": "user", "content": "x"}]});
    let e = convert(&v, Format::AutogenAgentchat, &IngestLimits::default(), "x").unwrap_err();
    assert_eq!(e.reason.key(), "unknown_step_shape");
    assert!(
        e.message.contains("messages[0]: missing `type`"),
        "{}",
        e.message
    );
    // A Magentic-One log event is not an AgentChat message.
    let v = json!({"messages": [{"source": "Orchestrator (thought)", "message": "x", "type": "OrchestrationEvent"}]});
    assert_eq!(detect(&v), Some(Format::MagenticOne));
    let e = convert(&v, Format::AutogenAgentchat, &IngestLimits::default(), "x").unwrap_err();
    assert!(
        e.message.contains("\"OrchestrationEvent\""),
        "{}",
        e.message
    );
}

/// Read -> native JSON -> read as native gives the same record.
#[test]
fn round_trip_through_native() {
    for name in [
        "task_result.json",
        "magentic_one_group_chat.json",
        "team_state.json",
    ] {
        let t = read_one(name, Format::Auto);
        let v = common::native_json(&t);
        let back = convert(&v, Format::Native, &IngestLimits::default(), "unused").unwrap();
        assert_eq!(back, t, "{name}");
    }
}

/// OpenAI-style and LangChain-style message lists are not AgentChat's.
#[test]
fn other_message_lists_are_not_taken() {
    let cases = [
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            Format::Messages,
        ),
        (
            json!({"messages": [{"type": "human", "content": "x"}, {"type": "ai", "content": "y"}]}),
            Format::Langgraph,
        ),
        (
            json!({"messages": [{"role": "user", "source": "user", "type": "TextMessage", "content": "x"}]}),
            Format::Messages,
        ),
        (json!({"messages": []}), Format::Messages),
    ];
    for (v, want) in cases {
        assert_eq!(detect(&v), Some(want), "{v}");
    }
}
