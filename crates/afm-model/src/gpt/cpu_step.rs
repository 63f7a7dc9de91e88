//! One-token decoding steps on the CPU in Rust ([`Gpt::forward_cached`]
//! when every fed row gets exactly one new token).
//!
//! A decoding step at small batch is a chain of matrix-*vector* products:
//! every weight is read once per step and used for one multiply-add per
//! row, so the step is bound by memory bandwidth, not arithmetic. libtorch's
//! matrix-vector path reads bf16 weights at ~16 GB/s on the 2-core
//! development machine where a plain streaming loop reaches ~27 GB/s, and
//! every small op (LayerNorm, GELU, the KV-cache copies, SDPA, views) costs
//! a dispatch. Here a whole step runs over raw slices: weights streamed once
//! in their stored layout (`[in, out]` blocks, `[V, C]` head) by kernels
//! that keep their accumulators in L1, attention per (row, head) over the
//! cache, and the small ops fused in.
//!
//! Rounding follows the libtorch path ([`Gpt::forward_cached_libtorch`], kept
//! as the reference and for other devices): in bf16 the activations entering
//! every matmul, every matmul output, the cached keys/values, the attention
//! output, the GELU output and the logits are rounded to bf16; sums are f32.
//! Only the order of additions differs, so logits agree to rounding (tests
//! compare both paths).
//!
//! Parallelism: rayon's pool, with as many pieces as libtorch's intra-op
//! thread count (`tch::set_num_threads(1)` makes these kernels sequential
//! too, as the pipeline does for latency measurements).

use super::{cpu_slice, cpu_slice_mut, CachedStep, Gpt, KvCache, Lin, Ln, Weights};
use crate::simd::{detect, dispatch, exp_neg, multiversion, Bf16, Elem, Isa};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

/// Lanes of the dot-product partial sums.
const LANES: usize = 16;
/// Floats of matmul accumulators one piece keeps (in L1).
const ACC_FLOATS: usize = 4096;
/// Ranges of weight rows a matmul is cut into (a fixed number, so the sum
/// order, and the result, is the same whatever the thread count).
const K_SPLIT: usize = 4;

/// Whether `forward_cached` may take the Rust path for this step: a CPU
/// model, one new token per fed row, f32 or bf16 weights, and every tensor
/// it reads contiguous in the expected kind.
pub(super) fn eligible(gpt: &Gpt, s: &CachedStep, w: &Weights, cache: &KvCache) -> bool {
    let contiguous = |t: &Tensor, k: Kind| t.kind() == k && t.is_contiguous();
    let f32s = |ln: &Ln| contiguous(&ln.w, Kind::Float) && contiguous(&ln.b, Kind::Float);
    gpt.device() == Device::Cpu
        && matches!(w.kind, Kind::Float | Kind::BFloat16)
        && s.tokens.size().get(1) == Some(&1)
        && s.n_new.iter().all(|&n| n == 1)
        && s.rows.len() == s.lens.len()
        && [s.tokens, s.roles, s.positions]
            .iter()
            .all(|t| contiguous(t, Kind::Int64) && t.device() == Device::Cpu)
        && contiguous(&gpt.wte, Kind::Float)
        && contiguous(&gpt.wpe, Kind::Float)
        && gpt
            .role_emb
            .as_ref()
            .is_none_or(|t| contiguous(t, Kind::Float))
        && gpt
            .smear_tok
            .as_ref()
            .is_none_or(|t| contiguous(t, Kind::Float))
        && f32s(&gpt.ln_f)
        && contiguous(&w.head, w.kind)
        && gpt.h.iter().all(|b| f32s(&b.ln_1) && f32s(&b.ln_2))
        && w.smear_mix.len() == gpt.h.len()
        && gpt
            .h
            .iter()
            .zip(&w.smear_mix)
            .all(|(b, m)| b.smear.is_some() == m.is_some())
        && w.blocks
            .iter()
            .flatten()
            .all(|l| contiguous(&l.w, w.kind) && contiguous(&l.b, w.kind))
        && cache
            .k
            .iter()
            .chain(&cache.v)
            .all(|t| contiguous(t, w.kind))
}

