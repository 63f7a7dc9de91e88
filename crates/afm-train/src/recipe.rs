//! The training recipe: [`Trainer`] lays a run out the way torchtune's
//! recipes and the Hugging Face `Trainer` do, as one readable object:
//!
//! - [`Trainer::setup`]: resume or start, data, model, teachers, optimiser;
//! - [`Trainer::step`]: one optimiser step on the next rows, at the
//!   schedule's learning rate, logged every `log_interval` steps;
//! - [`Trainer::evaluate`]: validation on the fixed sample, best and
//!   patience bookkeeping;
//! - [`Trainer::checkpoint`]: an exact, resumable checkpoint;
//! - [`Trainer::finish`]: the last evaluation and checkpoint, `final/`
//!   and `summary.json`;
//! - [`Trainer::run`]: the loop over those, with the stopping rules (steps,
//!   time budget, patience) and snapshots.
//!
//! The library draws nothing: progress goes through [`Progress`], which
//! the CLI renders as a bar. [`train`] runs a whole recipe with
//! [`Lines`] (evaluation lines on stderr).

use crate::checkpoint::{self, TrainerState};
use crate::config::{FinalWeights, TrainConfig};
use crate::data::{check_ids, make_batch, Batch, Cursor, RowOrder, RowStream};
use crate::metrics::{Metrics, Record};
use crate::optim::{lr_at, run_decay, AdamW};
use crate::teacher::Teachers;
use crate::trainer::{
    evaluate, owner_label, train_step, val_sample, EvalResult, StepStats, StopReason, TrainSummary,
};
use afm_format::shards::Shards;
use afm_model::{weight_decay_applies, GptConfig, Model, Precision};
use afm_tokenizer::atomic;
use afm_tokenizer::Tokenizer;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Device;

/// Where a run reports what it is doing. Every method has a default, so an
/// implementation overrides only what it shows.
pub trait Progress {
    /// The loop starts at `step` (more than 0 when resumed) of `total`.
    fn start(&mut self, _step: usize, _total: usize) {}
    /// Step `step` is done; `status` ("loss 0.41  12000 tok/s") comes at
    /// each log interval.
    fn step(&mut self, _step: usize, _status: Option<&str>) {}
    /// A line for the user: an evaluation, a warning.
    fn line(&mut self, line: &str) {
        eprintln!("{line}");
    }
    /// The loop is over.
    fn finish(&mut self) {}
}

/// [`Progress`] as lines on stderr (evaluations and warnings), no bar.
pub struct Lines;

impl Progress for Lines {}

/// Train as configured, reporting through [`Lines`]. See the crate docs for
/// the files written.
pub fn train(cfg: &TrainConfig) -> anyhow::Result<TrainSummary> {
    train_with(cfg, &mut Lines)
}

/// Train as configured, reporting through `progress`.
pub fn train_with(cfg: &TrainConfig, progress: &mut dyn Progress) -> anyhow::Result<TrainSummary> {
    Trainer::setup(cfg)?.run(progress)
}

/// The steps since the last log line: their summed [`StepStats`] and the
/// clock (the one accumulator of train records).
struct Window {
    sum: StepStats,
    steps: usize,
    since: Instant,
}

impl Window {
    fn new() -> Self {
        Self {
            sum: StepStats::default(),
            steps: 0,
            since: Instant::now(),
        }
    }

    fn push(&mut self, st: &StepStats) {
        self.sum.absorb(st);
        self.steps += 1;
    }

    /// Input positions per second over the window.
    fn tokens_per_s(&self) -> f64 {
        self.sum.positions as f64 / self.since.elapsed().as_secs_f64().max(1e-9)
    }
}

/// What [`Trainer::step`] did.
pub struct Stepped {
    /// The step's sums (loss, weights, positions, gradient norm).
    pub stats: StepStats,
    /// The learning rate it used.
    pub lr: f64,
    /// A status line ("loss 0.41  12000 tok/s") at each log interval, when
    /// a train record was appended to `metrics.jsonl`.
    pub status: Option<String>,
}

