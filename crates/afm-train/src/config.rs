//! [`TrainConfig`]: every knob of a training run, read from TOML (unknown
//! fields are errors), overridden by CLI flags, validated with messages that
//! name the field, and saved with every checkpoint.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which divergence the distillation term uses (all computed at temperature
/// `T` and scaled by `T^2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Divergence {
    /// `KL(teacher || student)`: mode-covering, the classic Hinton loss.
    #[default]
    Forward,
    /// `KL(student || teacher)`: mode-seeking.
    Reverse,
    /// Generalised Jensen-Shannon with mixture weight `jsd_beta`:
    /// `b*KL(t||m) + (1-b)*KL(s||m)`, `m = b*t + (1-b)*s`.
    Jsd,
}

impl std::str::FromStr for Divergence {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "forward" | "kl" => Ok(Self::Forward),
            "reverse" | "rkl" => Ok(Self::Reverse),
            "jsd" => Ok(Self::Jsd),
            _ => Err(format!(
                "unknown divergence {s:?}: use forward, reverse or jsd"
            )),
        }
    }
}

/// Which weights land in `RUN/final/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FinalWeights {
    /// The checkpoint with the lowest validation loss (the last weights when
    /// there is no validation split).
    #[default]
    Best,
    /// The weights at the last step.
    Last,
}

impl std::str::FromStr for FinalWeights {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "best" => Ok(Self::Best),
            "last" => Ok(Self::Last),
            _ => Err(format!("unknown final weights {s:?}: use best or last")),
        }
    }
}

/// Loss shaping and distillation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Weight of cross-entropy on tokens that have a teacher.
    pub alpha: f64,
    /// Weight of the distillation divergence on tokens that have a teacher.
    /// Tokens whose owner has no teacher always get plain CE (weight 1).
    pub beta: f64,
    /// Distillation temperature `T` (> 0); the divergence is scaled by `T^2`.
    pub temperature: f64,
    /// forward, reverse or jsd.
    pub divergence: Divergence,
    /// Mixture weight of the JSD, in (0, 1).
    pub jsd_beta: f64,
    /// Multiplier on the loss weight of targets that are markers
    /// (`<|agent:X|>`, `<|obs|>`, `<|end|>`). 1 = off.
    pub role_token_weight: f64,
    /// Number of targets after each agent hand-off (the input token is
    /// `<|agent:X|>`) whose weight is multiplied by `handoff_weight`. 0 = off.
    pub handoff_tokens: usize,
    /// Multiplier for those first `handoff_tokens` targets.
    pub handoff_weight: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            alpha: 0.5,
            beta: 0.5,
            temperature: 2.0,
            divergence: Divergence::Forward,
            jsd_beta: 0.5,
            role_token_weight: 1.0,
            handoff_tokens: 0,
            handoff_weight: 1.0,
        }
    }
}

/// AdamW and the learning-rate schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Floor of the cosine decay.
    pub min_lr: f64,
    /// Linear warm-up steps (from 0 to `lr`).
    pub warmup_steps: usize,
    /// Decoupled weight decay (not applied to biases, LayerNorms, embeddings).
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm clip; 0 = off.
    pub grad_clip: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 3e-4,
            min_lr: 3e-5,
            warmup_steps: 100,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
        }
    }
}

/// Overrides of a fresh preset model's shape (0 keeps the preset's value).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShapeConfig {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    /// Context length (rows of the position embedding).
    pub n_ctx: usize,
    /// Smeared keys (`afm_model::GptConfig::smear_keys`; false keeps the
    /// preset's GPT-2 attention).
    pub smear_keys: bool,
    /// Smeared token embeddings (`afm_model::GptConfig::smear_tokens`).
    pub smear_tokens: bool,
}

impl ShapeConfig {
    /// `g` with the overrides applied (validated by the caller).
    pub fn apply(&self, mut g: afm_model::GptConfig) -> afm_model::GptConfig {
        for (over, field) in [
            (self.n_layer, &mut g.n_layer),
            (self.n_head, &mut g.n_head),
            (self.n_embd, &mut g.n_embd),
            (self.n_ctx, &mut g.n_ctx),
        ] {
            if over > 0 {
                *field = over;
            }
        }
        g.smear_keys |= self.smear_keys;
        g.smear_tokens |= self.smear_tokens;
        g
    }
}

