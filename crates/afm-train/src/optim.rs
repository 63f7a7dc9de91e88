//! The optimiser, owned here so its state can be saved and restored exactly:
//! AdamW with decoupled weight decay, fp32 moments, global-norm clipping, and
//! the linear-warm-up + cosine learning-rate schedule.
//!
//! The parameters are the model's fp32 tensors (the master weights; the
//! model's forward casts to bf16 when asked), so one update is a handful of
//! in-place tensor ops per parameter.

use crate::config::OptimConfig;
use anyhow::Context;
use std::path::Path;
use tch::{Kind, Tensor};

/// Learning rate at `step` (0-based): linear warm-up from `lr/warmup` to
/// `lr` over `warmup_steps`, then cosine decay from `lr` to `min_lr` as
/// `decay` (the fraction of the decay phase done, clamped to 0..=1) goes
/// from 0 to 1. A step-counted run passes [`step_decay`]; a run with a
/// time budget passes the larger of that and the fraction of its budget
/// spent ([`run_decay`]), so the rate reaches `min_lr` when the budget ends.
pub fn lr_at(o: &OptimConfig, step: usize, decay: f64) -> f64 {
    if o.warmup_steps > 0 && step < o.warmup_steps {
        return o.lr * (step + 1) as f64 / o.warmup_steps as f64;
    }
    let t = if decay.is_finite() {
        decay.clamp(0.0, 1.0)
    } else {
        1.0
    };
    o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
}

/// Fraction of the decay phase done at `step` of a `total_steps` run.
pub fn step_decay(o: &OptimConfig, step: usize, total_steps: usize) -> f64 {
    let decay = total_steps.saturating_sub(o.warmup_steps).max(1);
    (step - o.warmup_steps.min(step)) as f64 / decay as f64
}

/// The decay fraction of a run: by steps, and with a time budget by the
/// training seconds spent (`used_secs`, all invocations) out of
/// `budget_secs`, whichever is further along.
pub fn run_decay(
    o: &OptimConfig,
    step: usize,
    total_steps: usize,
    used_secs: f64,
    budget_secs: Option<f64>,
) -> f64 {
    let by_steps = step_decay(o, step, total_steps);
    match budget_secs {
        Some(b) if b > 0.0 => by_steps.max(used_secs / b),
        _ => by_steps,
    }
}

/// One parameter and its AdamW state.
struct Slot {
    name: String,
    param: Tensor,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

/// AdamW over a fixed list of named parameters.
pub struct AdamW {
    slots: Vec<Slot>,
    /// Updates applied so far (bias correction uses `t = step + 1`).
    pub step: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamW {
    /// `params`: (name, tensor requiring grad). `decays(name)` says whether
    /// weight decay applies (`afm_model::weight_decay_applies`).
    pub fn new(
        params: Vec<(String, Tensor)>,
        o: &OptimConfig,
        decays: impl Fn(&str) -> bool,
    ) -> Self {
        let slots = params
            .into_iter()
            .map(|(name, param)| {
                let m = param.zeros_like().to_kind(Kind::Float);
                let v = param.zeros_like().to_kind(Kind::Float);
                Slot {
                    decay: decays(&name),
                    name,
                    param,
                    m,
                    v,
                }
            })
            .collect();
        Self {
            slots,
            step: 0,
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            weight_decay: o.weight_decay,
        }
    }

    /// Names of the parameters with weight decay.
    pub fn decayed(&self) -> Vec<&str> {
        self.slots
            .iter()
            .filter(|s| s.decay)
            .map(|s| s.name.as_str())
            .collect()
    }

    /// Zero every gradient.
    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            let mut g = s.param.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// Global L2 norm of the gradients (fp32), as a 0-d tensor.
    pub fn grad_norm(&self) -> Tensor {
        tch::no_grad(|| {
            let mut sq: Option<Tensor> = None;
            for s in &self.slots {
                let g = s.param.grad();
                if !g.defined() {
                    continue;
                }
                let n = g.to_kind(Kind::Float).square().sum(Kind::Float);
                sq = Some(match sq {
                    None => n,
                    Some(a) => a + n,
                });
            }
            sq.map(|t| t.sqrt()).unwrap_or_else(|| Tensor::from(0f32))
        })
    }

    /// Scale gradients so their global norm is at most `max` (no-op for 0).
    /// Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max: f64) -> f64 {
        let norm = self.grad_norm().double_value(&[]);
        if max > 0.0 && norm.is_finite() && norm > max {
            let scale = max / (norm + 1e-6);
            tch::no_grad(|| {
                for s in &mut self.slots {
                    let mut g = s.param.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(scale);
                    }
                }
            });
        }
        norm
    }

