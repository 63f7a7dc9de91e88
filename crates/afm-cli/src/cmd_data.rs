//! Verbs of afm-data: `afm prepare` (with the task world's re-solver,
//! `afm_pipeline::TaskWorld`).

use crate::settings::Layers;
use afm_data::{AgentWeights, AgentsMap, Format, LongMode, PrepareConfig, Progress};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Subcommand)]
pub enum Cmd {
    /// Turn multi-agent logs into packed, masked training shards.
    Prepare(PrepareArgs),
}

#[derive(Args)]
pub struct PrepareArgs {
    /// `--config FILE` (any `PrepareConfig` field) and `--set KEY=VALUE`.
    #[command(flatten)]
    pub layers: Layers,
    #[command(flatten)]
    pub flags: PrepareFlags,
    /// Input files or directories (all .json/.jsonl/.ndjson and AG2 SQLite
    /// .db/.sqlite/.sqlite3 files inside, sorted).
    #[arg(long, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// TOML file renaming agents and marking observation agents.
    #[arg(long)]
    pub agents_map: Option<PathBuf>,
    /// Loss weight of an agent, NAME=W (repeatable).
    #[arg(long = "agent-weight")]
    pub agent_weight: Vec<String>,
    /// Train only this agent (weight 1, others 0).
    #[arg(long)]
    pub only_agent: Option<String>,
    /// Keep exact duplicates.
    #[arg(long)]
    pub no_dedup: bool,
}

/// The flags that name a `PrepareConfig` field (defaults: the config's
/// `Default`); only those given are laid over it (see `crate::settings`).
#[derive(Args, Serialize)]
pub struct PrepareFlags {
    /// Input format (default: detected per file): auto, native, ag2,
    /// magentic-one, autogen-agentchat, openai-agents, langgraph, smolagents,
    /// crewai, ag2-sqlite, messages, sharegpt, coa-tags. See afm-data's README.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// Drop records whose quality score (0..100) is below this.
    #[arg(long, value_parser = parse_min_score)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_score: Option<f64>,
    /// Longest document in tokens (default: --seq-len).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    /// Longer documents: window, truncate or drop.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub long: Option<LongMode>,
    /// Order rows easy -> hard, in `--curriculum-stages` buckets.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub curriculum: bool,
    /// Curriculum stages: difficulty buckets the trainer walks easy -> hard,
    /// shuffling inside each every epoch (0: one strict sorted order).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub curriculum_stages: Option<usize>,
    /// Add target-preserving augmentations of training records.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub augment: bool,
    /// Model rows only for the BPE tokens the data uses (a corpus
    /// vocabulary; for models trained from scratch; not exportable to HF).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub corpus_vocab: bool,
    /// With --corpus-vocab: rows only for BPE tokens occurring at least this
    /// often in the training records; rarer ones are written as bytes.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vocab_min_count: Option<usize>,
    /// Share of tasks held out for validation.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_fraction: Option<f64>,
    /// Row length of the shards.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq_len: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Fail on the first rejected record.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
    /// Longest accepted text field in bytes.
    #[arg(long)]
    #[serde(
        rename = "limits.max_field_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_field_bytes: Option<usize>,
    /// Output directory.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out: Option<PathBuf>,
    /// Write the dataset even when no record is kept for training (otherwise
    /// an error naming how many records were read, filtered and rejected).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_empty: bool,
}

/// `--min-score`: a finite number in the quality score's range.
fn parse_min_score(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    let r = afm_data::SCORE_RANGE;
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
    agent_weights(a.only_agent.as_deref(), &a.agent_weight)
}

/// `--only-agent NAME` and `--agent-weight NAME=W` (repeatable) as weights.
pub(crate) fn agent_weights(only: Option<&str>, pairs: &[String]) -> anyhow::Result<AgentWeights> {
    let mut w = AgentWeights {
        only: only.map(String::from),
        ..Default::default()
    };
    for s in pairs {
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

/// `PrepareConfig::default()` <- `--config` <- the flags <- `--set`, then
/// the flags that are not plain fields (inputs, agent map and weights).
fn build_config(a: &PrepareArgs) -> anyhow::Result<PrepareConfig> {
    let mut cfg: PrepareConfig = crate::settings::resolve(&a.layers, &a.flags)?;
    if !a.input.is_empty() {
        cfg.inputs = a.input.clone();
    }
    if let Some(p) = &a.agents_map {
        cfg.agents_map = AgentsMap::load(p)?;
    }
    if a.only_agent.is_some() || !a.agent_weight.is_empty() {
        cfg.weights = parse_weights(a)?;
    }
    if a.no_dedup {
        cfg.dedup = false;
    }
    if cfg.inputs.is_empty() {
        bail!("no input: give --input (or `inputs` in --config)");
    }
    if cfg.out.as_os_str().is_empty() {
        bail!("no output directory: give --out (or `out` in --config)");
    }
    Ok(cfg)
}

fn prepare(a: PrepareArgs) -> anyhow::Result<()> {
    let cfg = build_config(&a)?;
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
    let m = afm_pipeline::prepare_in_task_world(&cfg, &progress)?;
    bar.finish_and_clear();
    print!("{}", m.table());
    println!("wrote {}", cfg.out.display());
    Ok(())
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

    /// The `--format` help names every format afm-data reads.
    #[test]
    fn format_help_lists_every_format() {
        use clap::CommandFactory;
        let help = Cli::command()
            .find_subcommand_mut("prepare")
            .expect("prepare")
            .render_long_help()
            .to_string();
        for name in afm_data::Format::names() {
            assert!(help.contains(name), "`--format` help does not name {name}");
        }
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
            assert_eq!(a.flags.min_score, Some(good.parse::<f64>().unwrap()));
            assert!(!a.flags.allow_empty);
            let c = build_config(&a).unwrap();
            assert_eq!(c.min_score, good.parse::<f64>().unwrap());
            // Every other field keeps `PrepareConfig`'s default.
            assert_eq!(
                (c.seq_len, c.val_fraction, c.curriculum_stages),
                (256, 0.05, 4)
            );
        }
        assert!(parse(&["--allow-empty"]).unwrap().flags.allow_empty);
    }
}
