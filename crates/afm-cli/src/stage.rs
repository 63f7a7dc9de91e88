//! Resumable pipeline stages.
//!
//! A stage writes its outputs into its own directory and, last, a marker
//! `.afm-stage.json` holding the stage's fingerprint (a hash of everything
//! that determines its outputs), its summary and its wall time. A rerun
//! skips a stage whose marker carries the same fingerprint; a stage that was
//! interrupted has no marker and runs again (stages that support resuming,
//! like training, pick up their own checkpoints).

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
    if let Ok(text) = std::fs::read_to_string(&marker) {
        if let Ok(m) = serde_json::from_str::<Marker>(&text) {
            if m.fingerprint == fingerprint {
                eprintln!("[{name}] complete in {} (skipped)", dir.display());
                return Ok(Done {
                    summary: m.summary,
                    wall_s: m.wall_s,
                    cached: true,
                });
            }
        }
        eprintln!("[{name}] inputs changed since the last run: running again");
        std::fs::remove_file(&marker).map_err(|e| anyhow::anyhow!("{}: {e}", marker.display()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    eprintln!("[{name}] running -> {}", dir.display());
    let t0 = Instant::now();
    let summary = body(dir).map_err(|e| e.context(format!("stage `{name}`")))?;
    let wall_s = t0.elapsed().as_secs_f64();
    let m = Marker {
        stage: name.to_string(),
        fingerprint: fingerprint.to_string(),
        wall_s,
        summary: summary.clone(),
    };
    afm_bench::report::write_atomic(&marker, serde_json::to_string_pretty(&m)?.as_bytes())?;
    eprintln!("[{name}] done in {wall_s:.1}s");
    Ok(Done {
        summary,
        wall_s,
        cached: false,
    })
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
        // A failing body leaves no marker, so the next run runs again.
        assert!(run("s", &d, "fp3", |_| anyhow::bail!("boom")).is_err());
        let e = run("s", &d, "fp3", |_| {
            calls += 1;
            Ok(serde_json::json!({}))
        })
        .unwrap();
        assert!(!e.cached);
        assert_eq!(calls, 3);
        assert_ne!(fingerprint(&["a", "b"]), fingerprint(&["ab"]));
    }
}
