//! The multi-agent LM system (the baseline): one model per agent.
//!
//! An orchestrator calls the agents in the order the task environment
//! defines (Planner -> Coder -> tool -> Reviewer; the Reviewer either gives
//! the final answer or sends the chain back to the Coder, at most
//! `max_retries` times). Each call is a fresh decoding session whose prompt
//! is the whole context so far, formatted by the one format rule, followed
//! by the agent's role token `<|agent:X|>`:
//!
//! `<|task|> task [<|agent:A|> output | <|obs|> observation]* <|agent:X|>`
//!
//! The role token IS the agent's instruction: each per-agent model was
//! trained on exactly this layout (its own turns are the only positions
//! with a loss), so no extra instruction text is added that the models
//! never saw in training. The agent generates until it emits any marker
//! token (a role token, `<|obs|>`, `<|end|>`); the marker is not kept.
//! After the Coder, the orchestrator runs the interpreter on the Coder's
//! output and appends `<|obs|>` + observation to the context.
//!
//! Because every call re-reads its whole context (prefill = full context),
//! the MAS pays the prefill again for every turn: that is the real cost the
//! AFM removes, and [`crate::trajectory::RunStats`] counts it.
//!
//! Batched: within a chunk of `opts.batch` tasks, each round calls each
//! agent once for all the tasks waiting for it (one session per agent per
//! round).

use crate::afm::{call_tool, classify, finish, text_of, RunOptions, Token};
use crate::env::{self, Task, Turn};
use crate::format;
use crate::lm::Lm;
use crate::model_lm::ModelLm;
use crate::trajectory::{RunStats, TaskRun, Validity};
use afm_model::Model;
use afm_tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::time::Instant;
use tch::Device;

/// The agents of the MAS, in the order the orchestrator may call them.
pub fn agent_order() -> [&'static str; 3] {
    [env::PLANNER, env::CODER, env::REVIEWER]
}

/// One model per agent, borrowed: the generic form of the MAS.
pub struct MasLms<'a> {
    agents: BTreeMap<String, &'a dyn Lm>,
}

impl<'a> MasLms<'a> {
    /// Pair each agent of [`agent_order`] with its model. Every agent needs
    /// a model, and all models must share one role vocabulary (the role
    /// tokens of the context must mean the same to each of them).
    pub fn new(agents: impl IntoIterator<Item = (String, &'a dyn Lm)>) -> Result<Self> {
        let agents: BTreeMap<String, &dyn Lm> = agents.into_iter().collect();
        for a in agent_order() {
            let lm = agents
                .get(a)
                .ok_or_else(|| anyhow!("MAS: no model for agent {a}"))?;
            format::role_token(lm.tokenizer(), a).with_context(|| format!("MAS model of {a}"))?;
        }
        for a in agents.keys() {
            if !agent_order().contains(&a.as_str()) {
                bail!(
                    "MAS: unknown agent {a:?} (the agents are {:?})",
                    agent_order()
                );
            }
        }
        let first = agents[env::PLANNER].tokenizer();
        for (a, lm) in &agents {
            if lm.tokenizer().roles() != first.roles() {
                bail!(
                    "MAS: the model of {a} has role vocabulary {:?}, the Planner's is {:?}",
                    lm.tokenizer().roles().agents(),
                    first.roles().agents()
                );
            }
            // The agents share one token context: every id one of them
            // writes must be an id the others can read.
            if lm.tokenizer().corpus() != first.corpus() {
                let size = |t: &Tokenizer| t.corpus().map(|c| c.n_bpe());
                bail!(
                    "MAS: the model of {a} has a different BPE vocabulary ({:?} corpus tokens) from the Planner's ({:?}): prepare every agent's data from the same inputs with the same corpus_vocab setting",
                    size(lm.tokenizer()),
                    size(first)
                );
            }
        }
        Ok(Self { agents })
    }

    fn tokenizer(&self) -> &Tokenizer {
        self.agents[env::PLANNER].tokenizer()
    }
}

/// How one agent turn ended.
enum TurnEnd {
    /// A marker token.
    Marker,
    /// Something that fails the task (context full, token budget, bad token).
    Fail(String),
}

struct TurnOut {
    tokens: Vec<u32>,
    end: TurnEnd,
    /// Accounting of this call for this row (prefill, decode, calls).
    stats: RunStats,
}

/// One call of one agent model for several contexts at once: a fresh
/// session, prefill of each `context + <|agent:X|>`, decode until a marker.
fn agent_call(
    lm: &dyn Lm,
    agent: &str,
    contexts: &[&[u32]],
    max_new_tokens: usize,
) -> Result<Vec<TurnOut>> {
    let tok = lm.tokenizer();
    let n_ctx = lm.n_ctx();
    let role = format::role_token(tok, agent)?;
    let mut outs: Vec<TurnOut> = contexts
        .iter()
        .map(|_| TurnOut {
            tokens: Vec::new(),
            end: TurnEnd::Marker,
            stats: RunStats::default(),
        })
        .collect();
    let mut live = vec![false; contexts.len()];
    let mut sess = lm.start(contexts.len())?;
    let mut feeds = Vec::new();
    for (i, ctx) in contexts.iter().enumerate() {
        let mut prompt = ctx.to_vec();
        prompt.push(role);
        if prompt.len() > n_ctx {
            outs[i].end = TurnEnd::Fail("context full".into());
            continue;
        }
        outs[i].stats.tokens_prefill += prompt.len();
        outs[i].stats.calls += 1;
        live[i] = true;
        feeds.push((i, prompt));
    }
    loop {
        if !feeds.is_empty() {
            sess.feed(&feeds)?;
            feeds.clear();
        }
        let rows: Vec<usize> = (0..live.len()).filter(|&i| live[i]).collect();
        if rows.is_empty() {
            break;
        }
        let sampled = sess.sample(&rows)?;
        for (&i, &id) in rows.iter().zip(&sampled) {
            outs[i].stats.tokens_decode += 1;
            match classify(tok, id) {
                Token::End | Token::Obs | Token::Role(_) => live[i] = false,
                Token::Bad(why) => {
                    outs[i].end = TurnEnd::Fail(why);
                    live[i] = false;
                }
                Token::Text => {
                    outs[i].tokens.push(id);
                    if outs[i].tokens.len() >= max_new_tokens {
                        outs[i].end = TurnEnd::Fail("token budget".into());
                        live[i] = false;
                    } else if sess.row_len(i) + 1 > n_ctx {
                        outs[i].end = TurnEnd::Fail("context full".into());
                        live[i] = false;
                    } else {
                        feeds.push((i, vec![id]));
                    }
                }
            }
        }
    }
    Ok(outs)
}

struct Row<'t> {
    task: &'t Task,
    context: Vec<u32>,
    steps: Vec<Turn>,
    next: Option<&'static str>,
    retries: usize,
    stats: RunStats,
    validity: BTreeMap<String, Validity>,
    failure: Option<String>,
}

