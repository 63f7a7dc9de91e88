//! A complete supervised fine-tuning run in under 100 lines, on the crates'
//! public API only: multi-agent logs -> packed rows with role tokens and
//! per-agent loss weights -> a trained GPT-2-style model -> held-out tasks
//! solved by that one model playing every agent.
//!
//! `cargo run --release --example minimal_sft -- [TRAJECTORIES] [TASKS] [STEPS]`
//! (defaults: the shipped scripted trajectories, the held-out tasks, 300
//! steps of a 2-layer `mini` model). The test suite runs it with a few steps.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Prepare, train and evaluate in `work`; returns the held-out success rate
/// on the first `n_tasks` tasks of `tasks`.
pub fn run(
    trajectories: &Path,
    tasks: &Path,
    steps: usize,
    n_tasks: usize,
    work: &Path,
) -> Result<f64> {
    // 1. Data: read the logs, drop failed trajectories, write token rows
    //    with agent-role tokens and loss weights on agent turns only.
    let data = work.join("prepared");
    let manifest = afm_data::prepare(&afm_data::PrepareConfig {
        inputs: vec![trajectories.to_path_buf()],
        min_score: 60.0,
        corpus_vocab: true,
        seq_len: 256,
        out: data.clone(),
        ..Default::default()
    })?;
    println!(
        "data: {} records, {} kept, {} token rows",
        manifest.total, manifest.kept, manifest.train.rows
    );

    // 2. Model and training: a fresh GPT-2 (`mini` cut to 2 layers) with
    //    role embeddings, AdamW with warm-up and cosine decay, bf16 matmuls.
    let shape = afm_train::ShapeConfig {
        n_layer: 2,
        ..Default::default()
    };
    let summary = afm_train::train(&afm_train::TrainConfig {
        data,
        out: work.join("run"),
        preset: Some("mini".into()),
        shape,
        max_steps: steps,
        batch_size: 8,
        bf16: true,
        eval_interval: steps,
        plots: false,
        progress: false,
        ..Default::default()
    })?;
    println!(
        "train: {} steps, validation loss {:.3}",
        summary.steps,
        summary.final_val_loss.unwrap_or(f64::NAN)
    );

    // 3. Generate: one model writes the Planner's, the Coder's and the
    //    Reviewer's turns of each task; the interpreter runs its code.
    let model = afm_model::Model::load(&summary.checkpoint, tch::Device::Cpu)?;
    let tasks = afm_tasks::load_tasks(tasks)?;
    let tasks = &tasks[..n_tasks.min(tasks.len())];
    let opts = afm_agents::RunOptions {
        batch: 8,
        max_new_tokens: 160,
        route: afm_agents::Route::task_world(),
        ..Default::default()
    };
    let runs = afm_agents::afm::run_batch(&model, tasks, &opts)?;
    if let Some(r) = runs.first() {
        println!("example: {} -> {:?}", r.task, r.answer);
    }
    let report = afm_agents::evaluate(&runs, None);
    println!(
        "held-out: {}/{} tasks solved",
        report.successes, report.tasks
    );
    Ok(report.success_rate)
}

fn main() -> Result<()> {
    let arg = |i: usize, default: &str| std::env::args().nth(i).unwrap_or(default.into());
    let trajectories = PathBuf::from(arg(1, "datasets/scripted/train.jsonl"));
    let tasks = PathBuf::from(arg(2, "datasets/tasks/test.jsonl"));
    let steps: usize = arg(3, "300").parse().context("STEPS must be a number")?;
    let work = tempfile::tempdir()?;
    run(&trajectories, &tasks, steps, 200, work.path())?;
    Ok(())
}