/// The step in the weights' element type `E`; returns f32 logits `[R, V]`.
/// The caller checked [`eligible`].
fn step<E: Elem>(gpt: &Gpt, s: &CachedStep, w: &Weights, cache: &mut KvCache) -> Tensor {
    let cfg = &gpt.config;
    let (c, n_head, d, n_ctx) = (cfg.n_embd, cfg.n_head, cfg.head_dim(), cfg.n_ctx);
    let r = s.rows.len();
    let threads = tch::get_num_threads().max(1) as usize;
    let isa = detect();
    let eps = cfg.layer_norm_epsilon as f32;
    // SAFETY (every `cpu_slice` below): `eligible` checked device, kind and
    // contiguity; nothing writes to these tensors during the step.
    let (tokens, roles, positions) = unsafe {
        (
            cpu_slice::<i64>(s.tokens),
            cpu_slice::<i64>(s.roles),
            cpu_slice::<i64>(s.positions),
        )
    };
    fn f32_of(t: &Tensor) -> &[f32] {
        // SAFETY: as above.
        unsafe { cpu_slice::<f32>(t) }
    }
    fn e_of<E: Elem>(t: &Tensor) -> &[E] {
        // SAFETY: as above.
        unsafe { cpu_slice::<E>(t) }
    }

    // Embeddings (token + position, + role), as the libtorch path adds them.
    let (wte, wpe) = (f32_of(&gpt.wte), f32_of(&gpt.wpe));
    let role_emb = gpt.role_emb.as_ref().map(f32_of);
    let smear_tok = gpt.smear_tok.as_ref().map(f32_of);
    let mut x = vec![0f32; r * c];
    for (i, xi) in x.chunks_exact_mut(c).enumerate() {
        let te = &wte[tokens[i] as usize * c..][..c];
        let pe = &wpe[positions[i] as usize * c..][..c];
        for ((o, &a), &b) in xi.iter_mut().zip(te).zip(pe) {
            *o = a + b;
        }
        if let Some(table) = role_emb {
            for (o, &a) in xi.iter_mut().zip(&table[roles[i] as usize * c..][..c]) {
                *o += a;
            }
        }
        if let Some(g) = smear_tok {
            let b = s.rows[i];
            let p = cache.last[b];
            if positions[i] > 0 && p >= 0 {
                let pe = &wte[p as usize * c..][..c];
                for ((o, &gk), &e) in xi.iter_mut().zip(g).zip(pe) {
                    *o += gk * e;
                }
            }
            cache.last[b] = tokens[i];
        }
    }

    let mut a = vec![0f32; r * c];
    let mut qkv = vec![0f32; r * 3 * c];
    let mut y = vec![0f32; r * c];
    let mut proj = vec![0f32; r * c];
    let mut hidden = vec![0f32; r * 4 * c];
    // `out = x @ l.w + l.b` in `E`.
    let linear = |l: &Lin, x: &[f32], out: &mut [f32]| {
        matmul::<E>(isa, threads, x, e_of(&l.w), e_of(&l.b), out)
    };
    for (li, (blk, bw)) in gpt.h.iter().zip(&w.blocks).enumerate() {
        layer_norm::<E>(&x, c, f32_of(&blk.ln_1.w), f32_of(&blk.ln_1.b), eps, &mut a);
        let [c_attn, attn_proj, c_fc, mlp_proj] = bw;
        linear(c_attn, &a, &mut qkv);
        // Append each row's key and value at its slot, then attend.
        {
            // SAFETY: `eligible` checked the cache tensors; they are views of
            // nothing else and only this step touches them.
            let (kc, vc) = unsafe {
                (
                    cpu_slice_mut::<E>(&mut cache.k[li]),
                    cpu_slice_mut::<E>(&mut cache.v[li]),
                )
            };
            for (i, row) in qkv.chunks_exact(3 * c).enumerate() {
                let (b, pos) = (s.rows[i], s.lens[i]);
                for h in 0..n_head {
                    let slot = ((b * n_head + h) * n_ctx + pos) * d;
                    for j in 0..d {
                        kc[slot + j] = E::from_f32(row[c + h * d + j]);
                        vc[slot + j] = E::from_f32(row[2 * c + h * d + j]);
                    }
                }
            }
        }
        let (kc, vc) = (e_of::<E>(&cache.k[li]), e_of::<E>(&cache.v[li]));
        // Smeared keys: a score is linear in its key, so mixing each key
        // with the previous one is mixing each score with the previous one
        // (`a`, `1 - a` as the libtorch path computes them: `Weights`).
        let smear = w.smear_mix[li].as_deref();
        let scale = 1.0 / (d as f32).sqrt();
        let min_len = if threads > 1 { 1 } else { usize::MAX };
        y.par_chunks_mut(d)
            .with_min_len(min_len)
            .enumerate()
            .for_each_init(Vec::new, |scores, (t, out)| {
                let (i, h) = (t / n_head, t % n_head);
                let base = (s.rows[i] * n_head + h) * n_ctx * d;
                let n = s.lens[i] + 1;
                let q = &qkv[i * 3 * c + h * d..][..d];
                scores.resize(n, 0.0);
                let (keys, values) = (&kc[base..][..n * d], &vc[base..][..n * d]);
                let smear = smear.and_then(|m| m.get(h).copied());
                dispatch!(
                    isa,
                    attend_avx512,
                    attend_avx2,
                    attend_impl,
                    (q, keys, values, scale, smear, scores, out)
                );
            });
        linear(attn_proj, &y, &mut proj);
        add(&mut x, &proj);
        layer_norm::<E>(&x, c, f32_of(&blk.ln_2.w), f32_of(&blk.ln_2.b), eps, &mut a);
        linear(c_fc, &a, &mut hidden);
        dispatch!(
            isa,
            gelu_avx512::<E>,
            gelu_avx2::<E>,
            gelu_impl::<E>,
            (&mut hidden)
        );
        linear(mlp_proj, &hidden, &mut proj);
        add(&mut x, &proj);
    }
    layer_norm::<E>(&x, c, f32_of(&gpt.ln_f.w), f32_of(&gpt.ln_f.b), eps, &mut a);
    let v = cfg.vocab_size;
    let mut logits = Tensor::empty([r as i64, v as i64], (Kind::Float, Device::Cpu));
    {
        // SAFETY: a fresh contiguous f32 CPU tensor nothing else views.
        let out = unsafe { cpu_slice_mut::<f32>(&mut logits) };
        head::<E>(isa, threads, &a, c, e_of(&w.head), out);
    }
    logits
}