/// What [`Trainer::evaluate`] measured, and whether it is the best so far.
pub struct Evaluated {
    pub result: EvalResult,
    pub improved: bool,
}

/// One training run, from setup to `final/` (see the module docs).
pub struct Trainer {
    cfg: TrainConfig,
    run: PathBuf,
    /// When this invocation started (the time budget counts it plus
    /// `state.train_secs` of earlier invocations).
    started: Instant,
    budget: Option<f64>,
    precision: Precision,
    device: Device,
    data_tok: Tokenizer,
    train_set: Shards,
    val_set: Option<Shards>,
    val_rows: Vec<usize>,
    model: Model,
    teachers: Teachers,
    opt: AdamW,
    state: TrainerState,
    metrics: Metrics,
    stream: RowStream,
    window: Window,
    last_eval: Option<(usize, EvalResult)>,
    positions_this_run: u64,
    loop_start: Instant,
}

impl Trainer {
    /// Start the run configured by `cfg_in`, or resume it from its latest
    /// checkpoint (`resume = true`): the data, the model, the teachers (or
    /// their top-k cache), the optimiser and the row stream.
    pub fn setup(cfg_in: &TrainConfig) -> anyhow::Result<Self> {
        cfg_in.validate()?;
        let started = Instant::now();
        let run = cfg_in.out.clone();
        std::fs::create_dir_all(&run).with_context(|| format!("creating {}", run.display()))?;
        checkpoint::clean_stale(&run);
        let resume_from = latest_checkpoint(&run, cfg_in.resume)?;
        let (cfg, state0) = match &resume_from {
            Some(dir) => {
                let (state, saved) = checkpoint::read_meta(dir)?;
                (merge_resume_config(&saved, cfg_in, dir)?, Some(state))
            }
            None => (cfg_in.clone(), None),
        };
        let budget = cfg.time_budget_secs()?;
        if cfg.threads > 0 {
            tch::set_num_threads(cfg.threads as i32);
        }
        let device = afm_model::parse_device(&cfg.device)?;
        let precision = Precision::from_bf16(cfg.bf16);

        let data_tok = read_vocab(&cfg.data)?;
        let (train_set, val_set) = open_splits(&cfg.data)?;
        let model = match &resume_from {
            Some(dir) => Model::load(dir, device)
                .with_context(|| format!("--resume: loading {}", dir.display()))?,
            None => build_model(&cfg, &data_tok, device)?,
        };
        check_fits(&model, &data_tok, &cfg.data, &train_set, val_set.as_ref())?;
        let teachers = load_teachers(&cfg, &run, &model, &train_set, device, precision)?;

        let mut opt = AdamW::new(model.named_parameters(), &cfg.optim, weight_decay_applies);
        let per_step = cfg.batch_size * cfg.grad_accum;
        let total_steps = if cfg.max_steps > 0 {
            cfg.max_steps
        } else {
            (cfg.epochs * train_set.rows()).div_ceil(per_step).max(1)
        };
        let state = match (&resume_from, state0) {
            (Some(dir), Some(s)) => {
                opt.load(&dir.join(checkpoint::OPTIMIZER_FILE))?;
                if s.total_steps != total_steps {
                    bail!(
                        "--resume: the checkpoint's run has {} steps, this one {total_steps}",
                        s.total_steps
                    );
                }
                s
            }
            _ => TrainerState {
                step: 0,
                total_steps,
                cursor: Cursor::default(),
                seed: cfg.seed,
                tokens_seen: 0,
                best_val_loss: None,
                best_step: None,
                evals_since_best: 0,
                train_secs: 0.0,
            },
        };
        let metrics = Metrics::open(&run, resume_from.as_ref().map(|_| state.step))?;
        atomic::write(&run.join("train_config.toml"), cfg.to_toml()?)
            .with_context(|| format!("writing {}", run.join("train_config.toml").display()))?;
        let order = RowOrder::of_index(&train_set.index);
        let stream = RowStream::new(train_set.rows(), cfg.seed, order, state.cursor);
        let val_rows = val_set
            .as_ref()
            .map(|v| val_sample(v, cfg.eval_batches * cfg.batch_size))
            .unwrap_or_default();
        Ok(Self {
            cfg,
            run,
            started,
            budget,
            precision,
            device,
            data_tok,
            train_set,
            val_set,
            val_rows,
            model,
            teachers,
            opt,
            state,
            metrics,
            stream,
            window: Window::new(),
            last_eval: None,
            positions_this_run: 0,
            loop_start: Instant::now(),
        })
    }

