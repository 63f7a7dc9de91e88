//! `ag2-sqlite`: AG2's SQLite runtime log. Each fixture is a database
//! built here from SQL (no binary file is committed) with the tables
//! `autogen/logger/sqlite_logger.py` creates (ag2ai/ag2; the AutoGen 0.2
//! schema of microsoft/autogen, without `chat_completions.source_name`,
//! too), and rows shaped like the ones it writes: `request` is
//! `json.dumps(params)`, `response` is the completion's dict dumped with
//! indent 4, or `{"response": <error text or null>}`.

use afm_data::ingest::{
    convert, detect, expand_inputs, read_file, Format, IngestLimits, Parsed, RejectReason,
};
use afm_format::{StepKind, Trajectory};
use rusqlite::{params, Connection};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The tables of AG2's `SqliteLogger.start()`. `source_name: false` gives
/// AutoGen 0.2's `chat_completions` (no `source_name`) and no
/// `function_calls` table.
fn schema(source_name: bool) -> String {
    let source = if source_name { "source_name TEXT," } else { "" };
    let function_calls = if source_name {
        "CREATE TABLE function_calls (source_id INTEGER, source_name TEXT, function_name TEXT,
             args TEXT DEFAULT NULL, returns TEXT DEFAULT NULL,
             timestamp DATETIME DEFAULT CURRENT_TIMESTAMP);"
    } else {
        ""
    };
    format!(
        "CREATE TABLE chat_completions (id INTEGER PRIMARY KEY, invocation_id TEXT,
             client_id INTEGER, wrapper_id INTEGER, session_id TEXT, {source}
             request TEXT, response TEXT, is_cached INEGER, cost REAL,
             start_time DATETIME DEFAULT CURRENT_TIMESTAMP,
             end_time DATETIME DEFAULT CURRENT_TIMESTAMP);
         CREATE TABLE agents (id INTEGER PRIMARY KEY, agent_id INTEGER, wrapper_id INTEGER,
             session_id TEXT, name TEXT, class TEXT, init_args TEXT,
             timestamp DATETIME DEFAULT CURRENT_TIMESTAMP, UNIQUE(agent_id, session_id));
         CREATE TABLE oai_wrappers (id INTEGER PRIMARY KEY, wrapper_id INTEGER, session_id TEXT,
             init_args TEXT, timestamp DATETIME DEFAULT CURRENT_TIMESTAMP,
             UNIQUE(wrapper_id, session_id));
         CREATE TABLE oai_clients (id INTEGER PRIMARY KEY, client_id INTEGER, wrapper_id INTEGER,
             session_id TEXT, class TEXT, init_args TEXT,
             timestamp DATETIME DEFAULT CURRENT_TIMESTAMP, UNIQUE(client_id, session_id));
         CREATE TABLE version (id INTEGER PRIMARY KEY CHECK (id = 1),
             version_number INTEGER NOT NULL);
         CREATE TABLE events (event_name TEXT, source_id INTEGER, source_name TEXT,
             agent_module TEXT DEFAULT NULL, agent_class_name TEXT DEFAULT NULL,
             id INTEGER PRIMARY KEY, json_state TEXT,
             timestamp DATETIME DEFAULT CURRENT_TIMESTAMP);
         {function_calls}
         INSERT INTO version (id, version_number) VALUES (1, 1);"
    )
}

/// A log database at `dir/name`.
struct Log {
    conn: Connection,
    path: PathBuf,
    source_name: bool,
}

impl Log {
    fn new(dir: &Path, name: &str, source_name: bool) -> Log {
        let path = dir.join(name);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&schema(source_name)).unwrap();
        Log {
            conn,
            path,
            source_name,
        }
    }

    /// `log_new_agent`: agents without a model client get `wrapper_id` "".
    fn agent(&self, session: &str, agent_id: i64, wrapper: Option<i64>, name: &str, class: &str) {
        let w: rusqlite::types::Value = match wrapper {
            Some(w) => w.into(),
            None => "".to_string().into(),
        };
        self.conn
            .execute(
                "INSERT INTO agents (agent_id, wrapper_id, session_id, name, class, init_args, timestamp)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![agent_id, w, session, name, class, json!({"name": name}).to_string(), "2025-01-01 00:00:00.000000"],
            )
            .unwrap();
    }

    /// `log_chat_completion`, with every column given (NULL where `None`).
    #[allow(clippy::too_many_arguments)]
    fn raw(
        &self,
        invocation: Option<&str>,
        wrapper: Option<i64>,
        session: rusqlite::types::Value,
        source: Option<&str>,
        request: rusqlite::types::Value,
        response: rusqlite::types::Value,
        cached: i64,
        cost: f64,
        start: &str,
    ) -> i64 {
        if self.source_name {
            self.conn
                .execute(
                    "INSERT INTO chat_completions (invocation_id, client_id, wrapper_id, session_id,
                     request, response, is_cached, cost, start_time, end_time, source_name)
                     VALUES (?1, 77, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9)",
                    params![invocation, wrapper, session, request, response, cached, cost, start, source],
                )
                .unwrap();
        } else {
            self.conn
                .execute(
                    "INSERT INTO chat_completions (invocation_id, client_id, wrapper_id, session_id,
                     request, response, is_cached, cost, start_time, end_time)
                     VALUES (?1, 77, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                    params![invocation, wrapper, session, request, response, cached, cost, start],
                )
                .unwrap();
        }
        self.conn.last_insert_rowid()
    }

    /// A call that returned `response` to `source` (wrapper `wrapper`).
    #[allow(clippy::too_many_arguments)]
    fn call(
        &self,
        invocation: &str,
        wrapper: i64,
        session: &str,
        source: Option<&str>,
        messages: Value,
        response: String,
        start: &str,
    ) -> i64 {
        self.raw(
            Some(invocation),
            Some(wrapper),
            session.to_string().into(),
            source,
            request(messages).into(),
            response.into(),
            0,
            0.01,
            start,
        )
    }
}

