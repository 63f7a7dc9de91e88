//! The training loop: [`train`] and its building blocks ([`batch_loss`],
//! [`evaluate`]).

use crate::checkpoint::{self, TrainerState};
use crate::config::{Divergence, FinalWeights, LossConfig, TrainConfig};
use crate::data::{check_ids, make_batch, Batch, Cursor, RowOrder, RowStream};
use crate::loss::{cross_entropy_per_token, divergence_per_token};
use crate::metrics::{AgentEval, Metrics, Record};
use crate::optim::{lr_at, run_decay, AdamW};
use crate::teacher::Teachers;
use afm_format::shards::Shards;
use afm_model::{weight_decay_applies, ForwardArgs, GptConfig, LmDistill, Model, Precision};
use afm_tokenizer::atomic;
use afm_tokenizer::{Tokenizer, ROLE_NONE, ROLE_OBS};
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Why a run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// All `max_steps` (or epochs) done.
    MaxSteps,
    /// The wall-clock budget ran out.
    TimeBudget,
    /// Validation loss stopped improving for `patience` evaluations.
    EarlyStopping,
}

/// What [`train`] returns (also written to `RUN/summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Optimiser steps done (all invocations).
    pub steps: usize,
    pub stop: StopReason,
    /// Validation loss at the last step (None without a val split).
    pub final_val_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    pub best_step: Option<usize>,
    /// Validation loss per owning agent at the last evaluation.
    pub per_agent_val_loss: BTreeMap<String, f64>,
    /// Training throughput of this invocation (input positions per second).
    pub tokens_per_s: f64,
    /// Wall-clock seconds of this invocation.
    pub wall_secs: f64,
    /// Training seconds of the run, all invocations (what the time budget
    /// counts).
    #[serde(default)]
    pub train_secs: f64,
    /// `RUN/final` (Model::save layout).
    pub checkpoint: PathBuf,
    /// The best step checkpoint, if any.
    pub best_checkpoint: Option<PathBuf>,
}

/// Label of an owner role id in per-agent metrics.
pub fn owner_label(tok: &Tokenizer, role: u16) -> String {
    match role as u32 {
        ROLE_NONE => "none".into(),
        ROLE_OBS => "obs".into(),
        r => tok
            .roles()
            .agent_of_role(r)
            .map(str::to_string)
            .unwrap_or_else(|| format!("role{r}")),
    }
}

/// Loss of one micro-batch, normalised by `weight_total` (the sum of loss
/// weights over every micro-batch of the step).
pub struct LossParts {
    /// Scalar with grad (a constant 0 when the batch has no loss position).
    pub loss: Tensor,
    /// `sum w * CE` over the batch.
    pub ce_sum: f64,
    /// `sum w * D` over positions with a teacher, and their weight.
    pub kl_sum: f64,
    pub kl_weight: f64,
    /// Per owner role id: (`sum w * CE`, `sum w`).
    pub ce_by_owner: BTreeMap<u16, (f64, f64)>,
}

impl LossParts {
    /// A batch without loss positions.
    fn none() -> Self {
        LossParts {
            loss: Tensor::from(0f32),
            ce_sum: 0.0,
            kl_sum: 0.0,
            kl_weight: 0.0,
            ce_by_owner: BTreeMap::new(),
        }
    }
}

/// The model inputs of a batch.
pub fn forward_args(b: &Batch) -> ForwardArgs<'_> {
    ForwardArgs {
        tokens: &b.tokens,
        roles: Some(&b.roles),
        positions: Some(&b.positions),
        docs: Some(&b.docs),
        select: Some(&b.select),
    }
}

