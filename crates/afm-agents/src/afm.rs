//! The AFM runtime: one model plays every agent in a single generation.
//!
//! The prompt is `<|task|>` + segment(task). The model emits the agent role
//! tokens itself. When it emits `<|obs|>`, the runtime runs the interpreter
//! on the text of the last agent turn (the Coder's program) and feeds
//! `<|obs|>` + segment(observation) into the same KV cache, then generation
//! continues until `<|end|>`. A row that would exceed the context, the
//! decode budget or the tool-call budget fails with that reason (never a
//! crash).
//!
//! Batched: rows progress independently in one session; each step samples
//! one token for every live row and feeds, in one call, the sampled tokens
//! of the rows that go on together with the observations of the rows that
//! just called the tool.

use crate::env::{self, Limits, Task, Tool, Turn};
use crate::format;
use crate::lm::{Lm, Session};
use crate::model_lm::ModelLm;
use crate::trajectory::{RunStats, TaskRun, Validity};
use afm_model::{Model, Precision, SamplingConfig};
use afm_tokenizer::{Tokenizer, END, EOT, FIRST_ROLE_TOKEN, OBS, TASK};
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::time::Instant;

/// Options of both runtimes.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOptions {
    /// Tasks decoded together in one session (MAS: per agent step).
    pub batch: usize,
    /// AFM: most tokens sampled per task. MAS: most tokens sampled per agent turn.
    pub max_new_tokens: usize,
    /// Most tool calls per task.
    pub max_tool_calls: usize,
    /// MAS: most Coder retries requested by the Reviewer.
    pub max_retries: usize,
    /// Sampling temperature; 0 = greedy.
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: u64,
    /// Decode in bf16 (else f32).
    pub bf16: bool,
    /// Resource limits of each interpreter run.
    pub limits: Limits,
    /// The tool (the interpreter unless a test injects another).
    pub tool: Tool,
    /// AFM: the hand-offs the orchestration fixes, which the runtime writes
    /// itself instead of sampling (see [`Route`]). The MAS orchestrator
    /// always knows them.
    pub route: Route,
}

impl RunOptions {
    /// The sampling part of the options.
    pub fn sampling(&self) -> SamplingConfig {
        SamplingConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        }
    }

    /// The decoding precision.
    pub fn precision(&self) -> Precision {
        Precision::from_bf16(self.bf16)
    }
}

/// The hand-offs a chain's orchestration fixes: the agent that opens the
/// chain and the agent that reads each observation. The MAS orchestrator
/// calls these agents by construction; with a fixed route the AFM runtime
/// appends their role tokens as prefill too (jump-forward decoding of
/// tokens the protocol determines) instead of sampling them, so both
/// systems decode the same kind of tokens: every choice left to a model
/// (what to say, when to call the tool, whether to revise or answer) is
/// still the model's. [`Route::free`] leaves every role token to the model.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// The agent that opens every chain.
    pub first: Option<String>,
    /// The agent that speaks after every observation.
    pub after_tool: Option<String>,
}

impl Route {
    /// Every role token sampled by the model.
    pub fn free() -> Self {
        Self::default()
    }

    /// The task world's chain (`afm_tasks`): the Planner opens, the
    /// Reviewer reads each observation (what [`crate::mas::Mas`] does).
    pub fn task_world() -> Self {
        Self {
            first: Some(env::PLANNER.to_string()),
            after_tool: Some(env::REVIEWER.to_string()),
        }
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            batch: 1,
            max_new_tokens: 512,
            max_tool_calls: 4,
            max_retries: 2,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
            bf16: false,
            limits: Limits::default(),
            tool: Tool::default(),
            route: Route::free(),
        }
    }
}

/// What a sampled token means to the runtimes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Token {
    /// `<|end|>` (or `<|endoftext|>`): the chain is finished.
    End,
    /// `<|obs|>`: call the tool.
    Obs,
    /// `<|agent:X|>`: a new turn of agent X.
    Role(String),
    /// Plain text.
    Text,
    /// A token the model must never emit (`<|task|>`, unknown ids).
    Bad(String),
}

pub(crate) fn classify(tok: &Tokenizer, id: u32) -> Token {
    match id {
        END | EOT => Token::End,
        OBS => Token::Obs,
        TASK => Token::Bad("model emitted <|task|>".into()),
        id if id >= FIRST_ROLE_TOKEN => match tok.token_agent(id) {
            Some(a) => Token::Role(a.to_string()),
            None => Token::Bad(format!("token {id} is outside the vocabulary")),
        },
        _ => Token::Text,
    }
}

