//! The price table: what a call costs.
//!
//! Cost of a run = `input_tokens / 1000 * input_per_1k + output_tokens /
//! 1000 * output_per_1k + calls * per_call`, where input tokens are every
//! token a model had to read (prefill, including re-read context and
//! injected observations) and output tokens every token it generated.
//!
//! Defaults (USD) follow the usual hosted-API shape, where output costs
//! about 3x input: $0.50 per 1M input tokens, $1.50 per 1M output tokens,
//! and no per-call fee. They are assumptions, not measurements: override
//! them with a TOML file (`--prices FILE`):
//!
//! ```toml
//! currency = "USD"
//! input_per_1k = 0.0005
//! output_per_1k = 0.0015
//! per_call = 0.0
//! ```

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Prices per 1K tokens and per call.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTable {
    /// Currency label, for display only.
    #[serde(default = "usd")]
    pub currency: Currency,
    /// Price of 1,000 input (prefill) tokens.
    pub input_per_1k: f64,
    /// Price of 1,000 output (decoded) tokens.
    pub output_per_1k: f64,
    /// Fixed price per model call.
    #[serde(default)]
    pub per_call: f64,
}

/// A currency code of up to 8 ASCII letters (kept `Copy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 8], u8);

impl TryFrom<String> for Currency {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(format!("currency {s:?} must be 1 to 8 ASCII letters"));
        }
        let mut b = [0u8; 8];
        b[..s.len()].copy_from_slice(s.as_bytes());
        Ok(Currency(b, s.len() as u8))
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        String::from_utf8_lossy(&c.0[..c.1 as usize]).into_owned()
    }
}

impl std::fmt::Display for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from(*self))
    }
}

fn usd() -> Currency {
    Currency(*b"USD\0\0\0\0\0", 3)
}

impl Default for PriceTable {
    fn default() -> Self {
        Self {
            currency: usd(),
            input_per_1k: 0.0005,
            output_per_1k: 0.0015,
            per_call: 0.0,
        }
    }
}

impl PriceTable {
    /// Read a TOML price table; unknown keys and negative or non-finite
    /// prices are errors naming the file and field.
    pub fn from_toml_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Self::from_toml_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Parse a TOML price table.
    pub fn from_toml_str(text: &str) -> anyhow::Result<Self> {
        let t: PriceTable = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        for (name, v) in [
            ("input_per_1k", t.input_per_1k),
            ("output_per_1k", t.output_per_1k),
            ("per_call", t.per_call),
        ] {
            if !v.is_finite() || v < 0.0 {
                anyhow::bail!("field `{name}` = {v}: prices must be finite and >= 0");
            }
        }
        Ok(t)
    }

    /// Cost of `input_tokens` read, `output_tokens` generated over `calls` calls.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64, calls: u64) -> f64 {
        input_tokens as f64 / 1000.0 * self.input_per_1k
            + output_tokens as f64 / 1000.0 * self.output_per_1k
            + calls as f64 * self.per_call
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_formula() {
        let p = PriceTable {
            per_call: 0.01,
            ..PriceTable::default()
        };
        let c = p.cost(2000, 1000, 3);
        assert!((c - (0.001 + 0.0015 + 0.03)).abs() < 1e-12);
    }

    #[test]
    fn toml_override_and_validation() {
        let p = PriceTable::from_toml_str(
            "currency = \"EUR\"\ninput_per_1k = 1.0\noutput_per_1k = 2.0\n",
        )
        .unwrap();
        assert_eq!(p.currency.to_string(), "EUR");
        assert_eq!(p.per_call, 0.0);
        let e = PriceTable::from_toml_str("input_per_1k = -1.0\noutput_per_1k = 2.0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("input_per_1k"), "{e}");
        let e = PriceTable::from_toml_str("input_per_1k = 1.0\noutput_per_1k = 2.0\nper_cal = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("per_cal"), "{e}");
    }
}
