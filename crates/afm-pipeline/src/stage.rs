//! Resumable stages and their fingerprints.
//!
//! A stage writes its outputs into its own directory, next to a marker
//! `.afm-stage.json` holding the stage's fingerprint (a hash of everything
//! that determines its outputs), whether it completed, its summary (a typed
//! struct, stored as JSON) and its wall time. On a rerun:
//! - same fingerprint, complete, summary readable as the stage's type:
//!   skipped;
//! - same fingerprint, not complete (interrupted or failed): runs again over
//!   what is there (stages that support resuming, like training, pick up
//!   their own checkpoints);
//! - another fingerprint, a complete marker whose summary no longer reads
//!   as the stage's summary type (written by another afm), or a directory
//!   without a marker: the directory is emptied first, so nothing made from
//!   other inputs (a checkpoint trained on other data or settings) leaks
//!   into the new outputs.
//!
//! A fingerprint is the FNV-1a hash of the serde JSON of a key struct
//! holding the stage's whole configuration ([`fingerprint`]): JSON quotes
//! and delimits every field, so two different configurations never give
//! the same text.
//!
//! The marker is written atomically (temp file, fsync, rename:
//! [`afm_tokenizer::atomic`]), and before it says `complete` every file in
//! the stage's directory is fsynced, so a crash never leaves a complete
//! marker next to outputs that did not reach the disk.

use crate::progress::{Event, Progress, StageStatus};
use afm_tokenizer::atomic;
use anyhow::Result;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub(crate) const MARKER: &str = ".afm-stage.json";

#[derive(Serialize, Deserialize)]
struct Marker {
    stage: String,
    fingerprint: String,
    wall_s: f64,
    summary: serde_json::Value,
    /// False while the stage runs (and after it failed or was killed).
    #[serde(default = "yes")]
    complete: bool,
}

fn yes() -> bool {
    true
}

/// Outcome of [`run`].
pub(crate) struct Done<S> {
    pub summary: S,
    /// Wall seconds of the run that produced the outputs.
    pub wall_s: f64,
    /// True when the outputs were already complete and the stage was skipped.
    pub cached: bool,
}

/// The fingerprint of a stage: FNV-1a over the serde JSON of `key` (the
/// stage's whole configuration, with a version tag), stable across runs and
/// platforms.
pub(crate) fn fingerprint<K: Serialize>(key: &K) -> Result<String> {
    let text = serde_json::to_string(key)?;
    Ok(format!("{:016x}", afm_format::fnv1a(text.as_bytes(), 0)))
}

/// A file a stage reads: path, size and modification time (seconds).
#[derive(Debug, Serialize)]
pub(crate) struct FileStamp {
    path: PathBuf,
    len: u64,
    mtime: u64,
}

/// The stamps of `paths` (a missing file stamps as size 0, time 0).
pub(crate) fn stamps(paths: &[PathBuf]) -> Vec<FileStamp> {
    paths
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok();
            FileStamp {
                path: p.clone(),
                len: m.as_ref().map_or(0, |m| m.len()),
                mtime: m
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs()),
            }
        })
        .collect()
}

/// The marker of the stage whose outputs are in `dir`, as text ("" when
/// there is none): a later stage's fingerprint includes its inputs' markers,
/// so it reruns whenever they were remade.
pub(crate) fn marker_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(MARKER)).unwrap_or_default()
}

/// The recorded run in `dir` and what to do about it.
fn inspect<S: DeserializeOwned>(dir: &Path, fingerprint: &str) -> (StageStatus, Option<Done<S>>) {
    let previous = std::fs::read_to_string(dir.join(MARKER))
        .ok()
        .and_then(|text| serde_json::from_str::<Marker>(&text).ok());
    match previous {
        Some(m) if m.fingerprint == fingerprint && m.complete => {
            match serde_json::from_value::<S>(m.summary) {
                Ok(summary) => {
                    let done = Done {
                        summary,
                        wall_s: m.wall_s,
                        cached: true,
                    };
                    (StageStatus::Skipped, Some(done))
                }
                Err(_) => (StageStatus::InputsChanged, None),
            }
        }
        Some(m) if m.fingerprint == fingerprint => (StageStatus::Resuming, None),
        Some(_) if dir.exists() => (StageStatus::InputsChanged, None),
        None if dir.exists() => (StageStatus::UnknownOutputs, None),
        _ => (StageStatus::Fresh, None),
    }
}

/// Run `body` for stage `name` in `dir` unless a complete run with the same
/// fingerprint is recorded there; its summary is the stage's result.
pub(crate) fn run<S: Serialize + DeserializeOwned>(
    name: &str,
    dir: &Path,
    fingerprint: &str,
    progress: &dyn Progress,
    body: impl FnOnce(&Path) -> Result<S>,
) -> Result<Done<S>> {
    let (status, done) = inspect::<S>(dir, fingerprint);
    progress.event(Event::Stage {
        stage: name,
        dir,
        status,
    });
    match status {
        StageStatus::Skipped => return done.ok_or_else(|| anyhow::anyhow!("stage `{name}`")),
        StageStatus::Resuming => remove_temporaries(dir),
        StageStatus::InputsChanged | StageStatus::UnknownOutputs => {
            std::fs::remove_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
        }
        StageStatus::Fresh => {}
    }
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let t0 = Instant::now();
    let marker = dir.join(MARKER);
    let mut m = Marker {
        stage: name.to_string(),
        fingerprint: fingerprint.to_string(),
        wall_s: 0.0,
        summary: serde_json::Value::Null,
        complete: false,
    };
    atomic::write(&marker, serde_json::to_string_pretty(&m)?)
        .map_err(|e| anyhow::anyhow!("stage `{name}`: {e}"))?;
    let summary = body(dir).map_err(|e| e.context(format!("stage `{name}`")))?;
    let wall_s = t0.elapsed().as_secs_f64();
    m.wall_s = wall_s;
    m.summary = serde_json::to_value(&summary)?;
    m.complete = true;
    atomic::sync_tree(dir).map_err(|e| anyhow::anyhow!("stage `{name}`: syncing outputs: {e}"))?;
    atomic::write(&marker, serde_json::to_string_pretty(&m)?)
        .map_err(|e| anyhow::anyhow!("stage `{name}`: {e}"))?;
    progress.event(Event::StageDone {
        stage: name,
        wall_s,
    });
    Ok(Done {
        summary,
        wall_s,
        cached: false,
    })
}

/// Remove the temporaries a killed run left under `dir`: hidden entries
/// named `.NAME.tmp-...` (atomic files, checkpoint and model directories
/// being written). Nothing trusts them; this only frees their space.
fn remove_temporaries(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if name.starts_with('.') && name.contains(".tmp-") {
            let _ = if is_dir {
                std::fs::remove_dir_all(e.path())
            } else {
                std::fs::remove_file(e.path())
            };
        } else if is_dir {
            remove_temporaries(&e.path());
        }
    }
}
