//! Resumable pipeline stages.
//!
//! A stage writes its outputs into its own directory, next to a marker
//! `.afm-stage.json` holding the stage's fingerprint (a hash of everything
//! that determines its outputs), whether it completed, its summary and its
//! wall time. On a rerun:
//! - same fingerprint, complete: skipped;
//! - same fingerprint, not complete (interrupted or failed): runs again over
//!   what is there (stages that support resuming, like training, pick up
//!   their own checkpoints);
//! - another fingerprint, or a directory without a marker: the directory is
//!   emptied first, so nothing made from other inputs (a checkpoint trained
//!   on other data or settings) leaks into the new outputs.
//!
//! The marker is written atomically (temp file, fsync, rename:
//! [`afm_tokenizer::atomic`]), and before it says `complete` every file in
//! the stage's directory is fsynced, so a crash never leaves a complete
//! marker next to outputs that did not reach the disk.

use afm_tokenizer::atomic;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

const MARKER: &str = ".afm-stage.json";

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
pub struct Done {
    pub summary: serde_json::Value,
    /// Wall seconds of the run that produced the outputs.
    pub wall_s: f64,
    /// True when the outputs were already complete and the stage was skipped.
    pub cached: bool,
}

/// FNV-1a over the fingerprint's text: stable across runs and platforms.
pub fn fingerprint(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Run `body` for stage `name` in `dir` unless a complete run with the same
/// fingerprint is recorded there.
pub fn run(
    name: &str,
    dir: &Path,
    fingerprint: &str,
    body: impl FnOnce(&Path) -> anyhow::Result<serde_json::Value>,
) -> anyhow::Result<Done> {
    let marker = dir.join(MARKER);
    let previous = std::fs::read_to_string(&marker)
        .ok()
        .and_then(|text| serde_json::from_str::<Marker>(&text).ok());
    match previous {
        Some(m) if m.fingerprint == fingerprint && m.complete => {
            eprintln!("[{name}] complete in {} (skipped)", dir.display());
            return Ok(Done {
                summary: m.summary,
                wall_s: m.wall_s,
                cached: true,
            });
        }
        Some(m) if m.fingerprint == fingerprint => {
            eprintln!("[{name}] resuming an interrupted run in {}", dir.display());
            remove_temporaries(dir);
        }
        previous if dir.exists() => {
            eprintln!(
                "[{name}] {}: starting over in {}",
                if previous.is_some() {
                    "inputs changed since the last run"
                } else {
                    "outputs of unknown inputs"
                },
                dir.display()
            );
            std::fs::remove_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        }
        _ => {}
    }
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    eprintln!("[{name}] running -> {}", dir.display());
    let t0 = Instant::now();
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
    m.summary = summary.clone();
    m.complete = true;
    atomic::sync_tree(dir).map_err(|e| anyhow::anyhow!("stage `{name}`: syncing outputs: {e}"))?;
    atomic::write(&marker, serde_json::to_string_pretty(&m)?)
        .map_err(|e| anyhow::anyhow!("stage `{name}`: {e}"))?;
    eprintln!("[{name}] done in {wall_s:.1}s");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_when_complete_and_reruns_when_changed_or_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("s");
        let mut calls = 0;
        let a = run("s", &d, "fp1", |_| {
            calls += 1;
            Ok(serde_json::json!({"n": 1}))
        })
        .unwrap();
        assert!(!a.cached);
        let b = run("s", &d, "fp1", |_| {
            calls += 1;
            Ok(serde_json::json!({"n": 2}))
        })
        .unwrap();
        assert!(b.cached);
        assert_eq!(b.summary["n"], 1);
        let c = run("s", &d, "fp2", |_| {
            calls += 1;
            Ok(serde_json::json!({"n": 3}))
        })
        .unwrap();
        assert!(!c.cached);
        // Changed inputs start over in an emptied directory.
        std::fs::write(d.join("old-checkpoint"), "x").unwrap();
        let c2 = run("s", &d, "fp2b", |dir| {
            calls += 1;
            assert!(!dir.join("old-checkpoint").exists(), "stale output kept");
            Ok(serde_json::json!({}))
        })
        .unwrap();
        assert!(!c2.cached);
        // A failing (or killed) body leaves an incomplete marker: the next
        // run with the same inputs runs again over what is there.
        assert!(run("s", &d, "fp3", |dir| {
            std::fs::write(dir.join("partial"), "x").unwrap();
            anyhow::bail!("boom")
        })
        .is_err());
        let e = run("s", &d, "fp3", |dir| {
            calls += 1;
            assert!(
                dir.join("partial").exists(),
                "an interrupted run's output was lost"
            );
            Ok(serde_json::json!({}))
        })
        .unwrap();
        assert!(!e.cached);
        assert!(
            run("s", &d, "fp3", |_| anyhow::bail!("not run"))
                .unwrap()
                .cached
        );
        // A directory without a marker is emptied before running.
        let u = dir.path().join("u");
        std::fs::create_dir_all(&u).unwrap();
        std::fs::write(u.join("stray"), "x").unwrap();
        run("u", &u, "fp", |dir| {
            assert!(!dir.join("stray").exists());
            Ok(serde_json::json!({}))
        })
        .unwrap();
        assert_eq!(calls, 4);
        assert_ne!(fingerprint(&["a", "b"]), fingerprint(&["ab"]));
    }

    /// A full disk while the `complete` marker is written: the stage fails
    /// with the marker's path in the error, the old (incomplete) marker
    /// stays whole, and the next run redoes the stage instead of trusting it.
    #[test]
    fn failed_marker_write_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("s");
        let Err(e) = run("s", &d, "fp", |dir| {
            std::fs::write(dir.join("out"), "x").unwrap();
            // The disk is full from here on: the `complete` marker fails.
            std::mem::forget(afm_tokenizer::atomic::testing::fail_after(0));
            Ok(serde_json::json!({"n": 1}))
        }) else {
            panic!("the `complete` marker write must fail")
        };
        drop(afm_tokenizer::atomic::testing::fail_after(0)); // disarms
        let msg = format!("{e:#}");
        assert!(msg.contains(".afm-stage.json"), "{msg}");
        assert!(msg.contains("no space left"), "{msg}");
        let text = std::fs::read_to_string(d.join(MARKER)).unwrap();
        let m: Marker = serde_json::from_str(&text).expect("the old marker is whole");
        assert!(!m.complete);
        let leftovers: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let mut ran = false;
        let r = run("s", &d, "fp", |dir| {
            ran = true;
            assert!(dir.join("out").exists());
            Ok(serde_json::json!({"n": 2}))
        })
        .unwrap();
        assert!(ran && !r.cached, "an incomplete stage was trusted");
        // Temporaries a killed run left are removed when the stage resumes.
        std::fs::create_dir_all(d.join("sub/.x.tmp-1-2")).unwrap();
        std::fs::write(d.join(".out.tmp-3-4"), "x").unwrap();
        let m = Marker {
            complete: false,
            ..serde_json::from_str(&std::fs::read_to_string(d.join(MARKER)).unwrap()).unwrap()
        };
        std::fs::write(d.join(MARKER), serde_json::to_string(&m).unwrap()).unwrap();
        run("s", &d, "fp", |_| Ok(serde_json::json!({}))).unwrap();
        assert!(!d.join("sub/.x.tmp-1-2").exists() && !d.join(".out.tmp-3-4").exists());
        assert!(d.join("out").exists());
        assert!(
            run("s", &d, "fp", |_| anyhow::bail!("not run"))
                .unwrap()
                .cached
        );
    }
}