/// `x += y`.
fn add(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// LayerNorm of each `c`-wide row of `x` into `out`, rounded to `E` (the
/// libtorch path casts the f32 LayerNorm output to the compute precision).
fn layer_norm<E: Elem>(x: &[f32], c: usize, w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    for (xi, oi) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
        let mean = xi.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = xi.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
        let inv = (1.0 / (var + eps as f64).sqrt()) as f32;
        let mean = mean as f32;
        for (((o, &v), &g), &bb) in oi.iter_mut().zip(xi).zip(w).zip(b) {
            *o = E::from_f32((v - mean) * inv * g + bb).to_f32();
        }
    }
}

/// `out = x @ w + b` for `x` `[R, K]` (f32), `w` `[K, N]` and `b` `[N]` in
/// `E`, rounded to `E`. The work is cut into column blocks whose `[R, width]`
/// accumulators stay in L1 (one block, the full width, at batch 1) times
/// `K_SPLIT` ranges of weight rows, so each piece streams a contiguous
/// stretch of `w` once; the partial sums are added in a fixed order, so the
/// result does not depend on the thread count.
fn matmul<E: Elem>(isa: Isa, threads: usize, x: &[f32], w: &[E], b: &[E], out: &mut [f32]) {
    let n = b.len();
    let k = w.len() / n;
    let r = x.len() / k;
    let width = ((ACC_FLOATS / r).max(16) / 16 * 16).min(n);
    let blocks = n.div_ceil(width);
    let splits = K_SPLIT.min(k.div_ceil(16));
    let rows = k.div_ceil(splits);
    let min_len = if threads > 1 { 1 } else { usize::MAX };
    let parts: Vec<Vec<f32>> = (0..blocks * splits)
        .into_par_iter()
        .with_min_len(min_len)
        .map(|p| {
            let (c0, k0) = ((p / splits) * width, (p % splits) * rows);
            let cw = width.min(n - c0);
            let k1 = (k0 + rows).min(k);
            let mut acc = vec![0f32; r * cw];
            dispatch!(
                isa,
                matmul_piece_avx512,
                matmul_piece_avx2,
                matmul_piece_impl,
                (x, k, k0, k1, w, n, c0, &mut acc)
            );
            acc
        })
        .collect();
    for (bi, block) in parts.chunks(splits).enumerate() {
        let c0 = bi * width;
        let cw = width.min(n - c0);
        for i in 0..r {
            let o = &mut out[i * n + c0..][..cw];
            for (o, bb) in o.iter_mut().zip(&b[c0..c0 + cw]) {
                *o = bb.to_f32();
            }
            for acc in block {
                add(o, &acc[i * cw..][..cw]);
            }
            for v in o.iter_mut() {
                *v = E::from_f32(*v).to_f32();
            }
        }
    }
}

