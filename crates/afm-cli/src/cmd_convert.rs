//! `afm convert`: any input format (or a prepared dataset) to native JSONL
//! or a trainer's text format (`afm_data::export`), every record accounted.

use afm_data::export::{axolotl, coa, native, prepared, sharegpt};
use afm_data::ingest::{self, Invalid, Location, Parsed};
use afm_data::{AgentWeights, AgentsMap, Format, IngestLimits};
use afm_format::Trajectory;
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// What `--to` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// afm's native JSONL (every field, `meta` included).
    Native,
    /// LLaMA-Factory ShareGPT (`conversations`), plus a dataset_info.json entry.
    #[value(alias = "llama-factory")]
    Sharegpt,
    /// axolotl chat_template (`messages` with per-message `train`), plus a config snippet.
    Axolotl,
    /// Chain-of-Agents tags (alpaca row for CoA's LLaMA-Factory), plus a dataset_info.json entry.
    Coa,
}

impl Target {
    /// The `--to` name.
    fn name(self) -> &'static str {
        match self {
            Target::Native => "native",
            Target::Sharegpt => "sharegpt",
            Target::Axolotl => "axolotl",
            Target::Coa => "coa",
        }
    }
}

/// Which split of a prepared dataset to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Split {
    Train,
    Val,
    All,
}

