//! `ag2-sqlite`: the SQLite runtime log of AG2 / AutoGen 0.2
//! (`autogen.runtime_logging.start(config={"dbname": ...})`, written by
//! `autogen/logger/sqlite_logger.py`). A database file, not JSON: it is read
//! here, outside the JSON record path of `mod.rs`.
//!
//! Tables and columns read (everything else is ignored):
//! - `chat_completions`: one row per LLM call. `id` (the rowid; names the
//!   row in messages and `meta`), `session_id` (one trajectory per session),
//!   `start_time` (order), `invocation_id` (retries of one call),
//!   `source_name` (the calling agent; AG2 only, absent in AutoGen 0.2),
//!   `wrapper_id` (joined to `agents`), `request` (JSON: the exact
//!   `messages` the agent sent), `response` (JSON: a chat completion, or
//!   `{"response": "<error text>" | null}` for a failed call), `is_cached`,
//!   `cost`. `client_id` and `end_time` are not used.
//! - `agents`: `session_id`, `wrapper_id`, `name` (the join). `id`,
//!   `agent_id`, `class`, `init_args` and `timestamp` are not used.
//! - `oai_wrappers`, `oai_clients`, `version`, `events` and
//!   `function_calls` are not read: `events` and `function_calls` have no
//!   `session_id`, and the tool results they hold reach the trajectory
//!   through the next request that contains them.
//!
//! Turn order. The rows of a session are taken by (`start_time`, `id`).
//! Of the rows that share an `invocation_id`, only the last one logged
//! (highest `id`) was returned to the agent; the others are `superseded`
//! attempts (an API error, then a retry with the next config; a cached
//! reply the filter refused). A last row whose response is an error
//! string or null is an `api_error` (the call raised). Each remaining row
//! is one turn:
//! 1. The agent: `source_name` when it is set, else the one `agents.name`
//!    with the row's `session_id` and `wrapper_id`.
//! 2. The request's messages are aligned, in order, with what the
//!    trajectory already holds (the task, then the text of every step, in
//!    the order they were added): each message whose text (content, then
//!    its tool calls as `<tool_call>NAME(ARGS)</tool_call>`) matches a held
//!    text after the previous match is known; every other message is new.
//!    `system` messages take no part (the first one an agent sends is kept
//!    in `meta`). The first `user` message of the session is the task.
//! 3. Each new message becomes an observation step, in request order
//!    (never trained): a `tool` result under the name of the tool its
//!    `tool_call_id` called, else `tool`; any other under its `name`, else
//!    `user` (or, for `assistant`, the calling agent).
//! 4. The completion (`choices[0].message`: content, then its
//!    `tool_calls` / `function_call`) becomes the agent's step.
//!
//! So a non-LLM agent's message (a code executor, a human) enters the
//! trajectory where the next LLM call first shows it, and another LLM
//! agent's reply, already a step, is not repeated. A message a context
//! transform rewrote does not match and comes in again as an observation.
//!
//! The exact prompt of each turn is not copied (each request repeats the
//! whole history): `meta.ag2_sqlite.turns` gives, for every agent step,
//! its `chat_completions` row and the number of messages its request
//! held, and `meta.ag2_sqlite.system` the system prompt of each agent
//! (when within the field limit).
//!
//! Accounting: every `chat_completions` row is either a rejected record of
//! its own (message `chat_completions id N: ...`) or belongs to its
//! session's record (a turn, or listed in `meta.ag2_sqlite.not_turns`; a
//! rejected session names its row count).

use super::fields::{content_text, push_tool_calls, wrong};
use super::{
    check, BatchInfo, Format, IngestError, IngestLimits, Invalid, Location, Parsed, RejectReason,
};
use afm_format::{Step, StepKind, Trajectory};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;

/// The first 16 bytes of every SQLite database file.
const MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// True when `path` goes to this reader: the format says so, the name ends
/// in `.db`/`.sqlite`/`.sqlite3`, or (auto-detection) the file starts with
/// the SQLite header.
pub(super) fn reads(path: &Path, format: Format) -> std::io::Result<bool> {
    if format == Format::Ag2Sqlite || has_sqlite_extension(path) {
        return Ok(true);
    }
    if format != Format::Auto {
        return Ok(false);
    }
    let mut head = Vec::with_capacity(16);
    std::fs::File::open(path)?.take(16).read_to_end(&mut head)?;
    Ok(head == MAGIC)
}

