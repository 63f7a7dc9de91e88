//! The one seeded random generator: SplitMix64.
//!
//! The generated tasks and trajectories (the committed dataset), the
//! trainer's data order, weight initialisation and sampling all draw from
//! it, so every result depends only on its seed: not on the platform, a
//! crate version, libtorch's global generator or thread interleaving.
//! Each caller seeds it its own way (the task generator with
//! [`SplitMix64::derive`], the model with a salt, the trainer with the
//! epoch); the streams are fixed by the committed data and tests, so none
//! of the methods below may change its arithmetic.

use crate::hash::fnv1a;

/// SplitMix64 (Steele, Lea and Flood 2014). The field is the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// A generator whose state is `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator for the stream `label` of `seed`:
    /// state `seed ^ rotl(fnv1a(label), 17)`.
    pub fn derive(seed: u64, label: &str) -> Self {
        Self(seed ^ fnv1a(label.as_bytes(), 0).rotate_left(17))
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), unbiased (rejection sampling).
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// `next_u64() % n` (`n > 0`): one draw, with a bias below `n / 2^64`.
    /// The task generator uses it; the committed dataset was drawn with it.
    pub fn below_mod(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `lo..=hi` (`lo <= hi`) by [`SplitMix64::below_mod`]'s rule.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        let span = (hi - lo) as u64 + 1;
        lo + (self.next_u64() % span) as i64
    }

    /// Uniform in `[0, 1)`: the top 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p` (never for `p <= 0`).
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.uniform() < p
    }

    /// An element chosen by [`SplitMix64::below_mod`].
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below_mod(xs.len())]
    }

    /// `n` samples of N(0, std^2) (Box-Muller, both values of each pair).
    pub fn normals(&mut self, n: usize, std: f64) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let u1 = 1.0 - self.uniform();
            let u2 = self.uniform();
            let r = (-2.0 * u1.ln()).sqrt() * std;
            let a = std::f64::consts::TAU * u2;
            out.push((r * a.cos()) as f32);
            out.push((r * a.sin()) as f32);
        }
        out.truncate(n);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference SplitMix64 stream (seed 1234567, from the C
    /// reference implementation): the committed data depends on it.
    #[test]
    fn reference_stream() {
        let mut r = SplitMix64::new(1234567);
        let got: Vec<u64> = (0..5).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423,
                4593380528125082431,
                16408922859458223821
            ]
        );
    }

    /// `chance` is `uniform() < p`, written before as a division by 2^53
    /// (the same value: scaling by a power of two is exact).
    #[test]
    fn chance_is_the_old_division() {
        let (mut a, mut b) = (SplitMix64::new(9), SplitMix64::new(9));
        for k in 0..10_000 {
            let p = (k % 100) as f64 / 100.0;
            let old = p > 0.0 && ((b.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p;
            assert_eq!(a.chance(p), old);
        }
    }

    #[test]
    fn below_is_in_range_and_derive_separates_streams() {
        let mut r = SplitMix64::derive(3, "a");
        for n in 1..200u64 {
            assert!(r.below(n) < n);
            assert!(r.below_mod(n as usize) < n as usize);
            let x = r.range(-3, 3);
            assert!((-3..=3).contains(&x));
        }
        assert_ne!(SplitMix64::derive(3, "a"), SplitMix64::derive(3, "b"));
        let v = SplitMix64::new(1).normals(7, 1.0);
        assert_eq!(v.len(), 7);
        assert!(v.iter().all(|x| x.is_finite()));
    }
}