/// `json.dumps(params)` of `OpenAIWrapper.create`.
fn request(messages: Value) -> String {
    json!({"messages": messages, "model": "gpt-4o", "temperature": 0, "stream": false}).to_string()
}

/// `json.dumps(to_dict(ChatCompletion), indent=4)`.
fn completion(content: Option<&str>, tool_calls: Value) -> String {
    serde_json::to_string_pretty(&json!({
        "id": "chatcmpl-1",
        "choices": [{
            "finish_reason": if tool_calls.is_null() { "stop" } else { "tool_calls" },
            "index": 0,
            "logprobs": null,
            "message": {
                "content": content,
                "refusal": null,
                "role": "assistant",
                "audio": null,
                "function_call": null,
                "tool_calls": tool_calls,
            },
        }],
        "created": 1735689600,
        "model": "gpt-4o-2024-08-06",
        "object": "chat.completion",
        "service_tier": null,
        "system_fingerprint": "fp_1",
        "usage": {"completion_tokens": 9, "prompt_tokens": 50, "total_tokens": 59},
        "cost": 0.01,
    }))
    .unwrap()
}

fn error_response(text: Option<&str>) -> String {
    json!({ "response": text }).to_string()
}

fn ts(s: u32) -> String {
    format!("2025-01-01 10:00:{s:02}.000000")
}

fn read(path: &Path) -> Vec<Parsed> {
    read_file(path, Format::Auto, &IngestLimits::default()).unwrap()
}

fn kept(recs: &[Parsed]) -> Vec<Trajectory> {
    recs.iter()
        .filter_map(|p| p.result.as_ref().ok().cloned())
        .collect()
}

fn rejected(recs: &[Parsed]) -> Vec<(RejectReason, String)> {
    recs.iter()
        .filter_map(|p| p.result.as_ref().err())
        .map(|e| (e.reason, e.message.clone()))
        .collect()
}

fn steps(t: &Trajectory) -> Vec<(&str, StepKind, &str)> {
    t.steps
        .iter()
        .map(|s| (s.agent.as_str(), s.kind, s.text.as_str()))
        .collect()
}

fn meta(t: &Trajectory) -> &Value {
    &t.meta.as_ref().unwrap()["ag2_sqlite"]
}

/// Rows a kept trajectory accounts for (turns and not-turns).
fn rows_in(t: &Trajectory) -> usize {
    let m = meta(t);
    m["turns"].as_array().unwrap().len() + m["not_turns"].as_array().unwrap().len()
}

/// Rows a rejected record accounts for: a session names its count, a row is one.
fn rows_in_reject(msg: &str) -> usize {
    if let Some(rest) = msg.strip_prefix("session ") {
        let open = rest.find(" (").unwrap();
        let n = &rest[open + 2..];
        n[..n.find(' ').unwrap()].parse().unwrap()
    } else {
        assert!(msg.starts_with("chat_completions id "), "{msg}");
        1
    }
}

