//! The `train-*` stages and the loss policy.

use crate::config::PipelineConfig;
use crate::loss_policy::boundary_loss;
use crate::progress::{Event, Progress};
use crate::stage::{self, Done};
use afm_train::{TrainConfig, TrainSummary};
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a training stage needs besides the pipeline's config.
pub(crate) struct TrainSpec<'a> {
    pub data: &'a Path,
    pub budget: &'a str,
    /// Agent name -> its model's `final/` directory (distillation).
    pub teachers: BTreeMap<String, PathBuf>,
    pub role_embeddings: bool,
    pub boundary: bool,
    pub seed: u64,
    /// libtorch threads of this training (`None`: `[train] threads`).
    pub threads: Option<usize>,
    /// An agent's model: its own validation loss picks the best weights.
    pub best_of: Option<String>,
}

/// The trainer's configuration of one stage: the user's `[train]` with the
/// fields the pipeline owns set from its own settings.
pub(crate) fn train_config(dir: &Path, c: &PipelineConfig, s: &TrainSpec) -> TrainConfig {
    let mut t = c.train.clone();
    t.data = s.data.to_path_buf();
    t.out = dir.to_path_buf();
    t.preset = Some(c.preset.clone());
    t.init = None;
    t.seed = s.seed;
    if let Some(n) = s.threads {
        t.threads = n;
    }
    t.best_of = s.best_of.clone();
    t.device = c.device.clone();
    t.bf16 = c.bf16;
    t.time_budget = Some(s.budget.to_string());
    if c.max_steps > 0 {
        t.max_steps = c.max_steps;
    }
    t.role_embeddings = s.role_embeddings;
    t.teachers = s.teachers.clone();
    t.snapshots = c.curve_points;
    t.loss = boundary_loss(&c.train.loss, s.boundary);
    // The fingerprint covers what determines the weights, not run control
    // (`resume` flips once checkpoints exist; it must not look like a change).
    t.resume = false;
    t
}

/// Everything that determines a trained model: the trainer's whole config
/// and the markers of the stages that made its data and its teachers.
#[derive(Serialize)]
struct TrainKey<'a> {
    stage: &'static str,
    train: &'a TrainConfig,
    data: String,
    teachers: BTreeMap<&'a str, String>,
}

pub(crate) fn train_stage(
    name: &str,
    dir: &Path,
    c: &PipelineConfig,
    s: TrainSpec,
    progress: &dyn Progress,
) -> Result<Done<TrainSummary>> {
    let mut t = train_config(dir, c, &s);
    let fp = stage::fingerprint(&TrainKey {
        stage: "train-v2",
        train: &t,
        data: stage::marker_text(s.data),
        teachers: s
            .teachers
            .iter()
            .map(|(a, p)| (a.as_str(), stage::marker_text(&p.join(".."))))
            .collect(),
    })?;
    stage::run(name, dir, &fp, progress, |out| {
        // An interrupted stage picks up its own checkpoints (a stage whose
        // inputs changed has an emptied directory by now).
        t.resume = std::fs::read_dir(out.join("checkpoints"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        afm_train::train_with(
            &t,
            &mut TrainEvents {
                task: name,
                progress,
                total: 0,
                status: String::new(),
            },
        )
    })
}

/// A training run's progress as pipeline events: its steps as the stage's
/// work, its evaluation lines as notes.
struct TrainEvents<'a> {
    task: &'a str,
    progress: &'a dyn Progress,
    total: u64,
    /// The latest status line ("loss 0.41  12000 tok/s").
    status: String,
}

impl afm_train::Progress for TrainEvents<'_> {
    fn start(&mut self, step: usize, total: usize) {
        self.total = total as u64;
        self.step(step, None);
    }

    fn step(&mut self, step: usize, status: Option<&str>) {
        if let Some(s) = status {
            self.status = s.to_string();
        }
        self.progress.event(Event::Work {
            task: self.task,
            step: &self.status,
            done: step as u64,
            total: self.total,
        });
    }

    fn line(&mut self, line: &str) {
        self.progress
            .event(Event::Note(&format!("[{}] {line}", self.task)));
    }

    fn finish(&mut self) {
        self.progress.event(Event::WorkDone { task: self.task });
    }
}