    /// The student.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The effective configuration (the checkpoint's, when resumed).
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Steps done, schedule length, data cursor, best so far.
    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    /// Training seconds of the run so far, all invocations.
    pub fn train_secs(&self) -> f64 {
        self.state.train_secs + self.started.elapsed().as_secs_f64()
    }

    /// True when the time budget is spent.
    pub fn out_of_time(&self) -> bool {
        self.budget.is_some_and(|b| self.train_secs() >= b)
    }

    /// Fraction of the run done: of its steps, or of its time budget when
    /// that is further along (the schedule's clock).
    fn done_fraction(&self) -> f64 {
        let total = self.state.total_steps;
        run_decay(
            &self.cfg.optim,
            self.state.step,
            total,
            self.train_secs(),
            self.budget,
        )
        .max(self.state.step as f64 / total as f64)
    }

    /// One optimiser step on the next `grad_accum` micro-batches at the
    /// schedule's learning rate. Every `log_interval` steps (and at the last
    /// step) it appends a train record to `metrics.jsonl` and returns a
    /// status line.
    pub fn step(&mut self) -> anyhow::Result<Stepped> {
        let step = self.state.step;
        let total = self.state.total_steps;
        // The RNG state is a function of the step: resumed runs match.
        tch::manual_seed((self.cfg.seed as i64).wrapping_add(step as i64));
        let cursor_before = self.stream.cursor();
        let batches: Vec<Batch> = (0..self.cfg.grad_accum)
            .map(|_| {
                let rows = self.stream.take(self.cfg.batch_size);
                make_batch(
                    &self.train_set,
                    &rows,
                    &self.cfg.loss,
                    &self.model.tokenizer,
                    self.device,
                )
            })
            .collect();
        let used = self.train_secs();
        let lr = lr_at(
            &self.cfg.optim,
            step,
            run_decay(&self.cfg.optim, step, total, used, self.budget),
        );
        let st = train_step(
            &self.model,
            &mut self.opt,
            &self.teachers,
            &batches,
            &self.cfg,
            self.precision,
            lr,
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "{e} at step {} (epoch {}, position {} of the permutation); the last good checkpoint is kept in {}",
                step + 1,
                cursor_before.epoch,
                cursor_before.pos,
                checkpoint::checkpoints_dir(&self.run).display()
            )
        })?;
        self.positions_this_run += st.positions as u64;
        self.state.tokens_seen += st.positions as u64;
        self.state.step += 1;
        self.state.cursor = self.stream.cursor();
        self.window.push(&st);
        if !self.state.step.is_multiple_of(self.cfg.log_interval) && self.state.step != total {
            return Ok(Stepped {
                stats: st,
                lr,
                status: None,
            });
        }
        let w = std::mem::replace(&mut self.window, Window::new());
        let tps = w.tokens_per_s();
        let loss = w.sum.loss / w.steps as f64;
        let mean = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        self.metrics.push(Record::Train {
            step: self.state.step,
            lr,
            loss,
            ce: mean(w.sum.ce_sum, w.sum.weight_total),
            kl: (!self.teachers.is_empty()).then(|| mean(w.sum.kl_sum, w.sum.kl_weight)),
            grad_norm: st.grad_norm,
            tokens_per_s: tps,
            tokens: self.state.tokens_seen,
            elapsed_s: self.train_secs(),
            per_agent: w
                .sum
                .ce_by_owner
                .iter()
                .filter(|(_, (_, wt))| *wt > 0.0)
                .map(|(o, (a, wt))| (owner_label(&self.data_tok, *o), a / wt))
                .collect(),
        })?;
        Ok(Stepped {
            stats: st,
            lr,
            status: Some(format!("loss {loss:.4}  {tps:.0} tok/s")),
        })
    }

    /// Score the validation sample (None without a val split), log it, and
    /// update the best loss and the patience count.
    pub fn evaluate(&mut self) -> anyhow::Result<Option<Evaluated>> {
        let Some(v) = &self.val_set else {
            return Ok(None);
        };
        let e = evaluate(
            &self.model,
            v,
            &self.val_rows,
            &self.data_tok,
            self.cfg.batch_size,
            self.precision,
        );
        let improved = record_eval(
            &mut self.metrics,
            &mut self.state,
            &e,
            self.cfg.min_delta,
            self.cfg.best_of.as_deref(),
        )?;
        self.last_eval = Some((self.state.step, e.clone()));
        Ok(Some(Evaluated {
            result: e,
            improved,
        }))
    }

    /// Write an exact checkpoint of the current step (and `best.json` when
    /// `best`); older ones beyond `keep_last` are pruned.
    pub fn checkpoint(&mut self, best: bool) -> anyhow::Result<PathBuf> {
        let dir = save_checkpoint(
            &self.run,
            &self.model,
            &self.opt,
            &mut self.state,
            &self.cfg,
            self.started,
        )?;
        if best {
            write_best(&self.run, &self.state)?;
        }
        Ok(dir)
    }

    /// Save the weights as the snapshot now due, if any (`snapshots`).
    fn snapshot(&self) -> anyhow::Result<()> {
        if self.cfg.snapshots > 1 {
            save_snapshot(
                &self.run,
                &self.model,
                self.cfg.snapshots,
                self.done_fraction(),
                self.state.step,
                self.train_secs(),
            )?;
        }
        Ok(())
    }

    /// The loop: step until the steps, the time budget or the patience run
    /// out, evaluating every `eval_interval` steps and checkpointing after
    /// each evaluation (and every `checkpoint_interval` steps), then
    /// [`Trainer::finish`].
    pub fn run(mut self, progress: &mut dyn Progress) -> anyhow::Result<TrainSummary> {
        let total = self.state.total_steps;
        progress.start(self.state.step, total);
        self.loop_start = Instant::now();
        self.window = Window::new();
        let mut stop = StopReason::MaxSteps;
        while self.state.step < total {
            if self.out_of_time() {
                stop = StopReason::TimeBudget;
                break;
            }
            let stepped = self.step()?;
            progress.step(self.state.step, stepped.status.as_deref());
            self.snapshot()?;
            let step = self.state.step;
            let eval_due =
                self.cfg.eval_interval > 0 && step.is_multiple_of(self.cfg.eval_interval);
            let mut improved = false;
            if eval_due {
                if let Some(ev) = self.evaluate()? {
                    improved = ev.improved;
                    // With `best_of`, "(best)" is that agent's loss: show it.
                    let own = self
                        .cfg
                        .best_of
                        .as_deref()
                        .and_then(|a| ev.result.per_agent.get(a).map(|p| (a, p.loss)))
                        .map(|(a, l)| format!(" ({a} {l:.4})"))
                        .unwrap_or_default();
                    progress.line(&format!(
                        "step {step}: val loss {:.4}{own}  acc {:.3}{}",
                        ev.result.loss,
                        ev.result.acc,
                        if improved { "  (best)" } else { "" }
                    ));
                    if self.cfg.plots {
                        if let Err(err) = self.metrics.plot(&self.run) {
                            progress.line(&format!("warning: plots not drawn: {err:#}"));
                        }
                    }
                }
            }
            let ckpt_due = eval_due
                || (self.cfg.checkpoint_interval > 0
                    && step.is_multiple_of(self.cfg.checkpoint_interval));
            if ckpt_due && step < total {
                self.checkpoint(improved)?;
            }
            if self.cfg.patience > 0 && eval_due && self.state.evals_since_best >= self.cfg.patience
            {
                stop = StopReason::EarlyStopping;
                break;
            }
        }
        progress.finish();
        self.finish(stop)
    }

    /// The last evaluation (unless this step has one) and checkpoint (so a
    /// time-budget stop can resume), `final/` (the best or the last weights,
    /// per `final_weights`), the plots and `summary.json`.
    pub fn finish(mut self, stop: StopReason) -> anyhow::Result<TrainSummary> {
        if self.last_eval.as_ref().map(|(s, _)| *s) != Some(self.state.step) {
            if let Some(ev) = self.evaluate()? {
                if ev.improved {
                    self.state.best_step = Some(self.state.step);
                }
            }
        }
        let last_ckpt = self.checkpoint(false)?;
        if self.state.best_step == Some(self.state.step) {
            write_best(&self.run, &self.state)?;
        }
        let run = &self.run;
        checkpoint::prune(run, self.cfg.keep_last, self.state.best_step)?;
        let best_checkpoint = self
            .state
            .best_step
            .map(|s| checkpoint::step_dir(run, s))
            .filter(|d| d.is_dir());
        let final_dir = run.join("final");
        match (self.cfg.final_weights, &best_checkpoint) {
            (FinalWeights::Best, Some(best)) if best != &last_ckpt => {
                Model::load(best, Device::Cpu)?.save(&final_dir)?;
            }
            _ => self.model.save(&final_dir)?,
        }
        // `Model::save` renames a finished directory into place but does not
        // fsync; make the final weights durable before the summary says done.
        atomic::sync_tree(&final_dir)
            .with_context(|| format!("syncing {}", final_dir.display()))?;
        if self.cfg.plots {
            if let Err(err) = self.metrics.plot(run) {
                eprintln!("warning: plots not drawn: {err:#}");
            }
        }
        let wall = self.started.elapsed().as_secs_f64();
        let last = self.last_eval.as_ref().map(|(_, e)| e);
        let summary = TrainSummary {
            steps: self.state.step,
            stop,
            final_val_loss: last.map(|e| e.loss),
            best_val_loss: self.state.best_val_loss,
            best_step: self.state.best_step,
            per_agent_val_loss: last
                .map(|e| {
                    e.per_agent
                        .iter()
                        .map(|(k, v)| (k.clone(), v.loss))
                        .collect()
                })
                .unwrap_or_default(),
            tokens_per_s: self.positions_this_run as f64
                / self.loop_start.elapsed().as_secs_f64().max(1e-9),
            wall_secs: wall,
            train_secs: self.state.train_secs + wall,
            checkpoint: final_dir,
            best_checkpoint,
        };
        atomic::write(
            &run.join("summary.json"),
            serde_json::to_string_pretty(&summary)?,
        )
        .with_context(|| format!("writing {}", run.join("summary.json").display()))?;
        Ok(summary)
    }
}

