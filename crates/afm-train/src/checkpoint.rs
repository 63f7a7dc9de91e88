//! Training checkpoints.
//!
//! `RUN/checkpoints/step-00000123/` holds:
//!
//! | file                  | content                                                    |
//! |-----------------------|------------------------------------------------------------|
//! | `model.safetensors`, `config.json`, `vocab.json` | the model (`afm_model::Model::save` layout: `afm generate --checkpoint` reads it) |
//! | `optimizer.safetensors` | AdamW moments `m.NAME`, `v.NAME` (f32) and `step` (i64)   |
//! | `trainer_state.json`  | [`TrainerState`]: step, data cursor, RNG seeds, best/patience |
//! | `train_config.toml`   | the effective [`TrainConfig`]                              |
//!
//! A checkpoint is written into a hidden temporary directory in
//! `RUN/checkpoints/`, every file in it fsynced, and the directory renamed
//! into place when complete (then its parent fsynced), so a run killed at
//! any moment, or a disk that fills up, leaves only whole checkpoints
//! (stale temporaries are removed at the next start; [`list`] never reports
//! them). `trainer_state.json` is written last. A failed save removes its
//! temporary and returns an error naming the checkpoint and the file.

use crate::config::TrainConfig;
use crate::data::Cursor;
use crate::optim::AdamW;
use afm_model::Model;
use afm_tokenizer::atomic;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Optimiser state file of a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Trainer state file of a checkpoint.
pub const STATE_FILE: &str = "trainer_state.json";
/// Effective config file of a checkpoint.
pub const CONFIG_FILE: &str = "train_config.toml";

/// Everything besides weights and moments that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps done.
    pub step: usize,
    /// Total steps of the run (fixes the LR schedule).
    pub total_steps: usize,
    /// Where the train stream continues.
    pub cursor: Cursor,
    /// Base seed; the data order of epoch `e` is a function of (seed, e) and
    /// libtorch is re-seeded with `seed + step` before every step (dropout),
    /// so this is the whole RNG state.
    pub seed: u64,
    /// Input positions trained on so far.
    pub tokens_seen: u64,
    /// Best validation loss so far and its step.
    pub best_val_loss: Option<f64>,
    pub best_step: Option<usize>,
    /// Evaluations since the last improvement (early stopping).
    pub evals_since_best: usize,
    /// Training wall-clock seconds so far (all invocations).
    pub train_secs: f64,
}

/// `RUN/checkpoints`.
pub fn checkpoints_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

/// Directory of the checkpoint at `step`.
pub fn step_dir(run: &Path, step: usize) -> PathBuf {
    checkpoints_dir(run).join(format!("step-{step:08}"))
}

/// Complete checkpoints of a run, sorted by step.
pub fn list(run: &Path) -> anyhow::Result<Vec<(usize, PathBuf)>> {
    let dir = checkpoints_dir(run);
    let mut out = Vec::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("step-")
            .and_then(|n| n.parse::<usize>().ok())
        {
            if e.path().join(STATE_FILE).is_file() {
                out.push((n, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Remove temporaries left by a killed run.
pub fn clean_stale(run: &Path) {
    let dir = checkpoints_dir(run);
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Write a checkpoint atomically; returns its directory.
pub fn save(
    run: &Path,
    model: &Model,
    opt: &AdamW,
    state: &TrainerState,
    config: &TrainConfig,
) -> anyhow::Result<PathBuf> {
    let dir = checkpoints_dir(run);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let final_dir = step_dir(run, state.step);
    let tmp = dir.join(format!(
        ".step-{:08}.tmp-{}",
        state.step,
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    let res = (|| -> anyhow::Result<()> {
        model.save(&tmp)?;
        opt.save(&tmp.join(OPTIMIZER_FILE))?;
        atomic::write(&tmp.join(CONFIG_FILE), config.to_toml()?)
            .with_context(|| format!("writing {}", tmp.join(CONFIG_FILE).display()))?;
        atomic::write(&tmp.join(STATE_FILE), serde_json::to_string_pretty(state)?)
            .with_context(|| format!("writing {}", tmp.join(STATE_FILE).display()))?;
        // The weights and moments come from writers that do not fsync.
        atomic::sync_tree(&tmp)?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir)
                .with_context(|| format!("replacing {}", final_dir.display()))?;
        }
        std::fs::rename(&tmp, &final_dir)
            .with_context(|| format!("renaming {} to {}", tmp.display(), final_dir.display()))?;
        atomic::sync_dir(&dir)?;
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    res.with_context(|| format!("writing checkpoint {}", final_dir.display()))?;
    let hook = *AFTER_SAVE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(hook) = hook {
        hook(&final_dir, state);
    }
    Ok(final_dir)
}

/// A function called after every successful [`save`], with the checkpoint's
/// directory and state.
pub type SaveHook = fn(&Path, &TrainerState);

static AFTER_SAVE: std::sync::Mutex<Option<SaveHook>> = std::sync::Mutex::new(None);

/// Test hook (process-wide): call `hook` after every checkpoint is saved,
/// e.g. to stop a child process at a known step until it is killed, or to
/// arm a write fault for the next save. `None` removes it.
#[doc(hidden)]
pub fn set_after_save_hook(hook: Option<SaveHook>) {
    *AFTER_SAVE.lock().unwrap_or_else(|e| e.into_inner()) = hook;
}

/// Read the trainer state and effective config of a checkpoint.
pub fn read_meta(dir: &Path) -> anyhow::Result<(TrainerState, TrainConfig)> {
    let sp = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&sp).with_context(|| format!("reading {}", sp.display()))?;
    let state: TrainerState = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid trainer state", sp.display()))?;
    let config = TrainConfig::from_toml_file(&dir.join(CONFIG_FILE))?;
    Ok((state, config))
}

/// Delete step checkpoints beyond the newest `keep_last`, never `keep` (the best).
pub fn prune(run: &Path, keep_last: usize, keep: Option<usize>) -> anyhow::Result<()> {
    let all = list(run)?;
    let n = all.len();
    for (i, (step, path)) in all.into_iter().enumerate() {
        if i + keep_last < n && Some(step) != keep {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing old checkpoint {}", path.display()))?;
        }
    }
    Ok(())
}