/// A training run. `Default` gives sensible values for everything except
/// `data`, `out` and the model source (`init` or `preset`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Prepared dataset directory (`train.*`, `val.*`, `vocab.json`).
    pub data: PathBuf,
    /// Run directory (checkpoints, metrics, plots, `final/`).
    pub out: PathBuf,
    /// Start from this checkpoint (vocabulary extended to the data's).
    pub init: Option<PathBuf>,
    /// Or create a fresh model from this preset (tiny, mini, gpt2, gpt2-medium).
    pub preset: Option<String>,
    /// Shape overrides of a fresh preset model (ignored with `init`).
    pub shape: ShapeConfig,
    /// Dropout of a fresh preset model (ignored with `init`).
    pub dropout: f64,
    /// Agent-role embeddings in a fresh preset model (off: the model sees
    /// only the role tokens; for ablations). Ignored with `init`.
    pub role_embeddings: bool,
    /// Per-agent teachers: agent name -> checkpoint directory.
    pub teachers: BTreeMap<String, PathBuf>,
    /// With teachers: > 0 runs them once before training and distils from
    /// their cached top-k logits (`RUN/teacher_cache/`, forward KL only);
    /// 0 runs them at every step.
    pub teacher_top_k: usize,
    /// Seed of everything random (init, data order, dropout).
    pub seed: u64,
    /// cpu, cuda, cuda:N or auto.
    pub device: String,
    /// bf16 mixed precision (fp32 master weights and moments).
    pub bf16: bool,
    /// libtorch CPU threads (0 = libtorch's default). On a busy machine 1
    /// is often fastest for small models (no OpenMP spin-waiting).
    pub threads: usize,
    /// Optimiser steps; 0 = derived from `epochs`.
    pub max_steps: usize,
    /// Passes over the train split when `max_steps` is 0.
    pub epochs: usize,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// Validate every N steps (0 = only at the end).
    pub eval_interval: usize,
    /// At most this many validation batches per evaluation (0 = all rows):
    /// a fixed sample of rows that covers every agent (`val_sample`), the
    /// same in every evaluation and every run on the same data.
    pub eval_batches: usize,
    /// Checkpoint every N steps (0 = at evaluations and at the end only).
    pub checkpoint_interval: usize,
    /// Step checkpoints to keep (the best is kept in addition).
    pub keep_last: usize,
    /// Weight snapshots for learning curves: with n > 1, the weights are
    /// saved to `RUN/snapshots/K-of-N/` when the run is K/N done (K = 1 ..
    /// N-1; by the time budget, or by steps without one), with the step and
    /// training seconds in `snapshot.json`. 0 = off.
    pub snapshots: usize,
    /// Stop after this many evaluations without improvement (0 = off).
    pub patience: usize,
    /// Minimum decrease of validation loss that counts as improvement.
    pub min_delta: f64,
    /// Wall-clock training budget of the run, e.g. "10m", "90s", "1h30m":
    /// the time of every invocation counts (a resumed run continues where
    /// the last one stopped), and the learning rate's cosine decay spans it
    /// (reaching `optim.min_lr` when it ends) unless `max_steps`/`epochs`
    /// end the run sooner.
    pub time_budget: Option<String>,
    /// Log a train record every N steps.
    pub log_interval: usize,
    /// Continue from the latest checkpoint in `out`.
    pub resume: bool,
    /// Which weights `final/` gets.
    pub final_weights: FinalWeights,
    /// The validation loss that picks the best weights and counts
    /// patience: this agent's own (a per-agent model whose data also
    /// trains on the other agents' turns), or the total when unset.
    pub best_of: Option<String>,
    /// Draw PNG loss curves.
    pub plots: bool,
    /// Show a progress bar (only drawn on a terminal).
    pub progress: bool,
    pub optim: OptimConfig,
    pub loss: LossConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::new(),
            out: PathBuf::new(),
            init: None,
            preset: None,
            shape: ShapeConfig::default(),
            dropout: 0.0,
            role_embeddings: true,
            teachers: BTreeMap::new(),
            teacher_top_k: 0,
            seed: 0,
            device: "cpu".into(),
            bf16: false,
            threads: 0,
            max_steps: 0,
            epochs: 1,
            batch_size: 8,
            grad_accum: 1,
            eval_interval: 100,
            eval_batches: 0,
            checkpoint_interval: 0,
            keep_last: 2,
            snapshots: 0,
            patience: 0,
            min_delta: 0.0,
            time_budget: None,
            log_interval: 10,
            resume: false,
            final_weights: FinalWeights::Best,
            best_of: None,
            plots: true,
            progress: true,
            optim: OptimConfig::default(),
            loss: LossConfig::default(),
        }
    }
}

/// A rejected configuration value.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("train config: {field}: {message}")]
pub struct ConfigError {
    /// Dotted field name (`optim.lr`).
    pub field: String,
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        message: message.into(),
    }
}