/// Loss of one micro-batch (see [`crate::loss`] for the formula). The LM
/// head runs only at the loss positions; each teacher runs only on the
/// rows and positions its agent owns.
pub fn batch_loss(
    model: &Model,
    teachers: &Teachers,
    batch: &Batch,
    l: &LossConfig,
    precision: Precision,
    train: bool,
    weight_total: f64,
) -> anyhow::Result<LossParts> {
    let n = batch.n_select();
    if n == 0 || weight_total <= 0.0 {
        return Ok(LossParts::none());
    }
    let fusable = model.device() == Device::Cpu
        && teachers.cache.is_none()
        && (teachers.list.is_empty() || l.divergence == Divergence::Forward);
    if !fusable {
        return batch_loss_unfused(model, teachers, batch, l, precision, train, weight_total);
    }
    // The fused LM head + loss (see `Gpt::lm_loss`): no f32 logits, one
    // in-place gradient pass per row, distillation included.
    let h = model.gpt.hidden(&forward_args(batch), precision, train);
    let mut teacher_row = vec![-1i64; n];
    let mut parts = Vec::new();
    let mut m = 0;
    for (ti, pos) in teachers.route(&batch.owners) {
        parts.push(teachers.list[ti].logits(batch, &pos, &model.tokenizer, precision)?);
        for (j, &k) in pos.iter().enumerate() {
            teacher_row[k] = (m + j) as i64;
        }
        m += pos.len();
    }
    let teacher_logits = (!parts.is_empty()).then(|| Tensor::cat(&parts, 0));
    let distill = teacher_logits.as_ref().map(|q| LmDistill {
        teacher_logits: q,
        teacher_row: &teacher_row,
        alpha: l.alpha,
        beta: l.beta,
        temperature: l.temperature,
    });
    let fused = model.gpt.lm_loss(
        &h,
        &batch.targets,
        Some(&batch.weights),
        precision,
        distill.as_ref(),
    )?;
    let (ce_sum, ce_by_owner) = ce_totals(batch, &fused.nll);
    let (mut kl_sum, mut kl_weight) = (0.0, 0.0);
    for (k, &r) in teacher_row.iter().enumerate() {
        if r >= 0 {
            let w = batch.weights_host[k] as f64;
            kl_sum += w * fused.kl[k] as f64;
            kl_weight += w;
        }
    }
    Ok(LossParts {
        loss: fused.loss / weight_total,
        ce_sum,
        kl_sum,
        kl_weight,
        ce_by_owner,
    })
}

/// [`batch_loss`] with libtorch ops on full `[N, V]` f32 logits: the
/// reference the fused path is tested against, and the path for reverse
/// KL, JSD, the top-k teacher cache and non-CPU devices.
pub fn batch_loss_unfused(
    model: &Model,
    teachers: &Teachers,
    batch: &Batch,
    l: &LossConfig,
    precision: Precision,
    train: bool,
    weight_total: f64,
) -> anyhow::Result<LossParts> {
    let n = batch.n_select();
    if n == 0 || weight_total <= 0.0 {
        return Ok(LossParts::none());
    }
    let logits = model.gpt.forward(&forward_args(batch), precision, train);
    let ce = cross_entropy_per_token(&logits, &batch.targets);
    let wce = &ce * &batch.weights;
    let ce_host = Vec::<f32>::try_from(ce.detach().to_device(Device::Cpu))?;
    let (ce_sum, ce_by_owner) = ce_totals(batch, &ce_host);
    // (positions, per-position divergence) per teacher, or from the cache.
    let device = logits.device();
    let to_idx = |pos: &[usize]| {
        Tensor::from_slice(&pos.iter().map(|&k| k as i64).collect::<Vec<_>>()).to_device(device)
    };
    let mut items: Vec<(Vec<usize>, Tensor)> = Vec::new();
    if let Some(cache) = &teachers.cache {
        let (pos, ids, vals) = cache.lookup(batch)?;
        if !pos.is_empty() {
            let s_logits = logits.index_select(0, &to_idx(&pos));
            let d = crate::teacher_cache::topk_forward_kl(&s_logits, &ids, &vals, l.temperature);
            items.push((pos, d));
        }
    } else {
        for (ti, pos) in teachers.route(&batch.owners) {
            let t = &teachers.list[ti];
            let t_logits = t.logits(batch, &pos, &model.tokenizer, precision)?;
            let s_logits = logits.index_select(0, &to_idx(&pos));
            let d = divergence_per_token(
                &s_logits,
                &t_logits,
                l.divergence,
                l.temperature,
                l.jsd_beta,
            );
            items.push((pos, d));
        }
    }
    if items.is_empty() {
        return Ok(LossParts {
            loss: wce.sum(Kind::Float) / weight_total,
            ce_sum,
            kl_sum: 0.0,
            kl_weight: 0.0,
            ce_by_owner,
        });
    }
    let mut coef = vec![1f32; n];
    let mut kl_terms = Vec::new();
    let mut kl_sum = 0.0;
    let mut kl_weight = 0.0;
    for (pos, d) in items {
        for &k in &pos {
            coef[k] = l.alpha as f32;
            kl_weight += batch.weights_host[k] as f64;
        }
        let wd = (d * batch.weights.index_select(0, &to_idx(&pos))).sum(Kind::Float);
        kl_sum += wd.detach().double_value(&[]);
        kl_terms.push(wd);
    }
    let coef = Tensor::from_slice(&coef).to_device(device);
    let ce_part = (wce * coef).sum(Kind::Float);
    let total = kl_terms
        .into_iter()
        .fold(ce_part, |acc, k| acc + k * l.beta);
    Ok(LossParts {
        loss: total / weight_total,
        ce_sum,
        kl_sum,
        kl_weight,
        ce_by_owner,
    })
}

