//! Speed probes shared by `afm bench model` and the criterion benches:
//! a training step (forward, fused LM loss on every position, backward,
//! grad clipping, AdamW), greedy decoding, and an in-process matmul peak
//! (for MFU).

use crate::{generate, ForwardArgs, Model, Precision, SamplingConfig};
use std::time::Instant;
use tch::{nn, nn::OptimizerConfig, Kind, Tensor};

/// Random `[batch, ctx]` token ids below `vocab` (deterministic in `seed`).
pub fn random_tokens(batch: usize, ctx: usize, vocab: usize, seed: u64) -> Tensor {
    let mut rng = crate::rng::seeded(seed);
    let v: Vec<i64> = (0..batch * ctx)
        .map(|_| (rng.next_u64() % vocab as u64) as i64)
        .collect();
    Tensor::from_slice(&v).view([batch as i64, ctx as i64])
}

/// A training-step harness: model parameters, optimizer and one fixed batch.
pub struct TrainStep {
    opt: nn::Optimizer,
    tokens: Tensor,
    targets: Tensor,
    precision: Precision,
}

impl TrainStep {
    /// AdamW (lr 3e-4, weight decay 0.1) over all of `model`'s parameters
    /// and a random batch of `batch x ctx` tokens.
    pub fn new(
        model: &Model,
        batch: usize,
        ctx: usize,
        precision: Precision,
    ) -> anyhow::Result<Self> {
        if ctx > model.config.n_ctx || ctx == 0 || batch == 0 {
            anyhow::bail!(
                "bench: need batch >= 1 and ctx in 1..={}, got batch {batch}, ctx {ctx}",
                model.config.n_ctx
            );
        }
        let dev = model.device();
        let all = random_tokens(batch, ctx + 1, model.config.vocab_size, 7).to_device(dev);
        let opt = nn::AdamW {
            wd: 0.1,
            ..Default::default()
        }
        .build(&model.vs, 3e-4)?;
        Ok(TrainStep {
            opt,
            tokens: all.narrow(1, 0, ctx as i64),
            targets: all.narrow(1, 1, ctx as i64).reshape([-1]),
            precision,
        })
    }

    /// One step; returns the mean loss.
    pub fn step(&mut self, model: &Model) -> anyhow::Result<f64> {
        let h = model
            .gpt
            .hidden(&ForwardArgs::new(&self.tokens), self.precision, true);
        let h = h.view([-1, model.config.n_embd as i64]);
        let n = h.size()[0] as f64;
        let loss = model
            .gpt
            .lm_loss(&h, &self.targets, None, self.precision, None)?
            .loss
            / n;
        self.opt.zero_grad();
        loss.backward();
        self.opt.clip_grad_norm(1.0);
        self.opt.step();
        Ok(loss.double_value(&[]))
    }
}

/// Time `steps` training steps after `warmup`; returns (tokens/s, last loss).
pub fn train_tokens_per_s(
    model: &Model,
    batch: usize,
    ctx: usize,
    precision: Precision,
    warmup: usize,
    steps: usize,
    mut on_step: impl FnMut(),
) -> anyhow::Result<(f64, f64)> {
    let mut t = TrainStep::new(model, batch, ctx, precision)?;
    for _ in 0..warmup {
        t.step(model)?;
        on_step();
    }
    let start = Instant::now();
    let mut loss = f64::NAN;
    for _ in 0..steps.max(1) {
        loss = t.step(model)?;
        on_step();
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(((batch * ctx * steps.max(1)) as f64 / secs, loss))
}

/// Greedy decoding speed at batch 1: `new_tokens` after a random
/// `prompt_len`-token prompt, timed end to end (prefill included, as HF's
/// `generate()` is usually timed). Returns new tokens per second.
pub fn generate_tokens_per_s(
    model: &Model,
    prompt_len: usize,
    new_tokens: usize,
    precision: Precision,
) -> anyhow::Result<f64> {
    let v = Vec::<i64>::try_from(
        random_tokens(1, prompt_len, model.tokenizer.n_vocab().min(50257), 3).view([-1]),
    )?;
    let prompt: Vec<u32> = v.iter().map(|&x| x as u32).collect();
    let cfg = SamplingConfig::greedy();
    // Warm-up (allocations, bf16 weight casts, kernels).
    generate(
        model,
        std::slice::from_ref(&prompt),
        4,
        &[],
        &cfg,
        precision,
    )?;
    let start = Instant::now();
    let g = generate(model, &[prompt], new_tokens, &[], &cfg, precision)?;
    let secs = start.elapsed().as_secs_f64();
    Ok(g[0].tokens.len() as f64 / secs)
}

/// Measured matmul throughput (GFLOP/s) of `n x n x n` products in `kind`
/// on the CPU, best of a few runs.
pub fn matmul_peak_gflops(kind: Kind, n: i64) -> f64 {
    let _g = tch::no_grad_guard();
    let a = Tensor::randn([n, n], (Kind::Float, tch::Device::Cpu)).to_kind(kind);
    let b = Tensor::randn([n, n], (Kind::Float, tch::Device::Cpu)).to_kind(kind);
    let _ = a.matmul(&b);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let s = Instant::now();
        let c = a.matmul(&b);
        let _ = c.double_value(&[0, 0]);
        best = best.min(s.elapsed().as_secs_f64());
    }
    2.0 * (n * n * n) as f64 / best / 1e9
}

