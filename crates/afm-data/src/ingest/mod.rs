//! Reading and validating input records in every supported format.
//!
//! | format     | shape                                                                                  |
//! |------------|----------------------------------------------------------------------------------------|
//! | `native`   | `{"id","task","trajectory":[{"agent","output"}or{"agent","observation"}],"score","success","answer","meta"}` |
//! | `ag2`      | AG2/AutoGen log: `{"question","is_correct","history":[{"content","role","name"}]}`   |
//! | `messages` | OpenAI chat: `{"messages":[{"role","content","name","tool_calls"}]}` or a bare array of messages |
//! | `openai-agents` | OpenAI Agents SDK: run items `{"generated_items"/"new_items":[{"type","agent":{"name"},"raw_item"}]}`, or a trace `{"trace","spans":[{"span_data"}]}` / `{"data":[trace, spans..]}` |
//! | `langgraph` | LangGraph state `{"messages":[{"type":"ai","name","tool_calls"}..]}` (or a bare array), or LangSmith runs `{"run_type","child_runs"}` / `{"runs":[..]}` |
//! | `magentic-one` | Magentic-One: `{"question","history":[{"role":"Orchestrator (-> WebSurfer)","content"}]}` (speaker before the parenthetical) |
//! | `autogen-agentchat` | AutoGen 0.4 AgentChat `TaskResult` `{"messages":[{"source","type",...}],"stop_reason"}` or a saved `TeamState` |
//! | `sharegpt` | LLaMA-Factory ShareGPT: `{"conversations":[{"from":"human"/"gpt"/"observation"/"function_call"/"system","value"}]}`; afm role markers (`<|agent:NAME|>`) in values split merged turns |
//! | `coa-tags` | Chain-of-Agents: `{"task"/"question"/"prompt", "response"/"output"/"text": "<think>..</think><code>..</code><observation>..</observation><answer>..</answer>"}` |
//! | `smolagents` | smolagents memory: `{"agent","task","steps":[step dict()...],"managed_agents":{NAME: RUN}}` or a bare list of steps |
//! | `crewai`   | CrewAI: `CrewOutput` (`{"raw","tasks_output":[{"description","agent","raw","messages"}]}`) and/or `"events":[{"type":"tool_usage_started",...}]`, or a bare list of events |
//! | `ag2-sqlite` | AG2's SQLite runtime log: `chat_completions` (request, response) joined to `agents`; one record per `session_id` (`ingest/ag2_sqlite.rs`) |
//!
//! Files ending in `.jsonl`/`.ndjson` hold one record per line; a
//! `.db`/`.sqlite`/`.sqlite3` file (or, when detecting, any file that
//! starts with the SQLite header) is an AG2 runtime log; any other file is
//! one JSON document: a record, or an array of records (or one record as a
//! bare array: of messages, smolagents steps, CrewAI events, Agents SDK
//! trace exports, LangChain messages).
//!
//! Agent naming: `name` when present, else `role`. Steps become
//! observations when the source says so (`observation` field, `role:
//! "tool"`, `<observation>` tag) or by the agents map ([`crate::AgentsMap`]).
//!
//! A bad record never stops reading: each one comes back as an
//! [`Invalid`] with a [`RejectReason`] and a message naming the field.

mod ag2;
mod ag2_sqlite;
mod autogen;
mod coa;
mod crewai;
mod fields;
mod langgraph;
mod magentic;
mod messages;
mod native;
mod openai_agents;
pub(crate) mod sharegpt;
mod smolagents;

pub use coa::parse_coa_tags;

use crate::agents::AgentsMap;
use afm_format::{StepKind, Trajectory};
use fields::type_name;
use serde_json::{Map, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Input format of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Detect from the first record of each file.
    #[default]
    Auto,
    /// afm's own JSONL.
    Native,
    /// AG2/AutoGen chat logs (`history`).
    Ag2,
    /// OpenAI-style `messages`.
    Messages,
    /// LLaMA-Factory ShareGPT (`conversations` with `from`/`value`).
    Sharegpt,
    /// Chain-of-Agents tag format.
    CoaTags,
    /// OpenAI Agents SDK run items and exported traces.
    OpenaiAgents,
    /// LangGraph state messages and LangSmith run trees.
    Langgraph,
    /// smolagents agent memory (steps, managed agents nested).
    Smolagents,
    /// CrewAI task outputs and event-bus events.
    Crewai,
    /// AG2's SQLite runtime log (a database file, not JSON).
    Ag2Sqlite,
    /// Magentic-One logs (`role: "Orchestrator (-> WebSurfer)"`).
    MagenticOne,
    /// AutoGen 0.4 AgentChat `TaskResult` / team state.
    AutogenAgentchat,
}