fn count_rows(path: &Path) -> usize {
    let c = Connection::open(path).unwrap();
    c.query_row("SELECT COUNT(*) FROM chat_completions", [], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap() as usize
}

/// Every row is in exactly one record.
fn assert_accounted(path: &Path, recs: &[Parsed]) {
    let n: usize = kept(recs).iter().map(rows_in).sum::<usize>()
        + rejected(recs)
            .iter()
            .map(|(_, m)| rows_in_reject(m))
            .sum::<usize>();
    assert_eq!(n, count_rows(path), "{recs:#?}");
    for (i, p) in recs.iter().enumerate() {
        assert_eq!(p.loc.record, i);
        assert_eq!(p.loc.line, None);
        assert_eq!(p.loc.file, path);
    }
}

const SYS_ASSISTANT: &str = "You are a helpful AI assistant. Reply TERMINATE when done.";
const TASK: &str = "What is 2 + 3? Use the calculator.";

/// An AssistantAgent with a tool and a UserProxyAgent that runs it, the
/// way `initiate_chat` logs it.
fn tool_chat(log: &Log, session: &str) -> (i64, i64) {
    log.agent(session, 1, Some(1001), "assistant", "AssistantAgent");
    log.agent(session, 2, None, "user_proxy", "UserProxyAgent");
    let call = json!([{"id": "call_1", "function": {"arguments": "{\"a\":2,\"b\":3}", "name": "calculator"}, "type": "function"}]);
    let r1 = log.call(
        "inv-1",
        1001,
        session,
        Some("assistant"),
        json!([
            {"content": SYS_ASSISTANT, "role": "system"},
            {"content": TASK, "role": "user", "name": "user_proxy"},
        ]),
        completion(None, call.clone()),
        &ts(1),
    );
    let r2 = log.call(
        "inv-2",
        1001,
        session,
        Some("assistant"),
        json!([
            {"content": SYS_ASSISTANT, "role": "system"},
            {"content": TASK, "role": "user", "name": "user_proxy"},
            {"content": null, "role": "assistant", "tool_calls": call},
            {"tool_call_id": "call_1", "role": "tool", "content": "5"},
        ]),
        completion(Some("2 + 3 = 5. TERMINATE"), Value::Null),
        &ts(2),
    );
    (r1, r2)
}

#[test]
fn tool_chat_gives_agent_turns_tool_results_and_the_prompt_rows() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::new(dir.path(), "logs.db", true);
    let (r1, r2) = tool_chat(&log, "s-1");
    let recs = read(&log.path);
    assert_accounted(&log.path, &recs);
    let ts_ = kept(&recs);
    assert_eq!(ts_.len(), 1, "{recs:#?}");
    let t = &ts_[0];
    assert_eq!(t.id, "s-1");
    assert_eq!(t.task, TASK);
    assert_eq!(
        steps(t),
        vec![
            (
                "assistant",
                StepKind::Agent,
                "<tool_call>calculator({\"a\":2,\"b\":3})</tool_call>"
            ),
            ("calculator", StepKind::Observation, "5"),
            ("assistant", StepKind::Agent, "2 + 3 = 5. TERMINATE"),
        ]
    );
    let m = meta(t);
    assert_eq!(m["session_id"], "s-1");
    assert_eq!(
        m["turns"],
        json!([
            {"step": 0, "row": r1, "prompt_messages": 2},
            {"step": 2, "row": r2, "prompt_messages": 4},
        ])
    );
    assert_eq!(m["not_turns"], json!([]));
    assert_eq!(m["system"], json!({"assistant": SYS_ASSISTANT}));
    assert!((m["cost"].as_f64().unwrap() - 0.02).abs() < 1e-12);
    assert_eq!((t.success, t.score, &t.answer), (None, None, &None));
}

/// A round-robin group chat logged by AutoGen 0.2 (no `source_name`):
/// the agent comes from joining `wrapper_id` to `agents`; the code
/// executor has no model, so its output enters where the next call shows it.
#[test]
fn group_chat_without_source_name_joins_agents_and_keeps_the_executor_as_observation() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::new(dir.path(), "autogen02.sqlite", false);
    let s = "s-group";
    log.agent(s, 10, None, "User", "UserProxyAgent");
    log.agent(s, 11, Some(2001), "Planner", "AssistantAgent");
    log.agent(s, 12, Some(2002), "Coder", "AssistantAgent");
    log.agent(s, 13, None, "Computer_terminal", "UserProxyAgent");
    log.agent(s, 14, Some(2003), "chat_manager", "GroupChatManager");
    let task = json!({"content": "Compute 2 + 3 with Python.", "role": "user", "name": "User"});
    let plan = "Plan: Coder writes the code, the terminal runs it.";
    let code = "```python\nprint(2 + 3)\n```";
    let out = "exitcode: 0 (execution succeeded)\nCode output: 5";
    let sys = |n: &str| json!({"content": format!("You are {n}."), "role": "system"});
    log.call(
        "a",
        2001,
        s,
        None,
        json!([sys("Planner"), task]),
        completion(Some(plan), Value::Null),
        &ts(1),
    );
    log.call(
        "b",
        2002,
        s,
        None,
        json!([sys("Coder"), task, {"content": plan, "role": "user", "name": "Planner"}]),
        completion(Some(code), Value::Null),
        &ts(2),
    );
    log.call(
        "c",
        2001,
        s,
        None,
        json!([
            sys("Planner"),
            task,
            {"content": plan, "role": "assistant", "name": "Planner"},
            {"content": code, "role": "user", "name": "Coder"},
            {"content": out, "role": "user", "name": "Computer_terminal"},
        ]),
        completion(Some("The answer is 5. TERMINATE"), Value::Null),
        &ts(3),
    );
    let recs = read(&log.path);
    assert_accounted(&log.path, &recs);
    let t = &kept(&recs)[0];
    assert_eq!(t.task, "Compute 2 + 3 with Python.");
    assert_eq!(
        steps(t),
        vec![
            ("Planner", StepKind::Agent, plan),
            ("Coder", StepKind::Agent, code),
            ("Computer_terminal", StepKind::Observation, out),
            ("Planner", StepKind::Agent, "The answer is 5. TERMINATE"),
        ]
    );
    assert_eq!(
        meta(t)["system"],
        json!({"Planner": "You are Planner.", "Coder": "You are Coder."})
    );
}

