//! Incremental decoding: [`Decoder`] (batched, KV cache, rows fed
//! independently so an agent runtime can splice tool observations in
//! mid-generation), sampling ([`SamplingConfig`]) and [`generate`].

use crate::gpt::{CachedStep, KvCache, Weights};
use crate::{Model, Precision};
use afm_format::SplitMix64;
use afm_tokenizer::RoleTracker;
use anyhow::{bail, Context};
use tch::{Device, Kind, Tensor};

/// How the next token is chosen. Order as in HF: temperature, then top-k,
/// then top-p (nucleus).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// 0 = greedy (argmax); otherwise logits are divided by it.
    pub temperature: f64,
    /// Keep only the k most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability sum
    /// reaches p (0 < p <= 1).
    pub top_p: Option<f64>,
    /// Seed of the sampling RNG (row `r` draws from its own stream).
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self::greedy()
    }
}

impl SamplingConfig {
    /// Argmax decoding.
    pub fn greedy() -> Self {
        SamplingConfig {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }

    /// Check the numbers.
    pub fn validate(&self) -> anyhow::Result<()> {
        match self.problem() {
            Some((field, why)) => bail!("sampling: {field} {why}"),
            None => Ok(()),
        }
    }

    /// The first bad field and why (for callers whose errors name fields).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            let why = format!("must be >= 0 and finite, got {}", self.temperature);
            return Some(("temperature", why));
        }
        if self.top_k == Some(0) {
            return Some(("top_k", "must be >= 1".into()));
        }
        match self.top_p {
            Some(p) if !(p > 0.0 && p <= 1.0) => {
                Some(("top_p", format!("must be in (0, 1], got {p}")))
            }
            _ => None,
        }
    }
}

/// Batched incremental decoder over a preallocated KV cache
/// (`[batch, n_head, n_ctx, head_dim]` per layer, in the compute precision).
///
/// Each row has its own length, position counter and [`RoleTracker`] (the
/// one rule for role ids), so rows can be fed different amounts at
/// different times.
pub struct Decoder<'m> {
    model: &'m Model,
    weights: Weights,
    cache: KvCache,
    lens: Vec<usize>,
    trackers: Vec<RoleTracker>,
    logits: Tensor,
    rngs: Option<(u64, Vec<SplitMix64>)>,
    batch: usize,
}

impl<'m> Decoder<'m> {
    /// A decoder for `batch` rows, all empty.
    pub fn new(model: &'m Model, batch: usize, precision: Precision) -> Self {
        let _g = tch::no_grad_guard();
        let weights = model.gpt.weights(precision);
        let cache = model.gpt.new_cache(batch, &weights);
        let logits = Tensor::zeros(
            [batch as i64, model.config.vocab_size as i64],
            (Kind::Float, model.device()),
        );
        Decoder {
            model,
            weights,
            cache,
            lens: vec![0; batch],
            trackers: vec![RoleTracker::new(); batch],
            logits,
            rngs: None,
            batch,
        }
    }

    /// The model decoded.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// Tokens fed so far to `row` (0 for an unknown row).
    pub fn row_len(&self, row: usize) -> usize {
        self.lens.get(row).copied().unwrap_or(0)
    }

    /// Number of rows.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Forget `row`'s tokens (its cache slots are reused).
    pub fn reset_row(&mut self, row: usize) -> anyhow::Result<()> {
        if row >= self.batch {
            bail!("decoder: row {row} out of range (batch {})", self.batch);
        }
        self.lens[row] = 0;
        self.trackers[row] = RoleTracker::new();
        Ok(())
    }

