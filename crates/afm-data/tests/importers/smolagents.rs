//! The smolagents importer on fixtures written from smolagents' own schema
//! (`src/smolagents/memory.py`: TaskStep, PlanningStep, ActionStep,
//! FinalAnswerStep, SystemPromptStep, ToolCall; `agents.py`: RunResult,
//! managed agents called as tools or from a CodeAgent's code).

use afm_data::ingest::{convert, detect, read_file, Format, IngestLimits};
use afm_format::{StepKind, Trajectory};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/smolagents")
        .join(name)
}

/// The one record of a fixture document, read as `fmt`.
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
    assert_eq!(detect(&v), Some(Format::Native));
}

#[test]
fn tool_calling_agent_run_result() {
    for fmt in [Format::Auto, Format::Smolagents] {
        let t = one("tool_calling.json", fmt);
        assert_eq!(t.id, "tool_calling");
        assert_eq!(
            t.task,
            "How many moons does Mars have? Answer with a number."
        );
        assert_eq!(
            steps(&t),
            vec![
                s(
                    "researcher",
                    'A',
                    "1. Search for the number of moons of Mars.\n2. Give the number."
                ),
                s(
                    "researcher",
                    'A',
                    "I will search the web.\n<tool_call>web_search({\"query\":\"moons of Mars\"})</tool_call>"
                ),
                s("web_search", 'O', "Mars has two moons, Phobos and Deimos."),
                s(
                    "researcher",
                    'A',
                    "<tool_call>visit_webpage({\"url\":\"https://example.org/mars\"})</tool_call>"
                ),
                s(
                    "visit_webpage",
                    'O',
                    "Error: Error executing tool 'visit_webpage': 404 Not Found"
                ),
                s(
                    "researcher",
                    'A',
                    "<tool_call>final_answer({\"answer\":\"2\"})</tool_call>"
                ),
                s("final_answer", 'O', "2"),
            ]
        );
        assert_eq!(t.answer.as_deref(), Some("2"), "RunResult `output`");
        assert_eq!(t.success, None, "`state` is not an outcome");
        round_trip(&t);
    }
}

#[test]
fn code_agent_with_a_managed_agent_in_the_managed_agents_map() {
    let t = one("code_agent_managed.json", Format::Auto);
    assert_eq!(t.task, "Find the year the Eiffel Tower opened and add 100.");
    let nested_task = "You're a helpful agent named 'search_agent'.\nYou have been submitted this task by your manager.\n---\nTask:\nWhen did the Eiffel Tower open?\n---";
    assert_eq!(
        steps(&t),
        vec![
            // The code is in the model output; the python_interpreter call is not repeated.
            s(
                "manager",
                'A',
                "Thought: I will ask search_agent.\n<code>\nyear = search_agent(task=\"When did the Eiffel Tower open?\")\nprint(year)\n</code>"
            ),
            // The managed agent's run, inside the manager's step.
            s("manager", 'O', nested_task),
            s(
                "search_agent",
                'A',
                "<tool_call>web_search({\"query\":\"Eiffel Tower opening year\"})</tool_call>"
            ),
            s("web_search", 'O', "The Eiffel Tower opened on 31 March 1889."),
            s(
                "search_agent",
                'A',
                "<tool_call>final_answer({\"answer\":\"1889\"})</tool_call>"
            ),
            s("final_answer", 'O', "1889"),
            // The report the manager got back.
            s(
                "python_interpreter",
                'O',
                "Execution logs:\nHere is the final answer from your managed agent 'search_agent':\n1889\nLast output from code snippet:\nNone"
            ),
            s(
                "manager",
                'A',
                "Thought: 1889 + 100 = 1989.\n<code>\nfinal_answer(1889 + 100)\n</code>"
            ),
            s(
                "python_interpreter",
                'O',
                "Execution logs:\nLast output from code snippet:\n1989"
            ),
        ]
    );
    // The manager and the managed agent are different role tokens; the
    // managed agent's answer is not the trajectory's.
    assert_eq!(t.answer.as_deref(), Some("1989"));
    round_trip(&t);
}