impl TrainConfig {
    /// Parse TOML text (unknown fields are errors). `origin` names the file
    /// in messages.
    pub fn from_toml_str(text: &str, origin: &str) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))
    }

    /// Read a TOML file.
    pub fn from_toml_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// TOML text of this config.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// The time budget in seconds, if any.
    pub fn time_budget_secs(&self) -> Result<Option<f64>, ConfigError> {
        match &self.time_budget {
            None => Ok(None),
            Some(s) => parse_duration(s)
                .map(Some)
                .map_err(|m| bad("time_budget", m)),
        }
    }

    /// Check every value; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data.as_os_str().is_empty() {
            return Err(bad("data", "missing (the prepared dataset directory)"));
        }
        if self.out.as_os_str().is_empty() {
            return Err(bad("out", "missing (the run directory)"));
        }
        match (&self.init, &self.preset) {
            (None, None) if !self.resume => {
                return Err(bad(
                    "preset",
                    "give a model: `init` (a checkpoint) or `preset`",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(bad("init", "`init` and `preset` are exclusive: give one"))
            }
            _ => {}
        }
        if let Some(p) = &self.preset {
            if !["tiny", "mini", "gpt2", "gpt2-medium"].contains(&p.as_str()) {
                return Err(bad(
                    "preset",
                    format!("unknown preset {p:?}: use tiny, mini, gpt2 or gpt2-medium"),
                ));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(bad("dropout", format!("{} is not in [0, 1)", self.dropout)));
        }
        for (agent, dir) in &self.teachers {
            if agent.is_empty() {
                return Err(bad("teachers", "empty agent name"));
            }
            if dir.as_os_str().is_empty() {
                return Err(bad(&format!("teachers.{agent}"), "empty checkpoint path"));
            }
        }
        if self.teacher_top_k > 0 && self.loss.divergence != Divergence::Forward {
            return Err(bad(
                "teacher_top_k",
                "the top-k teacher cache supports only loss.divergence = \"forward\"",
            ));
        }
        let positive = [
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("log_interval", self.log_interval),
        ];
        for (f, v) in positive {
            if v == 0 {
                return Err(bad(f, "must be >= 1"));
            }
        }
        if self.max_steps == 0 && self.epochs == 0 {
            return Err(bad("epochs", "must be >= 1 when max_steps is 0"));
        }
        if self.keep_last == 0 {
            return Err(bad(
                "keep_last",
                "must be >= 1 (the latest checkpoint is needed to resume)",
            ));
        }
        if !(self.min_delta >= 0.0 && self.min_delta.is_finite()) {
            return Err(bad(
                "min_delta",
                format!("{} must be finite and >= 0", self.min_delta),
            ));
        }
        self.time_budget_secs()?;
        if let Some(t) = self.time_budget_secs()? {
            if t <= 0.0 {
                return Err(bad("time_budget", "must be > 0"));
            }
        }
        // Validate the device spelling without touching CUDA.
        let d = self.device.to_ascii_lowercase();
        let ok = d == "cpu"
            || d == "auto"
            || d == "cuda"
            || d.strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<usize>().is_ok());
        if !ok {
            return Err(bad(
                "device",
                format!("{:?}: use cpu, cuda, cuda:N or auto", self.device),
            ));
        }
        let o = &self.optim;
        let finite_pos = |f: &str, v: f64| -> Result<(), ConfigError> {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(f, format!("{v} must be finite and > 0")));
            }
            Ok(())
        };
        finite_pos("optim.lr", o.lr)?;
        finite_pos("optim.eps", o.eps)?;
        if !(o.min_lr.is_finite() && o.min_lr >= 0.0 && o.min_lr <= o.lr) {
            return Err(bad(
                "optim.min_lr",
                format!("{} must be in [0, optim.lr = {}]", o.min_lr, o.lr),
            ));
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return Err(bad(
                "optim.weight_decay",
                format!("{} must be >= 0", o.weight_decay),
            ));
        }
        for (f, v) in [("optim.beta1", o.beta1), ("optim.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(bad(f, format!("{v} is not in [0, 1)")));
            }
        }
        if !(o.grad_clip.is_finite() && o.grad_clip >= 0.0) {
            return Err(bad(
                "optim.grad_clip",
                format!("{} must be >= 0 (0 = off)", o.grad_clip),
            ));
        }
        let l = &self.loss;
        for (f, v) in [("loss.alpha", l.alpha), ("loss.beta", l.beta)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(bad(f, format!("{v} must be finite and >= 0")));
            }
        }
        if !self.teachers.is_empty() && l.alpha == 0.0 && l.beta == 0.0 {
            return Err(bad(
                "loss.beta",
                "alpha and beta are both 0: taught tokens would carry no loss",
            ));
        }
        finite_pos("loss.temperature", l.temperature)?;
        if !(l.jsd_beta > 0.0 && l.jsd_beta < 1.0) {
            return Err(bad(
                "loss.jsd_beta",
                format!("{} is not in (0, 1)", l.jsd_beta),
            ));
        }
        finite_pos("loss.role_token_weight", l.role_token_weight)?;
        finite_pos("loss.handoff_weight", l.handoff_weight)?;
        Ok(())
    }
}