/// One importer: the format it reads, its names on the command line, how
/// it recognises a record, and how it reads one.
struct Importer {
    format: Format,
    /// The first name is the canonical one (`--format NAME`).
    names: &'static [&'static str],
    /// True when a parsed JSON object looks like this format.
    detects: fn(&Map<String, Value>) -> bool,
    /// Reads one record (`default_id` when the record has no id).
    read: fn(&Map<String, Value>, &str) -> Result<Trajectory, Invalid>,
}

/// Every importer of JSON records, in detection order: the first whose
/// `detects` accepts a record reads it. A more specific shape comes before
/// a more general one that would also accept it.
const IMPORTERS: &[Importer] = &[
    Importer {
        format: Format::Native,
        names: &["native"],
        detects: native::detects,
        read: native::read,
    },
    // Before `ag2` and `messages`: these records also have `history`/`messages`.
    Importer {
        format: Format::MagenticOne,
        names: &["magentic-one", "magentic"],
        detects: magentic::detects,
        read: magentic::read,
    },
    Importer {
        format: Format::AutogenAgentchat,
        names: &["autogen-agentchat", "autogen04"],
        detects: autogen::detects,
        read: autogen::read,
    },
    Importer {
        format: Format::Ag2,
        names: &["ag2", "autogen"],
        detects: ag2::detects,
        read: ag2::read,
    },
    Importer {
        format: Format::OpenaiAgents,
        names: &["openai-agents", "agents-sdk"],
        detects: openai_agents::detects,
        read: openai_agents::read,
    },
    // Before `messages`: LangChain messages also sit under `messages`.
    Importer {
        format: Format::Langgraph,
        names: &["langgraph", "langsmith"],
        detects: langgraph::detects,
        read: langgraph::read,
    },
    Importer {
        format: Format::Smolagents,
        names: &["smolagents", "smol"],
        detects: smolagents::detects,
        read: smolagents::read,
    },
    Importer {
        format: Format::Crewai,
        names: &["crewai", "crew"],
        detects: crewai::detects,
        read: crewai::read,
    },
    Importer {
        format: Format::Sharegpt,
        names: &["sharegpt", "llama-factory"],
        detects: sharegpt::detects,
        read: sharegpt::read,
    },
    Importer {
        format: Format::Messages,
        names: &["messages", "openai"],
        detects: messages::detects,
        read: messages::read,
    },
    Importer {
        format: Format::CoaTags,
        names: &["coa-tags", "coa"],
        detects: coa::detects,
        read: coa::read,
    },
    // Reads database files (see `for_each_batch`); never detected from JSON.
    Importer {
        format: Format::Ag2Sqlite,
        names: &["ag2-sqlite", "autogen-sqlite"],
        detects: ag2_sqlite::detects,
        read: ag2_sqlite::read,
    },
];

fn importer(format: Format) -> Option<&'static Importer> {
    IMPORTERS.iter().find(|i| i.format == format)
}

impl Format {
    /// The canonical names of every format, in detection order.
    pub fn names() -> Vec<&'static str> {
        IMPORTERS.iter().map(|i| i.names[0]).collect()
    }

    /// The canonical name (`--format NAME`).
    pub fn name(self) -> &'static str {
        importer(self).map_or("auto", |i| i.names[0])
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(Format::Auto);
        }
        IMPORTERS
            .iter()
            .find(|i| i.names.contains(&s))
            .map(|i| i.format)
            .ok_or_else(|| {
                let all: Vec<&str> = IMPORTERS.iter().map(|i| i.names[0]).collect();
                format!("unknown format {s:?} (auto, {})", all.join(", "))
            })
    }
}

/// Why a record was rejected (the keys of `manifest.rejected`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    BrokenJson,
    InvalidUtf8,
    NulByte,
    FieldTooLong,
    RecordTooLong,
    WrongType,
    MissingTask,
    EmptyTrajectory,
    UnknownStepShape,
    UnknownRecordShape,
    BadAgentName,
}

