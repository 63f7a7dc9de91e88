//! Percentiles and summaries of measured samples.

use serde::{Deserialize, Serialize};

/// The `p`-th percentile (0..=100) by linear interpolation between closest
/// ranks (numpy's default). `None` for an empty sample or a NaN.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() || samples.iter().any(|x| x.is_nan()) || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = p / 100.0 * (v.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let frac = rank - lo as f64;
    Some(v[lo] + (v[hi] - v[lo]) * frac)
}

/// p50 / p95 / mean / min / max of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// Summarise a sample (all zeros when empty).
    pub fn of(samples: &[f64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let n = samples.len();
        Self {
            n,
            mean: samples.iter().sum::<f64>() / n as f64,
            p50: percentile(samples, 50.0).unwrap_or(f64::NAN),
            p95: percentile(samples, 95.0).unwrap_or(f64::NAN),
            min: samples.iter().copied().fold(f64::INFINITY, f64::min),
            max: samples.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

/// Mean and spread (sample standard deviation) over seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct MeanSpread {
    pub n: usize,
    pub mean: f64,
    pub std: f64,
}

impl MeanSpread {
    /// Mean and sample standard deviation (0 for a single value).
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        if n == 0 {
            return Self::default();
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Self { n, mean, std }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_match_numpy_linear() {
        let v = [1.0, 2.0, 3.0, 4.0, 10.0];
        assert_eq!(percentile(&v, 50.0), Some(3.0));
        // numpy.percentile([1,2,3,4,10], 95) == 8.8
        assert!((percentile(&v, 95.0).unwrap() - 8.8).abs() < 1e-12);
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[1.0, f64::NAN], 50.0), None);
        let s = Summary::of(&[5.0, 1.0, 3.0]);
        assert_eq!((s.n, s.p50, s.min, s.max, s.mean), (3, 3.0, 1.0, 5.0, 3.0));
    }

    #[test]
    fn mean_spread() {
        let m = MeanSpread::of(&[1.0, 2.0, 3.0]);
        assert_eq!(m.mean, 2.0);
        assert!((m.std - 1.0).abs() < 1e-12);
        assert_eq!(MeanSpread::of(&[4.0]).std, 0.0);
    }
}
