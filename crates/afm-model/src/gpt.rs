//! The whole GPT-2 in one file (nanoGPT style): embeddings (token +
//! position + agent role), pre-LayerNorm blocks with causal (optionally
//! block-diagonal) scaled-dot-product attention and a GELU-tanh MLP, a final
//! LayerNorm and the LM head tied to the token embedding.
//!
//! Parameters carry Hugging Face GPT-2 names *and* layouts: linear weights
//! are stored `[in, out]` like HF's `Conv1D`, so import/export is a rename of
//! at most the `transformer.` prefix. The extra table `role_emb.weight`
//! (`[n_roles, n_embd]`, zero-initialised) exists only when `n_roles > 0`.
//!
//! Mixed precision is explicit: master weights are f32; with
//! [`Precision::Bf16`] the matmul weights and the activations entering
//! matmuls/attention are cast to bf16, while the residual stream, LayerNorm,
//! softmax-sensitive outputs and the returned logits stay f32.

// `x = x + y` on purpose: tch's `+=` is in-place and would break autograd.
#![allow(clippy::assign_op_pattern)]

mod cpu_step;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::GptConfig;
use tch::{nn, Device, Kind, Tensor};

/// Compute precision of the matmuls and attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bf16 matmuls/attention, f32 master weights, LayerNorm and logits.
    Bf16,
}

impl Precision {
    /// The tensor kind matmuls run in.
    pub fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        }
    }

    /// `Bf16` when `bf16` is true.
    pub fn from_bf16(bf16: bool) -> Self {
        if bf16 {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }
}

/// Inputs of [`Gpt::forward`]. All tensors are i64 on the model's device.
pub struct ForwardArgs<'a> {
    /// `[B, T]` token ids.
    pub tokens: &'a Tensor,
    /// `[B, T]` role ids; `None` = all `ROLE_NONE`. Ignored when the model
    /// has no role table (`n_roles == 0`).
    pub roles: Option<&'a Tensor>,
    /// `[B, T]` position ids; `None` = `0..T`, or restarting at every
    /// document boundary when `docs` is given.
    pub positions: Option<&'a Tensor>,
    /// `[B, T]` document index per position (packed rows): attention is
    /// causal *within* a document and never crosses documents. `None` =
    /// plain causal.
    pub docs: Option<&'a Tensor>,
    /// `[N]` flat indices into `B*T`: the final LayerNorm and LM head run
    /// only there and the logits are `[N, V]`.
    pub select: Option<&'a Tensor>,
}

impl<'a> ForwardArgs<'a> {
    /// Plain causal forward of `tokens`.
    pub fn new(tokens: &'a Tensor) -> Self {
        Self {
            tokens,
            roles: None,
            positions: None,
            docs: None,
            select: None,
        }
    }
}

/// Which implementation one-token CPU decoding steps use (see
/// [`Gpt::forward_cached`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeKernels {
    /// The Rust step (default).
    Rust,
    /// libtorch ops, as on other devices (for comparisons).
    Libtorch,
}

static LIBTORCH_DECODING: AtomicBool = AtomicBool::new(false);

/// Choose the decoding kernels for the whole process (like
/// `tch::set_num_threads`); `afm bench model` times both in one run.
pub fn set_decode_kernels(k: DecodeKernels) {
    LIBTORCH_DECODING.store(k == DecodeKernels::Libtorch, Ordering::Relaxed);
}

/// The current choice of [`set_decode_kernels`].
pub fn decode_kernels() -> DecodeKernels {
    if LIBTORCH_DECODING.load(Ordering::Relaxed) {
        DecodeKernels::Libtorch
    } else {
        DecodeKernels::Rust
    }
}

/// LayerNorm parameters.
struct Ln {
    w: Tensor,
    b: Tensor,
}

/// A linear layer stored HF-`Conv1D` style: `w` is `[in, out]`.
struct Lin {
    w: Tensor,
    b: Tensor,
}

struct Block {
    ln_1: Ln,
    c_attn: Lin,
    attn_proj: Lin,
    ln_2: Ln,
    c_fc: Lin,
    mlp_proj: Lin,
    /// `[n_head]` logits of the smeared-key mix (`GptConfig::smear_keys`).
    smear: Option<Tensor>,
}

/// The matmul weights in the compute precision (f32: shallow copies; bf16:
/// casts). Built per forward when training (the cast is differentiable) and
/// once per [`crate::Decoder`] when generating.
pub struct Weights {
    kind: Kind,
    blocks: Vec<[Lin; 4]>,
    /// The tied LM head, `[V, C]` (= `wte`).
    head: Tensor,
    /// Per layer, each head's smeared-key mix `(a, 1 - a)` in the compute
    /// precision, read once for the Rust decoding step (empty when built
    /// for training).
    smear_mix: Vec<Option<Vec<(f32, f32)>>>,
}