impl RejectReason {
    /// Stable snake_case key.
    pub fn key(self) -> &'static str {
        match self {
            RejectReason::BrokenJson => "broken_json",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::NulByte => "nul_byte",
            RejectReason::FieldTooLong => "field_too_long",
            RejectReason::RecordTooLong => "record_too_long",
            RejectReason::WrongType => "wrong_type",
            RejectReason::MissingTask => "missing_task",
            RejectReason::EmptyTrajectory => "empty_trajectory",
            RejectReason::UnknownStepShape => "unknown_step_shape",
            RejectReason::UnknownRecordShape => "unknown_record_shape",
            RejectReason::BadAgentName => "bad_agent_name",
        }
    }
}

/// A record that failed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub reason: RejectReason,
    /// Names the field and the problem.
    pub message: String,
}

impl Invalid {
    pub(crate) fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Where a record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    /// 1-based line for JSONL files.
    pub line: Option<usize>,
    /// 0-based record index inside the file.
    pub record: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}", self.file.display()),
            None => write!(f, "{}#{}", self.file.display(), self.record),
        }
    }
}

/// One line of a rejects file (`rejects.jsonl` of `afm prepare`,
/// `OUT.rejects.jsonl` of `afm convert`): `{"file","line","record","reason","message"}`.
#[derive(Debug, serde::Serialize)]
pub struct RejectLine<'a> {
    pub file: String,
    pub line: Option<usize>,
    pub record: usize,
    pub reason: &'static str,
    pub message: &'a str,
}

impl<'a> RejectLine<'a> {
    pub fn new(loc: &Location, inv: &'a Invalid) -> Self {
        Self {
            file: loc.file.display().to_string(),
            line: loc.line,
            record: loc.record,
            reason: inv.reason.key(),
            message: &inv.message,
        }
    }
}

/// One record read from a file: a trajectory (not yet normalised by the
/// agents map) or why it is invalid.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub loc: Location,
    pub result: Result<Trajectory, Invalid>,
}

/// Size limits applied while validating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestLimits {
    /// Longest accepted text field, in bytes (default 1 MiB).
    pub max_field_bytes: usize,
    /// Longest accepted record (a JSONL line or a JSON document), in bytes (default 64 MiB).
    pub max_record_bytes: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_field_bytes: 1 << 20,
            max_record_bytes: 64 << 20,
        }
    }
}

/// Errors that stop reading a whole file (it cannot be opened or read).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {error}")]
pub struct IngestError {
    pub path: PathBuf,
    pub error: std::io::Error,
}

/// True when `path` is read line by line.
pub fn is_jsonl(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("jsonl") | Some("ndjson")
    )
}

/// Expand inputs: a directory yields its `.json`/`.jsonl`/`.ndjson` files
/// and `.db`/`.sqlite`/`.sqlite3` databases (recursively), sorted; a file is kept as is. The result is sorted and
/// deduplicated so runs are deterministic.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, IngestError> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), IngestError> {
        let err = |source| IngestError {
            path: dir.to_path_buf(),
            error: source,
        };
        for e in std::fs::read_dir(dir).map_err(err)? {
            let p = e.map_err(err)?.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else if ag2_sqlite::has_sqlite_extension(&p)
                || matches!(
                    p.extension()
                        .and_then(|e| e.to_str())
                        .map(str::to_ascii_lowercase)
                        .as_deref(),
                    Some("json") | Some("jsonl") | Some("ndjson")
                )
            {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(IngestError {
                path: p.clone(),
                error: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file or directory",
                ),
            });
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Read every record of one file (convenience over [`for_each_batch`]).
pub fn read_file(
    path: &Path,
    format: Format,
    limits: &IngestLimits,
) -> Result<Vec<Parsed>, IngestError> {
    let mut all = Vec::new();
    for_each_batch(path, format, limits, BatchSize::default(), |b, _| {
        all.extend(b)
    })?;
    Ok(all)
}

/// How much one JSONL batch may hold before it is parsed: raw line bytes
/// and lines. A batch always takes at least one line, so a line longer than
/// `max_bytes` (up to [`IngestLimits::max_record_bytes`]) is a batch of its own;
/// the bytes in flight are at most `max_bytes` plus the line being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSize {
    /// Raw bytes of the lines held by one batch (default 64 MiB).
    pub max_bytes: usize,
    /// Lines held by one batch (default 4096; bounds the per-record overhead
    /// of many short lines).
    pub max_records: usize,
}

impl Default for BatchSize {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_records: 4096,
        }
    }
}

/// What a batch callback is told besides the records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchInfo {
    /// Bytes of the file read so far (for progress).
    pub bytes_read: u64,
    /// Raw record bytes this batch held: its lines (a line over the record
    /// limit is dropped while read and holds 0), or the whole document.
    pub held_bytes: usize,
    /// The longest line (or the document) of this batch, in bytes.
    pub largest: usize,
}