/// `sum w * CE` over a micro-batch and per owner (`sum w * CE`, `sum w`),
/// from the per-position CE on the host.
fn ce_totals(batch: &Batch, ce: &[f32]) -> (f64, BTreeMap<u16, (f64, f64)>) {
    let mut ce_sum = 0.0;
    let mut by_owner: BTreeMap<u16, (f64, f64)> = BTreeMap::new();
    for (k, &c) in ce.iter().enumerate() {
        let w = batch.weights_host[k] as f64;
        ce_sum += w * c as f64;
        let e = by_owner.entry(batch.owners[k]).or_default();
        e.0 += w * c as f64;
        e.1 += w;
    }
    (ce_sum, by_owner)
}

/// What one optimiser step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepStats {
    /// The step's loss (sum over micro-batches, each normalised by the
    /// step's total weight).
    pub loss: f64,
    pub ce_sum: f64,
    pub kl_sum: f64,
    pub kl_weight: f64,
    /// Sum of loss weights of the step.
    pub weight_total: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Input positions processed.
    pub positions: usize,
    /// Per owner role id: (`sum w * CE`, `sum w`).
    pub ce_by_owner: BTreeMap<u16, (f64, f64)>,
}

/// One optimiser step over `batches` (the micro-batches): forward and
/// backward of each (gradients accumulate), clip, AdamW update at `lr`,
/// zero the gradients. A non-finite loss or gradient norm is an error
/// naming the data rows, raised before any weight changes.
pub fn train_step(
    model: &Model,
    opt: &mut AdamW,
    teachers: &Teachers,
    batches: &[Batch],
    cfg: &TrainConfig,
    precision: Precision,
    lr: f64,
) -> anyhow::Result<StepStats> {
    let weight_total: f64 = batches.iter().map(|b| b.weight_sum).sum();
    let mut st = StepStats {
        loss: 0.0,
        ce_sum: 0.0,
        kl_sum: 0.0,
        kl_weight: 0.0,
        weight_total,
        grad_norm: 0.0,
        positions: 0,
        ce_by_owner: BTreeMap::new(),
    };
    for b in batches {
        let parts = batch_loss(model, teachers, b, &cfg.loss, precision, true, weight_total)?;
        let lv = parts.loss.detach().double_value(&[]);
        if !lv.is_finite() {
            opt.zero_grad();
            bail!("loss is {lv} (data rows {})", fmt_rows(&b.rows));
        }
        if parts.loss.requires_grad() {
            parts.loss.backward();
        }
        st.loss += lv;
        st.ce_sum += parts.ce_sum;
        st.kl_sum += parts.kl_sum;
        st.kl_weight += parts.kl_weight;
        st.positions += b.n_positions;
        for (o, (a, w)) in parts.ce_by_owner {
            let e = st.ce_by_owner.entry(o).or_default();
            e.0 += a;
            e.1 += w;
        }
    }
    st.grad_norm = opt.clip_grad_norm(cfg.optim.grad_clip);
    if !st.grad_norm.is_finite() {
        opt.zero_grad();
        let rows: Vec<usize> = batches
            .iter()
            .flat_map(|b| b.rows.iter().copied())
            .collect();
        bail!(
            "gradient norm is {} (data rows {})",
            st.grad_norm,
            fmt_rows(&rows)
        );
    }
    if weight_total > 0.0 {
        opt.step(lr);
    }
    opt.zero_grad();
    Ok(st)
}

/// Validation numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalResult {
    /// Weighted mean CE over all loss positions (data weights, no boundary
    /// weighting).
    pub loss: f64,
    /// Token accuracy (argmax == target) over loss positions.
    pub acc: f64,
    pub tokens: usize,
    pub per_agent: BTreeMap<String, AgentEval>,
}

