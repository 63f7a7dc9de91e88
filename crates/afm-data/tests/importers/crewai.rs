//! The CrewAI importer on fixtures written from crewAI's own schema
//! (`crews/crew_output.py`, `tasks/task_output.py`, `events/types/
//! tool_usage_events.py`, `agent_events.py`, `task_events.py`, `crew_events.py`).

use afm_data::ingest::{convert, detect, read_file, Format, IngestLimits};
use afm_format::{StepKind, Trajectory};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/crewai")
        .join(name)
}

fn one(name: &str, fmt: Format) -> Trajectory {
    let mut all = read_file(&fixture(name), fmt, &IngestLimits::default()).unwrap();
    assert_eq!(all.len(), 1, "{name}: one record");
    let p = all.remove(0);
    p.result.unwrap_or_else(|e| panic!("{}: {e:?}", p.loc))
}

/// (agent, 'A' for an agent step or 'O' for an observation, text).
fn steps(t: &Trajectory) -> Vec<(String, char, String)> {
    t.steps
        .iter()
        .map(|s| {
            let k = match s.kind {
                StepKind::Agent => 'A',
                StepKind::Observation => 'O',
            };
            (s.agent.clone(), k, s.text.clone())
        })
        .collect()
}

fn s(agent: &str, kind: char, text: &str) -> (String, char, String) {
    (agent.to_string(), kind, text.to_string())
}

/// The trajectory as afm's native JSON (`trajectory` of `output`/`observation` turns).
fn native_of(t: &Trajectory) -> Value {
    let turns: Vec<Value> = t
        .steps
        .iter()
        .map(|s| match s.kind {
            StepKind::Agent => json!({"agent": s.agent, "output": s.text}),
            StepKind::Observation => json!({"agent": s.agent, "observation": s.text}),
        })
        .collect();
    let mut v = json!({"id": t.id, "task": t.task, "trajectory": turns});
    if let Some(b) = t.success {
        v["success"] = json!(b);
    }
    if let Some(x) = t.score {
        v["score"] = json!(x);
    }
    if let Some(a) = &t.answer {
        v["answer"] = json!(a);
    }
    if let Some(m) = &t.meta {
        v["meta"] = m.clone();
    }
    v
}

fn round_trip(t: &Trajectory) {
    let v = native_of(t);
    let back = convert(&v, Format::Native, &IngestLimits::default(), "unused").unwrap();
    assert_eq!(&back, t, "native round trip");
}

#[test]
fn crew_output_gives_one_turn_per_task() {
    for fmt in [Format::Auto, Format::Crewai] {
        let t = one("crew_output.json", fmt);
        assert_eq!(
            t.task,
            "Research the latest developments in AI agents in 2025.\n\nExpected output: A list with 3 bullet points of the most relevant information about AI agents."
        );
        assert_eq!(
            steps(&t),
            vec![
                s(
                    "Senior Research Analyst",
                    'A',
                    "- Agents use tools\n- Agents work in crews\n- Agents have memory"
                ),
                // Later task descriptions are instructions to the agent, not its output.
                s("user", 'O', "Write a short article from the research."),
                s(
                    "Tech Content Writer",
                    'A',
                    "AI agents in 2025 use tools, work in crews and remember what they did."
                ),
                s(
                    "user",
                    'O',
                    "Rate the article.\n\nExpected output: A JSON object with a score."
                ),
                // An empty `raw` with a `json_dict`: the JSON is the output.
                s("Editor", 'A', "{\"score\":8}"),
            ]
        );
        assert_eq!(
            t.answer.as_deref(),
            Some("AI agents in 2025 use tools, work in crews and remember what they did.")
        );
        round_trip(&t);
    }
}

#[test]
fn task_messages_give_the_whole_conversation() {
    let t = one("crew_messages.json", Format::Auto);
    assert_eq!(
        t.task,
        "Research AI agents.\n\nExpected output: 3 bullet points."
    );
    assert_eq!(
        steps(&t),
        vec![
            // ReAct: crewAI appended the tool's result to the agent's message.
            s(
                "Senior Research Analyst",
                'A',
                "Thought: I should search first.\nAction: Search the internet\nAction Input: {\"search_query\": \"AI agents 2025\"}"
            ),
            s(
                "Search the internet",
                'O',
                "Result 1: agents plan.\nObservation: the result text itself mentions Observation: again"
            ),
            s(
                "Senior Research Analyst",
                'A',
                "Thought: I now know the final answer\nFinal Answer: - plan\n- tools\n- memory"
            ),
            s("user", 'O', "Write an article.\n\nExpected output: Two sentences."),
            // Native tool calling.
            s(
                "Tech Content Writer",
                'A',
                "<tool_call>read_file({\"path\": \"notes.md\"})</tool_call>"
            ),
            s("read_file", 'O', "notes: plan, tools, memory"),
            s(
                "user",
                'O',
                "Now it's time you MUST give your absolute best final answer."
            ),
            s(
                "Tech Content Writer",
                'A',
                "Agents in 2025 plan, call tools and remember."
            ),
        ]
    );
    round_trip(&t);
}

