//! Reading and validating input records in every supported format.
//!
//! | format     | shape                                                                                  |
//! |------------|----------------------------------------------------------------------------------------|
//! | `native`   | `{"id","task","trajectory":[{"agent","output"}or{"agent","observation"}],"score","success","answer","meta"}` |
//! | `ag2`      | AG2/AutoGen log: `{"question","is_correct","history":[{"content","role","name"}]}`   |
//! | `messages` | OpenAI chat: `{"messages":[{"role","content","name","tool_calls"}]}` or a bare array of messages |
//! | `coa-tags` | Chain-of-Agents: `{"task"/"question"/"prompt", "response"/"output"/"text": "<think>..</think><code>..</code><observation>..</observation><answer>..</answer>"}` |
//!
//! Files ending in `.jsonl`/`.ndjson` hold one record per line; any other
//! file is one JSON document: a record, or an array of records (or, for
//! `messages`, one conversation as a bare array of messages).
//!
//! Agent naming: `name` when present, else `role`. Steps become
//! observations when the source says so (`observation` field, `role:
//! "tool"`, `<observation>` tag) or by the agents map ([`crate::agents`]).
//!
//! A bad record never stops reading: each one comes back as an
//! [`Invalid`] with a [`RejectReason`] and a message naming the field.

use crate::agents::{is_default_observation, AgentsMap};
use afm_format::record::{Step, StepKind, Trajectory};
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
    /// Chain-of-Agents tag format.
    CoaTags,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => Format::Auto,
            "native" => Format::Native,
            "ag2" | "autogen" => Format::Ag2,
            "messages" | "openai" => Format::Messages,
            "coa-tags" | "coa" => Format::CoaTags,
            _ => {
                return Err(format!(
                    "unknown format {s:?} (auto, native, ag2, messages, coa-tags)"
                ))
            }
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
    fn new(reason: RejectReason, message: impl Into<String>) -> Self {
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
/// (recursively), sorted; a file is kept as is. The result is sorted and
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
            } else if matches!(
                p.extension()
                    .and_then(|e| e.to_str())
                    .map(str::to_ascii_lowercase)
                    .as_deref(),
                Some("json") | Some("jsonl") | Some("ndjson")
            ) {
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
            let bare_messages = items
                .first()
                .and_then(Value::as_object)
                .is_some_and(|o| o.contains_key("role"))
                && matches!(format, Format::Auto | Format::Messages);
            if bare_messages {
                return vec![messages_from_list(items, None, limits, &stem)];
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

fn file_stem(p: &Path) -> String {
    p.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("record")
        .to_string()
}

/// Guess the format of one parsed record.
pub fn detect(v: &Value) -> Option<Format> {
    let o = v.as_object()?;
    if o.contains_key("trajectory") {
        Some(Format::Native)
    } else if o.contains_key("history") {
        Some(Format::Ag2)
    } else if o.contains_key("messages") {
        Some(Format::Messages)
    } else if COA_TEXT_FIELDS.iter().any(|k| {
        o.get(*k)
            .and_then(Value::as_str)
            .is_some_and(|s| s.contains('<'))
    }) {
        Some(Format::CoaTags)
    } else {
        None
    }
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
                "record has none of `trajectory` (native), `history` (ag2), `messages`, or a tagged `response` (coa-tags)",
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
    let t = match fmt {
        Format::Native => native(o, limits, default_id),
        Format::Ag2 => ag2(o, limits, default_id),
        Format::Messages => {
            let list = o.get("messages").ok_or_else(|| {
                Invalid::new(
                    RejectReason::UnknownRecordShape,
                    "field `messages` is missing",
                )
            })?;
            let items = list
                .as_array()
                .ok_or_else(|| wrong("messages", "an array", list))?;
            messages_from_list(items, Some(o), limits, default_id)
        }
        Format::CoaTags => coa(o, limits, default_id),
        Format::Auto => unreachable!("resolved above"),
    }?;
    check(t, limits, fmt)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong(field: &str, expected: &str, got: &Value) -> Invalid {
    Invalid::new(
        RejectReason::WrongType,
        format!(
            "field `{field}`: expected {expected}, got {}",
            type_name(got)
        ),
    )
}

fn opt_bool(o: &Map<String, Value>, field: &str) -> Result<Option<bool>, Invalid> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        // Some logs write "true"/"false" or 0/1.
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(Value::Number(n)) if n.as_i64() == Some(0) || n.as_i64() == Some(1) => {
            Ok(Some(n.as_i64() == Some(1)))
        }
        Some(v) => Err(wrong(field, "a boolean", v)),
    }
}

fn opt_f64(o: &Map<String, Value>, field: &str) -> Result<Option<f64>, Invalid> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| {
                Invalid::new(
                    RejectReason::WrongType,
                    format!("field `{field}`: number {n} is not finite"),
                )
            }),
        Some(v) => Err(wrong(field, "a number", v)),
    }
}