/// Decode the tokens of a turn the model sampled (all checked to be in the
/// vocabulary), the segment's leading space removed (`afm_format::layout`).
pub(crate) fn text_of(tok: &Tokenizer, ids: &[u32]) -> String {
    afm_format::layout::decode_segment(tok, ids).unwrap_or_else(|e| format!("<undecodable: {e}>"))
}

/// Count a step into per-agent validity.
pub(crate) fn count_validity(v: &mut BTreeMap<String, Validity>, agent: &str, ok: bool) {
    let e = v.entry(agent.to_string()).or_default();
    e.turns += 1;
    e.valid += usize::from(ok);
}

/// Run the tool on the last agent turn of `steps`, append the observation
/// step, and return its tokens (`<|obs|>` + segment(observation)) and, when
/// the tool itself failed (panicked), the reason the task fails.
pub(crate) fn call_tool(
    tok: &Tokenizer,
    opts: &RunOptions,
    steps: &mut Vec<Turn>,
    stats: &mut RunStats,
    validity: &mut BTreeMap<String, Validity>,
) -> (Vec<u32>, Option<String>) {
    let program = steps
        .iter()
        .rev()
        .find_map(|t| t.output.as_deref())
        .unwrap_or("");
    let result = env::run_tool_with(opts.tool, program, &opts.limits);
    stats.tool_calls += 1;
    stats.tool_successes += usize::from(result.ok);
    count_validity(validity, env::TOOL_AGENT, result.ok);
    let tokens = format::observation(tok, &result.text);
    steps.push(Turn::observation(env::TOOL_AGENT, result.text));
    (tokens, result.internal)
}

/// Fill in answer, success and per-agent validity of a finished run. A
/// chain that ended normally without any answer fails with `no final answer`.
pub(crate) fn finish(run: &mut TaskRun, task: &Task) {
    run.answer = run
        .trajectory
        .iter()
        .rev()
        .find_map(|t| t.output.as_deref().and_then(env::extract_answer));
    if run.failure.is_none() && run.answer.is_none() {
        run.failure = Some("no final answer".into());
    }
    run.success =
        run.failure.is_none() && run.answer.as_deref().is_some_and(|a| env::verify(task, a));
    for s in &run.trajectory {
        if let Some(output) = &s.output {
            count_validity(
                &mut run.validity,
                &s.agent,
                env::turn_valid(&s.agent, output),
            );
        }
    }
}

struct Row<'t> {
    task: &'t Task,
    steps: Vec<Turn>,
    /// The open agent turn: its agent and the tokens so far.
    open: Option<(String, Vec<u32>)>,
    unattributed: Vec<u32>,
    stats: RunStats,
    validity: BTreeMap<String, Validity>,
    failure: Option<String>,
    done: bool,
}

impl Row<'_> {
    fn close_turn(&mut self, tok: &Tokenizer) {
        if let Some((agent, ids)) = self.open.take() {
            self.steps.push(Turn::output(&agent, text_of(tok, &ids)));
        }
    }
    fn fail(&mut self, tok: &Tokenizer, reason: impl Into<String>) {
        self.close_turn(tok);
        self.failure = Some(reason.into());
        self.done = true;
    }
}

/// Run `tasks` with the AFM runtime on any [`Lm`], `opts.batch` at a time;
/// `on_done` sees each finished run (for progress bars).
pub fn run_tasks(
    lm: &dyn Lm,
    tasks: &[Task],
    opts: &RunOptions,
    on_done: &mut dyn FnMut(&TaskRun),
) -> Result<Vec<TaskRun>> {
    if opts.batch == 0 {
        bail!("batch size must be at least 1");
    }
    let mut out = Vec::with_capacity(tasks.len());
    for chunk in tasks.chunks(opts.batch) {
        for run in run_chunk(lm, chunk, opts)? {
            on_done(&run);
            out.push(run);
        }
    }
    Ok(out)
}

/// Run `tasks` with the AFM runtime on a model (sampling and precision from
/// `opts`), `opts.batch` at a time.
pub fn run_batch(model: &Model, tasks: &[Task], opts: &RunOptions) -> Result<Vec<TaskRun>> {
    run_batch_progress(model, tasks, opts, &mut |_| {})
}

/// [`run_batch`] with a callback per finished run.
pub fn run_batch_progress(
    model: &Model,
    tasks: &[Task],
    opts: &RunOptions,
    on_done: &mut dyn FnMut(&TaskRun),
) -> Result<Vec<TaskRun>> {
    opts.sampling().validate()?;
    let lm = ModelLm::new(model, opts.precision(), opts.sampling());
    run_tasks(&lm, tasks, opts, on_done)
}