#[test]
fn event_bus_events_as_a_bare_list() {
    for fmt in [Format::Auto, Format::Crewai] {
        let t = one("events.json", fmt);
        assert_eq!(t.id, "events");
        assert_eq!(
            t.task,
            "Research AI agents.\n\nExpected output: 3 bullet points."
        );
        assert_eq!(
            steps(&t),
            vec![
                s(
                    "Senior Research Analyst",
                    'A',
                    "<tool_call>Search the internet({\"search_query\":\"AI agents\"})</tool_call>"
                ),
                s("Search the internet", 'O', "Result 1: agents plan."),
                s(
                    "Senior Research Analyst",
                    'A',
                    "<tool_call>Read website content({\"website_url\":\"https://example.org\"})</tool_call>"
                ),
                s("Read website content", 'O', "Error: 403 Forbidden"),
                // agent_execution_completed; the task_completed after it is the same output.
                s("Senior Research Analyst", 'A', "- plan\n- tools\n- memory"),
                s("user", 'O', "Write an article.\n\nExpected output: Two sentences."),
                // Two calls started back to back share one turn (the second
                // event has no agent_role: the task's agent).
                s(
                    "Tech Content Writer",
                    'A',
                    "<tool_call>Search the internet({\"search_query\": \"agent memory\"})</tool_call>\n<tool_call>Read file({\"path\":\"notes.md\"})</tool_call>"
                ),
                s("Search the internet", 'O', "Memory lets agents recall."),
                s("Read file", 'O', "{\"lines\":2}"),
                // No agent_execution_completed for this task: task_completed's output.
                s(
                    "Tech Content Writer",
                    'A',
                    "Agents plan, call tools and remember."
                ),
            ]
        );
        assert_eq!(
            t.answer.as_deref(),
            Some("Agents plan, call tools and remember."),
            "crew_kickoff_completed"
        );
        round_trip(&t);
    }
}

#[test]
fn crew_output_and_events_in_one_record_with_a_delegation() {
    let t = one("combined.json", Format::Auto);
    assert_eq!(t.id, "crew-42");
    assert_eq!(
        t.task,
        "Find the capital of France and check it.\n\nExpected output: A city name."
    );
    assert_eq!(
        steps(&t),
        vec![
            s(
                "Crew Manager",
                'A',
                "<tool_call>Delegate work to coworker({\"context\":\"Geography\",\"coworker\":\"Researcher\",\"task\":\"Find the capital of France\"})</tool_call>"
            ),
            // The coworker's work names the delegated task: it stays inside
            // the manager's task. An old ToolUsageFinished (no started event,
            // no output) gives the call and no observation.
            s(
                "Researcher",
                'A',
                "<tool_call>Search({\"q\":\"capital of France\"})</tool_call>"
            ),
            s("Researcher", 'A', "Paris"),
            s("Delegate work to coworker", 'O', "Paris"),
            // task_completed; the TaskOutput's `raw` is the same turn, not repeated.
            s("Crew Manager", 'A', "Paris"),
        ]
    );
    assert_eq!(t.answer.as_deref(), Some("Paris"));
    round_trip(&t);

    // Without the events: the task output alone.
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("combined.json")).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("events");
    let t = convert(&v, Format::Auto, &IngestLimits::default(), "x").unwrap();
    assert_eq!(steps(&t), vec![s("Crew Manager", 'A', "Paris")]);
}