/// Two agents with tools in one group chat: what another agent's request
/// repeats (a tool call, its result, a reply) is not added again; what no
/// call produced (a human's message) is an observation under its `name`;
/// the older `function_call` / `role: "function"` pair works the same way.
/// A message a context transform rewrote does not match and comes in again,
/// as an observation.
#[test]
fn held_messages_are_not_repeated_and_the_rest_are_observations() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::new(dir.path(), "tools.db", true);
    let s = "s";
    let task = json!({"content": "Find the capital of France.", "role": "user", "name": "Human"});
    let call = json!([{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"France\"}"}}]);
    let call_text = "<tool_call>lookup({\"q\":\"France\"})</tool_call>";
    let a_call =
        json!({"content": null, "role": "assistant", "name": "Researcher", "tool_calls": call});
    let result = json!({"tool_call_id": "c1", "role": "tool", "content": "Paris"});
    log.call(
        "1",
        1,
        s,
        Some("Researcher"),
        json!([task]),
        completion(None, call.clone()),
        &ts(1),
    );
    log.call(
        "2",
        2,
        s,
        Some("Writer"),
        json!([
            {"content": "You write.", "role": "system"},
            task,
            a_call,
            result,
            {"content": "Please hurry.", "role": "user", "name": "Human"},
        ]),
        completion(Some("The capital is Paris."), Value::Null),
        &ts(2),
    );
    // The older single function call, answered by a `function` message.
    let f = serde_json::to_string_pretty(&json!({"choices": [{"index": 0, "message": {
        "content": "Checking.", "role": "assistant",
        "function_call": {"name": "verify", "arguments": "{}"}, "tool_calls": null}}]}))
    .unwrap();
    log.call(
        "3",
        1,
        s,
        Some("Researcher"),
        json!([
            task,
            a_call,
            result,
            {"content": "Please hurry.", "role": "user", "name": "Human"},
            {"content": "The capital is Paris.", "role": "user", "name": "Writer"},
        ]),
        f,
        &ts(3),
    );
    log.call(
        "4",
        2,
        s,
        Some("Writer"),
        json!([
            task,
            // Shortened by a transform: no longer the text held.
            {"content": "The capital is ...", "role": "assistant"},
            {"content": "Checking.", "role": "user", "name": "Researcher", "function_call": {"name": "verify", "arguments": "{}"}},
            {"content": "true", "role": "function", "name": "verify"},
        ]),
        completion(Some(""), Value::Null),
        &ts(4),
    );
    let recs = read(&log.path);
    assert_accounted(&log.path, &recs);
    let t = &kept(&recs)[0];
    assert_eq!(t.task, "Find the capital of France.");
    assert_eq!(
        steps(t),
        vec![
            ("Researcher", StepKind::Agent, call_text),
            ("lookup", StepKind::Observation, "Paris"),
            ("Human", StepKind::Observation, "Please hurry."),
            ("Writer", StepKind::Agent, "The capital is Paris."),
            (
                "Researcher",
                StepKind::Agent,
                "Checking.\n<tool_call>verify({})</tool_call>"
            ),
            ("Writer", StepKind::Observation, "The capital is ..."),
            ("verify", StepKind::Observation, "true"),
            ("Writer", StepKind::Agent, ""),
        ]
    );
    assert_eq!(meta(t)["system"], json!({"Writer": "You write."}));
}

/// One `create` logs a row per attempt under one `invocation_id`; only the
/// last was returned. A call whose last row is an error raised.
#[test]
fn retries_errors_and_cached_calls() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::new(dir.path(), "retries.db", true);
    let s = "s-retry";
    let msgs = json!([{"content": "Say hi.", "role": "user", "name": "user"}]);
    let err = log.raw(
        Some("inv-1"),
        Some(5),
        s.to_string().into(),
        Some("bot"),
        request(msgs.clone()).into(),
        error_response(Some("error_code:429, config 0 failed")).into(),
        0,
        0.0,
        &ts(1),
    );
    // A cached reply the filter refused, then the reply of the next config.
    let refused = log.raw(
        Some("inv-1"),
        Some(5),
        s.to_string().into(),
        Some("bot"),
        request(msgs.clone()).into(),
        completion(Some("Hello?"), Value::Null).into(),
        1,
        0.0,
        &ts(2),
    );
    let ok = log.raw(
        Some("inv-1"),
        Some(5),
        s.to_string().into(),
        Some("bot"),
        request(msgs.clone()).into(),
        completion(Some("Hi!"), Value::Null).into(),
        1,
        0.5,
        &ts(3),
    );
    // A second call that failed on every config.
    let failed = log.raw(
        Some("inv-2"),
        Some(5),
        s.to_string().into(),
        Some("bot"),
        request(json!([msgs[0], {"content": "Hi!", "role": "assistant"}, {"content": "Again.", "role": "user", "name": "user"}])).into(),
        error_response(None).into(),
        0,
        0.0,
        &ts(4),
    );
    let recs = read(&log.path);
    assert_accounted(&log.path, &recs);
    let t = &kept(&recs)[0];
    assert_eq!(steps(t), vec![("bot", StepKind::Agent, "Hi!")]);
    let m = meta(t);
    assert_eq!(
        m["turns"],
        json!([{"step": 0, "row": ok, "prompt_messages": 1, "cached": true}])
    );
    assert_eq!(
        m["not_turns"],
        json!([
            {"row": err, "why": "superseded"},
            {"row": refused, "why": "superseded"},
            {"row": failed, "why": "api_error"},
        ])
    );
    assert_eq!(m["cost"], 0.5);
}

