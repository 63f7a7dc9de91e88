//! Loss functions on plain tensors: per-token cross-entropy and the
//! distillation divergences (forward KL, reverse KL, generalised JSD) at a
//! temperature, plus how they combine into the training loss.
//!
//! Per loss position `i` with weight `w_i`:
//!
//! ```text
//! l_i = alpha * CE_i + beta * T^2 * D_T(teacher_i, student_i)   if i's owner has a teacher
//! l_i = CE_i                                                    otherwise
//! loss = sum_i w_i * l_i / sum_i w_i
//! ```
//!
//! where the sums run over every micro-batch of the optimiser step, so
//! accumulating micro-batches equals one big batch.

use crate::config::Divergence;
use tch::{Kind, Reduction, Tensor};

/// Logit given to vocabulary entries a teacher does not have: finite (so
/// reverse KL and JSD stay finite) and far below any real logit, so its
/// probability is 0 in f32.
pub const MISSING_LOGIT: f64 = -1.0e4;

/// Cross-entropy of each row of `logits` (`[N, V]`, f32) against `targets`
/// (`[N]`, i64): `[N]` f32.
pub fn cross_entropy_per_token(logits: &Tensor, targets: &Tensor) -> Tensor {
    logits.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(
        targets,
        None,
        Reduction::None,
        -100,
        0.0,
    )
}

/// `T^2 * D(teacher || student)` per row (`[N]` f32) for logits `[N, V]`.
/// The teacher side carries no gradient.
pub fn divergence_per_token(
    student: &Tensor,
    teacher: &Tensor,
    divergence: Divergence,
    temperature: f64,
    jsd_beta: f64,
) -> Tensor {
    let t = temperature;
    let ls = (student.to_kind(Kind::Float) / t).log_softmax(-1, Kind::Float);
    let lt = (teacher.detach().to_kind(Kind::Float) / t).log_softmax(-1, Kind::Float);
    let d = match divergence {
        Divergence::Forward => (lt.exp() * (&lt - &ls)).sum_dim_intlist(-1, false, Kind::Float),
        Divergence::Reverse => (ls.exp() * (&ls - &lt)).sum_dim_intlist(-1, false, Kind::Float),
        Divergence::Jsd => {
            let b = jsd_beta;
            // log m = logsumexp(log b + lt, log(1-b) + ls)
            let lm = Tensor::stack(&[&lt + b.ln(), &ls + (1.0 - b).ln()], 0).logsumexp(0, false);
            let kt = (lt.exp() * (&lt - &lm)).sum_dim_intlist(-1, false, Kind::Float);
            let ks = (ls.exp() * (&ls - &lm)).sum_dim_intlist(-1, false, Kind::Float);
            kt * b + ks * (1.0 - b)
        }
    };
    d * (t * t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn softmax(z: &[f64], t: f64) -> Vec<f64> {
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = z.iter().map(|x| ((x - m) / t).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    }
    fn kl(p: &[f64], q: &[f64]) -> f64 {
        p.iter().zip(q).map(|(a, b)| a * (a / b).ln()).sum()
    }

    /// The divergences equal hand-computed values on a toy case.
    #[test]
    fn divergences_match_hand_computation() {
        let s = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]];
        let t = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]];
        let st = Tensor::from_slice(&s.concat().iter().map(|&x| x as f32).collect::<Vec<_>>())
            .view([2, 3]);
        let tt = Tensor::from_slice(&t.concat().iter().map(|&x| x as f32).collect::<Vec<_>>())
            .view([2, 3]);
        let temp = 2.0;
        let b = 0.3;
        for div in [Divergence::Forward, Divergence::Reverse, Divergence::Jsd] {
            let got = Vec::<f32>::try_from(&divergence_per_token(&st, &tt, div, temp, b)).unwrap();
            for i in 0..2 {
                let ps = softmax(&s[i], temp);
                let pt = softmax(&t[i], temp);
                let want = temp
                    * temp
                    * match div {
                        Divergence::Forward => kl(&pt, &ps),
                        Divergence::Reverse => kl(&ps, &pt),
                        Divergence::Jsd => {
                            let m: Vec<f64> = pt
                                .iter()
                                .zip(&ps)
                                .map(|(a, c)| b * a + (1.0 - b) * c)
                                .collect();
                            b * kl(&pt, &m) + (1.0 - b) * kl(&ps, &m)
                        }
                    };
                assert!(
                    (got[i] as f64 - want).abs() < 1e-6,
                    "{div:?} row {i}: {} vs {want}",
                    got[i]
                );
                assert!(want > 0.0);
            }
        }
        // Zero when the distributions agree.
        let same = divergence_per_token(&st, &st, Divergence::Jsd, 1.0, 0.5);
        assert!(same.abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn missing_teacher_columns_stay_finite() {
        let st = Tensor::from_slice(&[1.0f32, 2.0, 0.5]).view([1, 3]);
        let tt = Tensor::from_slice(&[2.0f32, 0.0, MISSING_LOGIT as f32]).view([1, 3]);
        for div in [Divergence::Forward, Divergence::Reverse, Divergence::Jsd] {
            let d = divergence_per_token(&st, &tt, div, 1.0, 0.5).double_value(&[0]);
            assert!(d.is_finite() && d > 0.0, "{div:?}: {d}");
        }
    }

    #[test]
    fn ce_matches_hand_computation() {
        let z = [1.0f64, 2.0, 0.5];
        let lg = Tensor::from_slice(&[1.0f32, 2.0, 0.5]).view([1, 3]);
        let ce = cross_entropy_per_token(&lg, &Tensor::from_slice(&[2i64])).double_value(&[0]);
        let p = softmax(&z, 1.0);
        assert!((ce + p[2].ln()).abs() < 1e-6);
    }
}