/// What [`Gpt::lm_loss`] returns.
pub struct LmLoss {
    /// `sum_i w_i * l_i` (scalar f32) carrying the exact gradient, where
    /// `l_i = nll_i`, or `alpha * nll_i + beta * kl_i` on distilled rows.
    pub loss: Tensor,
    /// Unweighted negative log-likelihood of each row's target.
    pub nll: Vec<f32>,
    /// Unweighted `T^2 * KL(teacher_T || student_T)` of each row (0 where
    /// there is no teacher, all 0 without distillation).
    pub kl: Vec<f32>,
}

/// Forward-KL distillation inside [`Gpt::lm_loss`] (CPU only).
pub struct LmDistill<'a> {
    /// Teacher logits `[M, V]` over the student's vocabulary (any float
    /// kind; read as f32).
    pub teacher_logits: &'a Tensor,
    /// For each row of `h`: its row in `teacher_logits`, or -1 (plain CE).
    pub teacher_row: &'a [i64],
    /// Weight of cross-entropy on rows with a teacher.
    pub alpha: f64,
    /// Weight of `T^2 * KL(teacher_T || student_T)` on those rows.
    pub beta: f64,
    /// Temperature `T` (> 0).
    pub temperature: f64,
}

/// A contiguous CPU tensor's elements as a slice.
///
/// # Safety
/// `t` must be a contiguous CPU tensor whose elements are valid `T`s, and
/// nothing may write to its storage while the slice lives.
unsafe fn cpu_slice<T>(t: &Tensor) -> &[T] {
    assert!(t.device() == Device::Cpu && t.is_contiguous());
    assert_eq!(t.kind().elt_size_in_bytes(), std::mem::size_of::<T>());
    // SAFETY: upheld by the caller (see above); size and layout checked.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const T, t.numel()) }
}

/// A contiguous CPU tensor's elements as a mutable slice.
///
/// # Safety
/// `t` must be a contiguous CPU tensor whose elements are `T`-sized and
/// valid `T`s, and no other tensor may view its storage while the slice
/// lives.
unsafe fn cpu_slice_mut<T>(t: &mut Tensor) -> &mut [T] {
    assert!(t.device() == Device::Cpu && t.is_contiguous());
    assert_eq!(t.kind().elt_size_in_bytes(), std::mem::size_of::<T>());
    // SAFETY: upheld by the caller (see above); size and layout checked.
    unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut T, t.numel()) }
}

/// Per-layer key/value cache for incremental decoding:
/// `[batch, n_head, n_ctx, head_dim]` per layer, preallocated.
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Per batch row, the last token fed (-1: none yet): the previous
    /// token of the next one (`GptConfig::smear_tokens`).
    last: Vec<i64>,
}

/// Which rows a cached step feeds and how (built by the decoder).
pub struct CachedStep<'a> {
    /// `[R, L]` tokens (rows padded to the longest with any valid id).
    pub tokens: &'a Tensor,
    /// `[R, L]` role ids.
    pub roles: &'a Tensor,
    /// `[R, L]` positions (= cache slot of each token).
    pub positions: &'a Tensor,
    /// Batch row of each fed row, in order.
    pub rows: &'a [usize],
    /// Tokens already cached per fed row.
    pub lens: &'a [usize],
    /// New tokens per fed row (>= 1, <= L).
    pub n_new: &'a [usize],
    /// Batch size of the cache.
    pub batch: usize,
}

/// GPT-2 with optional agent-role embeddings.
pub struct Gpt {
    config: GptConfig,
    wte: Tensor,
    wpe: Tensor,
    role_emb: Option<Tensor>,
    /// `[C]` per-channel gate of the previous token's embedding
    /// (`GptConfig::smear_tokens`).
    smear_tok: Option<Tensor>,
    h: Vec<Block>,
    ln_f: Ln,
}

fn layer_norm(x: &Tensor, ln: &Ln, eps: f64) -> Tensor {
    let c = ln.w.size()[0];
    x.layer_norm([c], Some(&ln.w), Some(&ln.b), eps, true)
}

/// `x @ w + b` over the last dimension (one fused addmm).
fn linear(x: &Tensor, l: &Lin) -> Tensor {
    let mut shape = x.size();
    let d_in = shape[shape.len() - 1];
    let d_out = l.w.size()[1];
    let y = l.b.addmm(&x.reshape([-1, d_in]), &l.w);
    let last = shape.len() - 1;
    shape[last] = d_out;
    y.reshape(shape)
}

fn dropout(x: Tensor, p: f64, train: bool) -> Tensor {
    if train && p > 0.0 {
        x.dropout(p, true)
    } else {
        x
    }
}

impl Gpt {
    /// Create the parameters under `p`, initialised GPT-2 style from `seed`
    /// (see [`Gpt::init_weights`]).
    pub fn new(p: &nn::Path, config: &GptConfig, seed: u64) -> Gpt {
        let gpt = Self::new_zeroed(p, config);
        gpt.init_weights(seed);
        gpt
    }