/// The checkpoint a run resumes from (`resume`), or None for a new run,
/// which must not find checkpoints in its directory.
fn latest_checkpoint(run: &Path, resume: bool) -> anyhow::Result<Option<PathBuf>> {
    let all = checkpoint::list(run)?;
    match (resume, all.last()) {
        (true, Some((_, d))) => Ok(Some(d.clone())),
        (true, None) => bail!(
            "--resume: no checkpoint in {} (start without --resume)",
            checkpoint::checkpoints_dir(run).display()
        ),
        (false, Some(_)) => bail!(
            "{} already holds checkpoints: pass --resume to continue that run, or use a new --out",
            run.display()
        ),
        (false, None) => Ok(None),
    }
}

/// The train split (which must have rows) and the val split if it has any.
fn open_splits(data: &Path) -> anyhow::Result<(Shards, Option<Shards>)> {
    let train = Shards::open(data, "train").context("opening the train split")?;
    if train.rows() == 0 {
        bail!("{}: the train split has no rows", data.display());
    }
    let val = if Shards::exists(data, "val") {
        let v = Shards::open(data, "val").context("opening the val split")?;
        (v.rows() > 0).then_some(v)
    } else {
        None
    };
    Ok((train, val))
}

/// The model and the data agree: the same agents, rows that fit the
/// context, ids inside the vocabulary and role tables.
fn check_fits(
    model: &Model,
    data_tok: &Tokenizer,
    data: &Path,
    train: &Shards,
    val: Option<&Shards>,
) -> anyhow::Result<()> {
    if model.tokenizer.roles().agents() != data_tok.roles().agents() {
        bail!(
            "the model's agents {:?} differ from the data's {:?}",
            model.tokenizer.roles().agents(),
            data_tok.roles().agents()
        );
    }
    let c = &model.config;
    if train.index.row_len > c.n_ctx {
        bail!(
            "{}: rows are {} tokens but the model context is {} (prepare the data with a shorter row length)",
            data.display(),
            train.index.row_len,
            c.n_ctx
        );
    }
    check_ids(train, "train", &model.tokenizer, c.vocab_size, c.n_roles)?;
    if let Some(v) = val {
        if v.index.row_len > c.n_ctx {
            bail!(
                "val rows are {} tokens, more than the model context {}",
                v.index.row_len,
                c.n_ctx
            );
        }
        check_ids(v, "val", &model.tokenizer, c.vocab_size, c.n_roles)?;
    }
    Ok(())
}