#[test]
fn managed_agent_runs_attached_to_the_calling_steps() {
    let t = one("managed_attached.json", Format::Auto);
    assert_eq!(t.id, "lead-run-7");
    assert_eq!(t.task, "Compute 2**10, then 3**5.");
    assert_eq!(t.success, Some(true));
    assert_eq!(t.answer.as_deref(), Some("1024 and 243"));
    assert_eq!(
        steps(&t),
        vec![
            s(
                "lead",
                'A',
                "Delegating the first power.\n<tool_call>math_agent({\"task\":\"Compute 2**10\"})</tool_call>"
            ),
            s("lead", 'O', "Compute 2**10"),
            s(
                "math_agent",
                'A',
                "Thought: easy.\n<code>\nfinal_answer(2**10)\n</code>"
            ),
            s(
                "python_interpreter",
                'O',
                "Execution logs:\nLast output from code snippet:\n1024"
            ),
            s(
                "math_agent",
                'O',
                "Here is the final answer from your managed agent 'math_agent':\n1024"
            ),
            // A later TaskStep of the top agent: the user's, never trained.
            s("user", 'O', "Also compute 3**5."),
            s(
                "lead",
                'A',
                "Delegating the second.\n<tool_call>math_agent({\"task\":\"Compute 3**5\"})</tool_call>"
            ),
            s("lead", 'O', "Compute 3**5"),
            s(
                "math_agent",
                'A',
                "Thought: easy.\n<code>\nfinal_answer(3**5)\n</code>"
            ),
            s(
                "python_interpreter",
                'O',
                "Execution logs:\nLast output from code snippet:\n243"
            ),
            s(
                "math_agent",
                'O',
                "Here is the final answer from your managed agent 'math_agent':\n243"
            ),
        ]
    );
    round_trip(&t);
}

#[test]
fn old_version_bare_list_of_steps() {
    for fmt in [Format::Auto, Format::Smolagents] {
        let t = one("steps_old.json", fmt);
        assert_eq!(t.id, "steps_old");
        assert_eq!(t.task, "What is 6 times 7?");
        assert_eq!(
            steps(&t),
            vec![
                s("agent", 'A', "- We need 6*7."),
                s("agent", 'A', "1. Multiply.\n2. Answer."),
                // No `code_action` before 1.19: the code is found in the text.
                s(
                    "agent",
                    'A',
                    "Thought: multiply.\nCode:\n```py\nprint(6*7)\n```<end_code>"
                ),
                s(
                    "python_interpreter",
                    'O',
                    "Execution logs:\n42\nLast output from code snippet:\nNone"
                ),
                s(
                    "agent",
                    'A',
                    "Code:\n```py\nfinal_answer(42)\n```<end_code>"
                ),
                s(
                    "python_interpreter",
                    'O',
                    "Execution logs:\nLast output from code snippet:\n42"
                ),
            ]
        );
        assert_eq!(t.answer.as_deref(), Some("42"), "old FinalAnswerStep");
        round_trip(&t);
    }
}

/// Every hostile line is read or rejected as its `_expect` says
/// (`reason|part of the message`, or `ok|steps`), and every line is
/// accounted for.
#[test]
fn hostile_lines_are_rejected_with_reason_and_field() {
    let path = fixture("hostile.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    for fmt in [Format::Auto, Format::Smolagents] {
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
        assert_eq!(kept, 5);
    }
}

