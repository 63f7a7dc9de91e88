//! `afm pipeline` (the main job) and `afm ablation`: their flags, the
//! resolution of a configuration (TOML file + flags) and the rendering of
//! the library's progress. The recipe itself is the `afm-pipeline` crate.

use crate::settings::Layers;
use afm_bench::PriceTable;
use afm_pipeline::{AblationOptions, Event, PipelineConfig, Progress, StageStatus, Start};
use anyhow::Result;
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the whole pipeline: data, prepare, train the per-agent models and the AFM, evaluate, bench, report.
    Pipeline(PipelineArgs),
    /// Train the AFM with and without each ingredient (filtering, role embeddings, curriculum,
    /// augmentation, distillation, boundary weighting) over several seeds and tabulate task success.
    Ablation(AblationArgs),
}

#[derive(Args, Debug, Clone, Default)]
pub struct PipelineArgs {
    /// `--config FILE` (any `PipelineConfig` field, see README) and
    /// `--set KEY=VALUE` (`--set train.optim.lr=1e-3`).
    #[command(flatten)]
    pub layers: Layers,
    #[command(flatten)]
    pub flags: PipelineFlags,
    /// Train in fp32 instead of the default bf16.
    #[arg(long)]
    pub fp32: bool,
    /// Your own trajectories (files or directories), in place of the generated ones.
    #[arg(long, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Price table TOML (per 1K input/output tokens, per call).
    #[arg(long)]
    pub prices: Option<PathBuf>,
    /// Delete the run directory first (otherwise completed stages are skipped).
    #[arg(long)]
    pub fresh: bool,
}

/// The flags that name a `PipelineConfig` field; only those given are laid
/// over the configuration (see `crate::settings`).
#[derive(Args, Debug, Clone, Default, Serialize)]
pub struct PipelineFlags {
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs_dir: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Train tasks the `data` stage generates and the scripted agents solve
    /// (0 = the shipped datasets/scripted/train.jsonl).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_tasks: Option<usize>,
    /// Held-out tasks file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mas_time_budget: Option<String>,
    /// Train the per-agent models side by side in this many lanes (1 = one
    /// after another).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mas_lanes: Option<usize>,
    /// Loss weight of the other agents' turns in each agent's own data (0 =
    /// its turns only).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mas_context_weight: Option<f32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub afm_time_budget: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_limit: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bench_tasks: Option<usize>,
}

#[derive(Args, Debug, Clone)]
pub struct AblationArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Seeds per variant.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Only these variants: full, and each ingredient flipped from the
    /// pipeline's setting (no-filtering, no-role-embeddings, with-curriculum,
    /// no-augmentation, with-distillation, no-boundary, no-smeared-keys, no-smeared-tokens,
    /// no-rare-token-bytes by default).
    #[arg(long, value_delimiter = ',')]
    pub variants: Vec<String>,
}

pub fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Pipeline(a) => {
            let c = resolve(&a)?;
            let start = if a.fresh { Start::Fresh } else { Start::Resume };
            let report = afm_pipeline::run(&c, start, &Bars::default())?;
            println!("\n{}", report.summary_table());
            println!("report: {}", c.root().join("report.md").display());
            Ok(())
        }
        Cmd::Ablation(a) => {
            let c = resolve(&a.pipeline)?;
            let opts = AblationOptions {
                seeds: a.seeds,
                variants: a.variants.clone(),
            };
            let t = afm_pipeline::ablation(&c, &opts, &Bars::default())?;
            println!("\n{}\nwritten to {}", t.markdown, t.path.display());
            Ok(())
        }
    }
}

/// `PipelineConfig::default()` <- `--config` <- the flags <- `--set` (see
/// `crate::settings`: a `[train]` table that sets one field keeps the
/// pipeline's tuned values of the others), then
/// [`PipelineConfig::validated`].
pub fn resolve(a: &PipelineArgs) -> Result<PipelineConfig> {
    let mut c: PipelineConfig = crate::settings::resolve(&a.layers, &a.flags)?;
    if a.fp32 {
        c.bf16 = false;
    }
    if !a.input.is_empty() {
        c.input = a.input.clone();
    }
    if let Some(p) = &a.prices {
        c.prices = PriceTable::from_toml_file(p)?;
    }
    c.validated()
}

/// The library's progress as log lines (stderr) and one progress bar per
/// unit of work.
#[derive(Default)]
pub(crate) struct Bars {
    bar: Mutex<Option<(String, ProgressBar)>>,
}