fn id_of(o: &Map<String, Value>, fields: &[&str], default_id: &str) -> Result<String, Invalid> {
    for f in fields {
        match o.get(*f) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => return Ok(s.clone()),
            Some(Value::Number(n)) => return Ok(n.to_string()),
            Some(v) => return Err(wrong(f, "a string or number", v)),
        }
    }
    Ok(default_id.to_string())
}

fn required_task(o: &Map<String, Value>, fields: &[&str]) -> Result<String, Invalid> {
    for f in fields {
        match o.get(*f) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) if s.trim().is_empty() => {
                return Err(Invalid::new(
                    RejectReason::MissingTask,
                    format!("field `{f}` (the task) is empty"),
                ))
            }
            Some(Value::String(s)) => return Ok(s.clone()),
            Some(v) => return Err(wrong(f, "a string", v)),
        }
    }
    Err(Invalid::new(
        RejectReason::MissingTask,
        format!("missing task: none of the fields {fields:?} is present"),
    ))
}

fn native(
    o: &Map<String, Value>,
    _limits: &IngestLimits,
    default_id: &str,
) -> Result<Trajectory, Invalid> {
    let task = required_task(o, &["task"])?;
    let traj = o.get("trajectory").ok_or_else(|| {
        Invalid::new(
            RejectReason::EmptyTrajectory,
            "field `trajectory` is missing",
        )
    })?;
    let items = traj
        .as_array()
        .ok_or_else(|| wrong("trajectory", "an array", traj))?;
    let mut steps = Vec::with_capacity(items.len());
    for (i, s) in items.iter().enumerate() {
        let so = s
            .as_object()
            .ok_or_else(|| wrong(&format!("trajectory[{i}]"), "an object", s))?;
        let agent = match so.get("agent") {
            Some(Value::String(a)) => a.clone(),
            Some(v) => return Err(wrong(&format!("trajectory[{i}].agent"), "a string", v)),
            None => {
                return Err(Invalid::new(
                    RejectReason::UnknownStepShape,
                    format!("trajectory[{i}]: missing `agent`"),
                ))
            }
        };
        let (kind, field) = match (so.get("output"), so.get("observation")) {
            (Some(_), None) => (StepKind::Agent, "output"),
            (None, Some(_)) => (StepKind::Observation, "observation"),
            _ => {
                return Err(Invalid::new(
                    RejectReason::UnknownStepShape,
                    format!(
                        "trajectory[{i}]: a step needs exactly one of `output` or `observation`"
                    ),
                ))
            }
        };
        let text = match &so[field] {
            Value::String(t) => t.clone(),
            v => return Err(wrong(&format!("trajectory[{i}].{field}"), "a string", v)),
        };
        steps.push(Step { agent, kind, text });
    }
    Ok(Trajectory {
        id: id_of(o, &["id"], default_id)?,
        task,
        steps,
        success: opt_bool(o, "success")?,
        score: opt_f64(o, "score")?,
        answer: answer_of(o)?,
        meta: o.get("meta").filter(|m| !m.is_null()).cloned(),
    })
}

fn answer_of(o: &Map<String, Value>) -> Result<Option<String>, Invalid> {
    match o.get("answer") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
        Some(v) => Err(wrong("answer", "a string or number", v)),
    }
}

/// Message content: a string, null (empty), or a list of `{type:"text", text}` parts.
fn content_text(v: Option<&Value>, field: &str) -> Result<String, Invalid> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for (k, p) in parts.iter().enumerate() {
                match p {
                    Value::String(s) => out.push_str(s),
                    Value::Object(po) => match po.get("text") {
                        Some(Value::String(s)) => out.push_str(s),
                        _ => {
                            return Err(Invalid::new(
                                RejectReason::WrongType,
                                format!("field `{field}[{k}]`: content part has no string `text`"),
                            ))
                        }
                    },
                    v => {
                        return Err(wrong(
                            &format!("{field}[{k}]"),
                            "a string or a text part",
                            v,
                        ))
                    }
                }
            }
            Ok(out)
        }
        Some(v) => Err(wrong(field, "a string, null or a list of text parts", v)),
    }
}

