//! CPU kernel of the fused LM-head loss ([`crate::Gpt::lm_loss`]): the
//! softmax cross-entropy gradient, computed in place over a `[N, V]` logits
//! matrix (f32 or bf16).
//!
//! For each row `x` with target `t` and weight `w` it writes
//! `g = w * (softmax(x) - onehot(t))` over `x` and returns the unweighted
//! `nll = logsumexp(x) - x[t]`. A row is read three times (max, exp + sum,
//! scale + store) while it sits in L2, instead of the six-plus full passes
//! over `[N, V]` that `log_softmax` + `nll_loss` + their backwards + the
//! dtype casts make in libtorch (profiled: ~60% of a bf16 `mini` training
//! step). Rows run in parallel on rayon's pool; every row is independent and
//! the loss is summed in row order, so results do not depend on the thread
//! count.
//!
//! `exp` is a vectorisable polynomial (Cody-Waite range reduction, degree-6
//! Taylor on |r| <= ln2/2: relative error < 5e-7, about f32 rounding). The inner loops are plain lane arrays that LLVM vectorises; on
//! x86-64 the row function is compiled again for AVX2+FMA and AVX-512 and
//! picked at run time.

use crate::simd::{detect, dispatch, exp_neg, multiversion, Elem};
use rayon::prelude::*;

/// Lanes of the partial max/sum accumulators (vectorisable, and a sum over
/// 32 interleaved partials loses less precision than one running sum).
const LANES: usize = 32;

/// One row: overwrite `row` with `w * (softmax - onehot(t))` and return the
/// unweighted negative log-likelihood of `t`. `scratch` must hold
/// `row.len()` floats.
#[inline(always)]
fn row_impl<E: Elem>(row: &mut [E], t: usize, w: f32, scratch: &mut [f32]) -> f64 {
    let v = row.len();
    let xt = row[t].to_f32();
    // Pass 1: widen to f32 and take the max.
    let m = widen_max(row, scratch);
    // Pass 2: exponentials (kept in scratch) and their sum.
    // (Blocked like `sum_exp`: f32 lane partials flushed into f64.)
    let mut total = [0f64; LANES];
    let mut blocks = scratch[..v].chunks_exact_mut(8 * LANES);
    for b in &mut blocks {
        let mut acc = [0f32; LANES];
        for s in b.chunks_exact_mut(LANES) {
            for j in 0..LANES {
                let e = exp_neg(s[j] - m);
                s[j] = e;
                acc[j] += e;
            }
        }
        for j in 0..LANES {
            total[j] += acc[j] as f64;
        }
    }
    let mut sum: f64 = total.iter().sum();
    for s in blocks.into_remainder() {
        *s = exp_neg(*s - m);
        sum += *s as f64;
    }
    let nll = sum.ln() + m as f64 - xt as f64;
    // Pass 3: scale and store in the logits' precision.
    let k = (w as f64 / sum) as f32;
    if w == 0.0 {
        for x in row.iter_mut() {
            *x = E::from_f32(0.0);
        }
    } else {
        for (x, &e) in row.iter_mut().zip(&scratch[..v]) {
            *x = E::from_f32(e * k);
        }
        row[t] = E::from_f32(scratch[t] * k - w);
    }
    nll
}