/// `.db`, `.sqlite` or `.sqlite3`.
pub(super) fn has_sqlite_extension(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("db") | Some("sqlite") | Some("sqlite3")
    )
}

/// A JSON record is never this format (it is a database file).
pub(super) fn detects(_: &Map<String, Value>) -> bool {
    false
}

/// A JSON record given as `ag2-sqlite`.
pub(super) fn read(_: &Map<String, Value>, _: &str) -> Result<Trajectory, Invalid> {
    Err(Invalid::new(
        RejectReason::UnknownRecordShape,
        "format ag2-sqlite reads SQLite database files (AG2's runtime log), not JSON records",
    ))
}

/// Read one database: one batch per session (its rejected rows, then its
/// trajectory or why the session is rejected). A file that is not an AG2
/// runtime log is one rejected record.
pub(super) fn for_each_batch(
    path: &Path,
    limits: &IngestLimits,
    f: impl FnMut(Vec<Parsed>, BatchInfo),
) -> Result<(), IngestError> {
    let file_len = std::fs::metadata(path)
        .map_err(|error| IngestError {
            path: path.to_path_buf(),
            error,
        })?
        .len();
    let mut out = Out {
        path,
        file_len,
        total_rows: 0,
        done_rows: 0,
        record: 0,
        f,
    };
    let (log, plan) = match Log::open(path).and_then(|log| {
        let plan = log.plan()?;
        Ok((log, plan))
    }) {
        Ok(x) => x,
        Err(inv) => {
            out.emit(vec![Err(inv)], 0, 0);
            return Ok(());
        }
    };
    if plan.groups.is_empty() {
        let inv = Invalid::new(
            RejectReason::EmptyTrajectory,
            "table `chat_completions` has no rows",
        );
        out.emit(vec![Err(inv)], 0, 0);
        return Ok(());
    }
    out.total_rows = plan.groups.iter().map(|g| g.rows.len()).sum();
    let mut fetch = match log.conn.prepare(&log.fetch_sql()) {
        Ok(s) => s,
        Err(e) => {
            out.emit(vec![Err(sql_error(e))], 0, 0);
            return Ok(());
        }
    };
    for g in &plan.groups {
        let mut batch = Vec::new();
        let (mut held, mut largest) = (0usize, 0usize);
        let Some(sid) = &g.session else {
            for r in &g.rows {
                let why = r.bad_session.clone().unwrap_or_else(|| {
                    Invalid::new(
                        RejectReason::WrongType,
                        "field `session_id`: expected text, got NULL",
                    )
                });
                batch.push(Err(at_row(r.rowid, why)));
            }
            out.done_rows += g.rows.len();
            out.emit(batch, 0, 0);
            continue;
        };
        let mut s = Session::new(sid);
        for r in &g.rows {
            let row = match fetch.query_row([r.rowid], |x| {
                Ok(Row {
                    request: Cell::of(x.get_ref(0)?),
                    response: Cell::of(x.get_ref(1)?),
                    source_name: Cell::of(x.get_ref(2)?),
                    wrapper_id: Cell::of(x.get_ref(3)?),
                    is_cached: Cell::of(x.get_ref(4)?),
                    cost: Cell::of(x.get_ref(5)?),
                })
            }) {
                Ok(row) => row,
                Err(e) => {
                    batch.push(Err(at_row(r.rowid, sql_error(e))));
                    continue;
                }
            };
            let size = row.request.len() + row.response.len();
            held += size;
            largest = largest.max(size);
            let last = r.invocation.as_ref().is_none_or(|inv| {
                plan.last_of_invocation.get(&(g.index, inv.clone())) == Some(&r.rowid)
            });
            if let Err(e) = s.row(r.rowid, &row, last, &log, limits) {
                batch.push(Err(at_row(r.rowid, e)));
            }
        }
        out.done_rows += g.rows.len();
        if let Some(t) = s.finish(limits) {
            batch.push(t);
        }
        out.emit(batch, held, largest);
    }
    Ok(())
}

/// Prefix a row's problem with the row.
fn at_row(rowid: i64, e: Invalid) -> Invalid {
    Invalid::new(
        e.reason,
        format!("chat_completions id {rowid}: {}", e.message),
    )
}

fn sql_error(e: rusqlite::Error) -> Invalid {
    Invalid::new(
        RejectReason::UnknownRecordShape,
        format!("not a readable SQLite database: {e}"),
    )
}