    /// Append tokens to some rows (any lengths; rows not listed, or listed
    /// with no tokens, are untouched). Token ids are mapped to the model's
    /// rows (see `Tokenizer::row`). Returns f32 logits `[batch, V]` (over
    /// rows) of
    /// each row's last position; rows not fed keep their previous logits
    /// (zeros before the first feed). Errors (nothing is fed) on an unknown
    /// or repeated row, an out-of-vocabulary id, or when a row would exceed
    /// the model context `n_ctx`.
    pub fn feed(&mut self, rows: &[(usize, Vec<u32>)]) -> anyhow::Result<Tensor> {
        let cfg = &self.model.config;
        let mut fed: Vec<(usize, &[u32])> = Vec::new();
        let mut seen = vec![false; self.batch];
        for (row, toks) in rows {
            let row = *row;
            if row >= self.batch {
                bail!("decoder: row {row} out of range (batch {})", self.batch);
            }
            if std::mem::replace(&mut seen[row], true) {
                bail!("decoder: row {row} appears twice in one feed");
            }
            if toks.is_empty() {
                continue;
            }
            let tok = &self.model.tokenizer;
            if let Some(&bad) = toks
                .iter()
                .find(|&&t| tok.row(t).is_none_or(|r| r as usize >= cfg.vocab_size))
            {
                bail!(
                    "decoder: row {row}: token id {bad} has no row in the model vocabulary ({} rows{})",
                    cfg.vocab_size,
                    if tok.corpus().is_some() {
                        "; a corpus vocabulary: encode text with the model's tokenizer"
                    } else {
                        ""
                    }
                );
            }
            if self.lens[row] + toks.len() > cfg.n_ctx {
                bail!(
                    "decoder: row {row}: {} cached + {} new tokens exceed the model context n_ctx = {}",
                    self.lens[row],
                    toks.len(),
                    cfg.n_ctx
                );
            }
            fed.push((row, toks));
        }
        if fed.is_empty() {
            return Ok(self.logits.shallow_clone());
        }
        fed.sort_by_key(|f| f.0);
        let l = fed.iter().map(|f| f.1.len()).max().unwrap_or(1);
        let r = fed.len();
        let mut tokens = vec![0i64; r * l];
        let mut roles = vec![0i64; r * l];
        let mut positions = vec![0i64; r * l];
        let mut trackers = self.trackers.clone();
        for (i, (row, toks)) in fed.iter().enumerate() {
            for j in 0..l {
                let k = i * l + j;
                positions[k] = (self.lens[*row] + j).min(cfg.n_ctx - 1) as i64;
                if let Some(&t) = toks.get(j) {
                    tokens[k] = self.model.tokenizer.row(t).unwrap_or(0) as i64;
                    let role = trackers[*row].next(t) as usize;
                    if self.model.gpt.role_emb().is_some() && role >= cfg.n_roles {
                        bail!(
                            "decoder: row {row}: role id {role} of token {t} exceeds the model's role table ({})",
                            cfg.n_roles
                        );
                    }
                    roles[k] = role as i64;
                }
            }
        }
        let dev = self.model.device();
        let mk = |v: &[i64]| {
            Tensor::from_slice(v)
                .view([r as i64, l as i64])
                .to_device(dev)
        };
        let (tokens, roles, positions) = (mk(&tokens), mk(&roles), mk(&positions));
        let row_ids: Vec<usize> = fed.iter().map(|f| f.0).collect();
        let lens: Vec<usize> = row_ids.iter().map(|&b| self.lens[b]).collect();
        let n_new: Vec<usize> = fed.iter().map(|f| f.1.len()).collect();
        let step = CachedStep {
            tokens: &tokens,
            roles: &roles,
            positions: &positions,
            rows: &row_ids,
            lens: &lens,
            n_new: &n_new,
            batch: self.batch,
        };
        let out = self
            .model
            .gpt
            .forward_cached(&step, &self.weights, &mut self.cache);
        self.logits = if r == self.batch {
            out
        } else {
            let idx: Vec<i64> = row_ids.iter().map(|&b| b as i64).collect();
            self.logits
                .index_copy(0, &Tensor::from_slice(&idx).to_device(dev), &out)
        };
        for (b, n) in row_ids.iter().zip(&n_new) {
            self.lens[*b] += n;
        }
        self.trackers = trackers;
        Ok(self.logits.shallow_clone())
    }

