//! The training step's speed, measured on the trainer's real step: the
//! recipe ([`crate::Trainer`]) with its data stream, batch building, loss
//! (fused on the CPU), gradient clipping and this crate's AdamW, on a
//! synthetic prepared dataset (`crate::synthetic`) of rows of the asked
//! length. `afm bench model` reports it.

use crate::synthetic::{write_dataset, SyntheticSpec};
use crate::{TrainConfig, Trainer};
use anyhow::Context;
use std::path::Path;
use std::time::Instant;

/// What [`trainer_step_speed`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSpeed {
    /// Input positions per second over the timed steps.
    pub tokens_per_s: f64,
    /// The loss of the last step.
    pub loss: f64,
    /// Matmul FLOPs per trained token of this model at this row length
    /// (`afm_model::speed::train_flops_per_token`).
    pub flops_per_token: f64,
}

/// Time `steps` optimiser steps, after `warmup` untimed ones, of a run
/// configured by `cfg` (its `data`, `out`, step counts, evaluation,
/// checkpoints and plots are set here) on a synthetic dataset of `row_len`
/// token rows written under `scratch` (which should be empty and is left
/// for the caller to remove). `on_step` is called after every step.
pub fn trainer_step_speed(
    cfg: &TrainConfig,
    row_len: usize,
    warmup: usize,
    steps: usize,
    scratch: &Path,
    mut on_step: impl FnMut(),
) -> anyhow::Result<StepSpeed> {
    let steps = steps.max(1);
    let rows = cfg.batch_size * cfg.grad_accum * (warmup + steps);
    let data = scratch.join("data");
    write_dataset(
        &data,
        &SyntheticSpec {
            train_rows: rows,
            val_rows: 0,
            row_len,
            ..SyntheticSpec::default()
        },
    )
    .with_context(|| format!("writing the benchmark's data in {}", data.display()))?;
    let c = TrainConfig {
        data,
        out: scratch.join("run"),
        max_steps: warmup + steps,
        eval_interval: 0,
        checkpoint_interval: 0,
        snapshots: 0,
        log_interval: warmup + steps,
        plots: false,
        progress: false,
        resume: false,
        time_budget: None,
        ..cfg.clone()
    };
    let mut t = Trainer::setup(&c)?;
    for _ in 0..warmup {
        t.step()?;
        on_step();
    }
    let (t0, seen0) = (Instant::now(), t.state().tokens_seen);
    let mut loss = f64::NAN;
    for _ in 0..steps {
        loss = t.step()?.stats.loss;
        on_step();
    }
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    Ok(StepSpeed {
        tokens_per_s: (t.state().tokens_seen - seen0) as f64 / secs,
        loss,
        flops_per_token: afm_model::speed::train_flops_per_token(t.model(), row_len),
    })
}