    /// Parameters created without random init (loaders overwrite them).
    pub(crate) fn new_zeroed(p: &nn::Path, config: &GptConfig) -> Gpt {
        let (c, v, l) = (
            config.n_embd as i64,
            config.vocab_size as i64,
            config.n_layer,
        );
        let ln = |p: nn::Path| Ln {
            w: p.ones("weight", &[c]),
            b: p.zeros("bias", &[c]),
        };
        let lin = |p: nn::Path, d_in: i64, d_out: i64| Lin {
            w: p.zeros("weight", &[d_in, d_out]),
            b: p.zeros("bias", &[d_out]),
        };
        let wte = (p / "wte").zeros("weight", &[v, c]);
        let wpe = (p / "wpe").zeros("weight", &[config.n_ctx as i64, c]);
        let role_emb = (config.n_roles > 0)
            .then(|| (p / "role_emb").zeros("weight", &[config.n_roles as i64, c]));
        let smear_tok = config
            .smear_tokens
            .then(|| (p / "smear_tok").zeros("gate", &[c]));
        let h = (0..l)
            .map(|i| {
                let b = p / "h" / i;
                Block {
                    ln_1: ln(&b / "ln_1"),
                    c_attn: lin(&b / "attn" / "c_attn", c, 3 * c),
                    attn_proj: lin(&b / "attn" / "c_proj", c, c),
                    ln_2: ln(&b / "ln_2"),
                    c_fc: lin(&b / "mlp" / "c_fc", c, 4 * c),
                    mlp_proj: lin(&b / "mlp" / "c_proj", 4 * c, c),
                    smear: config
                        .smear_keys
                        .then(|| (&b / "attn").zeros("smear", &[config.n_head as i64])),
                }
            })
            .collect();
        let ln_f = ln(p / "ln_f");
        Gpt {
            config: config.clone(),
            wte,
            wpe,
            role_emb,
            smear_tok,
            h,
            ln_f,
        }
    }