/// Events alone, no `task_started`: the first event opens the task (named
/// by its `task_name`); a coworker's events naming the delegated task stay
/// in it and do not rename it; a keyless first event takes the first name.
#[test]
fn events_without_task_started() {
    let v = json!({"events": [
        {"type": "tool_usage_started", "agent_role": "Boss", "task_name": "Plan the trip.", "tool_name": "Delegate work to coworker", "tool_args": {"task": "Find flights"}},
        {"type": "agent_execution_started", "agent_role": "Scout", "task": {"description": "Find flights"}},
        {"type": "agent_execution_completed", "agent_role": "Scout", "task": {"description": "Find flights"}, "output": "Flight AF1"},
        {"type": "tool_usage_finished", "agent_role": "Boss", "task_name": "Plan the trip.", "tool_name": "Delegate work to coworker", "output": "Flight AF1"},
        {"type": "agent_execution_completed", "agent_role": "Boss", "task_name": "Plan the trip.", "output": "Take AF1."}
    ]});
    let t = convert(&v, Format::Auto, &IngestLimits::default(), "x").unwrap();
    assert_eq!(t.task, "Plan the trip.");
    assert_eq!(
        steps(&t),
        vec![
            s(
                "Boss",
                'A',
                "<tool_call>Delegate work to coworker({\"task\":\"Find flights\"})</tool_call>"
            ),
            s("Scout", 'A', "Flight AF1"),
            s("Delegate work to coworker", 'O', "Flight AF1"),
            s("Boss", 'A', "Take AF1."),
        ]
    );
    let v = json!({"events": [
        {"type": "agent_execution_started", "agent_role": "Solo"},
        {"type": "tool_usage_started", "task_name": "Count.", "tool_name": "calc", "tool_args": "1+1"},
        {"type": "tool_usage_finished", "task_name": "Count.", "tool_name": "calc", "output": 2}
    ]});
    let t = convert(&v, Format::Auto, &IngestLimits::default(), "x").unwrap();
    assert_eq!(t.task, "Count.");
    assert_eq!(
        steps(&t),
        vec![
            s("Solo", 'A', "<tool_call>calc(1+1)</tool_call>"),
            s("calc", 'O', "2"),
        ]
    );
}

#[test]
fn react_message_without_an_action_line() {
    let v = json!({"tasks_output": [{"description": "d", "agent": "a", "raw": "r", "messages": [
        {"role": "user", "content": "d"},
        {"role": "assistant", "content": "I looked.\nObservation: nothing"},
        {"role": "tool", "content": "unnamed result"}
    ]}]});
    let t = convert(&v, Format::Auto, &IngestLimits::default(), "x").unwrap();
    assert_eq!(
        steps(&t),
        vec![
            s("a", 'A', "I looked."),
            s("tool", 'O', "nothing"),
            s("tool", 'O', "unnamed result"),
        ]
    );
}

/// Every hostile line is read or rejected as its `_expect` says
/// (`reason|part of the message`, or `ok|steps`), and every line is
/// accounted for.
#[test]
fn hostile_lines_are_rejected_with_reason_and_field() {
    let path = fixture("hostile.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    for fmt in [Format::Auto, Format::Crewai] {
        let got = read_file(&path, fmt, &IngestLimits::default()).unwrap();
        assert_eq!(got.len(), lines.len(), "every line is a record");
        let (mut kept, mut rejected) = (0, 0);
        for (p, line) in got.iter().zip(&lines) {
            let expect = serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|v| v["_expect"].as_str().map(str::to_string))
                .unwrap_or_else(|| "broken_json|".to_string());
            let (what, detail) = expect.split_once('|').unwrap();
            match &p.result {
                Ok(t) => {
                    kept += 1;
                    assert_eq!(what, "ok", "{}: read, expected {expect}", p.loc);
                    assert_eq!(t.steps.len().to_string(), detail, "{}", p.loc);
                    round_trip(t);
                }
                Err(e) => {
                    rejected += 1;
                    assert_eq!(e.reason.key(), what, "{}: {}", p.loc, e.message);
                    assert!(
                        e.message.contains(detail),
                        "{}: {:?} lacks {detail:?}",
                        p.loc,
                        e.message
                    );
                }
            }
        }
        assert_eq!(kept + rejected, lines.len());
        assert_eq!(kept, 4);
    }
}

/// A JSONL file is one record per line: one event per line is not a run,
/// and every line is rejected, none lost.
#[test]
fn jsonl_of_single_events_is_rejected_line_by_line() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("events.jsonl");
    let events: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture("events.json")).unwrap()).unwrap();
    let text: String = events.iter().map(|e| format!("{e}\n")).collect();
    std::fs::write(&p, text).unwrap();
    let got = read_file(&p, Format::Auto, &IngestLimits::default()).unwrap();
    assert_eq!(got.len(), events.len());
    for r in &got {
        let e = r.result.as_ref().unwrap_err();
        assert_eq!(e.reason.key(), "unknown_record_shape", "{}", r.loc);
        assert!(e.message.contains("one crewAI event"), "{}", e.message);
    }
    // Wrapped in one record, the same events are one run.
    let p = d.path().join("run.jsonl");
    std::fs::write(&p, format!("{}\n", json!({"events": events}))).unwrap();
    let got = read_file(&p, Format::Auto, &IngestLimits::default()).unwrap();
    assert_eq!(got.len(), 1);
    let t = got[0].result.as_ref().unwrap();
    assert_eq!(t.steps, one("events.json", Format::Auto).steps);
}