/// The validation rows an evaluation scores: every row when `max_rows` is 0
/// or covers the split, else a fixed sample of `max_rows` rows that holds
/// loss positions of every agent present in the split. The sample depends
/// only on the split's contents (a constant seed, not the run's), so every
/// run and every evaluation of a run scores the same rows. Sorted.
pub fn val_sample(shards: &Shards, max_rows: usize) -> Vec<usize> {
    let n = shards.rows();
    if max_rows == 0 || max_rows >= n {
        return (0..n).collect();
    }
    let order = crate::data::epoch_order(n, 0x7A1D_5A3F, 0, RowOrder::Shuffle);
    let t = shards.index.row_len;
    let owners_of = |r: usize| -> std::collections::BTreeSet<u16> {
        (r * t..(r + 1) * t)
            .filter(|&i| shards.weights[i] > 0.0)
            .map(|i| shards.owners[i])
            .collect()
    };
    let mut missing: std::collections::BTreeSet<u16> = (0..n).flat_map(owners_of).collect();
    let mut picked: Vec<usize> = Vec::with_capacity(max_rows);
    // First the rows (in the seeded order) that bring an agent not yet
    // covered, then the rest of the seeded order.
    for &r in &order {
        if missing.is_empty() || picked.len() == max_rows {
            break;
        }
        let o = owners_of(r);
        if o.iter().any(|x| missing.contains(x)) {
            for x in &o {
                missing.remove(x);
            }
            picked.push(r);
        }
    }
    for &r in &order {
        if picked.len() == max_rows {
            break;
        }
        if !picked.contains(&r) {
            picked.push(r);
        }
    }
    picked.sort_unstable();
    picked
}