/// Training FLOPs per token: 6 x (matmul parameters incl. the tied LM head)
/// + attention (12 x n_layer x ctx x n_embd, causal not discounted).
pub fn train_flops_per_token(model: &Model, ctx: usize) -> f64 {
    let c = &model.config;
    let per_block = 12 * c.n_embd * c.n_embd;
    let matmul_params = c.n_layer * per_block + c.vocab_size * c.n_embd;
    6.0 * matmul_params as f64 + 12.0 * (c.n_layer * ctx * c.n_embd) as f64
}

/// Bytes of weights one decoding step must read at batch 1 in `precision`:
/// every block matmul weight and the tied LM head (embedding and LayerNorm
/// reads are one row or a few vectors, left out).
pub fn decode_weight_bytes(model: &Model, precision: Precision) -> f64 {
    let c = &model.config;
    let matmul_params = c.n_layer * 12 * c.n_embd * c.n_embd + c.vocab_size * c.n_embd;
    let bytes = match precision {
        Precision::F32 => 4,
        Precision::Bf16 => 2,
    };
    (matmul_params * bytes) as f64
}

/// Measured memory read bandwidth (GB/s): a vectorised sum over a 256 MiB
/// buffer (far beyond cache), split over libtorch's intra-op thread count
/// as the decoding kernels are; the median of 7 runs (the best run of a
/// shared machine can be a burst far above what it sustains). This is the
/// ceiling of batch-1 decoding (`decode_weight_bytes` a token).
pub fn read_bandwidth_gbps() -> f64 {
    use crate::simd::{detect, dispatch, multiversion, Elem};
    use rayon::prelude::*;
    #[inline(always)]
    fn sum_impl<E: Elem>(x: &[E]) -> f32 {
        let mut acc = [0f32; 32];
        for c in x.chunks_exact(32) {
            for j in 0..32 {
                acc[j] += c[j].to_f32();
            }
        }
        acc.iter().sum()
    }
    multiversion!(sum_impl => sum_avx2, sum_avx512; (x: &[E]) -> f32);
    let buf: Vec<f32> = (0..64usize << 20).map(|i| (i % 7) as f32).collect();
    let threads = tch::get_num_threads().max(1) as usize;
    let isa = detect();
    let mut secs = Vec::new();
    for _ in 0..7 {
        let s = Instant::now();
        let total: f32 = buf
            .par_chunks(buf.len().div_ceil(threads))
            .map(|c| dispatch!(isa, sum_avx512, sum_avx2, sum_impl, (c)))
            .sum();
        std::hint::black_box(total);
        secs.push(s.elapsed().as_secs_f64());
    }
    secs.sort_by(f64::total_cmp);
    (buf.len() * 4) as f64 / secs[secs.len() / 2] / 1e9
}

/// Measured read bandwidth (GB/s) of a large matrix-vector product in
/// `kind` on the CPU, the operation batch-1 decoding is made of: a
/// `[1, 256] x [256, 131072]` product reading a 128 MiB (f32) or 64 MiB
/// (bf16) matrix, too big for cache; best of a few runs, with the current
/// torch thread count.
pub fn matvec_bandwidth_gbps(kind: Kind) -> f64 {
    let _g = tch::no_grad_guard();
    let (k, n) = (256i64, 131_072i64);
    let w = Tensor::randn([n, k], (Kind::Float, tch::Device::Cpu)).to_kind(kind);
    let x = Tensor::randn([1, k], (Kind::Float, tch::Device::Cpu)).to_kind(kind);
    let _ = x.matmul(&w.tr());
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let s = Instant::now();
        let y = x.matmul(&w.tr());
        let _ = y.double_value(&[0, 0]);
        best = best.min(s.elapsed().as_secs_f64());
    }
    (n * k) as f64 * kind.elt_size_in_bytes() as f64 / best / 1e9
}