/// Sessions come in the order of their first call; rows by `start_time`
/// then `id`, whatever order they were inserted in.
#[test]
fn one_trajectory_per_session_in_time_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::new(dir.path(), "two.db", true);
    let m = |t: &str| json!([{"content": t, "role": "user"}]);
    // Inserted out of time order.
    log.call(
        "x2",
        1,
        "B",
        Some("b"),
        m("task B"),
        completion(Some("b2"), Value::Null),
        &ts(9),
    );
    log.call(
        "y1",
        1,
        "A",
        Some("a"),
        m("task A"),
        completion(Some("a1"), Value::Null),
        &ts(2),
    );
    log.call(
        "x1",
        1,
        "B",
        Some("b"),
        m("task B"),
        completion(Some("b1"), Value::Null),
        &ts(1),
    );
    log.call(
        "y2",
        1,
        "A",
        Some("a"),
        m("task A"),
        completion(Some("a2"), Value::Null),
        &ts(5),
    );
    let recs = read(&log.path);
    assert_accounted(&log.path, &recs);
    let ts_ = kept(&recs);
    let got: Vec<(&str, &str, Vec<&str>)> = ts_
        .iter()
        .map(|t| {
            (
                t.id.as_str(),
                t.task.as_str(),
                t.steps.iter().map(|s| s.text.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("B", "task B", vec!["b1", "b2"]),
            ("A", "task A", vec!["a1", "a2"]),
        ]
    );
}

/// Every bad row is rejected alone, with the row and the field named; the
/// rest of its session is kept.
#[test]
fn bad_rows_are_rejected_alone_with_the_row_and_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::new(dir.path(), "bad.db", true);
    let (_, good) = tool_chat(&log, "s");
    let s = || rusqlite::types::Value::from("s".to_string());
    let text = |t: &str| rusqlite::types::Value::from(t.to_string());
    let null = rusqlite::types::Value::Null;
    let msgs = json!([{"content": TASK, "role": "user"}]);
    let ok_req = text(&request(msgs.clone()));
    let ok_resp = text(&completion(Some("fine"), Value::Null));
    let mut expect: Vec<(i64, RejectReason, &str)> = Vec::new();
    let mut add = |inv: &str,
                   wrapper: Option<i64>,
                   session: rusqlite::types::Value,
                   source: Option<&str>,
                   req: rusqlite::types::Value,
                   resp: rusqlite::types::Value,
                   reason: RejectReason,
                   needle: &'static str| {
        let id = log.raw(
            Some(inv),
            wrapper,
            session,
            source,
            req,
            resp,
            0,
            0.0,
            &ts(30),
        );
        expect.push((id, reason, needle));
    };
    add(
        "r1",
        Some(1001),
        s(),
        Some("assistant"),
        text("{\"messages\": [}"),
        ok_resp.clone(),
        RejectReason::BrokenJson,
        "field `request`: broken JSON",
    );
    add(
        "r2",
        Some(1001),
        s(),
        Some("assistant"),
        ok_req.clone(),
        text("{\"choices\": "),
        RejectReason::BrokenJson,
        "field `response`: broken JSON",
    );
    add(
        "r3",
        Some(1001),
        s(),
        Some("assistant"),
        null.clone(),
        ok_resp.clone(),
        RejectReason::WrongType,
        "field `request`: expected JSON text, got NULL",
    );
    add(
        "r4",
        Some(1001),
        s(),
        Some("assistant"),
        ok_req.clone(),
        null.clone(),
        RejectReason::WrongType,
        "field `response`: expected JSON text, got NULL",
    );
    add(
        "r5",
        Some(1001),
        s(),
        Some("assistant"),
        rusqlite::types::Value::Integer(7),
        ok_resp.clone(),
        // `request` has TEXT affinity: SQLite stores the 7 as the text "7".
        RejectReason::WrongType,
        "field `request`: expected an object, got a number",
    );
    add(
        "r6",
        Some(424242),
        s(),
        None,
        ok_req.clone(),
        ok_resp.clone(),
        RejectReason::BadAgentName,
        "`wrapper_id` 424242 is not in table `agents`",
    );
    add(
        "r7",
        None,
        s(),
        None,
        ok_req.clone(),
        ok_resp.clone(),
        RejectReason::BadAgentName,
        "no agent: `source_name` is NULL and `wrapper_id` is NULL",
    );
    add(
        "r8",
        Some(1001),
        s(),
        Some("assistant"),
        ok_req.clone(),
        text("{\"id\": \"x\"}"),
        RejectReason::UnknownStepShape,
        "field `response`: neither `choices`",
    );
    add(
        "r9",
        Some(1001),
        s(),
        Some("assistant"),
        ok_req.clone(),
        text("{\"choices\": []}"),
        RejectReason::UnknownStepShape,
        "field `response.choices` is empty",
    );
    add(
        "r10",
        Some(1001),
        s(),
        Some("assistant"),
        ok_req.clone(),
        text("{\"choices\": [{\"message\": \"hi\"}]}"),
        RejectReason::WrongType,
        "field `response.choices[0].message`: expected an object, got a string",
    );
    add(
        "r11",
        Some(1001),
        s(),
        Some("assistant"),
        text("{\"prompt\": \"2+3\"}"),
        ok_resp.clone(),
        RejectReason::UnknownStepShape,
        "field `request.messages` is missing",
    );
    add(
        "r12",
        Some(1001),
        s(),
        Some("assistant"),
        text("{\"messages\": {}}"),
        ok_resp.clone(),
        RejectReason::WrongType,
        "field `request.messages`: expected an array, got an object",
    );
    add(
        "r13",
        Some(1001),
        s(),
        Some("assistant"),
        text("{\"messages\": [1]}"),
        ok_resp.clone(),
        RejectReason::WrongType,
        "field `request.messages[0]`: expected an object, got a number",
    );
    add(
        "r14",
        Some(1001),
        s(),
        Some("assistant"),
        text("{\"messages\": [{\"content\": \"x\"}]}"),
        ok_resp.clone(),
        RejectReason::UnknownStepShape,
        "request.messages[0]: missing `role`",
    );
    add(
        "r15",
        Some(1001),
        s(),
        Some("assistant"),
        text("{\"messages\": [{\"role\": \"user\", \"content\": 5}]}"),
        ok_resp.clone(),
        RejectReason::WrongType,
        "field `request.messages[0].content`",
    );
    add(
        "r16",
        Some(1001),
        s(),
        Some("assistant"),
        ok_req.clone(),
        text(&completion(
            None,
            json!([{"id": "c", "function": {"arguments": "{}"}}]),
        )),
        RejectReason::WrongType,
        "field `response.choices[0].message.tool_calls[0]`: no string `function.name`",
    );
    add(
        "r17",
        Some(1001),
        s(),
        Some("assistant"),
        ok_req.clone(),
        text("{\"response\": 3}"),
        RejectReason::WrongType,
        "field `response.response`: expected a string or null, got a number",
    );
    add(
        "r18",
        Some(1001),
        null.clone(),
        Some("assistant"),
        ok_req.clone(),
        ok_resp.clone(),
        RejectReason::WrongType,
        "field `session_id`: expected text, got NULL",
    );
    add(
        "r19",
        Some(1001),
        rusqlite::types::Value::Blob(vec![1, 2]),
        Some("assistant"),
        ok_req.clone(),
        ok_resp.clone(),
        RejectReason::WrongType,
        "field `session_id`: expected text, got a blob",
    );
    add(
        "r20",
        Some(1001),
        s(),
        Some("assistant"),
        rusqlite::types::Value::Blob(b"{}".to_vec()),
        ok_resp.clone(),
        RejectReason::WrongType,
        "field `request`: expected JSON text, got a blob",
    );
    // Text that is not UTF-8 (SQLite stores what it is given).
    let id = log.raw(
        Some("r21"),
        Some(1001),
        s(),
        Some("assistant"),
        ok_req.clone(),
        null.clone(),
        0,
        0.0,
        &ts(30),
    );
    log.conn
        .execute(
            "UPDATE chat_completions SET response = CAST(X'7B22FF' AS TEXT) WHERE id = ?1",
            [id],
        )
        .unwrap();
    expect.push((
        id,
        RejectReason::InvalidUtf8,
        "field `response`: invalid UTF-8 at byte 2",
    ));

    let recs = read(&log.path);
    assert_accounted(&log.path, &recs);
    let rej = rejected(&recs);
    assert_eq!(rej.len(), expect.len(), "{rej:#?}");
    for (id, reason, needle) in &expect {
        let head = format!("chat_completions id {id}: ");
        let (r, m) = rej
            .iter()
            .find(|(_, m)| m.starts_with(&head))
            .unwrap_or_else(|| panic!("row {id} not rejected: {rej:#?}"));
        assert_eq!(r, reason, "{m}");
        assert!(m.contains(needle), "{m} lacks {needle:?}");
    }
    // The good rows still make their trajectory.
    let t = &kept(&recs)[0];
    assert_eq!(t.steps.len(), 3);
    assert_eq!(meta(t)["turns"][1]["row"], good);
}