/// A chain of managed agents 40 deep reads in order; nesting past
/// serde_json's depth limit is a broken record, not a crash.
#[test]
fn deep_nesting() {
    fn run(depth: usize, i: usize) -> Value {
        let name = format!("agent{i}");
        let mut step = json!({"step_number": 1, "model_output": format!("I am {name}.")});
        if i + 1 < depth {
            let next = format!("agent{}", i + 1);
            step["tool_calls"] = json!([{"id": "x", "type": "function", "function": {"name": next, "arguments": {"task": "go"}}}]);
            step["observations"] = json!(format!("report of {next}"));
            step["managed_agents"] = json!({ next.clone(): run(depth, i + 1) });
        }
        json!({"agent": name, "steps": [step]})
    }
    let mut top = run(40, 0);
    top["task"] = json!("nest");
    let t = convert(&top, Format::Auto, &IngestLimits::default(), "deep").unwrap();
    // Each level: its turn, then the next level's run, then the report.
    assert_eq!(t.agent_turns(), 40);
    assert_eq!(t.steps[0].agent, "agent0");
    assert_eq!(t.steps[39].agent, "agent39");
    // What agent38 got back from its tool `agent39`.
    assert_eq!(
        steps(&t)[40],
        s("agent39", 'O', "report of agent39"),
        "the report agent38 got"
    );
    assert_eq!(t.steps.len(), 40 + 39);
    round_trip(&t);

    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("deep.json");
    let mut doc = String::from(
        r#"{"task":"t","steps":[{"task":"t","task_images":null},{"step_number":1,"model_output":"x","managed_agents":{"a":"#,
    );
    for _ in 0..200 {
        doc.push_str(r#"{"steps":[{"step_number":1,"managed_agents":{"a":"#);
    }
    std::fs::write(&p, doc).unwrap();
    let got = read_file(&p, Format::Auto, &IngestLimits::default()).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].result.as_ref().unwrap_err().reason.key(),
        "broken_json"
    );
}

#[test]
fn huge_text_is_rejected_by_the_field_limit() {
    let big = "x".repeat(2 << 20);
    let v = json!({"steps": [{"task": "t", "task_images": null}, {"step_number": 1, "model_output": big}]});
    let e = convert(&v, Format::Auto, &IngestLimits::default(), "big").unwrap_err();
    assert_eq!(e.reason.key(), "field_too_long");
    assert!(e.message.contains("step 0 (agent) text"), "{}", e.message);
}

#[test]
fn detection_picks_smolagents_and_leaves_other_formats_as_they_were() {
    for f in [
        "tool_calling.json",
        "code_agent_managed.json",
        "managed_attached.json",
    ] {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(fixture(f)).unwrap()).unwrap();
        assert_eq!(detect(&v), Some(Format::Smolagents), "{f}");
    }
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
    ];
    for (v, f) in others {
        assert_eq!(detect(&v), Some(f), "{v}");
    }
    // afm's own serialised trajectory (`steps` of agent/kind/text) and other
    // lists called `steps` are not smolagents memory.
    let t = one("tool_calling.json", Format::Auto);
    assert_eq!(detect(&serde_json::to_value(&t).unwrap()), None);
    assert_eq!(
        detect(&json!({"steps": [{"name": "a", "text": "x"}]})),
        None
    );
    assert_eq!(detect(&json!({"steps": []})), None);
    // A bare list of records is still a list of records.
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("records.json");
    let rec = std::fs::read_to_string(fixture("tool_calling.json")).unwrap();
    std::fs::write(&p, format!("[{rec},{rec}]")).unwrap();
    let got = read_file(&p, Format::Auto, &IngestLimits::default()).unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|p| p.result.is_ok()));
}

#[test]
fn format_names() {
    for n in ["smolagents", "smol"] {
        assert_eq!(n.parse::<Format>().unwrap(), Format::Smolagents);
    }
    assert_eq!(Format::Smolagents.name(), "smolagents");
}

/// `prepare` on the fixtures: every record kept, the manager and its
/// managed agents are separate roles, tools and the user are not roles.
#[cfg(feature = "pipeline")]
#[test]
fn prepare_keeps_every_fixture_with_one_role_per_agent() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let names = [
        "tool_calling.json",
        "code_agent_managed.json",
        "managed_attached.json",
        "steps_old.json",
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
        "researcher",
        "manager",
        "search_agent",
        "lead",
        "math_agent",
        "agent",
    ] {
        assert!(m.roles.iter().any(|x| x == r), "{r} in {:?}", m.roles);
    }
    for r in ["user", "web_search", "python_interpreter", "final_answer"] {
        assert!(!m.roles.iter().any(|x| x == r), "{r} in {:?}", m.roles);
    }
}
