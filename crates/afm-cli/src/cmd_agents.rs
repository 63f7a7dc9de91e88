//! Verbs of afm-agents: `afm eval` (AFM or MAS on a task file) and
//! `afm run` (one task, the chain printed agent by agent).

use crate::settings::Layers;
use afm_agents::mas::Mas;
use afm_agents::write_jsonl;
use afm_agents::{afm, RunOptions, TaskRun};
use afm_agents::{evaluate, load_reference, EvalConfig, EvalReport};
use afm_model::{parse_device, Model};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum Cmd {
    /// Evaluate the AFM (`--checkpoint`) or the multi-agent baseline
    /// (`--mas Planner=CKPT,Coder=CKPT,Reviewer=CKPT`) on a task file.
    Eval(EvalArgs),
    /// Run one task and print the chain agent by agent.
    Run(RunArgs),
}

/// Who plays the agents, and how to decode: fields of [`EvalConfig`]
/// (only the flags given are laid over `--config`).
#[derive(Args, Debug, Serialize)]
pub struct DecodeFlags {
    /// AFM checkpoint directory (one model plays every agent).
    #[arg(long, conflicts_with = "mas")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<PathBuf>,
    /// The MAS: one checkpoint per agent, `Planner=DIR,Coder=DIR,Reviewer=DIR`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mas: Option<String>,
    /// Device: cpu, cuda, cuda:N or auto [default: cpu].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Decode in bf16 (f32 otherwise).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub bf16: bool,
    /// libtorch intra-op CPU threads (0 = libtorch's choice). 1 is often
    /// fastest for small models on a busy CPU.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Sampling temperature (0 = greedy, the default).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Keep only the k most likely tokens when sampling.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// Nucleus sampling threshold.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Sampling seed.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// AFM: most tokens sampled per task; MAS: per agent turn [default: 512].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<usize>,
    /// Most interpreter calls per task [default: 4].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tool_calls: Option<usize>,
    /// MAS: most Coder retries the Reviewer may ask for [default: 2].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<usize>,
    /// AFM: sample every role token, the Planner's first and the Reviewer's
    /// after each observation included (default: the runtime writes those
    /// two, as the MAS orchestrator does; see `afm_agents::Route`).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub free_route: bool,
}

/// `afm eval`'s flags: the decoding ones and the task set's.
#[derive(Args, Debug, Serialize)]
pub struct EvalFlags {
    #[command(flatten)]
    #[serde(flatten)]
    pub decode: DecodeFlags,
    /// Task file (JSONL, e.g. datasets/tasks/test.jsonl).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<PathBuf>,
    /// Tasks decoded together [default: 1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// Evaluate only the first N tasks (0 = all).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Write the runs (trajectories + accounting) as JSONL.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out: Option<PathBuf>,
    /// Reference run (a previous `--out` file, or any JSONL/JSON of
    /// `{"id","answer"}` records) for final-answer agreement.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub layers: Layers,
    #[command(flatten)]
    pub flags: EvalFlags,
    /// Print one JSON object (the report) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub layers: Layers,
    #[command(flatten)]
    pub flags: DecodeFlags,
    /// The task text.
    #[arg(long)]
    pub task: String,
    /// The expected answer, to verify the final answer against.
    #[arg(long)]
    pub answer: Option<String>,
    /// Print the run as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: Cmd) -> anyhow::Result<()> {
    let result = match cmd {
        Cmd::Eval(a) => eval(a),
        Cmd::Run(a) => run_one(a),
    };
    // `afm eval | head`: a closed stdout ends the output quietly.
    match result {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// The loaded system: one AFM model or the MAS.
enum System {
    Afm(Box<Model>),
    Mas(Mas),
}

/// The configuration: defaults <- `--config` <- flags <- `--set`, validated.
fn resolve(layers: &Layers, flags: &impl Serialize) -> anyhow::Result<EvalConfig> {
    let c: EvalConfig = crate::settings::resolve(layers, flags)?;
    c.validate()?;
    Ok(c)
}

/// Load the system `c` names, with its thread count.
fn load(c: &EvalConfig) -> anyhow::Result<System> {
    if c.threads > 0 {
        tch::set_num_threads(c.threads as i32);
    }
    let device = parse_device(&c.device)?;
    match (&c.checkpoint, &c.mas) {
        (Some(dir), None) => Ok(System::Afm(Box::new(
            Model::load(dir, device)
                .with_context(|| format!("loading checkpoint {}", dir.display()))?,
        ))),
        (None, Some(spec)) => Ok(System::Mas(Mas::load(&Mas::parse_spec(spec)?, device)?)),
        _ => bail!("give --checkpoint DIR (AFM) or --mas Planner=DIR,Coder=DIR,Reviewer=DIR"),
    }
}

impl System {
    fn run(
        &self,
        tasks: &[afm_tasks::Task],
        opts: &RunOptions,
        on_done: &mut dyn FnMut(&TaskRun),
    ) -> anyhow::Result<Vec<TaskRun>> {
        match self {
            System::Afm(m) => afm::run_batch_progress(m, tasks, opts, on_done),
            System::Mas(m) => m.run_batch_progress(tasks, opts, on_done),
        }
    }
}

fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let c = resolve(&a.layers, &a.flags)?;
    let Some(path) = &c.tasks else {
        bail!("give --tasks FILE (JSONL, e.g. datasets/tasks/test.jsonl)");
    };
    let mut tasks = afm_tasks::load_tasks(path)?;
    if c.limit > 0 {
        tasks.truncate(c.limit);
    }
    if tasks.is_empty() {
        bail!("{}: no tasks to evaluate", path.display());
    }
    let reference = c.compare.as_deref().map(load_reference).transpose()?;
    let system = load(&c)?;
    let opts = c.run_options();

    let bar = crate::progress::bar(tasks.len() as u64, "eval");
    let mut ok = 0usize;
    let mut done = 0usize;
    let runs = system.run(&tasks, &opts, &mut |r| {
        done += 1;
        ok += usize::from(r.success);
        bar.inc(1);
        bar.set_message(format!("success {ok}/{done}"));
    })?;
    bar.finish_and_clear();

    if let Some(out) = &c.out {
        write_jsonl(&runs, out)?;
    }
    let report = evaluate(&runs, reference.as_deref());
    if report.compared == Some(0) {
        eprintln!(
            "afm: warning: no task id of the run is in the reference; agreement is 0 by definition"
        );
    }
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        print_report(&mut out, &report)?;
        if let Some(path) = &c.out {
            writeln!(out, "runs written to {}", path.display())?;
        }
    }
    Ok(())
}