/// Accumulate `x[:, k0..k1] @ w[k0..k1, c0 .. c0 + cw]` into `acc`
/// (`[R, cw]`), four weight rows at a time.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn matmul_piece_impl<E: Elem>(
    x: &[f32],
    k: usize,
    k0: usize,
    k1: usize,
    w: &[E],
    n: usize,
    c0: usize,
    acc: &mut [f32],
) {
    let r = x.len() / k;
    let cw = acc.len() / r;
    let row = |kk: usize| &w[kk * n + c0..][..cw];
    let mut kk = k0;
    while kk + 4 <= k1 {
        let (w0, w1, w2, w3) = (row(kk), row(kk + 1), row(kk + 2), row(kk + 3));
        for (xi, a) in x.chunks_exact(k).zip(acc.chunks_exact_mut(cw)) {
            let (x0, x1, x2, x3) = (xi[kk], xi[kk + 1], xi[kk + 2], xi[kk + 3]);
            for ((((o, p0), p1), p2), p3) in a.iter_mut().zip(w0).zip(w1).zip(w2).zip(w3) {
                *o += x0 * p0.to_f32() + x1 * p1.to_f32() + x2 * p2.to_f32() + x3 * p3.to_f32();
            }
        }
        kk += 4;
    }
    while kk < k1 {
        let w0 = row(kk);
        for (xi, a) in x.chunks_exact(k).zip(acc.chunks_exact_mut(cw)) {
            let x0 = xi[kk];
            for (o, p0) in a.iter_mut().zip(w0) {
                *o += x0 * p0.to_f32();
            }
        }
        kk += 1;
    }
}

/// Tied LM head: `out[i, v] = <h_i, head_v>` for `h` `[R, C]` (already in
/// `E`'s precision) and `head` `[V, C]`, rounded to `E`. Vocabulary rows are
/// streamed once, in order, one contiguous range a piece.
fn head<E: Elem>(isa: Isa, threads: usize, h: &[f32], c: usize, head: &[E], out: &mut [f32]) {
    let r = h.len() / c;
    let v = head.len() / c;
    let rows = v.div_ceil(if threads > 1 { 4 * threads } else { 1 });
    let min_len = if threads > 1 { 1 } else { usize::MAX };
    let parts: Vec<Vec<f32>> = head
        .par_chunks(rows * c)
        .with_min_len(min_len)
        .map(|part| {
            let mut acc = vec![0f32; r * (part.len() / c)];
            dispatch!(
                isa,
                head_piece_avx512,
                head_piece_avx2,
                head_piece_impl,
                (h, c, part, &mut acc)
            );
            acc
        })
        .collect();
    for (p, acc) in parts.iter().enumerate() {
        let nv = acc.len() / r;
        for (i, a) in acc.chunks_exact(nv).enumerate() {
            for (o, &x) in out[i * v + p * rows..][..nv].iter_mut().zip(a) {
                *o = E::from_f32(x).to_f32();
            }
        }
    }
}