    /// Choose one token per row of `logits` (`[batch, V]` or `[V]`, over
    /// the model's rows as [`Decoder::feed`] returns them).
    /// Returns `(token id, log p)` where `log p` is the natural-log probability
    /// under the model's raw distribution (`log_softmax` of the unscaled
    /// logits), whatever the temperature / top-k / top-p. Deterministic
    /// given `cfg.seed`: row `r` draws from its own stream, which advances
    /// with every call.
    pub fn sample(
        &mut self,
        logits: &Tensor,
        cfg: &SamplingConfig,
    ) -> anyhow::Result<Vec<(u32, f32)>> {
        cfg.validate()?;
        let logits = if logits.dim() == 1 {
            logits.unsqueeze(0)
        } else {
            logits.shallow_clone()
        };
        let (b, v) = logits.size2().map_err(|_| {
            anyhow::anyhow!("sample: logits must be [batch, V], got {:?}", logits.size())
        })?;
        let host = logits
            .detach()
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous();
        let mut data = vec![0f32; (b * v) as usize];
        host.f_copy_data(&mut data, (b * v) as usize)
            .context("sample: copying logits")?;
        if cfg.temperature > 0.0 {
            let fresh =
                !matches!(&self.rngs, Some((s, r)) if *s == cfg.seed && r.len() >= b as usize);
            if fresh {
                let rngs = (0..b.max(self.batch as i64) as u64)
                    .map(|r| {
                        crate::rng::seeded(
                            cfg.seed.wrapping_add(r.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                        )
                    })
                    .collect();
                self.rngs = Some((cfg.seed, rngs));
            }
        }
        let mut out = Vec::with_capacity(b as usize);
        for (r, row) in data.chunks(v as usize).enumerate() {
            let rng = match (&mut self.rngs, cfg.temperature > 0.0) {
                (Some((_, rngs)), true) => Some(&mut rngs[r]),
                _ => None,
            };
            let (pick, logp) = sample_row(row, cfg, rng)?;
            let id = self.model.tokenizer.id_of_row(pick).ok_or_else(|| {
                anyhow::anyhow!(
                    "sample: picked row {pick}, a padding row beyond the tokenizer's {} (narrow the logits to the vocabulary)",
                    self.model.tokenizer.n_vocab()
                )
            })?;
            out.push((id, logp));
        }
        Ok(out)
    }
}

/// One sequence's sampler, for callers that decode rows of different
/// requests with different settings in one batch (a server): greedy, or
/// temperature / top-k / top-p from its own stream of `cfg.seed`.
pub struct RowSampler {
    cfg: SamplingConfig,
    rng: SplitMix64,
}

impl RowSampler {
    /// A sampler for `cfg` (checked).
    pub fn new(cfg: SamplingConfig) -> anyhow::Result<Self> {
        cfg.validate()?;
        let rng = crate::rng::seeded(cfg.seed);
        Ok(RowSampler { cfg, rng })
    }