/// A database that is not an AG2 log (or not a database) is one rejected
/// record, never an error that stops the run.
#[test]
fn files_that_are_not_runtime_logs_are_one_reject_each() {
    let dir = tempfile::tempdir().unwrap();
    let limits = IngestLimits::default();
    let one = |p: &Path, fmt: Format| {
        let recs = read_file(p, fmt, &limits).unwrap();
        assert_eq!(recs.len(), 1, "{recs:#?}");
        assert_eq!(recs[0].loc.record, 0);
        recs[0].result.clone().unwrap_err()
    };

    let p = dir.path().join("notes.db");
    std::fs::write(&p, "these are my notes, not a database\n".repeat(100)).unwrap();
    let e = one(&p, Format::Auto);
    assert_eq!(e.reason, RejectReason::UnknownRecordShape);
    assert!(
        e.message.contains("not a readable SQLite database"),
        "{}",
        e.message
    );

    let p = dir.path().join("empty-file.sqlite3");
    std::fs::write(&p, "").unwrap();
    let e = one(&p, Format::Auto);
    assert!(
        e.message.contains("no table `chat_completions`"),
        "{}",
        e.message
    );

    let p = dir.path().join("other.db");
    Connection::open(&p)
        .unwrap()
        .execute_batch("CREATE TABLE todo (id INTEGER PRIMARY KEY, what TEXT);")
        .unwrap();
    let e = one(&p, Format::Auto);
    assert_eq!(e.reason, RejectReason::UnknownRecordShape);
    assert_eq!(
        e.message,
        "no table `chat_completions`: not an AG2 runtime log (tables: todo)"
    );

    let p = dir.path().join("cols.db");
    Connection::open(&p)
        .unwrap()
        .execute_batch("CREATE TABLE chat_completions (id INTEGER PRIMARY KEY, session_id TEXT, response TEXT);")
        .unwrap();
    let e = one(&p, Format::Auto);
    assert_eq!(
        e.message,
        "table `chat_completions` has no column `request`"
    );

    let log = Log::new(dir.path(), "empty.db", true);
    let e = one(&log.path, Format::Auto);
    assert_eq!(e.reason, RejectReason::EmptyTrajectory);
    assert_eq!(e.message, "table `chat_completions` has no rows");

    // A JSON file forced through this format.
    let p = dir.path().join("x.json");
    std::fs::write(&p, r#"{"task": "t", "trajectory": []}"#).unwrap();
    let e = one(&p, Format::Ag2Sqlite);
    assert_eq!(e.reason, RejectReason::UnknownRecordShape);
}

/// Without the `agents` table, or with a wrapper two agents claim, a row
/// without `source_name` has no agent.
#[test]
fn missing_agents_table_and_shared_wrappers_reject_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::new(dir.path(), "shared.db", false);
    log.agent("s", 1, Some(9), "A", "AssistantAgent");
    log.agent("s", 2, Some(9), "B", "AssistantAgent");
    let m = json!([{"content": "task", "role": "user"}]);
    let id = log.call(
        "i",
        9,
        "s",
        None,
        m.clone(),
        completion(Some("x"), Value::Null),
        &ts(1),
    );
    let recs = read(&log.path);
    assert_accounted(&log.path, &recs);
    assert_eq!(
        rejected(&recs),
        vec![(
            RejectReason::BadAgentName,
            format!("chat_completions id {id}: no agent: `wrapper_id` 9 belongs to several agents (A, B)")
        )]
    );

    log.conn.execute_batch("DROP TABLE agents;").unwrap();
    let recs = read(&log.path);
    let (_, msg) = &rejected(&recs)[0];
    assert!(
        msg.ends_with("there is no table `agents` to join `wrapper_id` 9 to"),
        "{msg}"
    );
}