/// Parse "10m", "90s", "1h30m", "2.5h" or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<f64, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(v) = s.parse::<f64>() {
        return if v.is_finite() {
            Ok(v)
        } else {
            Err(format!("{text:?} is not a duration"))
        };
    }
    let mut total = 0.0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1.0,
            'm' => 60.0,
            'h' => 3600.0,
            'd' => 86400.0,
            _ => {
                return Err(format!(
                    "{text:?}: unknown unit {c:?} (use s, m, h, d, e.g. 10m or 1h30m)"
                ))
            }
        };
        let v: f64 = num
            .parse()
            .map_err(|_| format!("{text:?} is not a duration (e.g. 10m, 90s, 1h30m)"))?;
        total += v * unit;
        num.clear();
    }
    if !num.is_empty() {
        return Err(format!(
            "{text:?}: number {num:?} has no unit (e.g. 10m, 90s, 1h30m)"
        ));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_config() -> TrainConfig {
        TrainConfig {
            data: "d".into(),
            out: "o".into(),
            preset: Some("tiny".into()),
            ..Default::default()
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m").unwrap(), 600.0);
        assert_eq!(parse_duration("1h30m").unwrap(), 5400.0);
        assert_eq!(parse_duration("90").unwrap(), 90.0);
        assert_eq!(parse_duration("2.5s").unwrap(), 2.5);
        assert!(parse_duration("10x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("10m5").is_err());
    }

    #[test]
    fn bad_values_name_the_field() {
        assert!(ok_config().validate().is_ok());
        type Case = (Box<dyn Fn(&mut TrainConfig)>, &'static str);
        let cases: Vec<Case> = vec![
            (Box::new(|c| c.optim.lr = -1.0), "optim.lr"),
            (Box::new(|c| c.optim.lr = f64::NAN), "optim.lr"),
            (Box::new(|c| c.optim.min_lr = 1.0), "optim.min_lr"),
            (Box::new(|c| c.optim.beta2 = 1.0), "optim.beta2"),
            (Box::new(|c| c.batch_size = 0), "batch_size"),
            (Box::new(|c| c.grad_accum = 0), "grad_accum"),
            (Box::new(|c| c.loss.temperature = 0.0), "loss.temperature"),
            (Box::new(|c| c.loss.jsd_beta = 1.0), "loss.jsd_beta"),
            (Box::new(|c| c.loss.alpha = -0.1), "loss.alpha"),
            (
                Box::new(|c| c.time_budget = Some("ten minutes".into())),
                "time_budget",
            ),
            (Box::new(|c| c.device = "tpu".into()), "device"),
            (Box::new(|c| c.preset = Some("huge".into())), "preset"),
            (Box::new(|c| c.preset = None), "preset"),
            (Box::new(|c| c.init = Some("x".into())), "init"),
            (Box::new(|c| c.dropout = 1.5), "dropout"),
            (Box::new(|c| c.keep_last = 0), "keep_last"),
            (
                Box::new(|c| {
                    c.max_steps = 0;
                    c.epochs = 0
                }),
                "epochs",
            ),
        ];
        for (f, field) in cases {
            let mut c = ok_config();
            f(&mut c);
            let e = c.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().contains(field), "{e}");
        }
    }

    #[test]
    fn toml_round_trip_and_unknown_fields() {
        let c = ok_config();
        let back = TrainConfig::from_toml_str(&c.to_toml().unwrap(), "x.toml").unwrap();
        assert_eq!(back, c);
        let e = TrainConfig::from_toml_str("[optim]\nlearning_rate = 1.0\n", "cfg.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cfg.toml") && e.contains("learning_rate"), "{e}");
        let e = TrainConfig::from_toml_str("batch_size = \"eight\"\n", "cfg.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_size"), "{e}");
        let e = TrainConfig::from_toml_str("[loss]\ndivergence = \"kl2\"\n", "cfg.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("divergence") || e.contains("kl2"), "{e}");
        let c = TrainConfig::from_toml_str(
            "data = \"d\"\nout = \"o\"\npreset = \"tiny\"\n[teachers]\nCoder = \"ck/coder\"\n[loss]\ndivergence = \"jsd\"\n",
            "cfg.toml",
        )
        .unwrap();
        assert_eq!(c.loss.divergence, Divergence::Jsd);
        assert_eq!(c.teachers["Coder"], PathBuf::from("ck/coder"));
    }
}