/// `acc[i, j] = <h_i, part_j>` for the vocabulary rows in `part`
/// (`acc` is `[R, part rows]`).
#[inline(always)]
fn head_piece_impl<E: Elem>(h: &[f32], c: usize, part: &[E], acc: &mut [f32]) {
    let nv = part.len() / c;
    for (j, wrow) in part.chunks_exact(c).enumerate() {
        for (i, hi) in h.chunks_exact(c).enumerate() {
            acc[i * nv + j] = dot(hi, wrow);
        }
    }
}

/// `<a, b>` with `LANES` partial sums.
#[inline(always)]
fn dot<E: Elem>(a: &[f32], b: &[E]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut ac = a.chunks_exact(LANES);
    let mut bc = b.chunks_exact(LANES);
    for (x, y) in (&mut ac).zip(&mut bc) {
        for j in 0..LANES {
            acc[j] += x[j] * y[j].to_f32();
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ac.remainder().iter().zip(bc.remainder()) {
        s += x * y.to_f32();
    }
    s
}

/// Causal attention of one query over one (row, head)'s cached keys and
/// values (`n` positions, the new one included): softmax of the scaled
/// scores, then the weighted sum of values into `out`, rounded to `E`.
/// `smear = Some((a, b))`: score `j` becomes `a s_j + b s_(j-1)` (smeared
/// keys; slot 0 starts the row's document).
#[inline(always)]
fn attend_impl<E: Elem>(
    q: &[f32],
    keys: &[E],
    values: &[E],
    scale: f32,
    smear: Option<(f32, f32)>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = q.len();
    for (s, k) in scores.iter_mut().zip(keys.chunks_exact(d)) {
        *s = dot(q, k) * scale;
    }
    if let Some((a, b)) = smear {
        for j in (1..scores.len()).rev() {
            scores[j] = a * scores[j] + b * scores[j - 1];
        }
        if let Some(s0) = scores.first_mut() {
            *s0 *= a;
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &s in scores.iter() {
        m = if s > m { s } else { m };
    }
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = exp_neg(*s - m);
        sum += *s;
    }
    out.fill(0.0);
    for (&p, v) in scores.iter().zip(values.chunks_exact(d)) {
        for (o, x) in out.iter_mut().zip(v) {
            *o += p * x.to_f32();
        }
    }
    let inv = 1.0 / sum;
    for o in out.iter_mut() {
        *o = E::from_f32(*o * inv).to_f32();
    }
}

/// GELU (tanh form, as GPT-2) in place, rounded to `E`. `tanh(u)` is
/// `sign(u) (1 - e) / (1 + e)` with `e = exp(-2|u|)`, on the vectorised exp.
#[inline(always)]
fn gelu_impl<E: Elem>(x: &mut [f32]) {
    const K: f32 = 0.797_884_6; // sqrt(2 / pi)
    for v in x.iter_mut() {
        let u = K * (*v + 0.044_715 * *v * *v * *v);
        let e = exp_neg(-2.0 * u.abs());
        let t = (1.0 - e) / (1.0 + e);
        let t = if u < 0.0 { -t } else { t };
        *v = E::from_f32(0.5 * *v * (1.0 + t)).to_f32();
    }
}

multiversion!(matmul_piece_impl => matmul_piece_avx2, matmul_piece_avx512;
    (x: &[f32], k: usize, k0: usize, k1: usize, w: &[E], n: usize, c0: usize, acc: &mut [f32])
        -> ());
multiversion!(head_piece_impl => head_piece_avx2, head_piece_avx512;
    (h: &[f32], c: usize, part: &[E], acc: &mut [f32]) -> ());
multiversion!(attend_impl => attend_avx2, attend_avx512;
    (q: &[f32], keys: &[E], values: &[E], scale: f32, smear: Option<(f32, f32)>,
        scores: &mut [f32], out: &mut [f32]) -> ());
multiversion!(gelu_impl => gelu_avx2, gelu_avx512; (x: &mut [f32]) -> ());

/// Which element type the step runs in.
pub(super) fn run(gpt: &Gpt, s: &CachedStep, w: &Weights, cache: &mut KvCache) -> Tensor {
    if w.kind == Kind::BFloat16 {
        step::<Bf16>(gpt, s, w, cache)
    } else {
        step::<f32>(gpt, s, w, cache)
    }
}