/// The run's teachers, or their top-k cache (built once in
/// `RUN/teacher_cache`) when `teacher_top_k > 0`.
fn load_teachers(
    cfg: &TrainConfig,
    run: &Path,
    model: &Model,
    train: &Shards,
    device: Device,
    precision: Precision,
) -> anyhow::Result<Teachers> {
    let teachers = Teachers::load(
        &cfg.teachers,
        &model.tokenizer,
        model.config.vocab_size,
        device,
    )?;
    if cfg.teacher_top_k == 0 || teachers.is_empty() {
        return Ok(teachers);
    }
    let dir = run.join("teacher_cache");
    if !crate::teacher_cache::TeacherCache::exists(&dir, "train") {
        eprintln!(
            "building the top-{} teacher cache in {}",
            cfg.teacher_top_k,
            dir.display()
        );
        teachers.build_cache(
            &dir,
            train,
            &model.tokenizer,
            cfg.teacher_top_k,
            cfg.batch_size,
            precision,
        )?;
    }
    let cache = crate::teacher_cache::TeacherCache::open(&dir, "train", &model.tokenizer)?;
    // The teachers are no longer needed in memory.
    Ok(Teachers::from_cache(cache))
}

/// Fields that may differ between a run and its resumption.
const RUN_CONTROL: [&str; 6] = [
    "resume",
    "time_budget",
    "progress",
    "plots",
    "device",
    "threads",
];