fn name_or_role(m: &Map<String, Value>, at: &str) -> Result<(String, Option<String>), Invalid> {
    let role = match m.get("role") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) => Some(r.clone()),
        Some(v) => return Err(wrong(&format!("{at}.role"), "a string", v)),
    };
    let name = match m.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) if !n.is_empty() => Some(n.clone()),
        Some(Value::String(_)) => None,
        Some(v) => return Err(wrong(&format!("{at}.name"), "a string", v)),
    };
    match name.or_else(|| role.clone()) {
        Some(a) => Ok((a, role)),
        None => Err(Invalid::new(
            RejectReason::UnknownStepShape,
            format!("{at}: neither `name` nor `role`"),
        )),
    }
}

fn ag2(
    o: &Map<String, Value>,
    _limits: &IngestLimits,
    default_id: &str,
) -> Result<Trajectory, Invalid> {
    let hist = o
        .get("history")
        .ok_or_else(|| Invalid::new(RejectReason::EmptyTrajectory, "field `history` is missing"))?;
    let items = hist
        .as_array()
        .ok_or_else(|| wrong("history", "an array", hist))?;
    let mut steps = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let at = format!("history[{i}]");
        let mo = m.as_object().ok_or_else(|| wrong(&at, "an object", m))?;
        let (agent, role) = name_or_role(mo, &at)?;
        if !mo.contains_key("content") {
            return Err(Invalid::new(
                RejectReason::UnknownStepShape,
                format!("{at}: missing `content`"),
            ));
        }
        let text = content_text(mo.get("content"), &format!("{at}.content"))?;
        let kind = if role.as_deref() == Some("tool") {
            StepKind::Observation
        } else {
            StepKind::Agent
        };
        steps.push(Step { agent, kind, text });
    }
    // The task: `question` (Who&When), `task`, else the first message.
    let task = match required_task(o, &["question", "task"]) {
        Ok(t) => t,
        Err(e)
            if e.reason == RejectReason::MissingTask
                && !steps.is_empty()
                && !o.contains_key("question")
                && !o.contains_key("task") =>
        {
            let first = steps.remove(0);
            if first.text.trim().is_empty() {
                return Err(Invalid::new(
                    RejectReason::MissingTask,
                    "no `question`/`task` and the first message is empty",
                ));
            }
            first.text
        }
        Err(e) => return Err(e),
    };
    let success = match opt_bool(o, "is_correct")? {
        Some(b) => Some(b),
        None => opt_bool(o, "success")?,
    };
    Ok(Trajectory {
        id: id_of(o, &["question_ID", "id"], default_id)?,
        task,
        steps,
        success,
        score: opt_f64(o, "score")?,
        answer: None,
        meta: None,
    })
}

fn messages_from_list(
    items: &[Value],
    o: Option<&Map<String, Value>>,
    _limits: &IngestLimits,
    default_id: &str,
) -> Result<Trajectory, Invalid> {
    let empty = Map::new();
    let o = o.unwrap_or(&empty);
    let mut task = match required_task(o, &["task", "question", "prompt"]) {
        Ok(t) => Some(t),
        Err(e) if e.reason == RejectReason::MissingTask && !e.message.contains("empty") => None,
        Err(e) => return Err(e),
    };
    let mut steps = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let at = format!("messages[{i}]");
        let mo = m.as_object().ok_or_else(|| wrong(&at, "an object", m))?;
        let (agent, role) = name_or_role(mo, &at)?;
        let role = role.unwrap_or_default();
        let mut text = content_text(mo.get("content"), &format!("{at}.content"))?;
        if role == "system" {
            continue;
        }
        // The first user message without an explicit task field is the task.
        if task.is_none() && role == "user" {
            if text.trim().is_empty() {
                return Err(Invalid::new(
                    RejectReason::MissingTask,
                    format!("{at}: the first user message (the task) is empty"),
                ));
            }
            task = Some(text);
            continue;
        }
        match mo.get("tool_calls") {
            None | Some(Value::Null) => {}
            Some(Value::Array(calls)) => {
                for (k, c) in calls.iter().enumerate() {
                    let f = c.get("function").unwrap_or(c);
                    let name = f.get("name").and_then(Value::as_str).ok_or_else(|| {
                        Invalid::new(
                            RejectReason::WrongType,
                            format!("field `{at}.tool_calls[{k}]`: no string `function.name`"),
                        )
                    })?;
                    let args = match f.get("arguments") {
                        Some(Value::String(s)) => s.clone(),
                        None | Some(Value::Null) => String::new(),
                        Some(v) => v.to_string(),
                    };
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&format!("<tool_call>{name}({args})</tool_call>"));
                }
            }
            Some(v) => return Err(wrong(&format!("{at}.tool_calls"), "an array", v)),
        }
        let kind = if role == "tool" || role == "function" {
            StepKind::Observation
        } else {
            StepKind::Agent
        };
        steps.push(Step { agent, kind, text });
    }
    let task = task.ok_or_else(|| {
        Invalid::new(
            RejectReason::MissingTask,
            "missing task: no `task` field and no `user` message",
        )
    })?;
    Ok(Trajectory {
        id: id_of(o, &["id"], default_id)?,
        task,
        steps,
        success: opt_bool(o, "success")?,
        score: opt_f64(o, "score")?,
        answer: answer_of(o)?,
        meta: o.get("meta").filter(|m| !m.is_null()).cloned(),
    })
}