    /// GPT-2's initialisation, deterministic in `seed` (own RNG, not
    /// libtorch's global one): weights and embeddings N(0, 0.02), residual
    /// projections N(0, 0.02/sqrt(2 n_layer)), biases 0, LayerNorm 1/0,
    /// role table 0.
    pub fn init_weights(&self, seed: u64) {
        let _g = tch::no_grad_guard();
        let mut rng = crate::rng::seeded(seed);
        let proj_std = 0.02 / ((2 * self.config.n_layer) as f64).sqrt();
        let mut fill = |t: &Tensor, std: f64| {
            let v = rng.normals(t.numel(), std);
            let src = Tensor::from_slice(&v)
                .view(t.size().as_slice())
                .to_device(t.device());
            t.shallow_clone().copy_(&src);
        };
        fill(&self.wte, 0.02);
        fill(&self.wpe, 0.02);
        for b in &self.h {
            fill(&b.c_attn.w, 0.02);
            fill(&b.attn_proj.w, proj_std);
            fill(&b.c_fc.w, 0.02);
            fill(&b.mlp_proj.w, proj_std);
            for l in [&b.c_attn, &b.attn_proj, &b.c_fc, &b.mlp_proj] {
                let _ = l.b.shallow_clone().zero_();
            }
            for n in [&b.ln_1, &b.ln_2] {
                let _ = n.w.shallow_clone().fill_(1.0);
                let _ = n.b.shallow_clone().zero_();
            }
            if let Some(m) = &b.smear {
                let _ = m.shallow_clone().zero_();
            }
        }
        let _ = self.ln_f.w.shallow_clone().fill_(1.0);
        let _ = self.ln_f.b.shallow_clone().zero_();
        if let Some(r) = &self.role_emb {
            let _ = r.shallow_clone().zero_();
        }
        if let Some(g) = &self.smear_tok {
            let _ = g.shallow_clone().zero_();
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GptConfig {
        &self.config
    }

    /// Device of the parameters.
    pub fn device(&self) -> Device {
        self.wte.device()
    }

    /// The token embedding / tied LM head `[V, C]`.
    pub fn wte(&self) -> &Tensor {
        &self.wte
    }

    /// The role table `[n_roles, C]`, if role embeddings are on.
    pub fn role_emb(&self) -> Option<&Tensor> {
        self.role_emb.as_ref()
    }

    pub(crate) fn set_config(&mut self, config: GptConfig) {
        self.config = config;
    }

    /// The matmul weights in `precision` (see [`Weights`]).
    pub fn weights(&self, precision: Precision) -> Weights {
        let mut w = self.weights_with(precision, true);
        let _guard = tch::no_grad_guard();
        w.smear_mix = self
            .h
            .iter()
            .map(|b| {
                b.smear.as_ref().map(|theta| {
                    // As `smear_keys` computes them, in the compute precision.
                    let a = theta.sigmoid().to_kind(w.kind);
                    let b = 1.0 - &a;
                    let f = |t: Tensor| Vec::<f32>::try_from(t.to_kind(Kind::Float));
                    f(a).unwrap_or_default()
                        .into_iter()
                        .zip(f(b).unwrap_or_default())
                        .collect()
                })
            })
            .collect();
        w
    }

    /// `with_head: false` skips casting the (large) tied head when only the
    /// blocks are needed (the head then stays the f32 `wte`, unused).
    fn weights_with(&self, precision: Precision, with_head: bool) -> Weights {
        let kind = precision.kind();
        let cast = |t: &Tensor| {
            if t.kind() == kind {
                t.shallow_clone()
            } else {
                t.to_kind(kind)
            }
        };
        let cl = |l: &Lin| Lin {
            w: cast(&l.w),
            b: cast(&l.b),
        };
        Weights {
            kind,
            blocks: self
                .h
                .iter()
                .map(|b| {
                    [
                        cl(&b.c_attn),
                        cl(&b.attn_proj),
                        cl(&b.c_fc),
                        cl(&b.mlp_proj),
                    ]
                })
                .collect(),
            head: if with_head {
                cast(&self.wte)
            } else {
                self.wte.shallow_clone()
            },
            smear_mix: Vec::new(),
        }
    }

    /// Check shapes and id ranges of `a`; errors name the offending input.
    pub fn check_args(&self, a: &ForwardArgs) -> anyhow::Result<()> {
        let shape = a.tokens.size();
        if shape.len() != 2 {
            anyhow::bail!("forward: tokens must be [B, T], got {shape:?}");
        }
        let t = shape[1] as usize;
        if t == 0 || shape[0] == 0 {
            anyhow::bail!("forward: empty batch {shape:?}");
        }
        if t > self.config.n_ctx {
            anyhow::bail!(
                "forward: sequence length {t} exceeds the model context n_ctx = {}",
                self.config.n_ctx
            );
        }
        let in_range = |name: &str, x: &Tensor, hi: usize| -> anyhow::Result<()> {
            if x.size() != shape {
                anyhow::bail!("forward: {name} has shape {:?}, tokens {shape:?}", x.size());
            }
            if x.kind() != Kind::Int64 {
                anyhow::bail!("forward: {name} must be int64, got {:?}", x.kind());
            }
            let lo = x.min().int64_value(&[]);
            let top = x.max().int64_value(&[]);
            if lo < 0 || top as u64 >= hi as u64 {
                anyhow::bail!("forward: {name} ids must be in 0..{hi}, got {lo}..={top}");
            }
            Ok(())
        };
        in_range("tokens", a.tokens, self.config.vocab_size)?;
        if let (Some(r), Some(_)) = (a.roles, &self.role_emb) {
            in_range("roles", r, self.config.n_roles)?;
        }
        if let Some(p) = a.positions {
            in_range("positions", p, self.config.n_ctx)?;
        }
        if let Some(d) = a.docs {
            in_range("docs", d, usize::MAX)?;
        }
        if let Some(s) = a.select {
            if s.dim() != 1 || s.kind() != Kind::Int64 {
                anyhow::bail!("forward: select must be a 1-d int64 tensor");
            }
            let n = shape[0] as usize * t;
            if s.numel() > 0 {
                let (lo, hi) = (s.min().int64_value(&[]), s.max().int64_value(&[]));
                if lo < 0 || hi as usize >= n {
                    anyhow::bail!("forward: select indices must be in 0..{n}, got {lo}..={hi}");
                }
            }
        }
        Ok(())
    }

    /// [`Gpt::forward`] after [`Gpt::check_args`]: bad inputs are errors.
    pub fn try_forward(
        &self,
        a: &ForwardArgs,
        precision: Precision,
        train: bool,
    ) -> anyhow::Result<Tensor> {
        self.check_args(a)?;
        Ok(self.forward(a, precision, train))
    }

    /// Logits (f32): `[B, T, V]`, or `[N, V]` at the `select`ed positions.
    ///
    /// Inputs are trusted (a malformed shape or an out-of-range id makes
    /// libtorch throw, i.e. panic): use [`Gpt::try_forward`] on unchecked
    /// data.
    pub fn forward(&self, a: &ForwardArgs, precision: Precision, train: bool) -> Tensor {
        let h = self.hidden(a, precision, train);
        let head = if precision.kind() == Kind::Float {
            self.wte.shallow_clone()
        } else {
            self.wte.to_kind(precision.kind())
        };
        h.to_kind(precision.kind())
            .matmul(&head.tr())
            .to_kind(Kind::Float)
    }

    /// Final hidden states after `ln_f` (f32): `[B, T, C]`, or `[N, C]` at
    /// the `select`ed positions. [`Gpt::lm_head`] turns them into logits;
    /// training code may instead feed them to a fused chunked loss.
    pub fn hidden(&self, a: &ForwardArgs, precision: Precision, train: bool) -> Tensor {
        let w = self.weights_with(precision, false);
        let (b, t) = a.tokens.size2().expect("tokens must be [B, T]");
        let dev = a.tokens.device();
        let derived;
        let positions = match (a.positions, a.docs) {
            (Some(p), _) => p,
            (None, Some(d)) => {
                derived = positions_from_docs(d);
                &derived
            }
            (None, None) => {
                derived = Tensor::arange(t, (Kind::Int64, dev));
                &derived
            }
        };
        let mut tok = Tensor::embedding(&self.wte, a.tokens, -1, false, false);
        if let Some(g) = &self.smear_tok {
            // The previous position's token, except at a document start.
            let prev = Tensor::cat(
                &[tok.narrow(1, 0, 1).zeros_like(), tok.narrow(1, 0, t - 1)],
                1,
            );
            let continues = positions.gt(0).to_kind(tok.kind()).unsqueeze(-1);
            tok = &tok + g * (prev * continues);
        }
        let mut x = tok + Tensor::embedding(&self.wpe, positions, -1, false, false);
        if let (Some(table), Some(r)) = (&self.role_emb, a.roles) {
            x = x + Tensor::embedding(table, r, -1, false, false);
        }
        let mut x = dropout(x, self.config.dropout, train);
        let mask = a.docs.map(|d| {
            let same = d.unsqueeze(2).eq_tensor(&d.unsqueeze(1)); // [B,T,T]
            let causal = Tensor::ones([t, t], (Kind::Bool, dev)).tril(0);
            same.logical_and(&causal).unsqueeze(1) // [B,1,T,T]
        });
        // Smeared keys mix in the previous position's key, except at a
        // document start: `[B, 1, T, 1]`, 0 where a document starts.
        let continues = self
            .config
            .smear_keys
            .then(|| positions.gt(0).to_kind(w.kind).view([-1, 1, t, 1]));
        for (blk, bw) in self.h.iter().zip(&w.blocks) {
            let y = self.attention(
                &layer_norm(&x, &blk.ln_1, self.eps()).to_kind(w.kind),
                bw,
                blk.smear.as_ref().zip(continues.as_ref()),
                mask.as_ref(),
                train,
            );
            x = x + dropout(y.to_kind(Kind::Float), self.config.dropout, train);
            let y = self.mlp(&layer_norm(&x, &blk.ln_2, self.eps()).to_kind(w.kind), bw);
            x = x + dropout(y.to_kind(Kind::Float), self.config.dropout, train);
        }
        let x = match a.select {
            Some(s) => x.reshape([b * t, -1]).index_select(0, s),
            None => x,
        };
        layer_norm(&x, &self.ln_f, self.eps())
    }

    /// Tied LM head: f32 logits `[.., V]` of f32 hidden states `[.., C]`.
    pub fn lm_head(&self, h: &Tensor, w: &Weights) -> Tensor {
        h.to_kind(w.kind).matmul(&w.head.tr()).to_kind(Kind::Float)
    }

    /// Fused LM head + cross-entropy over hidden states `h` `[N, C]` (from
    /// [`Gpt::hidden`], typically at `select`ed positions): `loss` is the
    /// scalar `sum_i w_i * -log p(targets_i)` whose gradient reaches `h` and
    /// the tied `wte` exactly as the unfused `lm_head` + `cross_entropy`
    /// would (divide it by your normaliser before `backward`); `nll` holds
    /// each row's unweighted loss on the host. `weights` default to 1.
    ///
    /// The `[N, V]` logits are computed once in the compute precision; on
    /// the CPU the softmax cross-entropy gradient `w * (softmax - onehot)`
    /// then overwrites them in place, one cache-resident row at a time
    /// (`crate::xent`; other devices use libtorch ops), and `dh = G @ wte`
    /// and `dwte = G^T @ h` run as two big matmuls. The returned scalar is
    /// `loss + <h, dh> + <wte, dwte>` with the two inner products subtracted
    /// again as constants: its value is the loss and backward delivers `dh`
    /// and `dwte`, scaled by the incoming gradient. Never materialises f32
    /// logits, log-probabilities or a one-hot gradient.
    ///
    /// With `distill`, rows that have a teacher add `beta * T^2 *
    /// KL(teacher_T || student_T)` (forward KL at temperature `T`) and
    /// weigh their CE by `alpha`; the kernel writes the combined gradient in
    /// the same pass (CPU only: elsewhere it is an error, and callers use
    /// the unfused ops).
    ///
    /// Errors when a target is outside the vocabulary or the shapes disagree.
    pub fn lm_loss(
        &self,
        h: &Tensor,
        targets: &Tensor,
        weights: Option<&Tensor>,
        precision: Precision,
        distill: Option<&LmDistill>,
    ) -> anyhow::Result<LmLoss> {
        let kind = precision.kind();
        let (n, c) = h.size2()?;
        let v = self.config.vocab_size;
        if c != self.config.n_embd as i64 || targets.size() != [n] {
            anyhow::bail!(
                "lm_loss: hidden states {:?} and targets {:?} do not match [N, {}] and [N]",
                h.size(),
                targets.size(),
                self.config.n_embd
            );
        }
        let head = self.wte.detach().to_kind(kind);
        let hk = h.detach().to_kind(kind);
        let host_weights = weights
            .map(|w| Vec::<f32>::try_from(w.to_kind(Kind::Float).to_device(Device::Cpu)))
            .transpose()?;
        if distill.is_some() && h.device() != Device::Cpu {
            anyhow::bail!("lm_loss: fused distillation runs on the CPU only");
        }
        let teacher = distill.map(|d| {
            let q = d.teacher_logits.to_kind(Kind::Float).contiguous();
            (q, d)
        });
        let (losses, dh, dw) = tch::no_grad(|| -> anyhow::Result<_> {
            let mut g = hk.mm(&head.tr()); // [N, V], contiguous
            let losses = if g.device() == Device::Cpu {
                let t = Vec::<i64>::try_from(targets.to_device(Device::Cpu))?;
                let w = host_weights.as_deref();
                let d = teacher.as_ref().map(|(q, d)| crate::xent::Distill {
                    // SAFETY: `q` is a contiguous f32 CPU tensor (made so
                    // above, on the CPU as checked) that nothing writes to
                    // while the kernel runs.
                    teacher: unsafe { cpu_slice::<f32>(q) },
                    teacher_row: d.teacher_row,
                    alpha: d.alpha as f32,
                    beta: d.beta as f32,
                    temperature: d.temperature as f32,
                });
                match kind {
                    // SAFETY: `g` was just allocated by `mm`: a contiguous CPU
                    // tensor of `n * v` elements of `kind`, not shared with
                    // anything else while the slice lives.
                    Kind::Float => {
                        let s = unsafe { cpu_slice_mut::<f32>(&mut g) };
                        crate::xent::softmax_xent_grad(s, v, &t, w, d.as_ref())?
                    }
                    _ => {
                        let s = unsafe { cpu_slice_mut::<crate::simd::Bf16>(&mut g) };
                        crate::xent::softmax_xent_grad(s, v, &t, w, d.as_ref())?
                    }
                }
            } else {
                let t = targets.unsqueeze(1);
                let logp = g.log_softmax(1, Kind::Float);
                let nll = -logp.gather(1, &t, false).squeeze_dim(1);
                g = logp.exp().to_kind(kind);
                let _ = g.scatter_add_(1, &t, &Tensor::full([n, 1], -1.0, (kind, g.device())));
                if let Some(w) = weights {
                    g *= w.to_kind(kind).unsqueeze(1);
                }
                let nll = Vec::<f32>::try_from(nll.to_device(Device::Cpu))?;
                crate::xent::RowLosses {
                    kl: vec![0.0; nll.len()],
                    nll,
                }
            };
            let dh = g.mm(&head).to_kind(Kind::Float); // [N, C]
            let dw = g.tr().mm(&hk).to_kind(Kind::Float); // [V, C]
            Ok((losses, dh, dw))
        })?;
        let crate::xent::RowLosses { nll, kl } = losses;
        let mut total = 0f64;
        for i in 0..nll.len() {
            let w = host_weights.as_ref().map_or(1.0, |w| w[i] as f64);
            let l = match distill {
                Some(d) if d.teacher_row[i] >= 0 => d.alpha * nll[i] as f64 + d.beta * kl[i] as f64,
                _ => nll[i] as f64,
            };
            total += w * l;
        }
        let inner = (h * &dh).sum(Kind::Float) + (&self.wte * &dw).sum(Kind::Float);
        let loss = Tensor::from(total as f32).to_device(h.device()) + &inner - inner.detach();
        Ok(LmLoss { loss, nll, kl })
    }

    fn eps(&self) -> f64 {
        self.config.layer_norm_epsilon
    }

    fn split_heads(&self, x: &Tensor) -> Tensor {
        // [B, T, C] -> [B, H, T, D]
        let (b, t, _) = x.size3().expect("[B,T,C]");
        x.view([
            b,
            t,
            self.config.n_head as i64,
            self.config.head_dim() as i64,
        ])
        .transpose(1, 2)
    }

    fn qkv(&self, x: &Tensor, bw: &[Lin; 4]) -> (Tensor, Tensor, Tensor) {
        let qkv = linear(x, &bw[0]);
        let c = self.config.n_embd as i64;
        let q = self.split_heads(&qkv.narrow(2, 0, c));
        let k = self.split_heads(&qkv.narrow(2, c, c));
        let v = self.split_heads(&qkv.narrow(2, 2 * c, c));
        (q, k, v)
    }

    fn merge_heads(&self, y: &Tensor) -> Tensor {
        let (b, _, t, _) = y.size4().expect("[B,H,T,D]");
        y.transpose(1, 2).reshape([b, t, self.config.n_embd as i64])
    }

    fn attention(
        &self,
        x: &Tensor,
        bw: &[Lin; 4],
        smear: Option<(&Tensor, &Tensor)>,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let (q, k, v) = self.qkv(x, bw);
        let k = match smear {
            Some((theta, continues)) => smear_keys(&k, theta, Some(continues)),
            None => k,
        };
        let p = if train { self.config.dropout } else { 0.0 };
        let y =
            Tensor::scaled_dot_product_attention(&q, &k, &v, mask, p, mask.is_none(), None, false);
        linear(&self.merge_heads(&y), &bw[1])
    }

    fn mlp(&self, x: &Tensor, bw: &[Lin; 4]) -> Tensor {
        linear(&linear(x, &bw[2]).gelu("tanh"), &bw[3])
    }

    /// An empty KV cache for `batch` rows in the precision of `w`.
    pub fn new_cache(&self, batch: usize, w: &Weights) -> KvCache {
        let shape = [
            batch as i64,
            self.config.n_head as i64,
            self.config.n_ctx as i64,
            self.config.head_dim() as i64,
        ];
        let opts = (w.kind, self.device());
        let mk = || {
            (0..self.config.n_layer)
                .map(|_| Tensor::zeros(shape, opts))
                .collect()
        };
        KvCache {
            k: mk(),
            v: mk(),
            last: vec![-1; batch],
        }
    }

    /// One incremental step over the KV cache (no autograd): appends the
    /// fed rows' tokens to the cache and returns f32 logits `[R, V]` of each
    /// fed row's last new token. The caller guarantees
    /// `lens[i] + n_new[i] <= n_ctx` and valid ids.
    ///
    /// On the CPU, steps that feed one token per row run in Rust
    /// (`gpt/cpu_step.rs`: weights streamed once at memory bandwidth, small
    /// ops fused) unless [`set_decode_kernels`] chose libtorch; everything
    /// else runs [`Gpt::forward_cached_libtorch`].
    pub fn forward_cached(&self, s: &CachedStep, w: &Weights, cache: &mut KvCache) -> Tensor {
        if decode_kernels() == DecodeKernels::Rust && cpu_step::eligible(self, s, w, cache) {
            let _guard = tch::no_grad_guard();
            return cpu_step::run(self, s, w, cache);
        }
        self.forward_cached_libtorch(s, w, cache)
    }

    /// [`Gpt::forward_cached`] in libtorch ops only, on any device and for
    /// any number of new tokens (the reference the Rust step is tested
    /// against).
    pub fn forward_cached_libtorch(
        &self,
        s: &CachedStep,
        w: &Weights,
        cache: &mut KvCache,
    ) -> Tensor {
        let _guard = tch::no_grad_guard();
        let dev = self.device();
        let (r, l) = s.tokens.size2().expect("[R, L]");
        let mut x = Tensor::embedding(&self.wte, s.tokens, -1, false, false);
        if let Some(g) = &self.smear_tok {
            // Each new token's previous one: the row's last cached token,
            // then the fed ones; none at a position 0.
            let host = |t: &Tensor| {
                Vec::<i64>::try_from(t.reshape([-1]).to_device(Device::Cpu)).expect("i64 ids")
            };
            let (tokens, positions) = (host(s.tokens), host(s.positions));
            let (mut prev, mut keep) = (vec![0i64; tokens.len()], vec![0f32; tokens.len()]);
            for (i, &b) in s.rows.iter().enumerate() {
                for j in 0..l as usize {
                    let at = i * l as usize + j;
                    let p = if j == 0 {
                        cache.last[b]
                    } else {
                        tokens[at - 1]
                    };
                    if positions[at] > 0 && p >= 0 {
                        (prev[at], keep[at]) = (p, 1.0);
                    }
                }
                cache.last[b] = tokens[i * l as usize + s.n_new[i] - 1];
            }
            let prev = Tensor::from_slice(&prev).to_device(dev).view([r, l]);
            let keep = Tensor::from_slice(&keep).to_device(dev).view([r, l, 1]);
            x = &x + g * (Tensor::embedding(&self.wte, &prev, -1, false, false) * keep);
        }
        let mut x = x + Tensor::embedding(&self.wpe, s.positions, -1, false, false);
        if let Some(table) = &self.role_emb {
            x = x + Tensor::embedding(table, s.roles, -1, false, false);
        }
        let kmax = (0..s.rows.len())
            .map(|i| s.lens[i] + s.n_new[i])
            .max()
            .unwrap_or(0) as i64;
        let all_rows = s.rows.len() == s.batch && s.rows.iter().enumerate().all(|(i, &b)| i == b);
        let same_len =
            s.lens.iter().all(|&x| x == s.lens[0]) && s.n_new.iter().all(|&n| n as i64 == l);
        // Mask: query i of fed row r sees cache slots j <= lens[r] + i.
        let (mask, causal) = if same_len && l == 1 {
            (None, false)
        } else if same_len && s.lens[0] == 0 {
            (None, true)
        } else {
            let lens: Vec<i64> = s.lens.iter().map(|&x| x as i64).collect();
            let lens = Tensor::from_slice(&lens).to_device(dev).view([r, 1, 1]);
            let qpos = lens + Tensor::arange(l, (Kind::Int64, dev)).view([1, l, 1]);
            let kpos = Tensor::arange(kmax, (Kind::Int64, dev)).view([1, 1, kmax]);
            (Some(kpos.le_tensor(&qpos).unsqueeze(1)), false) // [R,1,L,K]
        };
        let row_index = (!all_rows).then(|| {
            let v: Vec<i64> = s.rows.iter().map(|&b| b as i64).collect();
            Tensor::from_slice(&v).to_device(dev)
        });
        for (li, (blk, bw)) in self.h.iter().zip(&w.blocks).enumerate() {
            let (q, k, v) = self.qkv(&layer_norm(&x, &blk.ln_1, self.eps()).to_kind(w.kind), bw);
            for (i, &b) in s.rows.iter().enumerate() {
                let (start, n) = (s.lens[i] as i64, s.n_new[i] as i64);
                let dst = |c: &Tensor| c.get(b as i64).narrow(1, start, n);
                dst(&cache.k[li]).copy_(&k.get(i as i64).narrow(1, 0, n));
                dst(&cache.v[li]).copy_(&v.get(i as i64).narrow(1, 0, n));
            }
            let gather = |c: &Tensor| {
                let c = c.narrow(2, 0, kmax);
                match &row_index {
                    Some(ix) => c.index_select(0, ix),
                    None => c,
                }
            };
            // The cache holds raw keys; a row's slot 0 starts its document.
            let (kc, vc) = (gather(&cache.k[li]), gather(&cache.v[li]));
            let kc = match &blk.smear {
                Some(theta) => smear_keys(&kc, theta, None),
                None => kc,
            };
            let y = Tensor::scaled_dot_product_attention(
                &q,
                &kc,
                &vc,
                mask.as_ref(),
                0.0,
                causal,
                None,
                false,
            );
            let y = linear(&self.merge_heads(&y), &bw[1]);
            x = x + y.to_kind(Kind::Float);
            let y = self.mlp(&layer_norm(&x, &blk.ln_2, self.eps()).to_kind(w.kind), bw);
            x = x + y.to_kind(Kind::Float);
        }
        let last: Vec<i64> = (0..s.rows.len())
            .map(|i| i as i64 * l + s.n_new[i] as i64 - 1)
            .collect();
        let x = if l == 1 {
            x.reshape([r, -1])
        } else {
            x.reshape([r * l, -1])
                .index_select(0, &Tensor::from_slice(&last).to_device(dev))
        };
        self.lm_head(&layer_norm(&x, &self.ln_f, self.eps()), w)
    }
}

/// Smeared keys `a k_t + (1 - a) k_(t-1)` of `k` (`[B, H, T, D]`), with
/// `a = sigmoid(theta)` per head; `continues` (`[B, 1, T, 1]`, 0 at a
/// document start) drops the previous key where a document starts; without
/// it only slot 0 does.
fn smear_keys(k: &Tensor, theta: &Tensor, continues: Option<&Tensor>) -> Tensor {
    let (b, h, t, d) = k.size4().expect("[B,H,T,D]");
    let a = theta.sigmoid().to_kind(k.kind()).view([1, h, 1, 1]);
    let prev = Tensor::cat(
        &[
            Tensor::zeros([b, h, 1, d], (k.kind(), k.device())),
            k.narrow(2, 0, t - 1),
        ],
        2,
    );
    let prev = match continues {
        Some(c) => prev * c,
        None => prev,
    };
    &a * k + (1.0 - &a) * prev
}

/// Positions restarting at 0 at every change of document index along each row.
pub fn positions_from_docs(docs: &Tensor) -> Tensor {
    let (b, t) = docs.size2().expect("docs must be [B, T]");
    let dev = docs.device();
    let idx = Tensor::arange(t, (Kind::Int64, dev)).expand([b, t], false);
    let first = Tensor::ones([b, 1], (Kind::Bool, dev));
    let change = docs
        .narrow(1, 1, t - 1)
        .ne_tensor(&docs.narrow(1, 0, t - 1));
    let start = Tensor::cat(&[first, change], 1);
    let start_idx = (&idx * start.to_kind(Kind::Int64)).cummax(1).0;
    idx - start_idx
}