/// The config a resumed run uses: the saved one, with this invocation's
/// run-control fields. A training field given with a value different from
/// both the saved one and the default is an error (it would silently break
/// the resumed run).
fn merge_resume_config(
    saved: &TrainConfig,
    now: &TrainConfig,
    ckpt: &Path,
) -> anyhow::Result<TrainConfig> {
    fn flat(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
        match v {
            toml::Value::Table(t) if prefix.is_empty() || prefix == "optim" || prefix == "loss" => {
                for (k, x) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flat(&key, x, out);
                }
            }
            _ => {
                out.insert(prefix.to_string(), v.clone());
            }
        }
    }
    let tv = |c: &TrainConfig| -> anyhow::Result<BTreeMap<String, toml::Value>> {
        let mut m = BTreeMap::new();
        flat("", &toml::Value::try_from(c)?, &mut m);
        Ok(m)
    };
    let (s, n, d) = (tv(saved)?, tv(now)?, tv(&TrainConfig::default())?);
    let mut bad = Vec::new();
    for (k, v) in &n {
        if RUN_CONTROL.contains(&k.as_str()) || k == "init" || k == "preset" {
            continue;
        }
        if s.get(k) != Some(v) && d.get(k) != Some(v) {
            bad.push(format!(
                "{k} = {v} (checkpoint: {})",
                s.get(k).map(|x| x.to_string()).unwrap_or("unset".into())
            ));
        }
    }
    if !bad.is_empty() {
        bail!(
            "--resume from {}: these settings differ from the checkpoint's config: {}. Resume with the same settings (or start a new run)",
            ckpt.display(),
            bad.join("; ")
        );
    }
    let mut c = saved.clone();
    c.resume = true;
    c.time_budget = now.time_budget.clone();
    c.progress = now.progress;
    c.plots = now.plots;
    c.device = now.device.clone();
    c.threads = now.threads;
    Ok(c)
}

