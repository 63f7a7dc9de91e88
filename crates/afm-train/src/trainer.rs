//! The building blocks of a training step and of validation:
//! [`batch_loss`] (fused and unfused), [`train_step`], [`val_sample`] and
//! [`evaluate`]. The recipe that runs them is [`crate::Trainer`].

use crate::config::{Divergence, LossConfig, TrainConfig};
use crate::data::{make_batch, Batch, RowOrder};
use crate::loss::{cross_entropy_per_token, divergence_per_token};
use crate::metrics::AgentEval;
use crate::optim::AdamW;
use crate::teacher::Teachers;
use afm_format::shards::Shards;
use afm_model::{ForwardArgs, LmDistill, Model, Precision};
use afm_tokenizer::{Tokenizer, ROLE_NONE, ROLE_OBS};
use anyhow::bail;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
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

/// What [`crate::train`] returns (also written to `RUN/summary.json`).
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

/// Loss of one micro-batch (the formula is in the [crate docs](crate)). The LM
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

/// What one optimiser step did (or, summed with [`StepStats::absorb`],
/// several).
#[derive(Debug, Clone, Default, PartialEq)]
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

impl StepStats {
    /// Add `o`'s sums to these (the gradient norm becomes `o`'s: the latest).
    pub fn absorb(&mut self, o: &StepStats) {
        self.loss += o.loss;
        self.ce_sum += o.ce_sum;
        self.kl_sum += o.kl_sum;
        self.kl_weight += o.kl_weight;
        self.weight_total += o.weight_total;
        self.grad_norm = o.grad_norm;
        self.positions += o.positions;
        for (k, (a, w)) in &o.ce_by_owner {
            let e = self.ce_by_owner.entry(*k).or_default();
            e.0 += a;
            e.1 += w;
        }
    }
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

fn fmt_rows(rows: &[usize]) -> String {
    let mut s: Vec<String> = rows.iter().take(16).map(|r| r.to_string()).collect();
    if rows.len() > 16 {
        s.push("...".into());
    }
    s.join(",")
}