/// Widen `row` into `scratch` and return its max.
#[inline(always)]
fn widen_max<E: Elem>(row: &[E], scratch: &mut [f32]) -> f32 {
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut sc = scratch[..row.len()].chunks_exact_mut(LANES);
    let mut rc = row.chunks_exact(LANES);
    for (s, r) in (&mut sc).zip(&mut rc) {
        for j in 0..LANES {
            let x = r[j].to_f32();
            s[j] = x;
            mx[j] = if x > mx[j] { x } else { mx[j] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for (s, r) in sc.into_remainder().iter_mut().zip(rc.remainder()) {
        *s = r.to_f32();
        m = if *s > m { *s } else { m };
    }
    for x in mx {
        m = if x > m { x } else { m };
    }
    m
}

/// Max of an f32 row.
#[inline(always)]
fn max_f32(row: &[f32]) -> f32 {
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut rc = row.chunks_exact(LANES);
    for r in &mut rc {
        for j in 0..LANES {
            mx[j] = if r[j] > mx[j] { r[j] } else { mx[j] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &x in rc.remainder().iter().chain(&mx) {
        m = if x > m { x } else { m };
    }
    m
}

/// `sum_j exp((x_j - m) * k)` with lane partials.
#[inline(always)]
fn sum_exp(x: &[f32], m: f32, k: f32) -> f64 {
    // f32 lane partials over blocks of 8 x LANES values, flushed into f64:
    // the rounding error stays ~1e-7 relative for rows of any length.
    let mut total = [0f64; LANES];
    let mut blocks = x.chunks_exact(8 * LANES);
    for b in &mut blocks {
        let mut acc = [0f32; LANES];
        for r in b.chunks_exact(LANES) {
            for j in 0..LANES {
                acc[j] += exp_neg((r[j] - m) * k);
            }
        }
        for j in 0..LANES {
            total[j] += acc[j] as f64;
        }
    }
    let sum: f64 = blocks
        .remainder()
        .iter()
        .map(|&v| exp_neg((v - m) * k) as f64)
        .sum();
    sum + total.iter().sum::<f64>()
}

/// One row with a teacher (forward KL at temperature `temp`): overwrite
/// `row` with `w * (a * (p - onehot(t)) + b * temp * (p_T - q_T))` where
/// `p`, `p_T` are the student's softmax at temperature 1 and `temp` and
/// `q_T` the teacher's at `temp`. Returns (`nll`, `temp^2 * KL(q_T || p_T)`),
/// both unweighted.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn row_distill_impl<E: Elem>(
    row: &mut [E],
    q: &[f32],
    t: usize,
    w: f32,
    a: f32,
    b: f32,
    temp: f32,
    scratch: &mut [f32],
) -> (f64, f64) {
    let v = row.len();
    let inv_t = 1.0 / temp;
    let xt = row[t].to_f32();
    let m = widen_max(row, scratch);
    let mq = max_f32(q);
    let s = &scratch[..v];
    let z = sum_exp(s, m, 1.0);
    let zt = sum_exp(s, m, inv_t);
    let zq = sum_exp(q, mq, inv_t);
    let (lse, lse_t, lse_q) = (z.ln() as f32, zt.ln() as f32, zq.ln() as f32);
    let nll = z.ln() + m as f64 - xt as f64;
    let (wa, wbt) = (w * a, w * b * temp);
    let mut kl = [0f32; LANES];
    let mut sc = row.chunks_exact_mut(LANES);
    let mut xc = s.chunks_exact(LANES);
    let mut qc = q.chunks_exact(LANES);
    for ((r, x), qq) in (&mut sc).zip(&mut xc).zip(&mut qc) {
        for j in 0..LANES {
            let d = x[j] - m;
            let ls_t = d * inv_t - lse_t;
            let lq_t = (qq[j] - mq) * inv_t - lse_q;
            let p = exp_neg(d - lse);
            let pq = exp_neg(lq_t);
            kl[j] += pq * (lq_t - ls_t);
            r[j] = E::from_f32(wa * p + wbt * (exp_neg(ls_t) - pq));
        }
    }
    let mut kl_sum: f64 = 0.0;
    for ((r, &x), &qq) in sc
        .into_remainder()
        .iter_mut()
        .zip(xc.remainder())
        .zip(qc.remainder())
    {
        let d = x - m;
        let ls_t = d * inv_t - lse_t;
        let lq_t = (qq - mq) * inv_t - lse_q;
        let pq = exp_neg(lq_t);
        kl_sum += (pq * (lq_t - ls_t)) as f64;
        *r = E::from_f32(wa * exp_neg(d - lse) + wbt * (exp_neg(ls_t) - pq));
    }
    kl_sum += kl.iter().map(|&k| k as f64).sum::<f64>();
    let pt = exp_neg(s[t] - m - lse);
    let gt = wa * (pt - 1.0)
        + wbt * (exp_neg((s[t] - m) * inv_t - lse_t) - exp_neg((q[t] - mq) * inv_t - lse_q));
    row[t] = E::from_f32(gt);
    (nll, kl_sum * (temp as f64) * (temp as f64))
}

multiversion!(row_impl => row_avx2, row_avx512;
    (row: &mut [E], t: usize, w: f32, scratch: &mut [f32]) -> f64);
multiversion!(row_distill_impl => row_distill_avx2, row_distill_avx512;
    (row: &mut [E], q: &[f32], t: usize, w: f32, a: f32, b: f32, temp: f32, scratch: &mut [f32])
        -> (f64, f64));

/// `ln sum exp(row)` (the log-softmax normaliser), vectorised.
#[inline(always)]
fn log_sum_exp_impl<E: Elem>(row: &[f32]) -> f64 {
    let m = max_f32(row);
    if !m.is_finite() {
        // All -inf, or +inf/NaN present: the exact formula's answer.
        return row
            .iter()
            .map(|&x| x as f64)
            .fold(f64::NEG_INFINITY, f64::max);
    }
    m as f64 + sum_exp(row, m, 1.0).ln()
}

multiversion!(log_sum_exp_impl => log_sum_exp_avx2, log_sum_exp_avx512; (row: &[f32]) -> f64);

/// `ln sum exp(row)` of an f32 row (the decoder's log-probabilities), on the
/// same vectorised `exp` as the loss kernel: relative error of the sum below
/// 1e-6, instead of 50k scalar `f64::exp` calls per decoded token.
pub(crate) fn log_sum_exp(row: &[f32]) -> f64 {
    dispatch!(
        detect(),
        log_sum_exp_avx512::<f32>,
        log_sum_exp_avx2::<f32>,
        log_sum_exp_impl::<f32>,
        (row)
    )
}

/// Forward-KL distillation of some rows (see [`softmax_xent_grad`]).
pub(crate) struct Distill<'a> {
    /// Teacher logits, `[M, V]` f32 row-major.
    pub teacher: &'a [f32],
    /// Per logits row: its teacher row in `teacher`, or -1 for none.
    pub teacher_row: &'a [i64],
    /// Weight of cross-entropy on rows with a teacher.
    pub alpha: f32,
    /// Weight of `T^2 * KL(teacher_T || student_T)` on those rows.
    pub beta: f32,
    /// Temperature `T` (> 0).
    pub temperature: f32,
}

/// Per-row results of [`softmax_xent_grad`].
pub(crate) struct RowLosses {
    /// Unweighted negative log-likelihood of each row's target.
    pub nll: Vec<f32>,
    /// Unweighted `T^2 * KL` of each row (0 without a teacher).
    pub kl: Vec<f32>,
}

/// The gradient of `sum_i w_i * l_i` with respect to the logits, written
/// over `logits` (`n` rows of `v`), and the per-row losses, where
/// `l_i = nll_i`, or `alpha * nll_i + beta * T^2 * KL_i` for rows that have
/// a teacher in `distill`. `weights` default to 1. Errors (nothing
/// written) when a target or teacher row is out of range or the shapes
/// disagree.
pub(crate) fn softmax_xent_grad<E: Elem>(
    logits: &mut [E],
    v: usize,
    targets: &[i64],
    weights: Option<&[f32]>,
    distill: Option<&Distill>,
) -> anyhow::Result<RowLosses> {
    let n = targets.len();
    if v == 0 || logits.len() != n * v || weights.is_some_and(|w| w.len() != n) {
        anyhow::bail!(
            "fused loss: {} logits for {n} rows of {v} ({} weights)",
            logits.len(),
            weights.map_or(n, <[f32]>::len)
        );
    }
    if let Some((i, &t)) = targets
        .iter()
        .enumerate()
        .find(|(_, &t)| t < 0 || t as usize >= v)
    {
        anyhow::bail!("fused loss: target {t} of row {i} is outside the vocabulary of {v}");
    }
    if let Some(d) = distill {
        let m = d.teacher.len() / v;
        if d.teacher.len() != m * v || d.teacher_row.len() != n {
            anyhow::bail!(
                "fused loss: {} teacher logits (rows of {v}) and {} teacher rows for {n} rows",
                d.teacher.len(),
                d.teacher_row.len()
            );
        }
        if let Some(&r) = d.teacher_row.iter().find(|&&r| r >= m as i64) {
            anyhow::bail!("fused loss: teacher row {r} of {m}");
        }
        if d.temperature.is_nan() || d.temperature <= 0.0 {
            anyhow::bail!("fused loss: temperature must be > 0, got {}", d.temperature);
        }
    }
    let isa = detect();
    let mut nll = vec![0f32; n];
    let mut kl = vec![0f32; n];
    logits
        .par_chunks_mut(v)
        .zip(nll.par_iter_mut())
        .zip(kl.par_iter_mut())
        .enumerate()
        .for_each_init(
            || vec![0f32; v],
            |scratch, (i, ((row, out), kl_out))| {
                let t = targets[i] as usize;
                let w = weights.map_or(1.0, |w| w[i]);
                let teacher = distill.and_then(|d| {
                    let r = d.teacher_row[i];
                    (r >= 0).then(|| (d, &d.teacher[r as usize * v..(r as usize + 1) * v]))
                });
                let (l, k) = match teacher {
                    Some((d, q)) => {
                        let (a, b, temp) = (d.alpha, d.beta, d.temperature);
                        dispatch!(
                            isa,
                            row_distill_avx512,
                            row_distill_avx2,
                            row_distill_impl,
                            (row, q, t, w, a, b, temp, scratch)
                        )
                    }
                    None => {
                        let l =
                            dispatch!(isa, row_avx512, row_avx2, row_impl, (row, t, w, scratch));
                        (l, 0.0)
                    }
                };
                *out = l as f32;
                *kl_out = k as f32;
            },
        );
    Ok(RowLosses { nll, kl })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::Bf16;

    fn reference(x: &[f64], t: usize, w: f64) -> (Vec<f64>, f64) {
        let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = x.iter().map(|v| (v - m).exp()).sum();
        let g = x
            .iter()
            .enumerate()
            .map(|(i, v)| w * ((v - m).exp() / s - if i == t { 1.0 } else { 0.0 }))
            .collect();
        (g, s.ln() + m - x[t])
    }

    #[test]
    fn exp_is_accurate() {
        let mut worst: f64 = 0.0;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = (x as f64).exp();
            worst = worst.max(((exp_neg(x) as f64) - want).abs() / want);
            x += 0.001;
        }
        assert!(worst < 5e-7, "relative error {worst}");
        assert!(exp_neg(f32::NAN).is_nan());
        assert!(exp_neg(-1e4) < 1e-37);
    }

    #[test]
    fn matches_double_precision_reference() {
        // Odd width (remainder lanes), rows with weights 0, 1 and 2.5.
        let (n, v) = (5, 1000 + 7);
        let mut logits: Vec<f32> = (0..n * v)
            .map(|i| ((i * 7919 % 1013) as f32 / 50.0 - 10.0) * if i % 3 == 0 { 1.5 } else { 1.0 })
            .collect();
        let x64: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
        let targets = [0i64, 5, 1006, 500, 77];
        let weights = [1.0f32, 0.0, 2.5, 1.0, 0.25];
        let nll = softmax_xent_grad(&mut logits, v, &targets, Some(&weights), None)
            .unwrap()
            .nll;
        for r in 0..n {
            let (g, l) = reference(
                &x64[r * v..(r + 1) * v],
                targets[r] as usize,
                weights[r] as f64,
            );
            assert!(
                (nll[r] as f64 - l).abs() < 1e-5 * l.max(1.0),
                "row {r}: {} vs {l}",
                nll[r]
            );
            for (a, b) in logits[r * v..(r + 1) * v].iter().zip(&g) {
                assert!((*a as f64 - b).abs() < 1e-6, "row {r}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn distillation_matches_double_precision_reference() {
        let (n, v) = (4, 515);
        let mut logits: Vec<f32> = (0..n * v)
            .map(|i| (i * 37 % 101) as f32 / 9.0 - 5.0)
            .collect();
        let teacher: Vec<f32> = (0..2 * v)
            .map(|i| (i * 53 % 97) as f32 / 7.0 - 6.0)
            .collect();
        let x64: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
        let targets = [3i64, 0, 514, 77];
        let weights = [1.0f32, 2.0, 0.5, 1.0];
        let rows = [1i64, -1, 0, 1];
        let (alpha, beta, temp) = (0.3f64, 0.7f64, 2.0f64);
        let d = Distill {
            teacher: &teacher,
            teacher_row: &rows,
            alpha: alpha as f32,
            beta: beta as f32,
            temperature: temp as f32,
        };
        let out = softmax_xent_grad(&mut logits, v, &targets, Some(&weights), Some(&d)).unwrap();
        let softmax = |x: &[f64], t: f64| -> Vec<f64> {
            let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = x.iter().map(|v| ((v - m) / t).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        };
        for r in 0..n {
            let x = &x64[r * v..(r + 1) * v];
            let (w, t) = (weights[r] as f64, targets[r] as usize);
            let (g_ce, l) = reference(x, t, 1.0);
            let (want_g, want_kl): (Vec<f64>, f64) = if rows[r] < 0 {
                (g_ce.iter().map(|g| w * g).collect(), 0.0)
            } else {
                let q: Vec<f64> = teacher[rows[r] as usize * v..][..v]
                    .iter()
                    .map(|&q| q as f64)
                    .collect();
                let (pt, qt) = (softmax(x, temp), softmax(&q, temp));
                let kl: f64 = qt
                    .iter()
                    .zip(&pt)
                    .map(|(a, b)| a * (a / b).ln())
                    .sum::<f64>()
                    * temp
                    * temp;
                let g = (0..v)
                    .map(|j| w * (alpha * g_ce[j] + beta * temp * (pt[j] - qt[j])))
                    .collect();
                (g, kl)
            };
            assert!(
                (out.nll[r] as f64 - l).abs() < 1e-5 * l.max(1.0),
                "row {r} nll"
            );
            assert!(
                (out.kl[r] as f64 - want_kl).abs() < 1e-5 * want_kl.max(1.0),
                "row {r}: kl {} vs {want_kl}",
                out.kl[r]
            );
            for (j, (a, b)) in logits[r * v..(r + 1) * v].iter().zip(&want_g).enumerate() {
                assert!((*a as f64 - b).abs() < 1e-6, "row {r} col {j}: {a} vs {b}");
            }
        }
        // A teacher row out of range is an error.
        let bad = Distill {
            teacher_row: &[0, 0, 2, 0],
            ..d
        };
        assert!(softmax_xent_grad(&mut logits, v, &targets, None, Some(&bad)).is_err());
    }

    #[test]
    fn log_sum_exp_matches_f64() {
        let row: Vec<f32> = (0..50_257)
            .map(|i| ((i * 7919) % 2003) as f32 / 100.0 - 12.0)
            .collect();
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let want = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        assert!(
            (log_sum_exp(&row) - want).abs() < 1e-6,
            "{} vs {want}",
            log_sum_exp(&row)
        );
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY; 3]), f64::NEG_INFINITY);
        assert_eq!(log_sum_exp(&[0.0, f32::INFINITY]), f64::INFINITY);
        assert!((log_sum_exp(&[2.0]) - 2.0).abs() < 1e-7);
    }

    #[test]
    fn bf16_rows_round_like_libtorch() {
        assert_eq!(Bf16::from_f32(1.0).0, 0x3f80);
        assert_eq!(Bf16::from_f32(1.0 + 1.0 / 256.0).0, 0x3f80); // tie -> even
        assert_eq!(Bf16::from_f32(1.0 + 3.0 / 256.0).0, 0x3f82); // tie -> even (up)
        assert!(Bf16::from_f32(f32::NAN).to_f32().is_nan());
        let v = 300;
        let mut row: Vec<Bf16> = (0..v).map(|i| Bf16::from_f32(i as f32 / 30.0)).collect();
        let x: Vec<f64> = row.iter().map(|b| b.to_f32() as f64).collect();
        let nll = softmax_xent_grad(&mut row, v, &[123], None, None)
            .unwrap()
            .nll;
        let (g, l) = reference(&x, 123, 1.0);
        assert!((nll[0] as f64 - l).abs() < 1e-5);
        for (a, b) in row.iter().zip(&g) {
            assert!((a.to_f32() as f64 - b).abs() <= b.abs() / 128.0 + 1e-12);
        }
    }

    #[test]
    fn bad_targets_and_shapes_are_errors() {
        let mut x = vec![0f32; 8];
        assert!(softmax_xent_grad(&mut x, 4, &[0, 4], None, None).is_err());
        assert!(softmax_xent_grad(&mut x, 4, &[0, -1], None, None).is_err());
        assert!(softmax_xent_grad(&mut x, 4, &[0], None, None).is_err());
        assert!(softmax_xent_grad(&mut x, 4, &[0, 1], Some(&[1.0]), None).is_err());
        assert_eq!(x, vec![0f32; 8]);
    }

    #[test]
    fn non_finite_logits_give_non_finite_loss() {
        let mut x = vec![0f32, f32::NAN, 1.0, 2.0];
        assert!(!softmax_xent_grad(&mut x, 4, &[0], None, None).unwrap().nll[0].is_finite());
        let mut x = vec![0f32, f32::INFINITY, 1.0, 2.0];
        assert!(!softmax_xent_grad(&mut x, 4, &[0], None, None).unwrap().nll[0].is_finite());
    }
}