/// Run `tasks` with the MAS, `opts.batch` tasks at a time; `on_done` sees
/// each finished run.
pub fn run_tasks(
    mas: &MasLms,
    tasks: &[Task],
    opts: &RunOptions,
    on_done: &mut dyn FnMut(&TaskRun),
) -> Result<Vec<TaskRun>> {
    if opts.batch == 0 {
        bail!("batch size must be at least 1");
    }
    let mut out = Vec::with_capacity(tasks.len());
    for chunk in tasks.chunks(opts.batch) {
        for run in run_chunk(mas, chunk, opts)? {
            on_done(&run);
            out.push(run);
        }
    }
    Ok(out)
}

fn run_chunk(mas: &MasLms, tasks: &[Task], opts: &RunOptions) -> Result<Vec<TaskRun>> {
    let tok = mas.tokenizer();
    let t0 = Instant::now();
    let mut rows: Vec<Row> = tasks
        .iter()
        .map(|task| Row {
            task,
            context: format::task_prompt(tok, &task.prompt),
            steps: Vec::new(),
            next: Some(env::PLANNER),
            retries: 0,
            stats: RunStats::default(),
            validity: BTreeMap::new(),
            failure: None,
        })
        .collect();
    let mut finish_ms = vec![0.0; tasks.len()];
    while rows.iter().any(|r| r.next.is_some()) {
        for agent in agent_order() {
            let idx: Vec<usize> = (0..rows.len())
                .filter(|&i| rows[i].next == Some(agent))
                .collect();
            if idx.is_empty() {
                continue;
            }
            let lm = mas.agents[agent];
            let contexts: Vec<&[u32]> = idx.iter().map(|&i| &rows[i].context[..]).collect();
            let outs = agent_call(lm, agent, &contexts, opts.max_new_tokens)?;
            for (&i, out) in idx.iter().zip(outs) {
                let row = &mut rows[i];
                row.stats.tokens_prefill += out.stats.tokens_prefill;
                row.stats.tokens_decode += out.stats.tokens_decode;
                row.stats.calls += out.stats.calls;
                let output = text_of(tok, &out.tokens);
                if let TurnEnd::Fail(why) = out.end {
                    if !out.tokens.is_empty() {
                        row.steps.push(Turn::output(agent, output));
                    }
                    row.failure = Some(why);
                    row.next = None;
                } else {
                    row.context.extend(format::agent_turn(tok, agent, &output)?);
                    row.steps.push(Turn::output(agent, output.clone()));
                    row.next = if agent == env::PLANNER {
                        Some(env::CODER)
                    } else if agent == env::CODER {
                        let (obs, internal) =
                            call_tool(tok, opts, &mut row.steps, &mut row.stats, &mut row.validity);
                        row.context.extend(obs);
                        if internal.is_some() {
                            row.failure = internal;
                            None
                        } else {
                            Some(env::REVIEWER)
                        }
                    } else if env::extract_answer(&output).is_some() {
                        None
                    } else if row.retries < opts.max_retries
                        && row.stats.tool_calls < opts.max_tool_calls
                    {
                        row.retries += 1;
                        Some(env::CODER)
                    } else {
                        row.failure = Some("no final answer".into());
                        None
                    };
                }
                if row.next.is_none() {
                    finish_ms[i] = t0.elapsed().as_secs_f64() * 1e3;
                }
            }
        }
    }
    let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
    let n = tasks.len();
    Ok(rows
        .into_iter()
        .enumerate()
        .map(|(i, row)| {
            let mut stats = row.stats;
            stats.close_batch(wall_ms, n, finish_ms[i]);
            let mut run = TaskRun {
                id: row.task.id.clone(),
                task: row.task.prompt.clone(),
                trajectory: row.steps,
                answer: None,
                success: false,
                runtime: "mas".into(),
                failure: row.failure,
                unattributed: None,
                stats,
                validity: row.validity,
            };
            finish(&mut run, row.task);
            run
        })
        .collect())
}

