//! Model hyper-parameters ([`GptConfig`]) and the named presets.

use serde::{Deserialize, Serialize};

/// Hyper-parameters of a GPT-2 model with optional agent-role embeddings.
///
/// Saved as `config.json` in every checkpoint directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptConfig {
    /// Rows of the token embedding (= LM head outputs). May exceed the
    /// tokenizer's vocabulary (padding rows are never produced by it).
    pub vocab_size: usize,
    /// Maximum sequence length (rows of the position embedding).
    pub n_ctx: usize,
    /// Model width.
    pub n_embd: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Number of attention heads (`n_embd % n_head == 0`).
    pub n_head: usize,
    /// Rows of the role-embedding table; 0 turns role embeddings off.
    pub n_roles: usize,
    /// LayerNorm epsilon (GPT-2: 1e-5).
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// Dropout probability used when training (embeddings, attention,
    /// residual branches). Default 0.
    #[serde(default)]
    pub dropout: f64,
    /// Smeared keys (Olsson et al. 2022, "In-context learning and induction
    /// heads"): each head's key mixes in the previous position's key,
    /// `k'_t = a k_t + (1 - a) k_(t-1)` with `a = sigmoid(theta_head)`
    /// learned (`h.N.attn.smear`, initialised to a = 1/2), no mixing across
    /// a document start. A head can then find "the token after the last
    /// occurrence of this one" in one layer: copying is learned in far fewer
    /// steps. Not GPT-2: `export-hf` writes afm's own transformers class.
    #[serde(default)]
    pub smear_keys: bool,
    /// Smeared token embeddings: the input of position `t` adds the previous
    /// token's embedding scaled per channel, `e_t + g * e_(t-1)` with `g`
    /// learned (`smear_tok.gate`, `[n_embd]`, initialised to 0), nothing
    /// across a document start. With it every position knows the token
    /// before it from the first layer on, so a smeared-key head matches two
    /// tokens, not one: a list's `,` no longer stands for every element
    /// (copying `[168, 4, 96]` needs to know which number the comma
    /// follows). Not GPT-2: `export-hf` writes afm's own transformers class.
    #[serde(default)]
    pub smear_tokens: bool,
}

fn default_eps() -> f64 {
    1e-5
}

impl GptConfig {
    /// A named preset:
    ///
    /// | name          | layers | heads | width | ctx  |
    /// |---------------|--------|-------|-------|------|
    /// | `tiny`        | 2      | 2     | 64    | 128  |
    /// | `mini`        | 4      | 4     | 256   | 256  |
    /// | `gpt2`        | 12     | 12    | 768   | 1024 |
    /// | `gpt2-medium` | 24     | 16    | 1024  | 1024 |
    pub fn preset(name: &str, vocab_size: usize, n_roles: usize) -> anyhow::Result<GptConfig> {
        let (n_layer, n_head, n_embd, n_ctx) = match name {
            "tiny" => (2, 2, 64, 128),
            "mini" => (4, 4, 256, 256),
            "gpt2" => (12, 12, 768, 1024),
            "gpt2-medium" => (24, 16, 1024, 1024),
            _ => {
                anyhow::bail!("unknown model preset {name:?}: use tiny, mini, gpt2 or gpt2-medium")
            }
        };
        let c = GptConfig {
            vocab_size,
            n_ctx,
            n_embd,
            n_layer,
            n_head,
            n_roles,
            layer_norm_epsilon: 1e-5,
            dropout: 0.0,
            smear_keys: false,
            smear_tokens: false,
        };
        c.validate()?;
        Ok(c)
    }

    /// Check the numbers make a model; errors name the field.
    pub fn validate(&self) -> anyhow::Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("n_ctx", self.n_ctx),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
        ];
        for (field, v) in positive {
            if v == 0 {
                anyhow::bail!("model config: {field} must be > 0");
            }
            if v > (1 << 24) {
                anyhow::bail!("model config: {field} = {v} is implausibly large");
            }
        }
        if self.n_roles > (1 << 20) {
            anyhow::bail!(
                "model config: n_roles = {} is implausibly large",
                self.n_roles
            );
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            anyhow::bail!(
                "model config: n_embd ({}) must be divisible by n_head ({})",
                self.n_embd,
                self.n_head
            );
        }
        if !(self.layer_norm_epsilon > 0.0 && self.layer_norm_epsilon < 1.0) {
            anyhow::bail!(
                "model config: layer_norm_epsilon must be in (0, 1), got {}",
                self.layer_norm_epsilon
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            anyhow::bail!(
                "model config: dropout must be in [0, 1), got {}",
                self.dropout
            );
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Number of parameters (embeddings included, LM head tied).
    pub fn n_params(&self) -> usize {
        let (c, l) = (self.n_embd, self.n_layer);
        let per_block = 2 * c
            + (c * 3 * c + 3 * c)
            + (c * c + c)
            + 2 * c
            + (c * 4 * c + 4 * c)
            + (4 * c * c + c);
        let smear = if self.smear_keys { self.n_head } else { 0 };
        let smear_tok = if self.smear_tokens { c } else { 0 };
        self.vocab_size * c
            + self.n_ctx * c
            + self.n_roles * c
            + l * (per_block + smear)
            + 2 * c
            + smear_tok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn presets_and_validation() {
        let g = GptConfig::preset("gpt2", 50257, 0).unwrap();
        assert_eq!(g.n_params(), 124_439_808);
        assert!(GptConfig::preset("huge", 10, 0).is_err());
        let mut c = GptConfig::preset("tiny", 100, 4).unwrap();
        c.n_head = 3;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("n_head"), "{e}");
        c.n_head = 2;
        c.n_layer = 0;
        assert!(c.validate().unwrap_err().to_string().contains("n_layer"));
    }
}
