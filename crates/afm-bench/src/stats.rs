//! Statistics over repeated runs. (Latency percentiles are defined once, in
//! `afm_agents::percentile`.)

use serde::{Deserialize, Serialize};

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
    fn mean_spread() {
        let m = MeanSpread::of(&[1.0, 2.0, 3.0]);
        assert_eq!(m.mean, 2.0);
        assert!((m.std - 1.0).abs() < 1e-12);
        assert_eq!(MeanSpread::of(&[4.0]).std, 0.0);
        assert_eq!(MeanSpread::of(&[]).n, 0);
    }
}