/// Stream the records of one file in batches bounded by `size` (bytes and
/// lines), parsing each batch in parallel (rayon). `f` also gets a
/// [`BatchInfo`] (bytes read so far, bytes the batch held).
pub fn for_each_batch(
    path: &Path,
    format: Format,
    limits: &IngestLimits,
    size: BatchSize,
    mut f: impl FnMut(Vec<Parsed>, BatchInfo),
) -> Result<(), IngestError> {
    let err = |source| IngestError {
        path: path.to_path_buf(),
        error: source,
    };
    // An SQLite database goes to its own reader.
    if ag2_sqlite::reads(path, format).map_err(err)? {
        return ag2_sqlite::for_each_batch(path, limits, f);
    }
    let file = std::fs::File::open(path).map_err(err)?;
    if !is_jsonl(path) {
        let mut bytes = Vec::new();
        let n = file
            .take(limits.max_record_bytes as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(err)?;
        let loc = Location {
            file: path.to_path_buf(),
            line: None,
            record: 0,
        };
        let info = BatchInfo {
            bytes_read: n as u64,
            held_bytes: n,
            largest: n,
        };
        if n > limits.max_record_bytes {
            let inv = Invalid::new(
                RejectReason::RecordTooLong,
                format!("document is longer than {} bytes", limits.max_record_bytes),
            );
            drop(bytes);
            f(
                vec![Parsed {
                    loc,
                    result: Err(inv),
                }],
                info,
            );
            return Ok(());
        }
        let recs = parse_document(&bytes, format, limits, path);
        drop(bytes);
        let out = recs
            .into_iter()
            .enumerate()
            .map(|(i, result)| Parsed {
                loc: Location {
                    record: i,
                    ..loc.clone()
                },
                result,
            })
            .collect();
        f(out, info);
        return Ok(());
    }
    let max_bytes = size.max_bytes.max(1);
    let max_records = size.max_records.max(1);
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut st = LineBatch {
        path,
        limits,
        detected: format,
        lines: Vec::new(),
        held: 0,
        largest: 0,
        record: 0,
    };
    let mut line_no = 0usize;
    let mut bytes_read = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Read one line, but never hold more than the record limit of it.
        let (n, over) =
            read_line_capped(&mut reader, &mut buf, limits.max_record_bytes).map_err(err)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        // None: the line is over the record limit (dropped while read).
        let line = if over {
            None
        } else if buf.iter().all(|b| b.is_ascii_whitespace()) {
            bytes_read += n as u64;
            continue;
        } else {
            Some(std::mem::take(&mut buf))
        };
        let len = line.as_ref().map_or(0, Vec::len);
        // Flush before this line would take the batch over its budget (a
        // batch always holds at least one line).
        if !st.lines.is_empty() && (st.held + len > max_bytes || st.lines.len() >= max_records) {
            st.flush(bytes_read, &mut f);
        }
        bytes_read += n as u64;
        st.held += len;
        st.largest = st.largest.max(len);
        st.lines.push((line_no, line));
    }
    if !st.lines.is_empty() {
        st.flush(bytes_read, &mut f);
    }
    Ok(())
}

/// The lines of one JSONL batch and the state carried between batches.
struct LineBatch<'a> {
    path: &'a Path,
    limits: &'a IngestLimits,
    detected: Format,
    /// (1-based line, bytes); `None` = over the record limit.
    lines: Vec<(usize, Option<Vec<u8>>)>,
    held: usize,
    largest: usize,
    /// Records before this batch in the file.
    record: usize,
}

impl LineBatch<'_> {
    fn flush(&mut self, bytes_read: u64, f: &mut impl FnMut(Vec<Parsed>, BatchInfo)) {
        use rayon::prelude::*;
        if self.detected == Format::Auto {
            // Detect from the first line that parses as a JSON object.
            for l in self.lines.iter().filter_map(|(_, l)| l.as_deref()) {
                if let Ok(v) = serde_json::from_slice::<Value>(l) {
                    if let Some(fm) = detect(&v) {
                        self.detected = fm;
                        break;
                    }
                }
            }
        }
        let (fmt, limits, path, start) = (self.detected, self.limits, self.path, self.record);
        let info = BatchInfo {
            bytes_read,
            held_bytes: self.held,
            largest: self.largest,
        };
        let lines = std::mem::take(&mut self.lines);
        self.record += lines.len();
        self.held = 0;
        self.largest = 0;
        // By value: each line's bytes are freed as soon as it is parsed.
        let out: Vec<Parsed> = lines
            .into_par_iter()
            .enumerate()
            .map(|(k, (line, bytes))| {
                let loc = Location {
                    file: path.to_path_buf(),
                    line: Some(line),
                    record: start + k,
                };
                let result = match bytes {
                    None => Err(Invalid::new(
                        RejectReason::RecordTooLong,
                        format!("line is longer than {} bytes", limits.max_record_bytes),
                    )),
                    Some(b) => parse_line(&b, fmt, limits, path, line),
                };
                Parsed { loc, result }
            })
            .collect();
        f(out, info);
    }
}