/// Hands batches to the caller with their locations and progress.
struct Out<'a, F> {
    path: &'a Path,
    file_len: u64,
    total_rows: usize,
    done_rows: usize,
    record: usize,
    f: F,
}

impl<F: FnMut(Vec<Parsed>, BatchInfo)> Out<'_, F> {
    /// `held`: bytes of `request` and `response` text the batch read;
    /// `largest`: the largest row of it.
    fn emit(&mut self, results: Vec<Result<Trajectory, Invalid>>, held: usize, largest: usize) {
        if results.is_empty() {
            return;
        }
        let bytes_read = if self.total_rows == 0 {
            self.file_len
        } else {
            (self.file_len as u128 * self.done_rows as u128 / self.total_rows as u128) as u64
        };
        let batch = results
            .into_iter()
            .map(|result| {
                let loc = Location {
                    file: self.path.to_path_buf(),
                    line: None,
                    record: self.record,
                };
                self.record += 1;
                Parsed { loc, result }
            })
            .collect();
        (self.f)(
            batch,
            BatchInfo {
                bytes_read,
                held_bytes: held,
                largest,
            },
        );
    }
}

/// A SQLite value, owned.
enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob,
}

impl Cell {
    fn of(v: ValueRef<'_>) -> Cell {
        match v {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(i) => Cell::Int(i),
            ValueRef::Real(r) => Cell::Real(r),
            ValueRef::Text(t) => Cell::Text(t.to_vec()),
            ValueRef::Blob(_) => Cell::Blob,
        }
    }

    fn len(&self) -> usize {
        match self {
            Cell::Text(t) => t.len(),
            _ => 0,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Cell::Null => "NULL",
            Cell::Int(_) => "an integer",
            Cell::Real(_) => "a real",
            Cell::Text(_) => "text",
            Cell::Blob => "a blob",
        }
    }

    /// Text, or a number written out; `None` for NULL and blobs (and text
    /// that is not UTF-8).
    fn key(&self) -> Option<String> {
        match self {
            Cell::Int(i) => Some(i.to_string()),
            Cell::Real(r) => Some(r.to_string()),
            Cell::Text(t) => String::from_utf8(t.clone()).ok(),
            Cell::Null | Cell::Blob => None,
        }
    }

    /// A JSON column (`request`, `response`).
    fn json(&self, field: &str, limits: &IngestLimits) -> Result<Value, Invalid> {
        let Cell::Text(b) = self else {
            return Err(Invalid::new(
                RejectReason::WrongType,
                format!("field `{field}`: expected JSON text, got {}", self.kind()),
            ));
        };
        if b.len() > limits.max_record_bytes {
            return Err(Invalid::new(
                RejectReason::RecordTooLong,
                format!(
                    "field `{field}` is {} bytes (limit {})",
                    b.len(),
                    limits.max_record_bytes
                ),
            ));
        }
        let s = std::str::from_utf8(b).map_err(|e| {
            Invalid::new(
                RejectReason::InvalidUtf8,
                format!("field `{field}`: invalid UTF-8 at byte {}", e.valid_up_to()),
            )
        })?;
        serde_json::from_str(s).map_err(|e| {
            Invalid::new(
                RejectReason::BrokenJson,
                format!("field `{field}`: broken JSON: {e}"),
            )
        })
    }
}

/// The columns of one `chat_completions` row that pass 2 reads.
struct Row {
    request: Cell,
    response: Cell,
    source_name: Cell,
    wrapper_id: Cell,
    is_cached: Cell,
    cost: Cell,
}

/// An open runtime log.
struct Log {
    conn: Connection,
    /// Columns of `chat_completions` (lower case).
    columns: HashSet<String>,
    /// (`session_id`, `wrapper_id`) -> the distinct `agents.name`s.
    agents: HashMap<(String, String), Vec<String>>,
    /// Why `agents` cannot be joined, when it cannot.
    no_agents: Option<String>,
}

/// One row in pass 1.
struct RowKey {
    rowid: i64,
    invocation: Option<String>,
    /// Why the row's `session_id` is unusable (NULL gives the default).
    bad_session: Option<Invalid>,
}

/// The rows of one session in order (`session: None`: rows without a
/// usable `session_id`).
struct Group {
    index: usize,
    session: Option<String>,
    rows: Vec<RowKey>,
}

/// Pass 1: the sessions in order of their first row, and the last row of
/// each invocation.
struct Plan {
    groups: Vec<Group>,
    last_of_invocation: HashMap<(usize, String), i64>,
}