fn print_report(out: &mut impl Write, r: &EvalReport) -> std::io::Result<()> {
    writeln!(
        out,
        "{} on {} tasks (batch {}): success {}/{} = {:.3}",
        r.runtime, r.tasks, r.batch_size, r.successes, r.tasks, r.success_rate
    )?;
    if let (Some(agree), Some(n)) = (r.answer_agreement, r.compared) {
        writeln!(
            out,
            "answer agreement with the reference: {agree:.3} over {n} common tasks"
        )?;
    }
    writeln!(
        out,
        "tokens: prefill {} ({:.1}/task), decode {} ({:.1}/task); calls {} ({:.2}/task); tool calls {} ({} ok)",
        r.tokens_prefill,
        r.tokens_prefill_per_task,
        r.tokens_decode,
        r.tokens_decode_per_task,
        r.calls,
        r.calls_per_task,
        r.tool_calls,
        r.tool_successes
    )?;
    writeln!(
        out,
        "latency per task (amortised over the batch): p50 {:.1} ms, p95 {:.1} ms, mean {:.1} ms; wall {:.0} ms",
        r.latency_ms_p50, r.latency_ms_p95, r.latency_ms_mean, r.wall_ms
    )?;
    for (agent, v) in &r.validity {
        writeln!(
            out,
            "  {agent:<12} valid {}/{} = {:.3}",
            v.valid, v.turns, v.rate
        )?;
    }
    for (why, n) in &r.failures {
        writeln!(out, "  failed: {why}: {n}")?;
    }
    Ok(())
}

fn run_one(a: RunArgs) -> anyhow::Result<()> {
    if a.task.trim().is_empty() {
        bail!("--task is empty");
    }
    let c = EvalConfig {
        batch: 1,
        ..resolve(&a.layers, &a.flags)?
    };
    let system = load(&c)?;
    let task = afm_tasks::Task {
        id: "cli".into(),
        family: String::new(),
        op: String::new(),
        level: 1,
        prompt: a.task.clone(),
        inputs: serde_json::Value::Null,
        answer: a.answer.clone().unwrap_or_default(),
    };
    let runs = system.run(std::slice::from_ref(&task), &c.run_options(), &mut |_| {})?;
    let Some(run) = runs.first() else {
        bail!("the runtime returned no run");
    };
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(run)?)?;
        return Ok(());
    }
    writeln!(out, "[task] {}", run.task)?;
    if let Some(u) = &run.unattributed {
        writeln!(out, "[no agent] {u}")?;
    }
    for t in &run.trajectory {
        match (&t.output, &t.observation) {
            (Some(o), _) => writeln!(out, "[{}] {o}", t.agent)?,
            (None, Some(o)) => writeln!(out, "[{} -> observation] {o}", t.agent)?,
            (None, None) => writeln!(out, "[{}]", t.agent)?,
        }
    }
    match &run.answer {
        Some(ans) => writeln!(out, "answer: {ans}")?,
        None => writeln!(out, "answer: (none)")?,
    }
    if a.answer.is_some() {
        writeln!(out, "correct: {}", run.success)?;
    }
    if let Some(f) = &run.failure {
        writeln!(out, "failed: {f}")?;
    }
    let s = &run.stats;
    writeln!(
        out,
        "{}: prefill {} tokens, decode {} tokens, {} model call(s), {} tool call(s) ({} ok), {:.1} ms",
        run.runtime,
        s.tokens_prefill,
        s.tokens_decode,
        s.calls,
        s.tool_calls,
        s.tool_successes,
        s.latency_ms
    )?;
    Ok(())
}