fn read_vocab(data: &Path) -> anyhow::Result<Tokenizer> {
    let p = data.join("vocab.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    Tokenizer::from_json(&text).with_context(|| format!("{}", p.display()))
}

/// Build the student: fresh from a preset, or `init` extended to the data's
/// vocabulary.
fn build_model(cfg: &TrainConfig, data_tok: &Tokenizer, device: Device) -> anyhow::Result<Model> {
    if let Some(init) = &cfg.init {
        let mut m =
            Model::load(init, device).with_context(|| format!("--init {}", init.display()))?;
        m.extend_vocab(data_tok.clone()).with_context(|| {
            format!(
                "--init {}: its agents {:?} must be a prefix of the data's {:?}",
                init.display(),
                m.tokenizer.roles().agents(),
                data_tok.roles().agents()
            )
        })?;
        return Ok(m);
    }
    let name = cfg
        .preset
        .as_deref()
        .context("no model: give `init` or `preset`")?;
    let n_roles = if cfg.role_embeddings {
        data_tok.roles().n_roles()
    } else {
        0
    };
    let mut gc = cfg
        .shape
        .apply(GptConfig::preset(name, data_tok.n_vocab(), n_roles)?);
    gc.dropout = cfg.dropout;
    gc.validate().context("train config: shape")?;
    Model::new(gc, data_tok.clone(), device, cfg.seed as i64)
}

/// Log an evaluation and update best/patience on the total validation
/// loss, or agent `best_of`'s own. Returns true on improvement.
fn record_eval(
    metrics: &mut Metrics,
    state: &mut TrainerState,
    e: &EvalResult,
    min_delta: f64,
    best_of: Option<&str>,
) -> anyhow::Result<bool> {
    metrics.push(Record::Eval {
        step: state.step,
        val_loss: e.loss,
        val_acc: e.acc,
        val_tokens: e.tokens,
        per_agent: e.per_agent.clone(),
    })?;
    let loss = match best_of {
        None => e.loss,
        Some(a) => e.per_agent.get(a).map(|p| p.loss).with_context(|| {
            format!(
                "train config: best_of: agent {a:?} has no validation tokens (agents: {})",
                e.per_agent.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?,
    };
    let improved = loss.is_finite() && state.best_val_loss.is_none_or(|b| loss < b - min_delta);
    if improved {
        state.best_val_loss = Some(loss);
        state.best_step = Some(state.step);
        state.evals_since_best = 0;
    } else {
        state.evals_since_best += 1;
    }
    Ok(improved)
}

fn save_checkpoint(
    run: &Path,
    model: &Model,
    opt: &AdamW,
    state: &mut TrainerState,
    cfg: &TrainConfig,
    started: Instant,
) -> anyhow::Result<PathBuf> {
    let mut s = state.clone();
    s.train_secs += started.elapsed().as_secs_f64();
    let dir = checkpoint::save(run, model, opt, &s, cfg)?;
    checkpoint::prune(run, cfg.keep_last, state.best_step)?;
    Ok(dir)
}

/// What `RUN/snapshots/K-of-N/snapshot.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// K / N.
    pub fraction: f64,
    /// Optimiser steps done.
    pub step: usize,
    /// Training seconds spent (all invocations).
    pub train_secs: f64,
}

/// `RUN/snapshots/K-of-N`.
pub fn snapshot_dir(run: &Path, k: usize, n: usize) -> PathBuf {
    run.join("snapshots").join(format!("{k}-of-{n}"))
}

/// Save the weights as the latest due snapshot (see
/// `TrainConfig::snapshots`) unless it exists; `done` is the fraction of
/// the run done.
fn save_snapshot(
    run: &Path,
    model: &Model,
    n: usize,
    done: f64,
    step: usize,
    train_secs: f64,
) -> anyhow::Result<()> {
    let k = ((done * n as f64).floor() as usize).min(n - 1);
    if k == 0 {
        return Ok(());
    }
    let dir = snapshot_dir(run, k, n);
    if dir.join("snapshot.json").is_file() {
        return Ok(());
    }
    // `Model::save` renames the finished directory into place, so a killed
    // run never leaves partial weights under `snapshot.json`. No fsync here:
    // it would cost training time inside the budget; the pipeline fsyncs a
    // stage's whole directory before it marks the stage complete.
    model.save(&dir)?;
    let info = SnapshotInfo {
        fraction: k as f64 / n as f64,
        step,
        train_secs,
    };
    atomic::write(
        &dir.join("snapshot.json"),
        serde_json::to_string_pretty(&info)?,
    )
    .with_context(|| format!("writing {}", dir.join("snapshot.json").display()))
}

fn write_best(run: &Path, state: &TrainerState) -> anyhow::Result<()> {
    let (Some(step), Some(loss)) = (state.best_step, state.best_val_loss) else {
        return Ok(());
    };
    let v = serde_json::json!({
        "step": step,
        "val_loss": loss,
        "checkpoint": checkpoint::step_dir(run, step),
    });
    let p = run.join("best.json");
    atomic::write(&p, serde_json::to_string_pretty(&v)?)
        .with_context(|| format!("writing {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::AgentEval;

    fn eval(total: f64, coder: f64) -> EvalResult {
        let agent = |loss| AgentEval {
            loss,
            acc: 0.0,
            tokens: 1,
        };
        EvalResult {
            loss: total,
            acc: 0.0,
            tokens: 2,
            per_agent: BTreeMap::from([
                ("Coder".to_string(), agent(coder)),
                ("Planner".to_string(), agent(2.0 * total - coder)),
            ]),
        }
    }

    /// `best_of` picks the best weights on that agent's own loss: an
    /// evaluation whose total improves while the agent's worsens is not
    /// the best; an agent without validation tokens is an error naming it.
    #[test]
    fn best_of_an_agent_follows_its_own_loss() {
        let dir = tempfile::tempdir().unwrap();
        let mut metrics = Metrics::open(dir.path(), None).unwrap();
        let mut state = TrainerState {
            step: 0,
            total_steps: 10,
            cursor: Default::default(),
            seed: 0,
            tokens_seen: 0,
            best_val_loss: None,
            best_step: None,
            evals_since_best: 0,
            train_secs: 0.0,
        };
        let mut total = state.clone();
        let evals = [eval(1.0, 0.5), eval(0.8, 0.6), eval(0.9, 0.4)];
        let mut got = Vec::new();
        for (step, e) in evals.iter().enumerate() {
            state.step = step;
            total.step = step;
            let own = record_eval(&mut metrics, &mut state, e, 0.0, Some("Coder")).unwrap();
            let all = record_eval(&mut metrics, &mut total, e, 0.0, None).unwrap();
            got.push((own, all));
        }
        assert_eq!(got, [(true, true), (false, true), (true, false)]);
        assert_eq!((state.best_step, state.best_val_loss), (Some(2), Some(0.4)));
        assert_eq!((total.best_step, total.best_val_loss), (Some(1), Some(0.8)));
        let e = record_eval(&mut metrics, &mut state, &evals[0], 0.0, Some("Reviewer"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("best_of") && e.contains("Reviewer"), "{e}");
    }
}