impl Log {
    fn open(path: &Path) -> Result<Log, Invalid> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql_error)?;
        // A log still being written may hold its lock for a moment.
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql_error)?;
        let columns = table_columns(&conn, "chat_completions")?;
        if columns.is_empty() {
            let mut tables = Vec::new();
            let mut q = conn
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                .map_err(sql_error)?;
            let mut rows = q.query([]).map_err(sql_error)?;
            while let Some(r) = rows.next().map_err(sql_error)? {
                tables.push(r.get::<_, String>(0).unwrap_or_default());
            }
            let list = if tables.is_empty() {
                "none".to_string()
            } else {
                tables.join(", ")
            };
            return Err(Invalid::new(
                RejectReason::UnknownRecordShape,
                format!("no table `chat_completions`: not an AG2 runtime log (tables: {list})"),
            ));
        }
        for c in ["session_id", "request", "response"] {
            if !columns.contains(c) {
                return Err(Invalid::new(
                    RejectReason::UnknownRecordShape,
                    format!("table `chat_completions` has no column `{c}`"),
                ));
            }
        }
        let mut log = Log {
            conn,
            columns,
            agents: HashMap::new(),
            no_agents: None,
        };
        log.read_agents()?;
        Ok(log)
    }

    /// The `agents` table as a join map (or why there is none).
    fn read_agents(&mut self) -> Result<(), Invalid> {
        let cols = table_columns(&self.conn, "agents")?;
        if cols.is_empty() {
            self.no_agents = Some("there is no table `agents`".into());
            return Ok(());
        }
        if let Some(c) = ["session_id", "wrapper_id", "name"]
            .into_iter()
            .find(|c| !cols.contains(*c))
        {
            self.no_agents = Some(format!("table `agents` has no column `{c}`"));
            return Ok(());
        }
        let mut q = self
            .conn
            .prepare("SELECT session_id, wrapper_id, name FROM agents ORDER BY rowid")
            .map_err(sql_error)?;
        let mut rows = q.query([]).map_err(sql_error)?;
        while let Some(r) = rows.next().map_err(sql_error)? {
            let get = |i| r.get_ref(i).map(Cell::of).map_err(sql_error);
            let (Some(s), Some(w), Some(n)) = (get(0)?.key(), get(1)?.key(), get(2)?.key()) else {
                continue;
            };
            // Agents without a model client have `wrapper_id` "".
            if w.is_empty() || n.is_empty() {
                continue;
            }
            let names = self.agents.entry((s, w)).or_default();
            if !names.contains(&n) {
                names.push(n);
            }
        }
        Ok(())
    }

    /// A column of `chat_completions`, or NULL when the table lacks it.
    fn col(&self, name: &'static str) -> &'static str {
        if self.columns.contains(name) {
            name
        } else {
            "NULL"
        }
    }

    fn fetch_sql(&self) -> String {
        format!(
            "SELECT request, response, {}, {}, {}, {} FROM chat_completions WHERE rowid = ?1",
            self.col("source_name"),
            self.col("wrapper_id"),
            self.col("is_cached"),
            self.col("cost"),
        )
    }

    fn plan(&self) -> Result<Plan, Invalid> {
        let sql = format!(
            "SELECT rowid, session_id, {} FROM chat_completions ORDER BY {}, rowid",
            self.col("invocation_id"),
            self.col("start_time"),
        );
        let mut q = self.conn.prepare(&sql).map_err(sql_error)?;
        let mut rows = q.query([]).map_err(sql_error)?;
        let mut groups: Vec<Group> = Vec::new();
        let mut by_session: HashMap<Option<String>, usize> = HashMap::new();
        let mut last_of_invocation = HashMap::new();
        while let Some(r) = rows.next().map_err(sql_error)? {
            let rowid: i64 = r.get(0).map_err(sql_error)?;
            let session = Cell::of(r.get_ref(1).map_err(sql_error)?);
            let invocation = Cell::of(r.get_ref(2).map_err(sql_error)?).key();
            let (session, bad_session) = match (&session, session.key()) {
                (_, Some(s)) => (Some(s), None),
                (Cell::Null, None) => (None, None),
                (c, None) => (
                    None,
                    Some(Invalid::new(
                        RejectReason::WrongType,
                        format!("field `session_id`: expected text, got {}", c.kind()),
                    )),
                ),
            };
            let next = groups.len();
            let index = *by_session.entry(session.clone()).or_insert(next);
            if index == next {
                groups.push(Group {
                    index,
                    session: session.clone(),
                    rows: Vec::new(),
                });
            }
            if let (Some(_), Some(inv)) = (&session, &invocation) {
                let last = last_of_invocation
                    .entry((index, inv.clone()))
                    .or_insert(rowid);
                *last = (*last).max(rowid);
            }
            groups[index].rows.push(RowKey {
                rowid,
                invocation,
                bad_session,
            });
        }
        Ok(Plan {
            groups,
            last_of_invocation,
        })
    }

    /// The agent that made a call: `source_name`, else the join of
    /// (`session_id`, `wrapper_id`) to `agents`.
    fn agent_of(&self, session: &str, row: &Row) -> Result<String, Invalid> {
        if let Some(n) = row.source_name.key().filter(|n| !n.is_empty()) {
            return Ok(n);
        }
        let bad = |msg: String| Invalid::new(RejectReason::BadAgentName, msg);
        let source = if self.columns.contains("source_name") {
            format!("`source_name` is {}", row.source_name.kind())
        } else {
            "the log has no `source_name` column".to_string()
        };
        let Some(w) = row.wrapper_id.key() else {
            return Err(bad(format!(
                "no agent: {source} and `wrapper_id` is {}",
                row.wrapper_id.kind()
            )));
        };
        if let Some(why) = &self.no_agents {
            return Err(bad(format!(
                "no agent: {source} and {why} to join `wrapper_id` {w} to"
            )));
        }
        match self.agents.get(&(session.to_string(), w.clone())) {
            Some(names) if names.len() == 1 => Ok(names[0].clone()),
            Some(names) => Err(bad(format!(
                "no agent: `wrapper_id` {w} belongs to several agents ({})",
                names.join(", ")
            ))),
            None => Err(bad(format!(
                "no agent: {source} and `wrapper_id` {w} is not in table `agents` for this session"
            ))),
        }
    }
}