/// Reads up to and including `\n`. Returns (bytes consumed, over_limit);
/// when over the limit the rest of the line is consumed and dropped.
fn read_line_capped<R: BufRead>(
    r: &mut R,
    buf: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<(usize, bool)> {
    let mut n = 0;
    let mut over = false;
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok((n, over));
        }
        let (chunk, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (&avail[..=i], true),
            None => (avail, false),
        };
        let len = chunk.len();
        if !over {
            if buf.len() + len > cap + 1 {
                over = true;
                buf.clear();
                buf.shrink_to_fit();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        r.consume(len);
        n += len;
        if done {
            return Ok((n, over));
        }
    }
}

fn check_bytes(bytes: &[u8]) -> Result<&str, Invalid> {
    // A UTF-8 byte-order mark is not content.
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let s = std::str::from_utf8(bytes).map_err(|e| {
        Invalid::new(
            RejectReason::InvalidUtf8,
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        )
    })?;
    if let Some(i) = bytes.iter().position(|&b| b == 0) {
        return Err(Invalid::new(
            RejectReason::NulByte,
            format!("NUL byte at byte {i}"),
        ));
    }
    Ok(s)
}

fn parse_json(s: &str) -> Result<Value, Invalid> {
    serde_json::from_str(s)
        .map_err(|e| Invalid::new(RejectReason::BrokenJson, format!("broken JSON: {e}")))
}

/// Parse one JSONL line (`line` is 1-based, used for default ids).
pub fn parse_line(
    bytes: &[u8],
    format: Format,
    limits: &IngestLimits,
    file: &Path,
    line: usize,
) -> Result<Trajectory, Invalid> {
    let s = check_bytes(bytes)?;
    let v = parse_json(s.trim_end())?;
    let default_id = format!("{}:{line}", file_stem(file));
    convert(&v, format, limits, &default_id)
}

/// Parse a whole JSON document: one record, or an array of records (for
/// `messages`, a bare array of messages is one conversation). Errors that
/// concern the whole document come back as a single invalid record.
pub fn parse_document(
    bytes: &[u8],
    format: Format,
    limits: &IngestLimits,
    file: &Path,
) -> Vec<Result<Trajectory, Invalid>> {
    let stem = file_stem(file);
    let v = match check_bytes(bytes).and_then(parse_json) {
        Ok(v) => v,
        Err(e) => return vec![Err(e)],
    };
    match &v {
        Value::Array(items) => {
            if let Some((fm, _, read)) = BARE_ARRAYS
                .iter()
                .find(|(fm, is, _)| (format == Format::Auto || format == *fm) && is(items))
            {
                return vec![read(items, &stem).and_then(|t| check(t, limits, *fm))];
            }
            if items.is_empty() {
                return vec![Err(Invalid::new(
                    RejectReason::EmptyTrajectory,
                    "document is an empty array",
                ))];
            }
            let mut fmt = format;
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    if fmt == Format::Auto {
                        if let Some(d) = detect(item) {
                            fmt = d;
                        }
                    }
                    convert(item, fmt, limits, &format!("{stem}#{i}"))
                })
                .collect()
        }
        _ => vec![convert(&v, format, limits, &stem)],
    }
}

/// Formats whose record may also be a whole document that is a bare array
/// (OpenAI messages, smolagents memory steps, CrewAI events, Agents SDK
/// trace exports, LangChain messages): (format, looks like one, read), the
/// first that accepts the array reads it.
#[allow(clippy::type_complexity)]
const BARE_ARRAYS: &[(
    Format,
    fn(&[Value]) -> bool,
    fn(&[Value], &str) -> Result<Trajectory, Invalid>,
)] = &[
    (
        Format::Messages,
        messages::is_message_list,
        messages::read_message_list,
    ),
    (
        Format::Smolagents,
        smolagents::is_step_list,
        smolagents::read_steps,
    ),
    (Format::Crewai, crewai::is_event_list, crewai::read_events),
    (
        Format::OpenaiAgents,
        openai_agents::is_export_list,
        openai_agents::read_export_list,
    ),
    (
        Format::Langgraph,
        langgraph::is_message_list,
        langgraph::read_message_list,
    ),
];

