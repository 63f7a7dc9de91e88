//! Verbs of afm-data: `afm prepare` (with the task world's re-solver,
//! `afm_pipeline::TaskWorld`).

use afm_data::{AgentWeights, AgentsMap, Format, LongMode, Manifest, PrepareConfig, Progress};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Subcommand)]
pub enum Cmd {
    /// Turn multi-agent logs into packed, masked training shards.
    Prepare(PrepareArgs),
}

#[derive(Args)]
pub struct PrepareArgs {
    /// Input files or directories (all .json/.jsonl/.ndjson inside, sorted).
    #[arg(long, num_args = 1.., required = true)]
    pub input: Vec<PathBuf>,
    /// Input format: auto, native, ag2, messages, coa-tags.
    #[arg(long, default_value = "auto")]
    pub format: Format,
    /// TOML file renaming agents and marking observation agents.
    #[arg(long)]
    pub agents_map: Option<PathBuf>,
    /// Drop records whose quality score (0..100) is below this.
    #[arg(long, default_value_t = 0.0, value_parser = parse_min_score)]
    pub min_score: f64,
    /// Longest document in tokens (default: --seq-len).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Longer documents: window, truncate or drop.
    #[arg(long, default_value = "window")]
    pub long: LongMode,
    /// Order rows easy -> hard, in `--curriculum-stages` buckets.
    #[arg(long)]
    pub curriculum: bool,
    /// Curriculum stages: difficulty buckets the trainer walks easy -> hard,
    /// shuffling inside each every epoch (0: one strict sorted order).
    #[arg(long, default_value_t = 4)]
    pub curriculum_stages: usize,
    /// Add target-preserving augmentations of training records.
    #[arg(long)]
    pub augment: bool,
    /// Model rows only for the BPE tokens the data uses (a corpus
    /// vocabulary; for models trained from scratch; not exportable to HF).
    #[arg(long)]
    pub corpus_vocab: bool,
    /// With --corpus-vocab: rows only for BPE tokens occurring at least this
    /// often in the training records; rarer ones are written as bytes.
    #[arg(long, default_value_t = 1)]
    pub vocab_min_count: usize,
    /// Share of tasks held out for validation.
    #[arg(long, default_value_t = 0.05)]
    pub val_fraction: f64,
    /// Row length of the shards.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Loss weight of an agent, NAME=W (repeatable).
    #[arg(long = "agent-weight")]
    pub agent_weight: Vec<String>,
    /// Train only this agent (weight 1, others 0).
    #[arg(long)]
    pub only_agent: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fail on the first rejected record.
    #[arg(long)]
    pub strict: bool,
    /// Keep exact duplicates.
    #[arg(long)]
    pub no_dedup: bool,
    /// Longest accepted text field in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_field_bytes: usize,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Write the dataset even when no record is kept for training (otherwise
    /// an error naming how many records were read, filtered and rejected).
    #[arg(long)]
    pub allow_empty: bool,
}

/// `--min-score`: a finite number in the quality score's range.
fn parse_min_score(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    let r = afm_data::prepare::SCORE_RANGE;
    if !v.is_finite() || !r.contains(&v) {
        return Err(format!(
            "{s:?} must be a finite number in {}..={} (the quality score's range; 0 keeps all)",
            r.start(),
            r.end()
        ));
    }
    Ok(v)
}

pub fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Prepare(a) => prepare(a),
    }
}

fn parse_weights(a: &PrepareArgs) -> anyhow::Result<AgentWeights> {
    let mut w = AgentWeights {
        only: a.only_agent.clone(),
        ..Default::default()
    };
    for s in &a.agent_weight {
        let Some((name, v)) = s.rsplit_once('=') else {
            bail!("--agent-weight {s:?}: expected NAME=WEIGHT");
        };
        let v: f32 = v
            .parse()
            .with_context(|| format!("--agent-weight {s:?}: weight is not a number"))?;
        if !v.is_finite() || v < 0.0 {
            bail!("--agent-weight {s:?}: weight must be finite and >= 0");
        }
        w.weights.insert(name.to_string(), v);
    }
    if w.only.is_some() && !w.weights.is_empty() {
        bail!("--only-agent and --agent-weight cannot be combined");
    }
    Ok(w)
}

fn prepare(a: PrepareArgs) -> anyhow::Result<()> {
    let agents_map = match &a.agents_map {
        Some(p) => AgentsMap::load(p)?,
        None => AgentsMap::default(),
    };
    let cfg = PrepareConfig {
        inputs: a.input.clone(),
        format: a.format,
        agents_map,
        min_score: a.min_score,
        max_tokens: a.max_tokens,
        long: a.long,
        curriculum: a.curriculum,
        curriculum_stages: a.curriculum_stages,
        corpus_vocab: a.corpus_vocab,
        vocab_min_count: a.vocab_min_count,
        augment: a.augment,
        val_fraction: a.val_fraction,
        seq_len: a.seq_len,
        weights: parse_weights(&a)?,
        seed: a.seed,
        strict: a.strict,
        dedup: !a.no_dedup,
        limits: afm_data::Limits {
            max_field_bytes: a.max_field_bytes,
            ..Default::default()
        },
        out: a.out.clone(),
        allow_empty: a.allow_empty,
        ..Default::default()
    };
    cfg.validate()?;
    let bar = ProgressBar::new(0);
    let stage: Mutex<&'static str> = Mutex::new("");
    let progress = |p: Progress| {
        if let Ok(mut s) = stage.lock() {
            if *s != p.stage {
                *s = p.stage;
                bar.reset();
                bar.set_style(if p.stage == "read" {
                    crate::progress::bytes_style()
                } else {
                    crate::progress::style()
                });
                bar.set_prefix(p.stage);
            }
        }
        bar.set_length(p.total);
        bar.set_position(p.done);
    };
    let m = prepare_with_progress(&cfg, &progress)?;
    bar.finish_and_clear();
    print!("{}", m.table());
    println!("wrote {}", cfg.out.display());
    Ok(())
}

/// `afm_data::prepare_with` with the task world's re-solver (see
/// `afm_pipeline::TaskWorld`): how every verb prepares data.
pub fn prepare_with_progress(
    cfg: &PrepareConfig,
    progress: &(dyn Fn(Progress) + Sync),
) -> anyhow::Result<Manifest> {
    afm_pipeline::prepare_in_task_world(cfg, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    fn parse(extra: &[&str]) -> Result<PrepareArgs, String> {
        let mut argv = vec!["afm", "prepare", "--input", "x.jsonl", "--out", "o"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                cmd: Cmd::Prepare(a),
            }) => Ok(a),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn min_score_must_be_finite_and_in_range() {
        for bad in ["NaN", "nan", "inf", "-inf", "-1", "100.5", "1e9", "x"] {
            let arg = format!("--min-score={bad}");
            let e = parse(&[&arg]).err().unwrap_or_default();
            assert!(e.contains("--min-score"), "{bad}: {e}");
        }
        for good in ["0", "60", "100", "42.5"] {
            let a = parse(&["--min-score", good]).unwrap();
            assert_eq!(a.min_score, good.parse::<f64>().unwrap());
            assert!(!a.allow_empty);
        }
        assert!(parse(&["--allow-empty"]).unwrap().allow_empty);
    }
}