#[derive(Args)]
#[command(after_help = "\
Formats written (crates/afm-data/README.md, section Exports, says what each keeps and loses):
  native    afm's JSONL; everything kept. Read back with --format native.
  sharegpt  LLaMA-Factory `formatting: sharegpt`. Trained turns (agent weight > 0) are gpt
            messages, the rest human/observation; merged turns keep who spoke as
            <|agent:NAME|> / <|obs:NAME|> text; steps after the last trained turn are dropped.
            Also writes OUT-STEM.dataset_info.json (merge it into LLaMA-Factory's).
  axolotl   `type: chat_template`; one message per step, agent in `name`, `train` from the
            agent weights. Also writes OUT-STEM.axolotl.yml.
  coa       Chain-of-Agents: {instruction, input, output} with <agent>..</agent> and
            <observation>..</observation> tags (names lower-cased); weights not carried.
            Also writes OUT-STEM.dataset_info.json.
Each rejected record goes to OUT-STEM.rejects.jsonl as {file, line, record, reason, message}.")]
pub struct ConvertArgs {
    /// Input files or directories (all .json/.jsonl/.ndjson inside, sorted). A directory
    /// holding a prepared dataset (manifest.json) gives the records it was made from, with
    /// its format, agents map, filters and weights.
    #[arg(long, num_args = 1.., required = true)]
    pub input: Vec<PathBuf>,
    /// Input format: auto, native, ag2, messages, sharegpt, coa-tags.
    #[arg(long, default_value = "auto")]
    pub format: Format,
    /// TOML file renaming agents and marking observation agents.
    #[arg(long)]
    pub agents_map: Option<PathBuf>,
    /// Loss weight of an agent, NAME=W (repeatable; sharegpt and axolotl: W > 0 is trained).
    #[arg(long = "agent-weight")]
    pub agent_weight: Vec<String>,
    /// Train only this agent's turns (sharegpt and axolotl).
    #[arg(long)]
    pub only_agent: Option<String>,
    /// Output format.
    #[arg(long, value_enum)]
    pub to: Target,
    /// For a prepared dataset: the split to write.
    #[arg(long, value_enum, default_value = "train")]
    pub split: Split,
    /// Longest accepted text field in bytes (default 1 MiB).
    #[arg(long)]
    pub max_field_bytes: Option<usize>,
    /// Output JSONL file.
    #[arg(long)]
    pub out: PathBuf,
}

/// Where the records go, and the counts.
struct Sink {
    to: Target,
    weights: AgentWeights,
    out: BufWriter<File>,
    out_path: PathBuf,
    rejects: BufWriter<File>,
    rejects_path: PathBuf,
    total: usize,
    written: usize,
    /// sharegpt: records with no trained turn.
    untrained: usize,
    other_split: usize,
    filtered: BTreeMap<String, usize>,
    rejected: BTreeMap<&'static str, usize>,
    agents: BTreeSet<String>,
}

impl Sink {
    fn kept(&mut self, t: &Trajectory, weights: &AgentWeights) -> anyhow::Result<()> {
        self.total += 1;
        for s in &t.steps {
            if !self.agents.contains(&s.agent) {
                self.agents.insert(s.agent.clone());
            }
        }
        let line = match self.to {
            Target::Native => native::line(t),
            Target::Sharegpt => match sharegpt::record(t, weights) {
                Some(v) => v.to_string(),
                None => {
                    self.untrained += 1;
                    return Ok(());
                }
            },
            Target::Axolotl => axolotl::record(t, weights).to_string(),
            Target::Coa => coa::record(t).to_string(),
        };
        self.written += 1;
        writeln!(self.out, "{line}").with_context(|| format!("writing {}", self.out_path.display()))
    }

    fn reject(&mut self, loc: &Location, inv: &Invalid) -> anyhow::Result<()> {
        self.total += 1;
        let reason = inv.reason.key();
        *self.rejected.entry(reason).or_default() += 1;
        let line = ingest::RejectLine::new(loc, inv);
        serde_json::to_writer(&mut self.rejects, &line)
            .map_err(anyhow::Error::from)
            .and_then(|_| Ok(self.rejects.write_all(b"\n")?))
            .with_context(|| format!("writing {}", self.rejects_path.display()))
    }
}

/// `OUT` with its extension replaced: `dir/afm.jsonl` -> `dir/afm.SUFFIX`.
fn beside(out: &Path, suffix: &str) -> PathBuf {
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    out.with_file_name(format!("{stem}.{suffix}"))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

pub fn run(a: ConvertArgs) -> anyhow::Result<()> {
    let flag_weights = a.only_agent.is_some() || !a.agent_weight.is_empty();
    if flag_weights && matches!(a.to, Target::Native | Target::Coa) {
        bail!(
            "--only-agent/--agent-weight choose trained turns for --to sharegpt or axolotl; --to {} carries no weights",
            a.to.name()
        );
    }
    let weights = crate::cmd_data::agent_weights(a.only_agent.as_deref(), &a.agent_weight)?;
    let map = match &a.agents_map {
        Some(p) => AgentsMap::load(p)?,
        None => AgentsMap::default(),
    };
    let mut limits = IngestLimits::default();
    if let Some(n) = a.max_field_bytes {
        limits.max_field_bytes = n;
    }
    let (preps, raws): (Vec<PathBuf>, Vec<PathBuf>) = a
        .input
        .iter()
        .cloned()
        .partition(|p| p.is_dir() && prepared::is_prepared(p));
    if !preps.is_empty() && (a.format != Format::Auto || a.agents_map.is_some()) {
        bail!(
            "--format and --agents-map do not apply to a prepared dataset ({}): its manifest.json fixes them",
            preps[0].display()
        );
    }
    let files = ingest::expand_inputs(&raws)?;
    if files.is_empty() && preps.is_empty() {
        bail!("no input files (.json, .jsonl, .ndjson) in {:?}", a.input);
    }
    let every_input = files.iter().cloned().chain(
        preps
            .iter()
            .map(|d| prepared::input_files(d))
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .flatten(),
    );
    for f in every_input {
        if same_file(&f, &a.out) {
            bail!("--out {} is also an input", a.out.display());
        }
    }
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = beside(&a.out, "jsonl.partial");
    let rejects_path = beside(&a.out, "rejects.jsonl");
    let create = |p: &Path| -> anyhow::Result<BufWriter<File>> {
        Ok(BufWriter::new(
            File::create(p).with_context(|| format!("creating {}", p.display()))?,
        ))
    };
    let mut sink = Sink {
        to: a.to,
        weights: weights.clone(),
        out: create(&tmp)?,
        out_path: tmp.clone(),
        rejects: create(&rejects_path)?,
        rejects_path: rejects_path.clone(),
        total: 0,
        written: 0,
        untrained: 0,
        other_split: 0,
        filtered: BTreeMap::new(),
        rejected: BTreeMap::new(),
        agents: BTreeSet::new(),
    };
    let result = convert_all(&a, &files, &preps, &map, &limits, &mut sink);
    let result = result.and_then(|()| {
        sink.out.flush().context("flushing the output")?;
        sink.rejects.flush().context("flushing the rejects")?;
        check_weight_names(&sink)
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &a.out)
        .with_context(|| format!("moving {} to {}", tmp.display(), a.out.display()))?;
    let n_files = files.len() + preps.len();
    println!("{}", summary(&sink, n_files, &a));
    println!(
        "wrote {} ({} rows, --to {})",
        a.out.display(),
        sink.written,
        a.to.name()
    );
    let rejected: usize = sink.rejected.values().sum();
    if rejected > 0 {
        println!(
            "rejects with file, line and message: {}",
            rejects_path.display()
        );
    }
    write_sidecar(&a)
}

/// Each input record: read, normalise by the agents map, write or reject.
fn convert_all(
    a: &ConvertArgs,
    files: &[PathBuf],
    preps: &[PathBuf],
    map: &AgentsMap,
    limits: &IngestLimits,
    sink: &mut Sink,
) -> anyhow::Result<()> {
    let total_bytes: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let bar = crate::progress::bar(total_bytes, "convert");
    bar.set_style(crate::progress::bytes_style());
    let mut before = 0u64;
    let weights = sink.weights.clone();
    for f in files {
        let mut fatal = None;
        ingest::for_each_batch(
            f,
            a.format,
            limits,
            ingest::BatchSize::default(),
            |batch: Vec<Parsed>, info| {
                bar.set_position(before + info.bytes_read);
                for p in batch {
                    if fatal.is_some() {
                        return;
                    }
                    let r = match p.result.and_then(|t| ingest::normalise(t, map)) {
                        Ok(t) => sink.kept(&t, &weights),
                        Err(inv) => sink.reject(&p.loc, &inv),
                    };
                    if let Err(e) = r {
                        fatal = Some(e);
                    }
                }
            },
        )?;
        if let Some(e) = fatal {
            return Err(e);
        }
        before += std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
    }
    bar.finish_and_clear();
    for dir in preps {
        // The dataset's own weights unless the flags give others.
        let weights = if a.only_agent.is_some() || !a.agent_weight.is_empty() {
            weights.clone()
        } else {
            afm_data::read_manifest(dir)?.config.weights
        };
        let mut fatal = None;
        let walk = prepared::for_each_record(dir, |loc, o| {
            if fatal.is_some() {
                return;
            }
            let r = match o {
                prepared::Outcome::Kept { trajectory, val } => {
                    let wanted = match a.split {
                        Split::All => true,
                        Split::Train => !val,
                        Split::Val => val,
                    };
                    if wanted {
                        sink.kept(&trajectory, &weights)
                    } else {
                        sink.total += 1;
                        sink.other_split += 1;
                        Ok(())
                    }
                }
                prepared::Outcome::Filtered(why) => {
                    sink.total += 1;
                    *sink.filtered.entry(why).or_default() += 1;
                    Ok(())
                }
                prepared::Outcome::Rejected(inv) => sink.reject(loc, &inv),
            };
            if let Err(e) = r {
                fatal = Some(e);
            }
        })?;
        if let Some(e) = fatal {
            return Err(e);
        }
        walk.check().with_context(|| {
            format!("{}: prepare it again, or convert its inputs", dir.display())
        })?;
    }
    Ok(())
}

/// `--only-agent`/`--agent-weight` must name agents of the data (as `afm
/// prepare` requires).
fn check_weight_names(sink: &Sink) -> anyhow::Result<()> {
    let w = &sink.weights;
    for name in w.weights.keys().chain(w.only.iter()) {
        if !sink.agents.contains(name) {
            bail!(
                "agent {name:?} (in --agent-weight/--only-agent) is not in the data; agents: {:?}",
                sink.agents
            );
        }
    }
    Ok(())
}

/// `read N records from F input(s): written W, ...`: every record counted once.
fn summary(s: &Sink, n_inputs: usize, a: &ConvertArgs) -> String {
    let list = |m: &mut dyn Iterator<Item = (String, usize)>| {
        m.map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = vec![format!("written {}", s.written)];
    if s.untrained > 0 {
        parts.push(format!(
            "skipped {} (no trained turn: LLaMA-Factory needs one)",
            s.untrained
        ));
    }
    if s.other_split > 0 {
        let split = a
            .split
            .to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_string());
        parts.push(format!("not in --split {split} {}", s.other_split));
    }
    let filtered: usize = s.filtered.values().sum();
    if filtered > 0 {
        let l = list(&mut s.filtered.iter().map(|(k, n)| (k.clone(), *n)));
        parts.push(format!("filtered {filtered} ({l})"));
    }
    let rejected: usize = s.rejected.values().sum();
    let l = list(&mut s.rejected.iter().map(|(k, n)| (k.to_string(), *n)));
    parts.push(if rejected > 0 {
        format!("rejected {rejected} ({l})")
    } else {
        "rejected 0".into()
    });
    format!(
        "read {} records from {n_inputs} input(s): {}",
        s.total,
        parts.join(", ")
    )
}

/// The trainer's side file: a `dataset_info.json` entry (sharegpt, coa) or
/// an axolotl `datasets:` snippet, named after `--out`.
fn write_sidecar(a: &ConvertArgs) -> anyhow::Result<()> {
    let file_name = a
        .out
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("out.jsonl")
        .to_string();
    let stem = a.out.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    let (path, text, what) = match a.to {
        Target::Native => return Ok(()),
        Target::Sharegpt | Target::Coa => {
            let entry = if a.to == Target::Sharegpt {
                sharegpt::dataset_info(&file_name)
            } else {
                coa::dataset_info(&file_name)
            };
            let v = serde_json::json!({ stem: entry });
            (
                beside(&a.out, "dataset_info.json"),
                serde_json::to_string_pretty(&v)? + "\n",
                format!(
                    "LLaMA-Factory: add entry {stem:?} to dataset_info.json in the directory holding {file_name}{}",
                    if a.to == Target::Coa {
                        " (train with CoA's --ignore_observation true --ignore_observation_token observation)"
                    } else {
                        ""
                    }
                ),
            )
        }
        Target::Axolotl => (
            beside(&a.out, "axolotl.yml"),
            axolotl::config(&a.out.display().to_string()),
            "axolotl: use these `datasets:` lines in your config".to_string(),
        ),
    };
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("{what}: {}", path.display());
    Ok(())
}