/// A session whose calls all failed, and the generic checks (here a NUL
/// character) rejecting a whole session name the session, its rows and
/// the row of the step at fault.
#[test]
fn rejected_sessions_name_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::new(dir.path(), "sessions.db", true);
    let m = json!([{"content": "task", "role": "user"}]);
    let e1 = log.call(
        "i1",
        1,
        "dead",
        Some("a"),
        m.clone(),
        error_response(Some("boom")),
        &ts(1),
    );
    let e2 = log.call(
        "i2",
        1,
        "dead",
        Some("a"),
        m.clone(),
        error_response(None),
        &ts(2),
    );
    log.call(
        "j1",
        1,
        "nul",
        Some("a"),
        m.clone(),
        completion(Some("ok"), Value::Null),
        &ts(3),
    );
    let bad = log.call(
        "j2",
        1,
        "nul",
        Some("a"),
        m.clone(),
        completion(Some("a\u{0}b"), Value::Null),
        &ts(4),
    );
    let recs = read(&log.path);
    assert_accounted(&log.path, &recs);
    let rej = rejected(&recs);
    assert_eq!(
        rej[0],
        (
            RejectReason::EmptyTrajectory,
            format!("session dead (2 rows, ids {e1}..={e2}): no completed call (API errors or superseded attempts only)")
        )
    );
    assert_eq!(rej[1].0, RejectReason::NulByte);
    assert!(
        rej[1].1.ends_with(&format!(
            "contains a NUL character (chat_completions id {bad})"
        )),
        "{}",
        rej[1].1
    );

    // A session whose requests hold no user message has no task.
    let log = Log::new(dir.path(), "notask.db", true);
    let m = json!([{"content": "sys", "role": "system"}]);
    log.call(
        "k",
        1,
        "s",
        Some("a"),
        m,
        completion(Some("x"), Value::Null),
        &ts(1),
    );
    let recs = read(&log.path);
    assert_accounted(&log.path, &recs);
    assert_eq!(rejected(&recs)[0].0, RejectReason::MissingTask);
}

/// `max_record_bytes` bounds one JSON column; `max_field_bytes` one text.
#[test]
fn limits_apply_per_column_and_per_text() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::new(dir.path(), "big.db", true);
    let (r1, _) = tool_chat(&log, "s");
    let limits = IngestLimits {
        max_record_bytes: 300,
        ..Default::default()
    };
    let recs = read_file(&log.path, Format::Ag2Sqlite, &limits).unwrap();
    let rej = rejected(&recs);
    assert_eq!(rej[0].0, RejectReason::RecordTooLong);
    assert!(
        rej[0]
            .1
            .starts_with(&format!("chat_completions id {r1}: field `response` is ")),
        "{}",
        rej[0].1
    );

    let limits = IngestLimits {
        max_field_bytes: 20,
        ..Default::default()
    };
    let recs = read_file(&log.path, Format::Ag2Sqlite, &limits).unwrap();
    let rej = rejected(&recs);
    assert_eq!(rej.len(), 1);
    assert_eq!(rej[0].0, RejectReason::FieldTooLong);
    assert!(rej[0].1.starts_with("session s (2 rows"), "{}", rej[0].1);
}

