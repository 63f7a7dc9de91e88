//! OpenAI Agents SDK importer (`openai-agents`): run items and exported
//! traces, on fixtures written from openai-agents-python's own serialisation
//! (`RunState.to_json`, `Span.export`, `Trace.export`, `BackendSpanExporter`).

use afm_data::ingest::{convert, detect, read_file, Format, IngestLimits, RejectReason};
use afm_format::{StepKind, Trajectory};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/openai_agents")
        .join(name)
}

fn read_one(name: &str, fmt: Format) -> Trajectory {
    let mut r = read_file(&fixture(name), fmt, &IngestLimits::default()).unwrap();
    assert_eq!(r.len(), 1, "{name}: one record");
    r.remove(0)
        .result
        .unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

fn steps(t: &Trajectory) -> Vec<(&str, StepKind, &str)> {
    t.steps
        .iter()
        .map(|s| (s.agent.as_str(), s.kind, s.text.as_str()))
        .collect()
}

fn handoffs(t: &Trajectory) -> Value {
    t.meta
        .as_ref()
        .and_then(|m| m.get("handoffs"))
        .cloned()
        .unwrap_or(Value::Null)
}

const A: StepKind = StepKind::Agent;
const O: StepKind = StepKind::Observation;

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

#[test]
fn run_state_json_keeps_agents_tool_calls_and_handoffs() {
    for fmt in [Format::Auto, Format::OpenaiAgents] {
        let t = read_one("run_state.json", fmt);
        assert_eq!(
            t.task,
            "I was charged twice for order 1042. Please refund one charge."
        );
        assert_eq!(
            steps(&t),
            vec![
                ("Triage Agent", A, "<tool_call>transfer_to_billing_agent({})</tool_call>"),
                ("transfer_to_billing_agent", O, "{\"assistant\": \"Billing Agent\"}"),
                (
                    "Billing Agent",
                    A,
                    "Let me look up order 1042.\n<tool_call>lookup_order({\"order_id\": 1042})</tool_call>"
                ),
                ("lookup_order", O, "order 1042: two charges of $30.00 on 2025-03-01"),
                (
                    "Billing Agent",
                    A,
                    "<tool_call>refund({\"order_id\": 1042, \"amount\": 30.0})</tool_call>"
                ),
                ("refund", O, "refunded $30.00"),
                ("Billing Agent", A, "I refunded one $30.00 charge for order 1042."),
            ]
        );
        assert_eq!(
            handoffs(&t),
            json!([{"step": 0, "from": "Triage Agent", "to": "Billing Agent"}])
        );
        assert_eq!(t.answer, None);
        round_trips(&t);
    }
}

#[test]
fn run_result_dump_reads_hosted_calls_refusals_and_later_user_input() {
    let t = read_one("run_result.json", Format::Auto);
    assert_eq!(t.id, "run-7");
    assert_eq!(t.task, "What is 17 * 23? Check it with the calculator.");
    assert_eq!(t.answer.as_deref(), Some("391"));
    assert_eq!(t.success, Some(true));
    assert_eq!(
        steps(&t),
        vec![
            (
                "Math Tutor",
                A,
                "I will compute it.\n<tool_call>calculator({\"expression\": \"17*23\"})</tool_call>\n<tool_call>web_search_call({\"action\":{\"query\":\"17 times 23\",\"type\":\"search\"}})</tool_call>"
            ),
            ("calculator", O, "391"),
            ("Math Tutor", A, "I cannot show my scratch work."),
            ("user", O, "Just the number, please."),
            ("Math Tutor", A, "391"),
        ]
    );
    assert_eq!(t.meta, None, "no hand-off, no meta");
    round_trips(&t);
}

#[test]
fn trace_with_generations_is_ordered_by_start_time_and_parent() {
    let t = read_one("trace_full.json", Format::Auto);
    assert_eq!(t.id, "trace_0123456789abcdef0123456789abcdef");
    assert_eq!(
        t.task,
        "I was charged twice for order 1042. Please refund one charge."
    );
    assert_eq!(
        steps(&t),
        vec![
            ("Triage Agent", A, "<tool_call>transfer_to_billing_agent({})</tool_call>"),
            (
                "Billing Agent",
                A,
                "Let me look up order 1042.\n<tool_call>lookup_order({\"order_id\": 1042})</tool_call>"
            ),
            ("lookup_order", O, "order 1042: two charges of $30.00 on 2025-03-01"),
            (
                "Billing Agent",
                A,
                "<tool_call>refund({\"order_id\": 1042, \"amount\": 30.0})</tool_call>"
            ),
            ("refund", O, "Error running tool (non-fatal): payment gateway timeout"),
            ("Billing Agent", A, "The refund failed (gateway timeout); I have escalated it."),
        ]
    );
    assert_eq!(
        handoffs(&t),
        json!([{"step": 0, "from": "Triage Agent", "to": "Billing Agent"}])
    );
    round_trips(&t);
    // The order does not depend on the order of the spans in the file.
    let mut v = json_of("trace_full.json");
    v["spans"].as_array_mut().unwrap().reverse();
    let r = convert(&v, Format::Auto, &IngestLimits::default(), "x").unwrap();
    assert_eq!(r, t);
}

#[test]
fn default_export_keeps_only_tool_calls_and_needs_a_task() {
    let t = read_one("default_export.json", Format::Auto);
    assert_eq!(t.id, "trace_ffff0000ffff0000ffff0000ffff0000");
    assert_eq!(
        steps(&t),
        vec![
            (
                "Billing Agent",
                A,
                "<tool_call>lookup_order({\"order_id\": 1042})</tool_call>"
            ),
            ("lookup_order", O, "two charges of $30.00"),
        ]
    );
    // Triage spoke only through its hand-off: no step of its own.
    assert_eq!(
        handoffs(&t),
        json!([{"step": 0, "from": "Triage Agent", "to": "Billing Agent"}])
    );
    // Without the `task` the user added, nothing in the export holds it.
    let mut v = json_of("default_export.json");
    v.as_object_mut().unwrap().remove("task");
    let e = convert(&v, Format::Auto, &IngestLimits::default(), "x").unwrap_err();
    assert_eq!(e.reason, RejectReason::MissingTask);
    assert!(
        e.message.contains("keeps only response ids"),
        "{}",
        e.message
    );
    // Without the function span, nothing is left: a clear reason.
    let data = v["data"].as_array_mut().unwrap();
    data.retain(|s| s["span_data"]["type"] != "function");
    let e = convert(&v, Format::Auto, &IngestLimits::default(), "x").unwrap_err();
    assert_eq!(e.reason, RejectReason::EmptyTrajectory);
    assert!(
        e.message.contains("no usable steps") && e.message.contains("3 response spans"),
        "{}",
        e.message
    );
}

#[test]
fn bare_array_of_exports_is_one_trace() {
    for fmt in [Format::Auto, Format::OpenaiAgents] {
        let t = read_one("trace_list.json", fmt);
        assert_eq!(t.id, "trace_1111");
        assert_eq!(t.task, "Write a haiku about recursion.");
        assert_eq!(
            steps(&t),
            vec![(
                "Poet",
                A,
                "A function calls itself,\nsmaller each time it returns,\nbase case breaks the loop."
            )]
        );
        round_trips(&t);
    }
}

#[test]
fn a_lone_span_is_rejected_with_how_to_fix_it() {
    let r = read_file(
        &fixture("lone_span.json"),
        Format::Auto,
        &IngestLimits::default(),
    )
    .unwrap();
    let e = r[0].result.as_ref().unwrap_err();
    assert_eq!(e.reason, RejectReason::UnknownRecordShape);
    assert!(e.message.contains("\"spans\""), "{}", e.message);
}

#[test]
fn auto_detection_picks_openai_agents_and_leaves_the_others() {
    for f in [
        "run_state.json",
        "run_result.json",
        "trace_full.json",
        "default_export.json",
        "lone_span.json",
    ] {
        assert_eq!(detect(&json_of(f)), Some(Format::OpenaiAgents), "{f}");
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
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            Format::Messages,
        ),
        (
            json!({"task": "t", "response": "<think>x</think>"}),
            Format::CoaTags,
        ),
        // A `data` list that holds no trace export is not ours.
        (
            json!({"data": [{"id": 1}], "messages": [{"role": "user", "content": "x"}]}),
            Format::Messages,
        ),
    ];
    for (v, f) in others {
        assert_eq!(detect(&v), Some(f), "{v}");
    }
    for name in ["openai-agents", "agents-sdk"] {
        assert_eq!(name.parse::<Format>().unwrap(), Format::OpenaiAgents);
    }
    assert_eq!(Format::OpenaiAgents.name(), "openai-agents");
}