/// [`run_tasks`] without a progress callback.
pub fn run_batch_lm(lm: &dyn Lm, tasks: &[Task], opts: &RunOptions) -> Result<Vec<TaskRun>> {
    run_tasks(lm, tasks, opts, &mut |_| {})
}

/// A routed agent with its role token (an error when the model lacks it).
fn routed<'a>(tok: &Tokenizer, agent: &'a Option<String>) -> Result<Option<(&'a str, u32)>> {
    agent
        .as_deref()
        .map(|a| Ok((a, format::role_token(tok, a)?)))
        .transpose()
}

fn run_chunk(lm: &dyn Lm, tasks: &[Task], opts: &RunOptions) -> Result<Vec<TaskRun>> {
    let tok = lm.tokenizer();
    let n_ctx = lm.n_ctx();
    let t0 = Instant::now();
    let mut sess: Box<dyn Session + '_> = lm.start(tasks.len())?;
    let mut rows: Vec<Row> = tasks
        .iter()
        .map(|task| Row {
            task,
            steps: Vec::new(),
            open: None,
            unattributed: Vec::new(),
            stats: RunStats::default(),
            validity: BTreeMap::new(),
            failure: None,
            done: false,
        })
        .collect();
    let mut finish_ms = vec![0.0; tasks.len()];

    let (first, after_tool) = (
        routed(tok, &opts.route.first)?,
        routed(tok, &opts.route.after_tool)?,
    );
    let mut feeds: Vec<(usize, Vec<u32>)> = Vec::new();
    for (i, row) in rows.iter_mut().enumerate() {
        let mut prompt = format::task_prompt(tok, &row.task.prompt);
        if let Some((agent, id)) = first {
            prompt.push(id);
            row.open = Some((agent.to_string(), Vec::new()));
        }
        if prompt.len() > n_ctx {
            row.fail(tok, "context full");
            continue;
        }
        row.stats.tokens_prefill += prompt.len();
        row.stats.calls = 1;
        feeds.push((i, prompt));
    }

    loop {
        if !feeds.is_empty() {
            sess.feed(&feeds)?;
            feeds.clear();
        }
        let live: Vec<usize> = (0..rows.len()).filter(|&i| !rows[i].done).collect();
        if live.is_empty() {
            break;
        }
        let sampled = sess.sample(&live)?;
        for (&i, &id) in live.iter().zip(&sampled) {
            let row = &mut rows[i];
            row.stats.tokens_decode += 1;
            let to_feed = match classify(tok, id) {
                Token::End => {
                    row.close_turn(tok);
                    row.done = true;
                    None
                }
                Token::Bad(why) => {
                    row.fail(tok, why);
                    None
                }
                Token::Role(agent) => {
                    row.close_turn(tok);
                    row.open = Some((agent, Vec::new()));
                    Some(vec![id])
                }
                Token::Text => {
                    match &mut row.open {
                        Some((_, ids)) => ids.push(id),
                        None => row.unattributed.push(id),
                    }
                    Some(vec![id])
                }
                Token::Obs => {
                    row.close_turn(tok);
                    if row.stats.tool_calls >= opts.max_tool_calls {
                        row.fail(tok, "tool-call budget");
                        None
                    } else {
                        let (obs, internal) =
                            call_tool(tok, opts, &mut row.steps, &mut row.stats, &mut row.validity);
                        if let Some(why) = internal {
                            row.fail(tok, why);
                            None
                        } else {
                            // The sampled `<|obs|>` is already obs[0]: only
                            // the observation text (and a routed role
                            // token) is prefill.
                            let mut obs = obs;
                            if let Some((agent, id)) = after_tool {
                                obs.push(id);
                                row.open = Some((agent.to_string(), Vec::new()));
                            }
                            row.stats.tokens_prefill += obs.len() - 1;
                            Some(obs)
                        }
                    }
                }
            };
            if let Some(ids) = to_feed {
                if row.stats.tokens_decode >= opts.max_new_tokens {
                    row.fail(tok, "token budget");
                } else if sess.row_len(i) + ids.len() > n_ctx {
                    row.fail(tok, "context full");
                } else {
                    feeds.push((i, ids));
                }
            }
            if row.done {
                finish_ms[i] = t0.elapsed().as_secs_f64() * 1e3;
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
                runtime: "afm".into(),
                failure: row.failure,
                unattributed: (!row.unattributed.is_empty())
                    .then(|| text_of(tok, &row.unattributed)),
                stats,
                validity: row.validity,
            };
            finish(&mut run, row.task);
            run
        })
        .collect())
}
