//! Verbs of afm-data: `afm prepare`, and the task world the data pipeline
//! re-solves records with ([`TaskWorld`]).

use afm_data::{AgentWeights, AgentsMap, Format, LongMode, Manifest, PrepareConfig, Progress};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
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
                let style = if p.stage == "read" {
                    "{msg:>6} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})"
                } else {
                    "{msg:>6} [{bar:40}] {pos}/{len} records ({per_sec}, {eta})"
                };
                if let Ok(st) = ProgressStyle::with_template(style) {
                    bar.set_style(st.progress_chars("=> "));
                }
                bar.set_message(p.stage);
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

/// The task world of `--augment`'s `resolve` rows: `afm-tasks`' scripted
/// agents re-solve generated records (their `meta` names the task) with
/// new inputs. `afm-data` knows no task world; the CLI injects this one.
pub struct TaskWorld;

impl afm_data::Resolver for TaskWorld {
    fn can_resolve(&self, t: &afm_format::Trajectory) -> bool {
        afm_tasks::source_task(t).is_some()
    }

    fn resolve(&self, t: &afm_format::Trajectory, seed: u64) -> Option<afm_format::Trajectory> {
        afm_tasks::resolve_record(t, seed)
    }
}

/// `afm_data::prepare_with` with [`TaskWorld`]: how every verb prepares data
/// (`afm prepare` and the pipeline's prepare stages).
pub fn prepare_with_progress(
    cfg: &PrepareConfig,
    progress: &(dyn Fn(Progress) + Sync),
) -> anyhow::Result<Manifest> {
    afm_data::prepare_with(cfg, progress, Some(&TaskWorld))
}

#[cfg(test)]
mod tests {
    use super::*;
    use afm_data::augment::{apply, Transform};
    use afm_data::Resolver;

    /// A scripted record as `afm-data` reads it.
    fn scripted(task: &afm_tasks::Task) -> afm_format::Trajectory {
        let tr = afm_tasks::solve(task, &afm_tasks::AgentConfig::default()).unwrap();
        let v = serde_json::to_value(&tr).unwrap();
        afm_data::ingest::convert(&v, Format::Native, &Default::default(), "x").unwrap()
    }

    #[test]
    fn resolve_makes_a_new_verified_task() {
        let task = afm_tasks::generate(5, 1, 0).unwrap().0.remove(0);
        let src = scripted(&task);
        assert!(TaskWorld.can_resolve(&src));
        assert_eq!(afm_tasks::source_task(&src).unwrap().id, task.id);
        let a = apply(&src, Transform::Resolve(1), Some(&TaskWorld)).unwrap();
        assert_ne!(a.task, src.task);
        assert_eq!(a.success, Some(true));
        assert_eq!(a.meta.as_ref().unwrap()["augment"]["transform"], "resolve");
        assert_eq!(a.meta.as_ref().unwrap()["split"], "train");
        // Records without re-solve metadata are not eligible.
        let mut bare = src.clone();
        bare.meta = None;
        assert!(!TaskWorld.can_resolve(&bare));
        assert!(apply(&bare, Transform::Resolve(1), Some(&TaskWorld)).is_none());
    }

    /// The injected re-solver gives exactly what `afm-data` made before it
    /// stopped depending on `afm-tasks`: the re-solved trajectory's native
    /// JSON read back by the native reader.
    #[test]
    fn task_world_resolves_as_before() {
        let (tasks, _) = afm_tasks::generate(17, 120, 0).unwrap();
        let mut solved = 0;
        for (k, task) in tasks.iter().enumerate() {
            let src = scripted(task);
            let seed = k as u64 * 7919;
            let old = afm_tasks::perturb_and_solve(&afm_tasks::source_task(&src).unwrap(), seed)
                .map(|(_, tr)| {
                    let v = serde_json::to_value(&tr).unwrap();
                    afm_data::ingest::convert(&v, Format::Native, &Default::default(), &src.id)
                        .unwrap()
                });
            let new = TaskWorld.resolve(&src, seed);
            assert_eq!(new, old, "{}", task.id);
            solved += usize::from(new.is_some());
        }
        assert!(solved > 100, "{solved}");
    }
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