const COA_TEXT_FIELDS: [&str; 4] = ["response", "output", "completion", "text"];

fn coa(
    o: &Map<String, Value>,
    _limits: &IngestLimits,
    default_id: &str,
) -> Result<Trajectory, Invalid> {
    let task = required_task(o, &["task", "question", "prompt", "input"])?;
    let (field, text) = COA_TEXT_FIELDS
        .iter()
        .find_map(|k| o.get(*k).map(|v| (*k, v)))
        .ok_or_else(|| {
            Invalid::new(
                RejectReason::EmptyTrajectory,
                format!("none of the fields {COA_TEXT_FIELDS:?} is present"),
            )
        })?;
    let text = text
        .as_str()
        .ok_or_else(|| wrong(field, "a string", text))?;
    let steps = parse_coa_tags(text);
    Ok(Trajectory {
        id: id_of(o, &["id"], default_id)?,
        task,
        steps,
        success: opt_bool(o, "success")?,
        score: opt_f64(o, "score")?,
        answer: answer_of(o)?,
        meta: o.get("meta").filter(|m| !m.is_null()).cloned(),
    })
}

/// Split a Chain-of-Agents response into steps: each `<tag>...</tag>`
/// segment is a step of agent `tag`; `<observation>` (and tags the default
/// observation rule matches, e.g. `<tool_response>`) become observations.
/// An unclosed tag runs to the next opening tag or the end; non-blank text
/// outside tags becomes a step of agent `response`.
pub fn parse_coa_tags(text: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut rest = text;
    let push_free = |steps: &mut Vec<Step>, s: &str| {
        if !s.trim().is_empty() {
            steps.push(Step {
                agent: "response".into(),
                kind: StepKind::Agent,
                text: s.to_string(),
            });
        }
    };
    while !rest.is_empty() {
        let Some((start, name, after)) = next_open_tag(rest) else {
            push_free(&mut steps, rest);
            break;
        };
        push_free(&mut steps, &rest[..start]);
        let body = &rest[after..];
        let close = format!("</{name}>");
        let (content, next) = match body.find(&close) {
            Some(i) => (&body[..i], &body[i + close.len()..]),
            None => match next_open_tag(body) {
                Some((j, _, _)) => (&body[..j], &body[j..]),
                None => (body, ""),
            },
        };
        let kind = if name == "observation" || is_default_observation(name) {
            StepKind::Observation
        } else {
            StepKind::Agent
        };
        steps.push(Step {
            agent: name.to_string(),
            kind,
            text: content.to_string(),
        });
        rest = next;
    }
    steps
}

/// Finds `<name>` with name = [a-z][a-z0-9_-]*; returns (start, name, index after `>`).
fn next_open_tag(s: &str) -> Option<(usize, &str, usize)> {
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(off) = s[i..].find('<') {
        let st = i + off;
        let mut j = st + 1;
        if j < b.len() && b[j].is_ascii_lowercase() {
            j += 1;
            while j < b.len()
                && (b[j].is_ascii_lowercase()
                    || b[j].is_ascii_digit()
                    || b[j] == b'_'
                    || b[j] == b'-')
            {
                j += 1;
            }
            if j < b.len() && b[j] == b'>' {
                return Some((st, &s[st + 1..j], j + 1));
            }
        }
        i = st + 1;
    }
    None
}

/// Normalise a parsed record: apply the agents map ([`crate::agents`]) to
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
