//! The `prepare-*` stages: filter, (curriculum,) augment, pack.

use crate::config::PipelineConfig;
use crate::progress::{Event, Progress};
use crate::stage::{self, Done};
use afm_data::{AgentWeights, PrepareConfig};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A `prepare-*` stage's result (the counts of afm-data's manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrepareSummary {
    pub total: usize,
    pub kept: usize,
    pub filtered: BTreeMap<String, usize>,
    pub rejected: BTreeMap<String, usize>,
    pub augmented: BTreeMap<String, usize>,
    /// The agents of the data, in role-id order.
    pub roles: Vec<String>,
    pub train_rows: usize,
    pub val_rows: usize,
    pub tokens: usize,
    pub loss_tokens: usize,
    pub packing_efficiency: f64,
}

/// Everything that determines a prepared dataset: the whole
/// `PrepareConfig` the stage runs (its output directory aside) and the
/// inputs' stamps.
#[derive(Serialize)]
pub(crate) struct PrepareKey {
    /// v5: the whole serialised `PrepareConfig` (v4: the pipeline fields
    /// it was built from).
    stage: &'static str,
    inputs: Vec<stage::FileStamp>,
    config: PrepareConfig,
}

impl PrepareKey {
    pub(crate) fn new(c: &PipelineConfig, ins: &[PathBuf], only: Option<&str>) -> Self {
        PrepareKey {
            stage: "prepare-v5",
            inputs: stage::stamps(ins),
            config: PrepareConfig {
                inputs: ins.to_vec(),
                min_score: c.min_score,
                // The agents' own datasets are never curriculum-ordered.
                curriculum: c.curriculum && only.is_none(),
                augment: c.augment,
                corpus_vocab: c.corpus_vocab,
                vocab_min_count: c.vocab_min_count,
                seq_len: c.seq_len,
                seed: c.seed,
                // A natural draw repeats tasks on purpose (the repeats are
                // the mixture); deduplicating would undo it.
                dedup: !c.draws_repeats(),
                weights: agent_weights(c, only),
                ..PrepareConfig::default()
            },
        }
    }
}

/// The loss weights of a dataset: every agent's turns for the AFM; for
/// agent `only`'s model its own turns at 1 and the others' at
/// `mas_context_weight` (0: its turns only).
pub(crate) fn agent_weights(c: &PipelineConfig, only: Option<&str>) -> AgentWeights {
    match only {
        None => AgentWeights::default(),
        Some(a) if c.mas_context_weight > 0.0 => AgentWeights {
            weights: BTreeMap::from([(a.to_string(), 1.0)]),
            only: None,
            default: Some(c.mas_context_weight),
        },
        Some(a) => AgentWeights {
            only: Some(a.to_string()),
            ..AgentWeights::default()
        },
    }
}

/// Prepare one dataset (a stage of its own): the AFM's (`only = None`,
/// curriculum as configured) or one agent's.
pub(crate) fn prepare_stage(
    name: &str,
    dir: &Path,
    c: &PipelineConfig,
    ins: &[PathBuf],
    only: Option<&str>,
    progress: &dyn Progress,
) -> Result<Done<PrepareSummary>> {
    let key = PrepareKey::new(c, ins, only);
    let fp = stage::fingerprint(&key)?;
    stage::run(name, dir, &fp, progress, |out| {
        let cfg = PrepareConfig {
            out: out.to_path_buf(),
            ..key.config.clone()
        };
        let m = crate::world::prepare_in_task_world(&cfg, &|p| {
            progress.event(Event::Work {
                task: name,
                step: p.stage,
                done: p.done,
                total: p.total,
            })
        });
        progress.event(Event::WorkDone { task: name });
        let m = m?;
        Ok(PrepareSummary {
            total: m.total,
            kept: m.kept,
            filtered: m.filtered,
            rejected: m.rejected,
            augmented: m.augmented,
            roles: m.roles,
            train_rows: m.train.rows,
            val_rows: m.val.rows,
            tokens: m.tokens,
            loss_tokens: m.loss_tokens,
            packing_efficiency: m.packing_efficiency,
        })
    })
}
