//! The ablation: the AFM trained with and without each ingredient of the
//! recipe over several seeds, against the seed's claimed gains.

use crate::config::{afm_budget, PipelineConfig};
use crate::data;
use crate::eval::{self, DecodeThreads};
use crate::prepare::prepare_stage;
use crate::progress::Progress;
use crate::stage;
use crate::train::{train_stage, TrainSpec};
use afm_agents::{evaluate, EvalReport};
use afm_bench::compare::System;
use afm_bench::MeanSpread;
use afm_model::Model;
use afm_tasks::Task;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// An ingredient's name and the seed's claimed gain of it.
type Ingredient = (&'static str, Option<f64>);

/// The recipe's ingredients the ablation toggles, with the seed's claimed
/// gain of each (percentage points of success with it on).
pub const INGREDIENTS: [Ingredient; 9] = [
    ("filtering", Some(3.0)),
    ("role-embeddings", Some(2.0)),
    ("curriculum", Some(2.0)),
    ("augmentation", Some(2.0)),
    ("distillation", Some(1.3)),
    ("boundary", None),
    ("smeared-keys", None),
    ("smeared-tokens", None),
    ("rare-token-bytes", None),
];

/// What to run.
#[derive(Debug, Clone)]
pub struct AblationOptions {
    /// Seeds per variant (0, 1, ...).
    pub seeds: u64,
    /// Only these variants (empty: all of [`variants`]).
    pub variants: Vec<String>,
}

/// One line of the ablation table.
#[derive(Debug, Clone)]
pub struct AblationRow {
    pub variant: String,
    /// The ingredient flipped, whether this variant has it, its claim.
    pub ingredient: Option<(&'static str, bool, Option<f64>)>,
    pub success: MeanSpread,
    /// Success rate (%) per seed.
    pub rates: Vec<f64>,
    pub val_loss: MeanSpread,
    pub steps: MeanSpread,
}

/// The ablation's outcome.
#[derive(Debug, Clone)]
pub struct Ablation {
    pub rows: Vec<AblationRow>,
    /// The table, as written to [`Ablation::path`].
    pub markdown: String,
    /// `<run>/ablation.md`.
    pub path: PathBuf,
}

/// True when `c` uses ingredient `name`.
fn uses(c: &PipelineConfig, name: &str) -> bool {
    match name {
        "filtering" => c.min_score > 0.0,
        "role-embeddings" => c.role_embeddings,
        "curriculum" => c.curriculum,
        "augmentation" => c.augment,
        "distillation" => c.distill,
        "boundary" => c.boundary,
        "smeared-keys" => c.train.shape.smear_keys,
        "smeared-tokens" => c.train.shape.smear_tokens,
        "rare-token-bytes" => c.corpus_vocab && c.vocab_min_count > 1,
        _ => false,
    }
}

/// Switch ingredient `name` of `c` to `on` (filtering on = the default cut).
fn set_ingredient(c: &mut PipelineConfig, name: &str, on: bool) {
    let d = PipelineConfig::default();
    match name {
        "filtering" => c.min_score = if on { d.min_score } else { 0.0 },
        "role-embeddings" => {
            c.role_embeddings = on;
            c.train.role_embeddings = on;
        }
        "curriculum" => c.curriculum = on,
        "augmentation" => c.augment = on,
        "distillation" => c.distill = on,
        "boundary" => c.boundary = on,
        "smeared-keys" => c.train.shape.smear_keys = on,
        "smeared-tokens" => c.train.shape.smear_tokens = on,
        "rare-token-bytes" => {
            c.corpus_vocab |= on;
            c.vocab_min_count = if on { d.vocab_min_count } else { 1 };
        }
        _ => {}
    }
}

/// The ablation's variants of `base`: `full`, then each ingredient flipped
/// (`no-X` when the base uses it, `with-X` when it does not), with the
/// ingredient and its claimed gain.
pub fn variants(base: &PipelineConfig) -> Vec<(String, Option<Ingredient>)> {
    let mut v = vec![("full".to_string(), None)];
    for (name, claim) in INGREDIENTS {
        let flip = if uses(base, name) { "no" } else { "with" };
        v.push((format!("{flip}-{name}"), Some((name, claim))));
    }
    v
}

/// What the ablation shares across its runs.
struct Shared<'a> {
    base: &'a PipelineConfig,
    root: PathBuf,
    ins: Vec<PathBuf>,
    tasks: Vec<Task>,
    progress: &'a dyn Progress,
}

/// Train and evaluate the AFM variants of `base` (its agents' models come
/// from the main pipeline run of the same name, which must exist); writes
/// `<run>/ablation.md`.
pub fn ablation(
    base: &PipelineConfig,
    opts: &AblationOptions,
    progress: &dyn Progress,
) -> Result<Ablation> {
    let mut base = base.clone().validated()?;
    // No learning-curve snapshots for the variants' models.
    base.curve_points = 0;
    if opts.seeds == 0 {
        bail!("seeds must be >= 1");
    }
    let all = variants(&base);
    if let Some(v) = opts
        .variants
        .iter()
        .find(|v| !all.iter().any(|(n, _)| n == *v))
    {
        let names: Vec<&str> = all.iter().map(|x| x.0.as_str()).collect();
        bail!("unknown variant {v:?}: use {}", names.join(", "));
    }
    // The per-agent teachers come from the main pipeline run (its own
    // settings); the ablation only trains and evaluates AFM variants.
    let root = base.root();
    for (agent, dir) in eval::mas_map(&root) {
        if !dir.join(afm_model::WEIGHTS_FILE).is_file() {
            bail!(
                "{}: the {agent} teacher is missing; run `afm pipeline --name {}` (or `cargo xtask pipeline`) first",
                dir.display(),
                base.name
            );
        }
    }
    let tasks = eval::load_tasks(&base)?;
    // The main run's data (its `data` stage, complete after the pipeline).
    let (ins, _) = data::inputs(&root, &base, progress)?;
    let sh = Shared {
        base: &base,
        root: root.clone(),
        ins,
        tasks,
        progress,
    };
    let mut rows = Vec::new();
    for (variant, ingredient) in all {
        if opts.variants.is_empty() || opts.variants.contains(&variant) {
            rows.push(variant_row(&sh, variant, ingredient, opts.seeds)?);
        }
    }
    let markdown = table(&base, opts.seeds, sh.tasks.len(), &rows)?;
    let path = root.join("ablation.md");
    afm_tokenizer::atomic::write(&path, &markdown)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(Ablation {
        rows,
        markdown,
        path,
    })
}

/// One variant over `seeds` seeds.
fn variant_row(
    sh: &Shared,
    variant: String,
    ingredient: Option<Ingredient>,
    seeds: u64,
) -> Result<AblationRow> {
    let mut c = sh.base.clone();
    let ingredient = ingredient.map(|(name, claim)| {
        let on = !uses(sh.base, name);
        set_ingredient(&mut c, name, on);
        (name, on, claim)
    });
    let (mut rates, mut losses, mut steps) = (Vec::new(), Vec::new(), Vec::new());
    for seed in 0..seeds {
        let (eval, train) = variant_seed(sh, &variant, &c, seed)?;
        rates.push(eval.success_rate * 100.0);
        losses.push(train.best_val_loss.unwrap_or(f64::NAN));
        steps.push(train.steps as f64);
    }
    Ok(AblationRow {
        variant,
        ingredient,
        success: MeanSpread::of(&rates),
        rates,
        val_loss: MeanSpread::of(&losses),
        steps: MeanSpread::of(&steps),
    })
}

/// Everything that determines a variant's evaluation.
#[derive(Serialize)]
struct AblationEvalKey {
    stage: &'static str,
    model: String,
    tasks: Vec<stage::FileStamp>,
    eval_limit: usize,
    max_new_tokens: usize,
}

/// Prepare, train and evaluate variant `c` with seed `seed`.
fn variant_seed(
    sh: &Shared,
    variant: &str,
    c: &PipelineConfig,
    seed: u64,
) -> Result<(EvalReport, afm_train::TrainSummary)> {
    let dir = sh.root.join(format!("ablation/{variant}-s{seed}"));
    let cs = PipelineConfig { seed, ..c.clone() };
    // With teachers, the data is the teachers' own (the main run's seed): a
    // corpus vocabulary depends on the augmented data, and a teacher must
    // cover every token of the student's rows. The seed then varies
    // initialisation and order only.
    let data_cfg = if cs.distill {
        PipelineConfig {
            seed: sh.base.seed,
            ..cs.clone()
        }
    } else {
        cs.clone()
    };
    let name = format!("{variant}-s{seed}");
    let prepared = dir.join("prepared");
    let p = sh.progress;
    prepare_stage(
        &format!("{name} prepare"),
        &prepared,
        &data_cfg,
        &sh.ins,
        None,
        p,
    )?;
    let teachers = if cs.distill {
        eval::mas_map(&sh.root).into_iter().collect()
    } else {
        BTreeMap::new()
    };
    let spec = TrainSpec {
        data: &prepared,
        budget: &afm_budget(&cs)?,
        teachers,
        role_embeddings: cs.role_embeddings,
        boundary: cs.boundary,
        seed,
        threads: None,
        best_of: None,
    };
    let tr = train_stage(&format!("{name} train"), &dir.join("model"), &cs, spec, p)?;
    // Only `final/` is used from here on; 21 runs of checkpoints (weights +
    // optimiser moments) would fill a small disk.
    let ckpts = dir.join("model/checkpoints");
    if ckpts.exists() {
        std::fs::remove_dir_all(&ckpts).with_context(|| format!("removing {}", ckpts.display()))?;
    }
    let fp = stage::fingerprint(&AblationEvalKey {
        stage: "ablation-eval-v2",
        model: stage::marker_text(&dir.join("model")),
        tasks: stage::stamps(std::slice::from_ref(&cs.tasks)),
        eval_limit: cs.eval_limit,
        max_new_tokens: cs.max_new_tokens,
    })?;
    let d = stage::run(&format!("{name} eval"), &dir.join("eval"), &fp, p, |_| {
        let _threads = DecodeThreads::set(&cs);
        let device = afm_model::parse_device(&cs.device)?;
        let m = Model::load(&dir.join("model/final"), device)?;
        let opts = eval::run_opts(&cs, cs.eval_batch);
        let runs = eval::eval_system(&System::Afm(&m), &sh.tasks, &opts, p)?;
        Ok(evaluate(&runs, None))
    })?;
    Ok((d.summary, tr.summary))
}

/// The ablation table (markdown).
fn table(base: &PipelineConfig, seeds: u64, tasks: usize, rows: &[AblationRow]) -> Result<String> {
    let full = rows
        .iter()
        .find(|r| r.variant == "full")
        .map(|r| r.success.mean);
    let mut md = format!(
        "# Ablation ({} seeds, preset {}, AFM budget {} each, {} held-out tasks, {}, {} cores)\n\n\
         | variant | success % (mean +- std) | per seed | gain of the ingredient (with - without) | seed's claimed gain | best val loss (mean +- std) | optimiser steps |\n\
         |---|---:|---|---:|---:|---:|---:|\n",
        seeds,
        base.preset,
        afm_budget(base)?,
        tasks,
        afm_bench::today_utc(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    );
    for r in rows {
        let gain = match (full, r.ingredient) {
            (Some(f), Some((_, with, _))) => {
                let g = if with {
                    r.success.mean - f
                } else {
                    f - r.success.mean
                };
                format!("{g:+.1} pts")
            }
            _ => String::new(),
        };
        let claim = match r.ingredient {
            Some((_, _, Some(g))) => format!("+{g} pts"),
            _ => "-".to_string(),
        };
        let seeds: Vec<String> = r.rates.iter().map(|x| format!("{x:.1}")).collect();
        md.push_str(&format!(
            "| {} | {:.1} +- {:.1} | {} | {gain} | {claim} | {:.3} +- {:.3} | {:.0} |\n",
            r.variant,
            r.success.mean,
            r.success.std,
            seeds.join(", "),
            r.val_loss.mean,
            r.val_loss.std,
            r.steps.mean,
        ));
    }
    Ok(md)
}