fn file_stem(p: &Path) -> String {
    p.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("record")
        .to_string()
}

/// Guess the format of one parsed record.
pub fn detect(v: &Value) -> Option<Format> {
    let o = v.as_object()?;
    IMPORTERS.iter().find(|i| (i.detects)(o)).map(|i| i.format)
}

/// Convert one JSON record in `format` (Auto detects it).
pub fn convert(
    v: &Value,
    format: Format,
    limits: &IngestLimits,
    default_id: &str,
) -> Result<Trajectory, Invalid> {
    let fmt = match format {
        Format::Auto => detect(v).ok_or_else(|| {
            Invalid::new(
                RejectReason::UnknownRecordShape,
                "record has none of `trajectory` (native), `history` (ag2; magentic-one when a role is `Name (...)` or `human`), `messages` (autogen-agentchat when messages have `source` and `type`; langgraph when they have a LangChain `type`), `agent_states` (an AgentChat team state), `generated_items`/`new_items`/`spans` (openai-agents), `run_type`/`runs` (langsmith), smolagents memory `steps`, `tasks_output` or CrewAI `events` (crewai), `conversations` (sharegpt), or a tagged `response` (coa-tags)",
            )
        })?,
        f => f,
    };
    let o = v.as_object().ok_or_else(|| {
        Invalid::new(
            RejectReason::WrongType,
            format!("record: expected a JSON object, got {}", type_name(v)),
        )
    })?;
    let imp = importer(fmt).expect("every format but Auto has an importer");
    check((imp.read)(o, default_id)?, limits, fmt)
}

/// Normalise a parsed record: apply the agents map ([`crate::AgentsMap`]) to
/// every step and re-check the (renamed) agent names.
pub fn normalise(mut t: Trajectory, map: &AgentsMap) -> Result<Trajectory, Invalid> {
    for (i, s) in t.steps.iter_mut().enumerate() {
        map.apply(s);
        if s.kind == StepKind::Agent {
            if let Err(e) = afm_tokenizer::RoleVocab::new().insert(&s.agent) {
                return Err(Invalid {
                    reason: RejectReason::BadAgentName,
                    message: format!("step[{i}] after the agents map: {e}"),
                });
            }
        }
    }
    Ok(t)
}

/// Checks shared by every format: non-empty steps, field sizes, NUL bytes,
/// agent names (`fmt` names the fields in messages).
pub(crate) fn check(
    t: Trajectory,
    limits: &IngestLimits,
    fmt: Format,
) -> Result<Trajectory, Invalid> {
    if t.task.trim().is_empty() {
        return Err(Invalid::new(RejectReason::MissingTask, "the task is empty"));
    }
    if t.steps.is_empty() {
        return Err(Invalid::new(
            RejectReason::EmptyTrajectory,
            "the trajectory has no steps",
        ));
    }
    let check = |field: &str, s: &str| -> Result<(), Invalid> {
        if s.len() > limits.max_field_bytes {
            return Err(Invalid::new(
                RejectReason::FieldTooLong,
                format!(
                    "field `{field}` is {} bytes (limit {})",
                    s.len(),
                    limits.max_field_bytes
                ),
            ));
        }
        if s.contains('\0') {
            return Err(Invalid::new(
                RejectReason::NulByte,
                format!("field `{field}` contains a NUL character"),
            ));
        }
        Ok(())
    };
    check("task", &t.task)?;
    check("id", &t.id)?;
    if let Some(a) = &t.answer {
        check("answer", a)?;
    }
    for (i, s) in t.steps.iter().enumerate() {
        let field = match (fmt, s.kind) {
            (Format::Native, StepKind::Agent) => format!("trajectory[{i}].output"),
            (Format::Native, StepKind::Observation) => format!("trajectory[{i}].observation"),
            _ => format!("step {i} ({}) text", s.agent),
        };
        check(&field, &s.text)?;
        check(&format!("step {i} agent name"), &s.agent)?;
        if let Err(e) = afm_tokenizer::RoleVocab::new().insert(&s.agent) {
            return Err(Invalid::new(
                RejectReason::BadAgentName,
                format!("step[{i}]: {e}"),
            ));
        }
    }
    Ok(t)
}