/// Every hostile line is read or rejected with its reason and a message
/// naming the field; every line is accounted for.
#[test]
fn hostile_lines_are_each_read_or_rejected_with_the_field() {
    use RejectReason::*;
    let expect: Vec<Option<(RejectReason, &str)>> = vec![
        None,
        Some((WrongType, "field `new_items`: expected an array")),
        Some((UnknownStepShape, "new_items[0]: missing string `type`")),
        Some((
            UnknownStepShape,
            "field `new_items[0].type`: unknown run item type \"telepathy_item\"",
        )),
        Some((UnknownStepShape, "new_items[0].agent: missing")),
        Some((WrongType, "field `new_items[0].agent`")),
        Some((UnknownStepShape, "new_items[0]: missing `raw_item`")),
        Some((WrongType, "field `new_items[0].raw_item.content[0]`")),
        Some((
            MissingTask,
            "no `task` and no string or user message in `input`",
        )),
        Some((EmptyTrajectory, "no steps")),
        Some((MissingTask, "is empty")),
        Some((WrongType, "field `spans`: expected an array, got a string")),
        Some((UnknownStepShape, "spans[0]: missing `span_data`")),
        Some((
            UnknownStepShape,
            "spans[0]: a function span outside any agent span",
        )),
        Some((
            UnknownRecordShape,
            "parent_id`: the spans' parents form a cycle",
        )),
        Some((EmptyTrajectory, "1 response spans")),
        Some((
            MissingTask,
            "no generation span whose input has a user message",
        )),
        Some((UnknownRecordShape, "a lone span export")),
        Some((UnknownRecordShape, "field `spans[1].trace_id`")),
        Some((NulByte, "contains a NUL")),
        Some((BadAgentName, "step[0]")),
        None,
        Some((WrongType, "field `spans[1].span_data.output`")),
        None,
        Some((UnknownStepShape, "new_items[0].source_agent: missing")),
        Some((
            UnknownStepShape,
            "spans[0].span_data: missing string `name`",
        )),
        Some((
            WrongType,
            "field `spans[0].span_data.type`: expected a string",
        )),
        Some((UnknownStepShape, "field `data[1].object`")),
        Some((UnknownRecordShape, "data[1]: a second trace")),
        Some((EmptyTrajectory, "a trace export without spans")),
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
    assert_eq!(kept, 3);
    // What the lines that are read hold.
    let t = recs[21].result.as_ref().unwrap();
    assert_eq!(
        steps(t),
        vec![
            ("Adder", A, "<tool_call>add({})</tool_call>"),
            ("add", O, "5")
        ]
    );
    let t = recs[23].result.as_ref().unwrap();
    assert_eq!(
        steps(t)[0],
        ("tool", O, "5"),
        "an output whose call is unknown"
    );
}

#[test]
fn huge_text_and_deep_nesting_are_rejected() {
    let limits = IngestLimits::default();
    let mut v = json_of("run_result.json");
    v["new_items"][0]["raw_item"]["content"][0]["text"] =
        json!("x".repeat(limits.max_field_bytes + 1));
    let e = convert(&v, Format::Auto, &limits, "x").unwrap_err();
    assert_eq!(e.reason, RejectReason::FieldTooLong);
    assert!(
        e.message.contains("step 0 (Math Tutor) text"),
        "{}",
        e.message
    );
    // Nesting past serde_json's depth limit: broken JSON, not a crash.
    let d = tempfile::tempdir().unwrap();
    let deep = format!(
        "{{\"input\":\"t\",\"new_items\":[{{\"type\":\"tool_call_item\",\"agent\":\"A\",\"raw_item\":{{\"type\":\"x\",\"args\":{}1{}}}}}]}}\n",
        "[".repeat(300),
        "]".repeat(300)
    );
    let p = d.path().join("deep.jsonl");
    std::fs::write(&p, deep).unwrap();
    let r = read_file(&p, Format::OpenaiAgents, &limits).unwrap();
    assert_eq!(
        r[0].result.as_ref().unwrap_err().reason,
        RejectReason::BrokenJson
    );
    // A deep but valid span tree (parents chained 2,000 deep) is read
    // without recursion.
    let mut spans = vec![
        json!({"object": "trace.span", "id": "s0", "parent_id": null,
        "span_data": {"type": "agent", "name": "Deep"}}),
    ];
    for i in 1..2000 {
        spans.push(json!({"object": "trace.span", "id": format!("s{i}"), "parent_id": format!("s{}", i - 1),
            "span_data": {"type": "custom", "name": "step", "data": {}}}));
    }
    spans.push(
        json!({"object": "trace.span", "id": "leaf", "parent_id": "s1999",
        "span_data": {"type": "function", "name": "f", "input": "{}", "output": "ok"}}),
    );
    let v = json!({"task": "t", "spans": spans, "trace": null});
    let t = convert(&v, Format::Auto, &limits, "x").unwrap();
    assert_eq!(
        steps(&t),
        vec![("Deep", A, "<tool_call>f({})</tool_call>"), ("f", O, "ok")]
    );
}