/// The MAS with its own models: one checkpoint per agent.
pub struct Mas {
    models: Vec<(String, Model)>,
}

impl Mas {
    /// Parse `Planner=DIR,Coder=DIR,Reviewer=DIR`.
    pub fn parse_spec(spec: &str) -> Result<Vec<(String, PathBuf)>> {
        let mut out: Vec<(String, PathBuf)> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (agent, dir) = part.split_once('=').ok_or_else(|| {
                anyhow!("--mas: {part:?} is not AGENT=CHECKPOINT (e.g. Planner=runs/planner)")
            })?;
            let agent = agent.trim();
            if !agent_order().contains(&agent) {
                bail!(
                    "--mas: unknown agent {agent:?} (the agents are {:?})",
                    agent_order()
                );
            }
            if out.iter().any(|(a, _)| a == agent) {
                bail!("--mas: agent {agent} is given twice");
            }
            out.push((agent.to_string(), PathBuf::from(dir.trim())));
        }
        for a in agent_order() {
            if !out.iter().any(|(x, _)| x == a) {
                bail!("--mas: no checkpoint for agent {a} (need Planner=..,Coder=..,Reviewer=..)");
            }
        }
        Ok(out)
    }

    /// Load one checkpoint per agent (see [`Mas::parse_spec`]).
    pub fn load(map: &[(String, PathBuf)], device: Device) -> Result<Self> {
        let mut models = Vec::new();
        for (agent, dir) in map {
            let m = Model::load(dir, device)
                .with_context(|| format!("loading the {agent} model from {}", dir.display()))?;
            models.push((agent.clone(), m));
        }
        Self::from_models(models)
    }

    /// Build from loaded models (checked like [`MasLms::new`]).
    pub fn from_models(models: Vec<(String, Model)>) -> Result<Self> {
        let mas = Self { models };
        mas.check()?;
        Ok(mas)
    }

    fn check(&self) -> Result<()> {
        let lms = self.lms(&RunOptions::default());
        MasLms::new(lms.iter().map(|(a, lm)| (a.clone(), lm as &dyn Lm)))?;
        Ok(())
    }

    /// The models, by agent.
    pub fn models(&self) -> &[(String, Model)] {
        &self.models
    }

    fn lms(&self, opts: &RunOptions) -> Vec<(String, ModelLm<'_>)> {
        self.models
            .iter()
            .map(|(a, m)| {
                (
                    a.clone(),
                    ModelLm::new(m, opts.precision(), opts.sampling()),
                )
            })
            .collect()
    }

    /// Run `tasks`, `opts.batch` at a time.
    pub fn run_batch(&self, tasks: &[Task], opts: &RunOptions) -> Result<Vec<TaskRun>> {
        self.run_batch_progress(tasks, opts, &mut |_| {})
    }

    /// [`Mas::run_batch`] with a callback per finished run.
    pub fn run_batch_progress(
        &self,
        tasks: &[Task],
        opts: &RunOptions,
        on_done: &mut dyn FnMut(&TaskRun),
    ) -> Result<Vec<TaskRun>> {
        opts.sampling().validate()?;
        let lms = self.lms(opts);
        let mas = MasLms::new(lms.iter().map(|(a, lm)| (a.clone(), lm as &dyn Lm)))?;
        run_tasks(&mas, tasks, opts, on_done)
    }
}

/// Run the MAS on `tasks` and write its trajectories to `out` as native
/// JSONL (`afm_tasks::Trajectory`, what `afm-data` ingests): the MAS
/// trajectories that can feed training. Returns the runs (with accounting).
pub fn write_trajectories(
    mas: &Mas,
    tasks: &[Task],
    opts: &RunOptions,
    out: &Path,
    on_done: &mut dyn FnMut(&TaskRun),
) -> Result<Vec<TaskRun>> {
    let runs = mas.run_batch_progress(tasks, opts, on_done)?;
    let native: Vec<afm_tasks::Trajectory> = runs
        .iter()
        .zip(tasks)
        .map(|(r, t)| r.to_native(t))
        .collect();
    afm_tasks::save_trajectories(out, &native)
        .with_context(|| format!("writing MAS trajectories to {}", out.display()))?;
    Ok(runs)
}