/// Lower-case column names of `table` (empty when there is no such table).
fn table_columns(conn: &Connection, table: &str) -> Result<HashSet<String>, Invalid> {
    let mut q = conn
        .prepare("SELECT name FROM pragma_table_info(?1)")
        .map_err(sql_error)?;
    let mut rows = q.query([table]).map_err(sql_error)?;
    let mut out = HashSet::new();
    while let Some(r) = rows.next().map_err(sql_error)? {
        if let Ok(n) = r.get::<_, String>(0) {
            out.insert(n.to_ascii_lowercase());
        }
    }
    Ok(out)
}

/// One message of a request, as text.
struct Msg {
    role: String,
    name: Option<String>,
    text: String,
    tool_call_id: Option<String>,
    /// (call id, tool name) of its tool calls.
    calls: Vec<(String, String)>,
}

/// `request.messages`.
fn request_messages(v: &Value) -> Result<Vec<Msg>, Invalid> {
    let o = v
        .as_object()
        .ok_or_else(|| wrong("request", "an object", v))?;
    let list = match o.get("messages") {
        Some(Value::Array(a)) => a,
        Some(v) => return Err(wrong("request.messages", "an array", v)),
        None => {
            return Err(Invalid::new(
                RejectReason::UnknownStepShape,
                "field `request.messages` is missing (a legacy `prompt` request is not read)",
            ))
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (k, m) in list.iter().enumerate() {
        let at = format!("request.messages[{k}]");
        let mo = m.as_object().ok_or_else(|| wrong(&at, "an object", m))?;
        let role = match mo.get("role") {
            Some(Value::String(r)) => r.clone(),
            Some(v) => return Err(wrong(&format!("{at}.role"), "a string", v)),
            None => {
                return Err(Invalid::new(
                    RejectReason::UnknownStepShape,
                    format!("{at}: missing `role`"),
                ))
            }
        };
        let name = match mo.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(n)) => Some(n.clone()).filter(|n| !n.is_empty()),
            Some(v) => return Err(wrong(&format!("{at}.name"), "a string", v)),
        };
        let tool_call_id = match mo.get("tool_call_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) => Some(id.clone()),
            Some(v) => return Err(wrong(&format!("{at}.tool_call_id"), "a string", v)),
        };
        out.push(Msg {
            role,
            name,
            text: message_text(mo, &at)?,
            tool_call_id,
            calls: call_names(mo).collect(),
        });
    }
    Ok(out)
}