    /// One AdamW update at learning rate `lr`. Parameters without a gradient
    /// (unused this step) are left alone, as torch's AdamW does.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        let (b1, b2, eps, wd) = (self.beta1, self.beta2, self.eps, self.weight_decay);
        tch::no_grad(|| {
            for s in &mut self.slots {
                let g = s.param.grad();
                if !g.defined() {
                    continue;
                }
                // Few temporaries (each is a full-size allocation):
                // m = b1 m + (1-b1) g       (lerp, in place)
                // v = b2 v + (s g)(s g)     with s = sqrt(1-b2), scaling g in place
                // p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
                let mut g = g.to_kind(Kind::Float);
                let _ = s.m.lerp_(&g, 1.0 - b1);
                let _ = g.g_mul_scalar_((1.0 - b2).sqrt());
                let _ = s.v.g_mul_scalar_(b2);
                let _ = s.v.addcmul_(&g, &g);
                if s.decay && wd > 0.0 {
                    let _ = s.param.g_mul_scalar_(1.0 - lr * wd);
                }
                if lr == 0.0 {
                    continue;
                }
                let mut denom = s.v.sqrt();
                let _ = denom.g_mul_scalar_(1.0 / bc2.sqrt());
                let _ = denom.g_add_scalar_(eps);
                // addcdiv_ adds m / denom: fold -lr/bc1 into the denominator.
                let _ = denom.g_mul_scalar_(-bc1 / lr);
                if s.param.kind() == Kind::Float {
                    let _ = s.param.addcdiv_(&s.m, &denom);
                } else {
                    let upd = (&s.m / &denom).to_kind(s.param.kind());
                    let _ = s.param.g_add_(&upd);
                }
            }
        });
    }

    /// Save the moments and the step count (safetensors; exact bits).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut named: Vec<(String, Tensor)> = Vec::with_capacity(self.slots.len() * 2 + 1);
        for s in &self.slots {
            named.push((format!("m.{}", s.name), s.m.to_device(tch::Device::Cpu)));
            named.push((format!("v.{}", s.name), s.v.to_device(tch::Device::Cpu)));
        }
        named.push(("step".into(), Tensor::from_slice(&[self.step as i64])));
        Tensor::write_safetensors(&named, path)
            .with_context(|| format!("writing optimiser state {}", path.display()))
    }

    /// Restore what [`AdamW::save`] wrote; every parameter must be present
    /// with the same shape.
    pub fn load(&mut self, path: &Path) -> anyhow::Result<()> {
        let loaded = Tensor::read_safetensors(path)
            .with_context(|| format!("reading optimiser state {}", path.display()))?;
        let map: std::collections::HashMap<String, Tensor> = loaded.into_iter().collect();
        let step = map
            .get("step")
            .with_context(|| format!("{}: no `step` entry", path.display()))?;
        self.step = step.int64_value(&[0]) as u64;
        tch::no_grad(|| -> anyhow::Result<()> {
            for s in &mut self.slots {
                for (key, dst) in [
                    (format!("m.{}", s.name), &mut s.m),
                    (format!("v.{}", s.name), &mut s.v),
                ] {
                    let src = map
                        .get(&key)
                        .with_context(|| format!("{}: no entry {key}", path.display()))?;
                    if src.size() != dst.size() {
                        anyhow::bail!(
                            "{}: {key} has shape {:?}, the model needs {:?}",
                            path.display(),
                            src.size(),
                            dst.size()
                        );
                    }
                    dst.copy_(src);
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_shape() {
        let o = OptimConfig {
            lr: 1.0,
            min_lr: 0.1,
            warmup_steps: 10,
            ..Default::default()
        };
        let at = |s: usize| lr_at(&o, s, step_decay(&o, s, 110));
        assert!((at(0) - 0.1).abs() < 1e-12);
        assert!((at(9) - 1.0).abs() < 1e-12);
        assert!((at(10) - 1.0).abs() < 1e-12);
        assert!((at(60) - 0.55).abs() < 1e-12);
        assert!((at(110) - 0.1).abs() < 1e-12);
        assert!((at(500) - 0.1).abs() < 1e-12);
        let mut prev = f64::INFINITY;
        for s in 10..=110 {
            let l = at(s);
            assert!(l <= prev + 1e-15);
            prev = l;
        }
        // A time budget decays by the fraction of it spent (the huge step
        // count of an epoch-derived total does not hold the rate at its peak).
        let total = 280_000;
        let d = |s: usize, used: f64| run_decay(&o, s, total, used, Some(60.0));
        assert!((lr_at(&o, 50, d(50, 30.0)) - 0.55).abs() < 1e-9);
        assert!((lr_at(&o, 90, d(90, 60.0)) - 0.1).abs() < 1e-12);
        assert!((lr_at(&o, 95, d(95, 75.0)) - 0.1).abs() < 1e-12);
        assert_eq!(run_decay(&o, 60, 110, 1e9, None), step_decay(&o, 60, 110));
    }

    /// Matches a hand-written AdamW (torch semantics) on a toy problem,
    /// including decoupled decay only where it applies.
    #[test]
    fn adamw_matches_reference_and_state_round_trips() {
        let w = Tensor::from_slice(&[1.0f32, -2.0, 3.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[0.5f32]).set_requires_grad(true);
        let o = OptimConfig {
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            ..Default::default()
        };
        let mut opt = AdamW::new(
            vec![
                ("w.weight".into(), w.shallow_clone()),
                ("b.bias".into(), b.shallow_clone()),
            ],
            &o,
            |n| n.ends_with("weight"),
        );
        assert_eq!(opt.decayed(), vec!["w.weight"]);
        // Reference in f64.
        let mut rw = [1.0f64, -2.0, 3.0];
        let mut rb = 0.5f64;
        let (mut mw, mut vw, mut mb, mut vb) = ([0.0f64; 3], [0.0f64; 3], 0.0f64, 0.0f64);
        let lr = 0.01;
        for t in 1..=5 {
            opt.zero_grad();
            // loss = sum(w^2) * b
            let loss = (w.square().sum(Kind::Float)) * b.sum(Kind::Float);
            loss.backward();
            opt.step(lr);
            let sw: f64 = rw.iter().map(|x| x * x).sum();
            let gb = sw;
            for i in 0..3 {
                let g = 2.0 * rw[i] * rb;
                mw[i] = 0.9 * mw[i] + 0.1 * g;
                vw[i] = 0.99 * vw[i] + 0.01 * g * g;
                rw[i] *= 1.0 - lr * 0.1;
                let mh = mw[i] / (1.0 - 0.9f64.powi(t));
                let vh = vw[i] / (1.0 - 0.99f64.powi(t));
                rw[i] -= lr * mh / (vh.sqrt() + 1e-8);
            }
            mb = 0.9 * mb + 0.1 * gb;
            vb = 0.99 * vb + 0.01 * gb * gb;
            rb -=
                lr * (mb / (1.0 - 0.9f64.powi(t))) / ((vb / (1.0 - 0.99f64.powi(t))).sqrt() + 1e-8);
        }
        let got = Vec::<f32>::try_from(&w).unwrap();
        for i in 0..3 {
            assert!((got[i] as f64 - rw[i]).abs() < 1e-5, "{got:?} vs {rw:?}");
        }
        assert!((b.double_value(&[0]) - rb).abs() < 1e-5);

        // Save / load gives the same next update bit for bit.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("opt.safetensors");
        opt.save(&p).unwrap();
        let w2 = w.detach().copy().set_requires_grad(true);
        let b2 = b.detach().copy().set_requires_grad(true);
        let mut opt2 = AdamW::new(
            vec![
                ("w.weight".into(), w2.shallow_clone()),
                ("b.bias".into(), b2.shallow_clone()),
            ],
            &o,
            |n| n.ends_with("weight"),
        );
        opt2.load(&p).unwrap();
        assert_eq!(opt2.step, 5);
        for (ww, bb, op) in [(&w, &b, &mut opt), (&w2, &b2, &mut opt2)] {
            op.zero_grad();
            ((ww.square().sum(Kind::Float)) * bb.sum(Kind::Float)).backward();
            op.step(lr);
        }
        assert!(w.equal(&w2) && b.equal(&b2));
    }

    #[test]
    fn clipping_scales_to_max() {
        let w = Tensor::from_slice(&[3.0f32, 4.0]).set_requires_grad(true);
        let mut opt = AdamW::new(
            vec![("w".into(), w.shallow_clone())],
            &OptimConfig::default(),
            |_| true,
        );
        opt.zero_grad();
        (w.square().sum(Kind::Float) * 0.5).backward(); // grad = w, norm 5
        let n = opt.clip_grad_norm(1.0);
        assert!((n - 5.0).abs() < 1e-6);
        assert!((opt.grad_norm().double_value(&[]) - 1.0).abs() < 1e-5);
    }
}
