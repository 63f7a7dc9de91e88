//! Verbs of afm-tasks: `afm tasks generate` (verifiable task files) and
//! `afm agents run --scripted` (scripted reference trajectories) and `afm tool
//! run` (the agents' tool by hand).

use afm_tasks::{generate, load_tasks, save_tasks, save_trajectories, AgentConfig, Trajectory};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum Cmd {
    /// Verifiable tasks (generate the train/test task files).
    #[command(subcommand)]
    Tasks(TasksCmd),
    /// Run agents on task files and write native trajectories.
    #[command(subcommand)]
    Agents(AgentsCmd),
    /// The agents' tool (the bounded interpreter), by hand.
    #[command(subcommand)]
    Tool(ToolCmd),
}

#[derive(Subcommand)]
pub enum ToolCmd {
    /// Run one program exactly as the agents' runtimes do (same limits, same
    /// observation text, panics contained) and print the observation.
    /// A program that fails is an observation too (`error: ...`): the exit
    /// code is 0 whenever the tool ran; `--json` says `ok`.
    Run(ToolRunArgs),
}

#[derive(Args)]
pub struct ToolRunArgs {
    /// The program (or `--file`).
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub program: Option<String>,
    /// Read the program from a file (`-` for stdin).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Print a JSON object: program, observation, ok, millis, limits.
    #[arg(long)]
    pub json: bool,
    /// Evaluation steps allowed (default: the agents' limit).
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Wall-clock limit in milliseconds, 0 = none (default: the agents' limit).
    #[arg(long)]
    pub max_millis: Option<u64>,
}

#[derive(Subcommand)]
pub enum TasksCmd {
    /// Generate `train.jsonl` and `test.jsonl` (the fixed held-out split) into `--out`.
    Generate(GenerateArgs),
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Generator seed (same seed and counts: byte-identical files).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of train tasks.
    #[arg(long, default_value_t = 4000)]
    pub train: usize,
    /// Number of held-out test tasks.
    #[arg(long, default_value_t = 200)]
    pub test: usize,
    /// Output directory.
    #[arg(long, default_value = "datasets/tasks")]
    pub out: PathBuf,
}

#[derive(Subcommand)]
pub enum AgentsCmd {
    /// Run agents on a task file (`--scripted`: the rule-based reference agents).
    Run(AgentsRunArgs),
}

/// Arguments of `afm agents run`. The mode flag selects who plays the
/// agents; only `--scripted` exists so far (`--mas` will join it).
#[derive(Args)]
pub struct AgentsRunArgs {
    /// Use the scripted rule-based Planner, Coder and Reviewer.
    #[arg(long, conflicts_with = "mas")]
    pub scripted: bool,
    /// Use the multi-agent LM system: one checkpoint per agent,
    /// `Planner=CKPT,Coder=CKPT,Reviewer=CKPT` (greedy decoding).
    #[arg(long)]
    pub mas: Option<String>,
    /// Device of the MAS models (cpu, cuda, cuda:N, auto).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Tasks decoded together by the MAS.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Task file (JSONL of tasks, e.g. datasets/tasks/train.jsonl).
    #[arg(long)]
    pub tasks: PathBuf,
    /// Output JSONL of native trajectories.
    #[arg(long)]
    pub out: PathBuf,
    /// Probability of a plausible wrong plan.
    #[arg(long, default_value_t = 0.0)]
    pub plan_error_rate: f64,
    /// Probability of a plausible mistake in each Coder attempt.
    #[arg(long, default_value_t = 0.0)]
    pub code_error_rate: f64,
    /// Probability that the Reviewer accepts a wrong observation.
    #[arg(long, default_value_t = 0.0)]
    pub review_miss_rate: f64,
    /// Probability that the Reviewer miscopies a right observation.
    #[arg(long, default_value_t = 0.0)]
    pub answer_error_rate: f64,
    /// Coder attempts at most.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: usize,
    /// Seed of the agents' mistakes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Tasks(TasksCmd::Generate(a)) => tasks_generate(a),
        Cmd::Agents(AgentsCmd::Run(a)) => agents_run(a),
        Cmd::Tool(ToolCmd::Run(a)) => tool_run(a),
    }
}

fn tool_run(a: ToolRunArgs) -> anyhow::Result<()> {
    let program = match (&a.program, &a.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) if f.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .context("reading the program from stdin")?;
            s
        }
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the program from {}", f.display()))?,
        (None, None) => anyhow::bail!("give a PROGRAM or --file F"),
    };
    let defaults = afm_tasks::Limits::default();
    let limits = afm_tasks::Limits {
        fuel: a.fuel.unwrap_or(defaults.fuel),
        max_millis: a.max_millis.unwrap_or(defaults.max_millis),
        ..defaults
    };
    let t0 = std::time::Instant::now();
    let r = afm_agents::run_tool_with(afm_agents::Tool::default(), &program, &limits);
    let millis = t0.elapsed().as_secs_f64() * 1e3;
    if a.json {
        let v = serde_json::json!({
            "program": program,
            "observation": r.text,
            "ok": r.ok,
            "internal_error": r.internal,
            "millis": millis,
            "limits": {
                "fuel": limits.fuel,
                "max_weight": limits.max_weight,
                "max_depth": limits.depth(),
                "max_source": limits.max_source,
                "max_output": limits.max_output,
                "max_millis": limits.max_millis,
            },
        });
        println!("{v}");
    } else {
        println!("{}", r.text);
    }
    Ok(())
}