/// A chat message as step text: its content, then its tool calls.
fn message_text(m: &Map<String, Value>, at: &str) -> Result<String, Invalid> {
    let mut text = content_text(m.get("content"), &format!("{at}.content"))?;
    push_tool_calls(&mut text, m, at)?;
    Ok(text)
}

/// (call id, tool name) of each tool call of a message.
fn call_names(m: &Map<String, Value>) -> impl Iterator<Item = (String, String)> + '_ {
    m.get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let id = c.get("id")?.as_str()?;
            let name = c.get("function")?.get("name")?.as_str()?;
            Some((id.to_string(), name.to_string()))
        })
}

/// What the response column holds.
enum Reply {
    /// A completion: the message of its first choice.
    Message(Map<String, Value>),
    /// `{"response": "<error>"}` or `{"response": null}`: the call failed.
    Failed,
}

fn reply(v: &Value) -> Result<Reply, Invalid> {
    let o = v
        .as_object()
        .ok_or_else(|| wrong("response", "an object", v))?;
    if let Some(ch) = o.get("choices") {
        let list = ch
            .as_array()
            .ok_or_else(|| wrong("response.choices", "an array", ch))?;
        let first = list.first().ok_or_else(|| {
            Invalid::new(
                RejectReason::UnknownStepShape,
                "field `response.choices` is empty",
            )
        })?;
        let fo = first
            .as_object()
            .ok_or_else(|| wrong("response.choices[0]", "an object", first))?;
        return match fo.get("message") {
            Some(Value::Object(m)) => Ok(Reply::Message(m.clone())),
            Some(v) => Err(wrong("response.choices[0].message", "an object", v)),
            None => Err(Invalid::new(
                RejectReason::UnknownStepShape,
                "field `response.choices[0].message` is missing",
            )),
        };
    }
    match o.get("response") {
        Some(Value::String(_)) | Some(Value::Null) => Ok(Reply::Failed),
        Some(v) => Err(wrong("response.response", "a string or null", v)),
        None => Err(Invalid::new(
            RejectReason::UnknownStepShape,
            "field `response`: neither `choices` (a completion) nor `response` (a failed call)",
        )),
    }
}

/// A session being read.
struct Session {
    id: String,
    task: Option<String>,
    steps: Vec<Step>,
    /// The row each step came from.
    step_rows: Vec<i64>,
    /// Text -> its positions among the held texts (task and steps, in the
    /// order they were added).
    held: HashMap<String, Vec<usize>>,
    n_held: usize,
    /// Tool call id -> tool name.
    tools: HashMap<String, String>,
    turns: Vec<Value>,
    not_turns: Vec<Value>,
    system: Map<String, Value>,
    cost: f64,
    /// Rows of this record (turns and not-turns): count, first and last id.
    rows: usize,
    first_row: i64,
    last_row: i64,
}

impl Session {
    fn new(id: &str) -> Self {
        Session {
            id: id.to_string(),
            task: None,
            steps: Vec::new(),
            step_rows: Vec::new(),
            held: HashMap::new(),
            n_held: 0,
            tools: HashMap::new(),
            turns: Vec::new(),
            not_turns: Vec::new(),
            system: Map::new(),
            cost: 0.0,
            rows: 0,
            first_row: 0,
            last_row: 0,
        }
    }

    /// Hold a text; its position.
    fn hold(&mut self, text: &str) -> usize {
        let p = self.n_held;
        self.held.entry(text.to_string()).or_default().push(p);
        self.n_held += 1;
        p
    }

    /// The first position of `text` at or after `from`.
    fn find(&self, text: &str, from: usize) -> Option<usize> {
        let ps = self.held.get(text)?;
        ps.get(ps.partition_point(|&p| p < from)).copied()
    }

    fn count(&mut self, rowid: i64, row: &Row) {
        if self.rows == 0 {
            self.first_row = rowid;
        }
        self.rows += 1;
        self.last_row = rowid;
        match row.cost {
            Cell::Real(c) if c.is_finite() => self.cost += c,
            Cell::Int(c) => self.cost += c as f64,
            _ => {}
        }
    }