    /// `(model row, log p)` of one row of logits (over the model's rows, as
    /// [`Decoder::feed`] returns them); `log p` as in [`Decoder::sample`].
    pub fn pick(&mut self, row: &[f32]) -> anyhow::Result<(u32, f32)> {
        sample_row(row, &self.cfg, Some(&mut self.rng))
    }
}

fn sample_row(
    row: &[f32],
    cfg: &SamplingConfig,
    rng: Option<&mut SplitMix64>,
) -> anyhow::Result<(u32, f32)> {
    if row.iter().any(|x| x.is_nan()) {
        bail!("sample: logits contain NaN");
    }
    let lse = crate::xent::log_sum_exp(row);
    let logp = |t: usize| (row[t] as f64 - lse) as f32;
    let rng = match rng {
        Some(r) if cfg.temperature > 0.0 => r,
        _ => {
            // Greedy: first index of the maximum.
            let mut best = 0;
            for (i, &x) in row.iter().enumerate() {
                if x > row[best] {
                    best = i;
                }
            }
            return Ok((best as u32, logp(best)));
        }
    };
    let inv_t = 1.0 / cfg.temperature;
    // Candidates (index, scaled logit), most likely first after filtering.
    let mut cand: Vec<(usize, f64)> = row
        .iter()
        .enumerate()
        .map(|(i, &x)| (i, x as f64 * inv_t))
        .collect();
    let by_logit_desc =
        |a: &(usize, f64), b: &(usize, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if let Some(k) = cfg.top_k {
        if k < cand.len() {
            cand.select_nth_unstable_by(k - 1, by_logit_desc);
            cand.truncate(k);
        }
    }
    let m = cand.iter().map(|c| c.1).fold(f64::NEG_INFINITY, f64::max);
    let mut probs: Vec<(usize, f64)> = cand.iter().map(|&(i, x)| (i, (x - m).exp())).collect();
    let z: f64 = probs.iter().map(|p| p.1).sum();
    for p in &mut probs {
        p.1 /= z;
    }
    if let Some(top_p) = cfg.top_p {
        if top_p < 1.0 {
            probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (j, p) in probs.iter().enumerate() {
                acc += p.1;
                if acc >= top_p {
                    keep = j + 1;
                    break;
                }
            }
            probs.truncate(keep);
            let z: f64 = probs.iter().map(|p| p.1).sum();
            for p in &mut probs {
                p.1 /= z;
            }
        }
    } else {
        probs.sort_by_key(|p| p.0);
    }
    let u = rng.uniform();
    let mut acc = 0.0;
    let mut pick = probs[probs.len() - 1].0;
    for &(i, p) in &probs {
        acc += p;
        if u < acc {
            pick = i;
            break;
        }
    }
    Ok((pick as u32, logp(pick)))
}

/// One finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// New tokens (the prompt excluded), including the stop token if one
    /// was produced.
    pub tokens: Vec<u32>,
    /// Natural-log probability of each new token under the model.
    pub logprobs: Vec<f32>,
    /// The stop token that ended the generation; `None` when it ended at
    /// `max_new_tokens` or at the model context (`n_ctx`).
    pub stop: Option<u32>,
}

/// Generate up to `max_new_tokens` after each prompt (batched, prompts may
/// differ in length). A row ends at its first token in `stop`, after
/// `max_new_tokens`, or when prompt + output reach the model context
/// `n_ctx` tokens (documented stop, `stop == None`; the whole sequence then
/// still fits the context). An empty prompt or one longer than `n_ctx` is an
/// error.
pub fn generate(
    model: &Model,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    stop: &[u32],
    cfg: &SamplingConfig,
    precision: Precision,
) -> anyhow::Result<Vec<Generation>> {
    cfg.validate()?;
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            bail!("generate: prompt {i} is empty (need at least one token)");
        }
        if p.len() > model.config.n_ctx {
            bail!(
                "generate: prompt {i} has {} tokens, more than the model context n_ctx = {}",
                p.len(),
                model.config.n_ctx
            );
        }
    }
    let mut out: Vec<Generation> = prompts
        .iter()
        .map(|_| Generation {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            stop: None,
        })
        .collect();
    if prompts.is_empty() || max_new_tokens == 0 {
        return Ok(out);
    }
    let mut dec = Decoder::new(model, prompts.len(), precision);
    let feed: Vec<(usize, Vec<u32>)> = prompts.iter().cloned().enumerate().collect();
    let mut logits = dec.feed(&feed)?;
    let mut active: Vec<bool> = vec![true; prompts.len()];
    loop {
        let picks = dec.sample(&logits, cfg)?;
        let mut next = Vec::new();
        for (r, &(tok, lp)) in picks.iter().enumerate() {
            if !active[r] {
                continue;
            }
            let g = &mut out[r];
            g.tokens.push(tok);
            g.logprobs.push(lp);
            if stop.contains(&tok) {
                g.stop = Some(tok);
                active[r] = false;
            } else if g.tokens.len() >= max_new_tokens || dec.row_len(r) + 1 >= model.config.n_ctx {
                // Prompt + output fill the context: the last token could not be fed.
                active[r] = false;
            } else {
                next.push((r, vec![tok]));
            }
        }
        if next.is_empty() {
            return Ok(out);
        }
        logits = dec.feed(&next)?;
    }
}