impl Progress for Bars {
    fn event(&self, e: Event<'_>) {
        match e {
            Event::Stage { stage, dir, status } => {
                let d = dir.display();
                match status {
                    StageStatus::Skipped => {
                        return eprintln!("[{stage}] complete in {d} (skipped)");
                    }
                    StageStatus::Resuming => {
                        eprintln!("[{stage}] resuming an interrupted run in {d}")
                    }
                    StageStatus::InputsChanged => eprintln!(
                        "[{stage}] inputs changed since the last run (or made by another afm version): starting over in {d}"
                    ),
                    StageStatus::UnknownOutputs => {
                        eprintln!("[{stage}] outputs of unknown inputs: starting over in {d}")
                    }
                    StageStatus::Fresh => {}
                }
                eprintln!("[{stage}] running -> {d}");
            }
            Event::StageDone { stage, wall_s } => eprintln!("[{stage}] done in {wall_s:.1}s"),
            Event::Work {
                task,
                step,
                done,
                total,
            } => {
                let mut slot = self.bar.lock().unwrap_or_else(|p| p.into_inner());
                if slot.as_ref().is_none_or(|(t, _)| t != task) {
                    if let Some((_, b)) = slot.take() {
                        b.finish_and_clear();
                    }
                    *slot = Some((task.to_string(), crate::progress::bar(total, task)));
                }
                if let Some((_, b)) = slot.as_ref() {
                    b.set_length(total);
                    b.set_position(done);
                    b.set_message(step.to_string());
                }
            }
            Event::WorkDone { task } => {
                let mut slot = self.bar.lock().unwrap_or_else(|p| p.into_inner());
                if slot.as_ref().is_some_and(|(t, _)| t == task) {
                    if let Some((_, b)) = slot.take() {
                        b.finish_and_clear();
                    }
                }
            }
            Event::Note(text) => {
                let slot = self.bar.lock().unwrap_or_else(|p| p.into_inner());
                // Above the live bar on a terminal; a plain line otherwise
                // (a hidden bar's println prints nothing).
                match slot.as_ref() {
                    Some((_, b)) if !b.is_hidden() => b.println(text),
                    _ => eprintln!("{text}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use afm_pipeline::{boundary_loss, BOUNDARY_DEFAULTS};

    fn with_config(p: &std::path::Path) -> PipelineArgs {
        PipelineArgs {
            layers: Layers {
                config: Some(p.to_path_buf()),
                set: Vec::new(),
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_non_finite_or_out_of_range_min_score_is_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["nan", "inf", "-1.0", "101.0"] {
            let p = dir.path().join("p.toml");
            std::fs::write(&p, format!("min_score = {bad}\n")).unwrap();
            let a = with_config(&p);
            let e = resolve(&a).unwrap_err().to_string();
            assert!(e.contains("min_score"), "{bad}: {e}");
        }
    }

    #[test]
    fn config_flags_override_toml_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.toml");
        std::fs::write(
            &p,
            "preset = \"tiny\"\nmin_score = 10.0\n[train]\nbatch_size = 4\n",
        )
        .unwrap();
        let mut a = with_config(&p);
        a.flags.name = Some("x".into());
        let c = resolve(&a).unwrap();
        assert_eq!(
            (
                c.preset.as_str(),
                c.min_score,
                c.train.batch_size,
                c.name.as_str()
            ),
            ("tiny", 10.0, 4, "x")
        );
        // The rest of [train] keeps the pipeline's tuned values.
        let d = PipelineConfig::default().train;
        assert_eq!(
            (c.train.epochs, c.train.optim.lr, c.train.shape.n_layer),
            (d.epochs, d.optim.lr, d.shape.n_layer)
        );
        std::fs::write(&p, "presett = \"tiny\"\n").unwrap();
        let e = resolve(&a).unwrap_err().to_string();
        assert!(e.contains("presett"), "{e}");
        let mut a = PipelineArgs::default();
        a.flags.afm_time_budget = Some("soon".into());
        let e = resolve(&a).unwrap_err().to_string();
        assert!(e.contains("afm_time_budget"), "{e}");
    }

    /// `[train.loss]` boundary weights and `role_embeddings` are kept as the
    /// user wrote them, or a conflict with the pipeline's own switches is an
    /// error; nothing is silently overwritten.
    #[test]
    fn user_loss_settings_are_kept_or_conflicts_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.toml");
        let with = |text: &str| {
            std::fs::write(&p, text).unwrap();
            resolve(&with_config(&p))
        };
        // Defaults: the AFM gets the boundary weighting, the agents' models none.
        let c = with("").unwrap();
        let afm = boundary_loss(&c.train.loss, true);
        assert_eq!(
            (
                afm.role_token_weight,
                afm.handoff_tokens,
                afm.handoff_weight
            ),
            BOUNDARY_DEFAULTS
        );
        assert_eq!(boundary_loss(&c.train.loss, false), c.train.loss);
        // The user's own values are kept, for both systems.
        let c = with("[train.loss]\nrole_token_weight = 3.0\nhandoff_tokens = 1\nalpha = 0.7\n")
            .unwrap();
        for on in [true, false] {
            let l = boundary_loss(&c.train.loss, on);
            assert_eq!(
                (l.role_token_weight, l.handoff_tokens, l.alpha),
                (3.0, 1, 0.7)
            );
        }
        // Conflicts name the fields.
        let e = with("boundary = false\n[train.loss]\nrole_token_weight = 3.0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("boundary") && e.contains("role_token_weight"),
            "{e}"
        );
        let e = with("[train]\nrole_embeddings = false\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("role_embeddings"), "{e}");
        assert!(with("role_embeddings = false\n[train]\nrole_embeddings = false\n").is_ok());
        let e = with("[train]\npreset = \"tiny\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("preset"), "{e}");
    }
}