#[test]
fn huge_text_and_deep_nesting() {
    let big = "x".repeat(2 << 20);
    let v = json!({"tasks_output": [{"description": "d", "agent": "a", "raw": big}]});
    let e = convert(&v, Format::Auto, &IngestLimits::default(), "big").unwrap_err();
    assert_eq!(e.reason.key(), "field_too_long");
    assert!(e.message.contains("step 0 (a) text"), "{}", e.message);

    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("deep.json");
    let mut doc = String::from(
        r#"{"events":[{"type":"tool_usage_started","agent_role":"a","tool_name":"t","tool_args":"#,
    );
    doc.push_str(&"[".repeat(300));
    std::fs::write(&p, doc).unwrap();
    let got = read_file(&p, Format::Auto, &IngestLimits::default()).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].result.as_ref().unwrap_err().reason.key(),
        "broken_json"
    );

    // Deep but legal tool arguments are kept as compact JSON.
    let mut args = json!("leaf");
    for _ in 0..50 {
        args = json!([args]);
    }
    let v = json!({"events": [
        {"type": "task_started", "task_name": "t"},
        {"type": "tool_usage_started", "agent_role": "a", "tool_name": "deep", "tool_args": args}
    ]});
    let t = convert(&v, Format::Auto, &IngestLimits::default(), "x").unwrap();
    assert!(t.steps[0].text.starts_with("<tool_call>deep([[[["));
}

#[test]
fn detection_picks_crewai_and_leaves_other_formats_as_they_were() {
    for f in ["crew_output.json", "crew_messages.json", "combined.json"] {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(fixture(f)).unwrap()).unwrap();
        assert_eq!(detect(&v), Some(Format::Crewai), "{f}");
    }
    assert_eq!(
        detect(&json!({"events": [{"type": "ToolUsageFinished", "tool_name": "x"}]})),
        Some(Format::Crewai)
    );
    // A single event is crewAI's too (and rejected as not a run).
    let ev = json!({"type": "llm_call_started", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(detect(&ev), Some(Format::Crewai));
    // Other `events` lists are not crewAI's.
    assert_eq!(detect(&json!({"events": [{"type": "click"}]})), None);
    let others = [
        (
            json!({"task": "t", "trajectory": [{"agent": "a", "output": "x"}]}),
            Format::Native,
        ),
        (
            json!({"question": "q", "history": [{"content": "x", "role": "user", "name": "a"}]}),
            Format::Ag2,
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            Format::Messages,
        ),
        (
            json!({"task": "t", "response": "<think>x</think>"}),
            Format::CoaTags,
        ),
        (
            json!({"steps": [{"task": "t", "task_images": null}, {"step_number": 1}]}),
            Format::Smolagents,
        ),
    ];
    for (v, f) in others {
        assert_eq!(detect(&v), Some(f), "{v}");
    }
}

#[test]
fn format_names() {
    for n in ["crewai", "crew"] {
        assert_eq!(n.parse::<Format>().unwrap(), Format::Crewai);
    }
    assert_eq!(Format::Crewai.name(), "crewai");
}

/// `prepare` on the fixtures: every record kept, one role per crew agent,
/// tools and the user are not roles.
#[cfg(feature = "pipeline")]
#[test]
fn prepare_keeps_every_fixture_with_one_role_per_agent() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let names = [
        "crew_output.json",
        "crew_messages.json",
        "events.json",
        "combined.json",
    ];
    for f in names {
        std::fs::copy(fixture(f), input.join(f)).unwrap();
    }
    let cfg = afm_data::PrepareConfig {
        inputs: vec![input],
        out: d.path().join("out"),
        val_fraction: 0.0,
        min_score: 0.0,
        ..Default::default()
    };
    let m = afm_data::prepare(&cfg).unwrap();
    assert_eq!(m.total, names.len());
    assert_eq!(m.kept, names.len(), "{:?} {:?}", m.filtered, m.rejected);
    for r in [
        "Senior Research Analyst",
        "Tech Content Writer",
        "Editor",
        "Crew Manager",
        "Researcher",
    ] {
        assert!(m.roles.iter().any(|x| x == r), "{r} in {:?}", m.roles);
    }
    for r in ["user", "Search the internet", "read_file"] {
        assert!(!m.roles.iter().any(|x| x == r), "{r} in {:?}", m.roles);
    }
}