/// Evaluate on `rows` of `shards` (see [`val_sample`]).
pub fn evaluate(
    model: &Model,
    shards: &Shards,
    rows: &[usize],
    labels: &Tokenizer,
    batch_size: usize,
    precision: Precision,
) -> EvalResult {
    let plain = LossConfig::default();
    let device = model.device();
    let mut tot = (0.0f64, 0.0f64, 0usize, 0usize); // w*ce, w, correct, n
    let mut per: BTreeMap<u16, (f64, f64, usize, usize)> = BTreeMap::new();
    for chunk in rows.chunks(batch_size) {
        let b = make_batch(shards, chunk, &plain, &model.tokenizer, device);
        if b.n_select() == 0 {
            continue;
        }
        let (ce, correct) = tch::no_grad(|| {
            let logits = model.gpt.forward(&forward_args(&b), precision, false);
            let ce = cross_entropy_per_token(&logits, &b.targets);
            let correct = logits.argmax(-1, false).eq_tensor(&b.targets);
            (ce, correct)
        });
        let ce = Vec::<f32>::try_from(&ce.to_device(Device::Cpu)).unwrap_or_default();
        let correct = Vec::<bool>::try_from(&correct.to_device(Device::Cpu)).unwrap_or_default();
        for k in 0..b.n_select() {
            let w = b.weights_host[k] as f64;
            let c = ce[k] as f64;
            let e = per.entry(b.owners[k]).or_default();
            for acc in [&mut tot, e] {
                acc.0 += w * c;
                acc.1 += w;
                acc.2 += correct[k] as usize;
                acc.3 += 1;
            }
        }
    }
    let mean = |a: &(f64, f64, usize, usize)| {
        (
            if a.1 > 0.0 { a.0 / a.1 } else { f64::NAN },
            if a.3 > 0 {
                a.2 as f64 / a.3 as f64
            } else {
                f64::NAN
            },
        )
    };
    let (loss, acc) = mean(&tot);
    let per_agent = per
        .iter()
        .map(|(&o, a)| {
            let (loss, acc) = mean(a);
            (
                owner_label(labels, o),
                AgentEval {
                    loss,
                    acc,
                    tokens: a.3,
                },
            )
        })
        .collect();
    EvalResult {
        loss,
        acc,
        tokens: tot.3,
        per_agent,
    }
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

fn fmt_rows(rows: &[usize]) -> String {
    let mut s: Vec<String> = rows.iter().take(16).map(|r| r.to_string()).collect();
    if rows.len() > 16 {
        s.push("...".into());
    }
    s.join(",")
}

/// Run training as configured. See the crate docs for the files written.
pub fn train(cfg_in: &TrainConfig) -> anyhow::Result<TrainSummary> {
    cfg_in.validate()?;
    let started = Instant::now();
    let run = cfg_in.out.clone();
    std::fs::create_dir_all(&run).with_context(|| format!("creating {}", run.display()))?;
    checkpoint::clean_stale(&run);

    // Resume: the latest complete checkpoint and its config.
    let resume_from = if cfg_in.resume {
        let all = checkpoint::list(&run)?;
        match all.last() {
            Some((_, d)) => Some(d.clone()),
            None => bail!(
                "--resume: no checkpoint in {} (start without --resume)",
                checkpoint::checkpoints_dir(&run).display()
            ),
        }
    } else {
        if !checkpoint::list(&run)?.is_empty() {
            bail!(
                "{} already holds checkpoints: pass --resume to continue that run, or use a new --out",
                run.display()
            );
        }
        None
    };
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

    // Data.
    let data_tok = read_vocab(&cfg.data)?;
    let train_set = Shards::open(&cfg.data, "train").context("opening the train split")?;
    if train_set.rows() == 0 {
        bail!("{}: the train split has no rows", cfg.data.display());
    }
    let val_set = if Shards::exists(&cfg.data, "val") {
        let v = Shards::open(&cfg.data, "val").context("opening the val split")?;
        (v.rows() > 0).then_some(v)
    } else {
        None
    };

    // Model.
    let model = match &resume_from {
        Some(dir) => Model::load(dir, device)
            .with_context(|| format!("--resume: loading {}", dir.display()))?,
        None => build_model(&cfg, &data_tok, device)?,
    };
    if model.tokenizer.roles().agents() != data_tok.roles().agents() {
        bail!(
            "the model's agents {:?} differ from the data's {:?}",
            model.tokenizer.roles().agents(),
            data_tok.roles().agents()
        );
    }
    let row_len = train_set.index.row_len;
    if row_len > model.config.n_ctx {
        bail!(
            "{}: rows are {row_len} tokens but the model context is {} (prepare the data with a shorter row length)",
            cfg.data.display(),
            model.config.n_ctx
        );
    }
    check_ids(
        &train_set,
        "train",
        &model.tokenizer,
        model.config.vocab_size,
        model.config.n_roles,
    )?;
    if let Some(v) = &val_set {
        if v.index.row_len > model.config.n_ctx {
            bail!(
                "val rows are {} tokens, more than the model context {}",
                v.index.row_len,
                model.config.n_ctx
            );
        }
        check_ids(
            v,
            "val",
            &model.tokenizer,
            model.config.vocab_size,
            model.config.n_roles,
        )?;
    }
    let mut teachers = Teachers::load(
        &cfg.teachers,
        &model.tokenizer,
        model.config.vocab_size,
        device,
    )?;
    if cfg.teacher_top_k > 0 && !teachers.is_empty() {
        let dir = run.join("teacher_cache");
        if !crate::teacher_cache::TeacherCache::exists(&dir, "train") {
            eprintln!(
                "building the top-{} teacher cache in {}",
                cfg.teacher_top_k,
                dir.display()
            );
            crate::teacher_cache::build(
                &dir,
                &train_set,
                &teachers,
                &model.tokenizer,
                cfg.teacher_top_k,
                cfg.batch_size,
                precision,
            )?;
        }
        let cache = crate::teacher_cache::TeacherCache::open(&dir, "train", &model.tokenizer)?;
        // The teachers are no longer needed in memory.
        teachers = Teachers::from_cache(cache);
    }

    // Optimiser and state.
    let mut opt = AdamW::new(model.named_parameters(), &cfg.optim, weight_decay_applies);
    let per_step = cfg.batch_size * cfg.grad_accum;
    let total_steps = if cfg.max_steps > 0 {
        cfg.max_steps
    } else {
        (cfg.epochs * train_set.rows()).div_ceil(per_step).max(1)
    };
    let mut state = match (&resume_from, state0) {
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
    let mut metrics = Metrics::open(&run, resume_from.as_ref().map(|_| state.step))?;
    atomic::write(&run.join("train_config.toml"), cfg.to_toml()?)
        .with_context(|| format!("writing {}", run.join("train_config.toml").display()))?;

    let order = RowOrder::of_index(&train_set.index);
    let mut stream = RowStream::new(train_set.rows(), cfg.seed, order, state.cursor);
    let pb = if cfg.progress {
        indicatif::ProgressBar::new(total_steps as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_position(state.step as u64);

    let mut last_eval: Option<EvalResult> = None;
    let mut last_eval_step = None;
    let mut stop = StopReason::MaxSteps;
    let loop_start = Instant::now();
    let mut positions_this_run = 0u64;
    let (mut win_t, mut win_pos) = (Instant::now(), 0u64);
    let (mut win_loss, mut win_ce, mut win_kl, mut win_w, mut win_klw) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut win_agents: BTreeMap<u16, (f64, f64)> = BTreeMap::new();

    let val_rows = val_set
        .as_ref()
        .map(|v| val_sample(v, cfg.eval_batches * cfg.batch_size))
        .unwrap_or_default();
    let do_eval = |model: &Model| -> Option<EvalResult> {
        val_set
            .as_ref()
            .map(|v| evaluate(model, v, &val_rows, &data_tok, cfg.batch_size, precision))
    };

    while state.step < total_steps {
        if let Some(b) = budget {
            if state.train_secs + started.elapsed().as_secs_f64() >= b {
                stop = StopReason::TimeBudget;
                break;
            }
        }
        let step = state.step;
        // The RNG state is a function of the step: resumed runs match.
        tch::manual_seed((cfg.seed as i64).wrapping_add(step as i64));
        let cursor_before = stream.cursor();
        let batches: Vec<Batch> = (0..cfg.grad_accum)
            .map(|_| {
                let rows = stream.take(cfg.batch_size);
                make_batch(&train_set, &rows, &cfg.loss, &model.tokenizer, device)
            })
            .collect();
        let used = state.train_secs + started.elapsed().as_secs_f64();
        let lr = lr_at(
            &cfg.optim,
            step,
            run_decay(&cfg.optim, step, total_steps, used, budget),
        );
        let st = train_step(&model, &mut opt, &teachers, &batches, &cfg, precision, lr).map_err(|e| {
            anyhow::anyhow!(
                "{e} at step {} (epoch {}, position {} of the permutation); the last good checkpoint is kept in {}",
                step + 1,
                cursor_before.epoch,
                cursor_before.pos,
                checkpoint::checkpoints_dir(&run).display()
            )
        })?;
        positions_this_run += st.positions as u64;
        win_pos += st.positions as u64;
        state.tokens_seen += st.positions as u64;
        let (loss_sum, ce_sum, kl_sum, kl_w, weight_total, gnorm) = (
            st.loss,
            st.ce_sum,
            st.kl_sum,
            st.kl_weight,
            st.weight_total,
            st.grad_norm,
        );
        state.step += 1;
        state.cursor = stream.cursor();
        win_loss += loss_sum;
        win_ce += ce_sum;
        win_kl += kl_sum;
        win_w += weight_total;
        win_klw += kl_w;
        for (o, (a, w)) in &st.ce_by_owner {
            let e = win_agents.entry(*o).or_default();
            e.0 += a;
            e.1 += w;
        }
        pb.set_position(state.step as u64);

        if state.step % cfg.log_interval == 0 || state.step == total_steps {
            let n_steps = (state.step - 1) % cfg.log_interval + 1;
            let secs = win_t.elapsed().as_secs_f64().max(1e-9);
            let tps = win_pos as f64 / secs;
            let loss = win_loss / n_steps as f64;
            metrics.push(Record::Train {
                step: state.step,
                lr,
                loss,
                ce: if win_w > 0.0 { win_ce / win_w } else { 0.0 },
                kl: (!teachers.is_empty())
                    .then(|| if win_klw > 0.0 { win_kl / win_klw } else { 0.0 }),
                grad_norm: gnorm,
                tokens_per_s: tps,
                tokens: state.tokens_seen,
                elapsed_s: state.train_secs + started.elapsed().as_secs_f64(),
                per_agent: win_agents
                    .iter()
                    .filter(|(_, (_, w))| *w > 0.0)
                    .map(|(o, (a, w))| (owner_label(&data_tok, *o), a / w))
                    .collect(),
            })?;
            win_agents.clear();
            pb.set_message(format!("loss {loss:.4}  {tps:.0} tok/s"));
            (win_t, win_pos) = (Instant::now(), 0);
            (win_loss, win_ce, win_kl, win_w, win_klw) = (0.0, 0.0, 0.0, 0.0, 0.0);
        }

        if cfg.snapshots > 1 {
            let used = state.train_secs + started.elapsed().as_secs_f64();
            let done = run_decay(&cfg.optim, state.step, total_steps, used, budget)
                .max(state.step as f64 / total_steps as f64);
            save_snapshot(&run, &model, cfg.snapshots, done, state.step, used)?;
        }
        let eval_due = cfg.eval_interval > 0 && state.step % cfg.eval_interval == 0;
        let mut improved = false;
        if eval_due {
            if let Some(e) = do_eval(&model) {
                improved = record_eval(&mut metrics, &mut state, &e, cfg.min_delta)?;
                say(
                    &pb,
                    format!(
                        "step {}: val loss {:.4}  acc {:.3}{}",
                        state.step,
                        e.loss,
                        e.acc,
                        if improved { "  (best)" } else { "" }
                    ),
                );
                last_eval = Some(e);
                last_eval_step = Some(state.step);
                if cfg.plots {
                    if let Err(err) = metrics.plot(&run) {
                        say(&pb, format!("warning: plots not drawn: {err:#}"));
                    }
                }
            }
        }
        let ckpt_due =
            eval_due || (cfg.checkpoint_interval > 0 && state.step % cfg.checkpoint_interval == 0);
        if ckpt_due && state.step < total_steps {
            save_checkpoint(&run, &model, &opt, &mut state, &cfg, started)?;
            if improved {
                write_best(&run, &state)?;
            }
        }
        if cfg.patience > 0 && eval_due && state.evals_since_best >= cfg.patience {
            stop = StopReason::EarlyStopping;
            break;
        }
    }
    pb.finish_and_clear();

    // Final evaluation and checkpoint (so a time-budget stop can resume).
    if last_eval_step != Some(state.step) {
        if let Some(e) = do_eval(&model) {
            let improved = record_eval(&mut metrics, &mut state, &e, cfg.min_delta)?;
            last_eval = Some(e);
            if improved {
                state.best_step = Some(state.step);
            }
        }
    }
    let last_ckpt = save_checkpoint(&run, &model, &opt, &mut state, &cfg, started)?;
    if state.best_step == Some(state.step) {
        write_best(&run, &state)?;
    }
    checkpoint::prune(&run, cfg.keep_last, state.best_step)?;
    let best_checkpoint = state
        .best_step
        .map(|s| checkpoint::step_dir(&run, s))
        .filter(|d| d.is_dir());
    let final_dir = run.join("final");
    match (cfg.final_weights, &best_checkpoint) {
        (FinalWeights::Best, Some(best)) if best != &last_ckpt => {
            Model::load(best, Device::Cpu)?.save(&final_dir)?;
        }
        _ => model.save(&final_dir)?,
    }
    // `Model::save` renames a finished directory into place but does not
    // fsync; make the final weights durable before the summary says done.
    atomic::sync_tree(&final_dir).with_context(|| format!("syncing {}", final_dir.display()))?;
    if cfg.plots {
        if let Err(err) = metrics.plot(&run) {
            eprintln!("warning: plots not drawn: {err:#}");
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let summary = TrainSummary {
        steps: state.step,
        stop,
        final_val_loss: last_eval.as_ref().map(|e| e.loss),
        best_val_loss: state.best_val_loss,
        best_step: state.best_step,
        per_agent_val_loss: last_eval
            .as_ref()
            .map(|e| {
                e.per_agent
                    .iter()
                    .map(|(k, v)| (k.clone(), v.loss))
                    .collect()
            })
            .unwrap_or_default(),
        tokens_per_s: positions_this_run as f64 / loop_start.elapsed().as_secs_f64().max(1e-9),
        wall_secs: wall,
        train_secs: state.train_secs + wall,
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

/// A line above the progress bar, or on stderr when there is no bar.
fn say(pb: &indicatif::ProgressBar, msg: String) {
    if pb.is_hidden() {
        eprintln!("{msg}");
    } else {
        pb.println(msg);
    }
}

/// Log an evaluation and update best/patience. Returns true on improvement.
fn record_eval(
    metrics: &mut Metrics,
    state: &mut TrainerState,
    e: &EvalResult,
    min_delta: f64,
) -> anyhow::Result<bool> {
    metrics.push(Record::Eval {
        step: state.step,
        val_loss: e.loss,
        val_acc: e.acc,
        val_tokens: e.tokens,
        per_agent: e.per_agent.clone(),
    })?;
    let improved = e.loss.is_finite() && state.best_val_loss.is_none_or(|b| e.loss < b - min_delta);
    if improved {
        state.best_val_loss = Some(e.loss);
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