    /// One row: a turn, a not-turn, or why the row is rejected (then it is
    /// not part of this record).
    fn row(
        &mut self,
        rowid: i64,
        row: &Row,
        last: bool,
        log: &Log,
        limits: &IngestLimits,
    ) -> Result<(), Invalid> {
        if !last {
            self.count(rowid, row);
            self.not_turns
                .push(json!({"row": rowid, "why": "superseded"}));
            return Ok(());
        }
        let message = match reply(&row.response.json("response", limits)?)? {
            Reply::Failed => {
                self.count(rowid, row);
                self.not_turns
                    .push(json!({"row": rowid, "why": "api_error"}));
                return Ok(());
            }
            Reply::Message(m) => m,
        };
        let out_text = message_text(&message, "response.choices[0].message")?;
        let msgs = request_messages(&row.request.json("request", limits)?)?;
        let agent = log.agent_of(&self.id, row)?;
        self.count(rowid, row);

        // Align the request with what is held; collect the new messages.
        let mut cursor = 0;
        let mut new = Vec::new();
        for m in &msgs {
            for (id, name) in &m.calls {
                self.tools.insert(id.clone(), name.clone());
            }
            if m.role == "system" {
                if !self.system.contains_key(&agent) && m.text.len() <= limits.max_field_bytes {
                    self.system
                        .insert(agent.clone(), Value::String(m.text.clone()));
                }
                continue;
            }
            if self.task.is_none() && m.role == "user" {
                self.task = Some(m.text.clone());
                cursor = self.hold(&m.text) + 1;
                continue;
            }
            match self.find(&m.text, cursor) {
                Some(p) => cursor = p + 1,
                None => new.push(m),
            }
        }
        for m in new {
            let who = match m.role.as_str() {
                "tool" => m
                    .tool_call_id
                    .as_ref()
                    .and_then(|id| self.tools.get(id).cloned())
                    .or_else(|| m.name.clone())
                    .unwrap_or_else(|| "tool".into()),
                "assistant" => m.name.clone().unwrap_or_else(|| agent.clone()),
                _ => m.name.clone().unwrap_or_else(|| "user".into()),
            };
            self.hold(&m.text);
            self.steps.push(Step {
                agent: who,
                kind: StepKind::Observation,
                text: m.text.clone(),
            });
            self.step_rows.push(rowid);
        }
        for (id, name) in call_names(&message) {
            self.tools.insert(id, name);
        }
        self.hold(&out_text);
        let mut turn = json!({
            "step": self.steps.len(),
            "row": rowid,
            "prompt_messages": msgs.len(),
        });
        if matches!(row.is_cached, Cell::Int(1)) {
            turn["cached"] = Value::Bool(true);
        }
        self.turns.push(turn);
        self.steps.push(Step {
            agent,
            kind: StepKind::Agent,
            text: out_text,
        });
        self.step_rows.push(rowid);
        Ok(())
    }

    /// The session's record, or `None` when every row was rejected.
    fn finish(self, limits: &IngestLimits) -> Option<Result<Trajectory, Invalid>> {
        if self.rows == 0 {
            return None;
        }
        let head = format!(
            "session {} ({} rows, ids {}..={})",
            self.id, self.rows, self.first_row, self.last_row
        );
        if self.steps.is_empty() {
            return Some(Err(Invalid::new(
                RejectReason::EmptyTrajectory,
                format!("{head}: no completed call (API errors or superseded attempts only)"),
            )));
        }
        let Some(task) = self.task else {
            return Some(Err(Invalid::new(
                RejectReason::MissingTask,
                format!("{head}: no request has a `user` message (the task)"),
            )));
        };
        let meta = json!({"ag2_sqlite": {
            "session_id": self.id,
            "turns": self.turns,
            "not_turns": self.not_turns,
            "cost": self.cost,
            "system": self.system,
        }});
        let t = Trajectory {
            id: self.id.clone(),
            task,
            steps: self.steps,
            success: None,
            score: None,
            answer: None,
            meta: Some(meta),
        };
        let step_rows = self.step_rows;
        Some(check(t, limits, Format::Ag2Sqlite).map_err(|e| {
            let row = step_of(&e.message)
                .and_then(|i| step_rows.get(i))
                .map(|r| format!(" (chat_completions id {r})"))
                .unwrap_or_default();
            Invalid::new(e.reason, format!("{head}: {}{row}", e.message))
        }))
    }
}

/// The step index a check message names (`step 3 (..)` or `step[3]`).
fn step_of(msg: &str) -> Option<usize> {
    let i = msg.find("step")? + 4;
    let rest = msg[i..].trim_start_matches([' ', '[']);
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}