/// Directories yield their databases; auto-detection sends a database to
/// this reader by name or by its header, and leaves JSON formats as they were.
#[test]
fn detection_by_name_and_header_leaves_json_formats_alone() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("runs");
    std::fs::create_dir(&sub).unwrap();
    for name in ["a.db", "b.sqlite", "c.SQLITE3"] {
        tool_chat(&Log::new(&sub, name, true), "s");
    }
    // A runtime log under a name that says nothing.
    let odd = Log::new(dir.path(), "runtime.log", true);
    tool_chat(&odd, "s");
    std::fs::write(
        sub.join("n.jsonl"),
        r#"{"task":"t","trajectory":[{"agent":"A","output":"x"}]}"#,
    )
    .unwrap();
    std::fs::write(
        sub.join("g.json"),
        r#"{"question":"q","history":[{"content":"hi","role":"assistant","name":"A"}]}"#,
    )
    .unwrap();
    std::fs::write(sub.join("readme.txt"), "not an input").unwrap();

    let files = expand_inputs(std::slice::from_ref(&sub)).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["a.db", "b.sqlite", "c.SQLITE3", "g.json", "n.jsonl"]
    );
    for f in &files[..3] {
        assert_eq!(kept(&read(f)).len(), 1, "{}", f.display());
    }
    assert_eq!(kept(&read(&files[3]))[0].steps[0].agent, "A");
    assert_eq!(kept(&read(&files[4]))[0].task, "t");
    assert_eq!(kept(&read(&odd.path)).len(), 1);
    // With another format forced, a file without a database name is not sniffed.
    let r = read_file(&odd.path, Format::Native, &IngestLimits::default()).unwrap();
    let e = r[0].result.as_ref().unwrap_err();
    assert!(
        matches!(e.reason, RejectReason::InvalidUtf8 | RejectReason::NulByte),
        "{e:?}"
    );

    // Names, and JSON detection unchanged.
    assert_eq!("ag2-sqlite".parse::<Format>().unwrap(), Format::Ag2Sqlite);
    assert_eq!(
        "autogen-sqlite".parse::<Format>().unwrap(),
        Format::Ag2Sqlite
    );
    assert_eq!(Format::Ag2Sqlite.name(), "ag2-sqlite");
    let unknown = "sqlite".parse::<Format>().unwrap_err();
    assert!(unknown.contains("ag2-sqlite"), "{unknown}");
    for (v, f) in [
        (json!({"trajectory": []}), Some(Format::Native)),
        (json!({"history": []}), Some(Format::Ag2)),
        (json!({"messages": []}), Some(Format::Messages)),
        (json!({"chat_completions": []}), None),
    ] {
        assert_eq!(detect(&v), f, "{v}");
    }
    let e = convert(
        &json!({"task": "t"}),
        Format::Ag2Sqlite,
        &IngestLimits::default(),
        "x",
    )
    .unwrap_err();
    assert_eq!(e.reason, RejectReason::UnknownRecordShape);
}

/// afm's native JSON of a record.
fn native_json(t: &Trajectory) -> Value {
    let turns: Vec<Value> = t
        .steps
        .iter()
        .map(|s| match s.kind {
            StepKind::Agent => json!({"agent": s.agent, "output": s.text}),
            StepKind::Observation => json!({"agent": s.agent, "observation": s.text}),
        })
        .collect();
    json!({"id": t.id, "task": t.task, "trajectory": turns, "meta": t.meta})
}

/// Written as native JSON (a value, and a JSONL line) and read back, a
/// trajectory is the same.
#[test]
fn native_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::new(dir.path(), "rt.db", true);
    tool_chat(&log, "s");
    let ts_ = kept(&read(&log.path));
    assert_eq!(ts_.len(), 1);
    for t in ts_ {
        let v = native_json(&t);
        let back = convert(&v, Format::Native, &IngestLimits::default(), "unused").unwrap();
        assert_eq!(back, t);
        let line: Value = serde_json::from_str(&v.to_string()).unwrap();
        let back = convert(&line, Format::Native, &IngestLimits::default(), "unused").unwrap();
        assert_eq!(back, t);
    }
}

/// The whole pipeline reads a directory holding a runtime log: exact
/// accounting, and the tool's result carries no loss (it is no role).
#[cfg(feature = "pipeline")]
#[test]
fn prepare_reads_a_runtime_log() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let log = Log::new(&input, "logs.db", true);
    for k in 0..4 {
        tool_chat(&log, &format!("s{k}"));
    }
    // One broken row: a reject of its own.
    log.raw(
        Some("z"),
        Some(1001),
        "s0".to_string().into(),
        Some("assistant"),
        "{".to_string().into(),
        completion(Some("x"), Value::Null).into(),
        0,
        0.0,
        &ts(50),
    );
    drop(log);
    let out = dir.path().join("out");
    let cfg = afm_data::PrepareConfig {
        inputs: vec![input],
        out: out.clone(),
        seq_len: 256,
        ..Default::default()
    };
    let m = afm_data::prepare(&cfg).unwrap();
    assert_eq!(m.total, 5);
    assert_eq!(m.rejected.get("broken_json"), Some(&1));
    assert_eq!(m.total, m.kept + m.filtered.values().sum::<usize>() + 1);
    assert_eq!(m.roles, ["assistant"]);
}