fn tasks_generate(a: GenerateArgs) -> anyhow::Result<()> {
    let (train, test) = generate(a.seed, a.train, a.test)?;
    let tp = a.out.join("train.jsonl");
    let sp = a.out.join("test.jsonl");
    save_tasks(&tp, &train)?;
    save_tasks(&sp, &test)?;
    eprintln!(
        "wrote {} train tasks to {} and {} test tasks to {}",
        train.len(),
        tp.display(),
        test.len(),
        sp.display()
    );
    Ok(())
}

fn agents_run(a: AgentsRunArgs) -> anyhow::Result<()> {
    if let Some(spec) = &a.mas {
        return agents_run_mas(&a, spec);
    }
    if !a.scripted {
        anyhow::bail!("choose who plays the agents: --scripted or --mas Planner=CKPT,Coder=CKPT,Reviewer=CKPT");
    }
    let cfg = AgentConfig {
        plan_error_rate: a.plan_error_rate,
        code_error_rate: a.code_error_rate,
        review_miss_rate: a.review_miss_rate,
        answer_error_rate: a.answer_error_rate,
        max_attempts: a.max_attempts,
        seed: a.seed,
        ..AgentConfig::default()
    };
    cfg.validate()?;
    let tasks = load_tasks(&a.tasks)?;
    let trajs = solve_scripted(&tasks, &cfg, &a.tasks.display().to_string())?;
    save_trajectories(&a.out, &trajs)?;
    eprintln!("wrote {} trajectories to {}", trajs.len(), a.out.display());
    eprint!("{}", summary(&trajs));
    Ok(())
}

/// The scripted agents' trajectory on every task, with a progress bar (see
/// [`afm_pipeline::solve_scripted`]).
fn solve_scripted(
    tasks: &[afm_tasks::Task],
    cfg: &AgentConfig,
    origin: &str,
) -> anyhow::Result<Vec<Trajectory>> {
    let bar = crate::progress::bar(tasks.len() as u64, "solve");
    let trajs = afm_pipeline::solve_scripted(tasks, cfg, origin, &mut || bar.inc(1));
    bar.finish_and_clear();
    trajs
}

/// Outcome counts and the token-length distribution of whole trajectories
/// as afm-data formats them: `<|task|>` + segment(task) + per turn a role
/// marker (or `<|obs|>`) + segment(text), + `<|end|>`.
fn summary(trajs: &[Trajectory]) -> String {
    let tok = afm_tokenizer::Tokenizer::gpt2();
    let mut buf = Vec::new();
    let mut seg = |text: &str| {
        buf.clear();
        afm_format::layout::encode_segment_into(&tok, text, &mut buf);
        buf.len()
    };
    let mut lens: Vec<usize> = trajs
        .iter()
        .map(|t| {
            2 + seg(&t.task)
                + t.trajectory
                    .iter()
                    .map(|s| 1 + seg(s.text()))
                    .sum::<usize>()
        })
        .collect();
    lens.sort_unstable();
    let n = trajs.len().max(1);
    let pct = |p: f64| {
        lens.get(((lens.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    let ok = trajs.iter().filter(|t| t.success).count();
    let mut by_agent = std::collections::BTreeMap::new();
    for t in trajs {
        if let Some(a) = &t.meta.erred_agent {
            *by_agent.entry(a.clone()).or_insert(0usize) += 1;
        }
    }
    let retried = trajs.iter().filter(|t| t.meta.attempts > 1).count();
    format!(
        "success {ok}/{} ({:.1}%), retried {retried}, failures by agent {by_agent:?}\n\
         tokens per trajectory (incl. markers): p50 {} p95 {} max {} (mean {:.1})\n",
        trajs.len(),
        100.0 * ok as f64 / n as f64,
        pct(0.5),
        pct(0.95),
        lens.last().copied().unwrap_or(0),
        lens.iter().sum::<usize>() as f64 / n as f64,
    )
}

/// The multi-agent LM system writes native trajectories (Chain-of-Agents
/// part 1: these can be prepared and trained on like the scripted ones).
fn agents_run_mas(a: &AgentsRunArgs, spec: &str) -> anyhow::Result<()> {
    use afm_agents::mas::Mas;
    let device = afm_model::parse_device(&a.device)?;
    let mas = Mas::load(&Mas::parse_spec(spec)?, device)?;
    let tasks = load_tasks(&a.tasks)?;
    let opts = afm_agents::RunOptions {
        batch: a.batch.max(1),
        seed: a.seed,
        ..afm_agents::RunOptions::default()
    };
    let bar = crate::progress::bar(tasks.len() as u64, "run");
    let runs =
        afm_agents::mas::write_trajectories(&mas, &tasks, &opts, &a.out, &mut |_| bar.inc(1))?;
    bar.finish_and_clear();
    let ok = runs.iter().filter(|r| r.success).count();
    eprintln!(
        "{} trajectories -> {} ({ok} successful, {:.1}%)",
        runs.len(),
        a.out.display(),
        100.0 * ok as f64 / runs.len().max(1) as f64
    );
    Ok(())
}
