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

use rayon::prelude::*;

/// Lanes of the partial max/sum accumulators (vectorisable, and a sum over
/// 32 interleaved partials loses less precision than one running sum).
const LANES: usize = 32;

/// A logits element: f32 or bf16 (raw bits).
pub(crate) trait Elem: Copy + Send + Sync {
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
}

impl Elem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
}

/// bf16 as stored by libtorch: the high 16 bits of an f32.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct Bf16(pub u16);

impl Elem for Bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
    /// Round to nearest even, as libtorch's cast does (NaN stays NaN).
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        let b = x.to_bits();
        let round = 0x7fff + ((b >> 16) & 1);
        Bf16((b.wrapping_add(round) >> 16) as u16)
    }
}

/// `exp(x)` for `x <= 0` (anything below -87 is clamped to -87, i.e.
/// ~1e-38). NaN stays NaN.
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two (Cephes): `n * LN2_HI` is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer.
    const MAGIC: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let n = (x * LOG2E + MAGIC) - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) << 23) as u32);
    p * scale
}

/// One row: overwrite `row` with `w * (softmax - onehot(t))` and return the
/// unweighted negative log-likelihood of `t`. `scratch` must hold
/// `row.len()` floats.
#[inline(always)]
fn row_impl<E: Elem>(row: &mut [E], t: usize, w: f32, scratch: &mut [f32]) -> f64 {
    let v = row.len();
    let xt = row[t].to_f32();
    // Pass 1: widen to f32 and take the max.
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut sc = scratch[..v].chunks_exact_mut(LANES);
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
    // Pass 2: exponentials (kept in scratch) and their sum.
    let mut acc = [0f32; LANES];
    let mut sc = scratch[..v].chunks_exact_mut(LANES);
    for s in &mut sc {
        for j in 0..LANES {
            let e = exp_neg(s[j] - m);
            s[j] = e;
            acc[j] += e;
        }
    }
    let mut sum: f64 = 0.0;
    for s in sc.into_remainder() {
        *s = exp_neg(*s - m);
        sum += *s as f64;
    }
    sum += acc.iter().map(|&a| a as f64).sum::<f64>();
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_avx2<E: Elem>(row: &mut [E], t: usize, w: f32, scratch: &mut [f32]) -> f64 {
    row_impl(row, t, w, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
fn row_avx512<E: Elem>(row: &mut [E], t: usize, w: f32, scratch: &mut [f32]) -> f64 {
    row_impl(row, t, w, scratch)
}

#[derive(Clone, Copy)]
enum Isa {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
            return Isa::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}

/// The gradient of `sum_i w_i * nll_i` with respect to the logits, written
/// over `logits` (`n` rows of `v`), and the unweighted per-row `nll`.
/// `weights` default to 1. Errors (nothing written) when a target is out of
/// range or the shapes disagree.
pub(crate) fn softmax_xent_grad<E: Elem>(
    logits: &mut [E],
    v: usize,
    targets: &[i64],
    weights: Option<&[f32]>,
) -> anyhow::Result<Vec<f32>> {
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
    let isa = detect();
    let mut nll = vec![0f32; n];
    logits
        .par_chunks_mut(v)
        .zip(nll.par_iter_mut())
        .enumerate()
        .for_each_init(
            || vec![0f32; v],
            |scratch, (i, (row, out))| {
                let t = targets[i] as usize;
                let w = weights.map_or(1.0, |w| w[i]);
                let l = match isa {
                    // SAFETY: the CPU supports the features (checked by `detect`).
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => unsafe { row_avx512(row, t, w, scratch) },
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => unsafe { row_avx2(row, t, w, scratch) },
                    Isa::Baseline => row_impl(row, t, w, scratch),
                };
                *out = l as f32;
            },
        );
    Ok(nll)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let nll = softmax_xent_grad(&mut logits, v, &targets, Some(&weights)).unwrap();
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
    fn bf16_rows_round_like_libtorch() {
        assert_eq!(Bf16::from_f32(1.0).0, 0x3f80);
        assert_eq!(Bf16::from_f32(1.0 + 1.0 / 256.0).0, 0x3f80); // tie -> even
        assert_eq!(Bf16::from_f32(1.0 + 3.0 / 256.0).0, 0x3f82); // tie -> even (up)
        assert!(Bf16::from_f32(f32::NAN).to_f32().is_nan());
        let v = 300;
        let mut row: Vec<Bf16> = (0..v).map(|i| Bf16::from_f32(i as f32 / 30.0)).collect();
        let x: Vec<f64> = row.iter().map(|b| b.to_f32() as f64).collect();
        let nll = softmax_xent_grad(&mut row, v, &[123], None).unwrap();
        let (g, l) = reference(&x, 123, 1.0);
        assert!((nll[0] as f64 - l).abs() < 1e-5);
        for (a, b) in row.iter().zip(&g) {
            assert!((a.to_f32() as f64 - b).abs() <= b.abs() / 128.0 + 1e-12);
        }
    }

    #[test]
    fn bad_targets_and_shapes_are_errors() {
        let mut x = vec![0f32; 8];
        assert!(softmax_xent_grad(&mut x, 4, &[0, 4], None).is_err());
        assert!(softmax_xent_grad(&mut x, 4, &[0, -1], None).is_err());
        assert!(softmax_xent_grad(&mut x, 4, &[0], None).is_err());
        assert!(softmax_xent_grad(&mut x, 4, &[0, 1], Some(&[1.0])).is_err());
        assert_eq!(x, vec![0f32; 8]);
    }

    #[test]
    fn non_finite_logits_give_non_finite_loss() {
        let mut x = vec![0f32, f32::NAN, 1.0, 2.0];
        assert!(!softmax_xent_grad(&mut x, 4, &[0], None).unwrap()[0].is_finite());
        let mut x = vec![0f32, f32::INFINITY, 1.0, 2.0];
        assert!(!softmax_xent_grad(&mut x, 4, &[0], None).unwrap()[0].is_finite());
    }
}
