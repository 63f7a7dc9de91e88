//! Hugging Face GPT-2 interop.
//!
//! Import reads a `transformers` GPT-2 directory (`config.json` +
//! `model.safetensors`): names with or without the `transformer.` prefix,
//! `Conv1D` weights `[in, out]` (afm keeps that layout, so no transpose),
//! `attn.bias` / `attn.masked_bias` buffers ignored, `lm_head.weight`
//! checked to be tied to `wte`. F16/BF16 files are widened to f32.
//!
//! Export is exact, in one of two forms:
//!
//! - **Plain GPT-2** (`model_type: "gpt2"`) when the model is one: the full
//!   GPT-2 vocabulary, no smeared keys or tokens, and no role table or an
//!   all-zero one. `GPT2LMHeadModel.from_pretrained` loads it (and vLLM
//!   serves it as is). The zero role table and the role vocabulary travel
//!   beside it (`afm_role_emb.safetensors`, `afm_vocab.json`) so re-import
//!   is bit-exact.
//! - **afm's own class** (`model_type: "afm_gpt"`) otherwise: every weight
//!   under GPT-2's names plus `transformer.role_emb.weight`,
//!   `transformer.smear_tok.gate` and `transformer.h.N.attn.smear`, a
//!   `config.json` with an `auto_map`, and the two Python files of the class
//!   (`configuration_afm.py`, `modeling_afm.py`, from
//!   `python/afm_dist/afm_dist/`), so
//!   `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`
//!   runs the very model afm trained: role embeddings (given or derived
//!   from the tokens), smeared keys and tokens, and a corpus vocabulary read
//!   and scored in afm's id space. `cargo xtask test` checks the logits
//!   against afm's (crates/afm-cli/tests/dist.rs).

use crate::model::{replace_dir, sibling};
use crate::{st, Gpt, GptConfig, Model};
use afm_tokenizer::{RoleVocab, Tokenizer, GPT2_VOCAB};
use anyhow::{bail, Context};
use serde::Deserialize;
use std::path::Path;
use tch::{nn, Device, Tensor};

/// HF weights file.
pub const HF_WEIGHTS: &str = "model.safetensors";
/// HF config file.
pub const HF_CONFIG: &str = "config.json";
/// Role table written beside an export.
pub const AFM_ROLE_EMB: &str = "afm_role_emb.safetensors";
/// Role vocabulary written beside an export.
pub const AFM_VOCAB: &str = "afm_vocab.json";
/// `model_type` of afm's transformers class.
pub const AFM_MODEL_TYPE: &str = "afm_gpt";
/// afm's transformers class: its configuration and its model, written into
/// every `afm_gpt` export (one source: the afm_dist package).
const AFM_PY: [(&str, &str); 2] = [
    (
        "configuration_afm.py",
        include_str!("../../../python/afm_dist/afm_dist/configuration_afm.py"),
    ),
    (
        "modeling_afm.py",
        include_str!("../../../python/afm_dist/afm_dist/modeling_afm.py"),
    ),
];
/// The logit afm's class gives an id without a row (probability 0 in f32).
const MISSING_LOGIT: f64 = -1.0e4;

#[derive(Deserialize)]
struct AfmHfConfig {
    n_rows: usize,
    n_positions: usize,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    n_roles: usize,
    layer_norm_epsilon: f64,
    smear_keys: bool,
    smear_tokens: bool,
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    vocab_size: usize,
    n_positions: Option<usize>,
    n_ctx: Option<usize>,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    n_inner: Option<usize>,
    activation_function: Option<String>,
    layer_norm_epsilon: Option<f64>,
    scale_attn_weights: Option<bool>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
    add_cross_attention: Option<bool>,
}

/// Read an HF `config.json` as a [`GptConfig`]: GPT-2's (role embeddings
/// off; architecture variants afm does not implement are errors) or afm's
/// own class's (`model_type: "afm_gpt"`, as written by [`Model::export_hf`]).
pub fn read_config(dir: &Path) -> anyhow::Result<GptConfig> {
    let path = dir.join(HF_CONFIG);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let c: HfConfig = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a GPT-2 config", path.display()))?;
    let bad =
        |field: &str, why: String| anyhow::anyhow!("{}: field {field}: {why}", path.display());
    if c.model_type.as_deref() == Some(AFM_MODEL_TYPE) {
        let a: AfmHfConfig = serde_json::from_str(&text)
            .with_context(|| format!("{}: not an {AFM_MODEL_TYPE} config", path.display()))?;
        let cfg = GptConfig {
            vocab_size: a.n_rows,
            n_ctx: a.n_positions,
            n_embd: a.n_embd,
            n_layer: a.n_layer,
            n_head: a.n_head,
            n_roles: a.n_roles,
            layer_norm_epsilon: a.layer_norm_epsilon,
            dropout: 0.0,
            smear_keys: a.smear_keys,
            smear_tokens: a.smear_tokens,
        };
        cfg.validate()
            .with_context(|| format!("{}", path.display()))?;
        return Ok(cfg);
    }
    if let Some(t) = &c.model_type {
        if t != "gpt2" {
            return Err(bad("model_type", format!("{t:?} is not \"gpt2\"")));
        }
    }
    let act = c.activation_function.as_deref().unwrap_or("gelu_new");
    if !matches!(act, "gelu_new" | "gelu_pytorch_tanh") {
        return Err(bad(
            "activation_function",
            format!("{act:?} unsupported (afm uses GELU-tanh)"),
        ));
    }
    if let Some(n) = c.n_inner {
        if n != 4 * c.n_embd {
            return Err(bad(
                "n_inner",
                format!("{n} unsupported (afm uses 4 * n_embd)"),
            ));
        }
    }
    if c.scale_attn_weights == Some(false) {
        return Err(bad("scale_attn_weights", "false is unsupported".into()));
    }
    if c.scale_attn_by_inverse_layer_idx == Some(true) {
        return Err(bad(
            "scale_attn_by_inverse_layer_idx",
            "true is unsupported".into(),
        ));
    }
    if c.add_cross_attention == Some(true) {
        return Err(bad("add_cross_attention", "true is unsupported".into()));
    }
    let n_ctx = c
        .n_positions
        .or(c.n_ctx)
        .ok_or_else(|| bad("n_positions", "missing".into()))?;
    let cfg = GptConfig {
        vocab_size: c.vocab_size,
        n_ctx,
        n_embd: c.n_embd,
        n_layer: c.n_layer,
        n_head: c.n_head,
        n_roles: 0,
        layer_norm_epsilon: c.layer_norm_epsilon.unwrap_or(1e-5),
        dropout: 0.0,
        smear_keys: false,
        smear_tokens: false,
    };
    cfg.validate()
        .with_context(|| format!("{}", path.display()))?;
    Ok(cfg)
}

/// A GPT imported as-is from an HF directory (any vocabulary size; no
/// tokenizer attached). [`Model::import_hf`] builds a full model from it.
pub struct HfGpt {
    pub vs: nn::VarStore,
    pub gpt: Gpt,
    pub config: GptConfig,
}

/// HF tensors renamed to afm names, buffers dropped, tied head checked.
fn read_hf_tensors(dir: &Path) -> anyhow::Result<Vec<(String, Tensor)>> {
    let path = dir.join(HF_WEIGHTS);
    if !path.exists() {
        if dir.join("model.safetensors.index.json").exists()
            || dir.join("pytorch_model.bin").exists()
        {
            bail!("{}: only a single model.safetensors file is supported (not sharded or .bin checkpoints)", dir.display());
        }
        bail!("{}: no {HF_WEIGHTS}", dir.display());
    }
    let mut out = Vec::new();
    let mut lm_head = None;
    for (name, t) in st::read(&path, Device::Cpu)? {
        let n = name
            .strip_prefix("transformer.")
            .unwrap_or(&name)
            .to_string();
        if n.ends_with(".attn.bias") || n.ends_with(".attn.masked_bias") {
            continue;
        }
        if n == "lm_head.weight" {
            lm_head = Some(t);
            continue;
        }
        out.push((n, t));
    }
    if let Some(head) = lm_head {
        let wte = out.iter().find(|(n, _)| n == "wte.weight").map(|x| &x.1);
        if let Some(wte) = wte {
            if wte.size() != head.size() || !wte.equal(&head) {
                bail!(
                    "{}: lm_head.weight differs from wte.weight (afm needs a tied LM head)",
                    path.display()
                );
            }
        }
    }
    Ok(out)
}

/// Import an HF GPT-2 directory exactly (role embeddings off).
pub fn import_gpt(dir: &Path, device: Device) -> anyhow::Result<HfGpt> {
    let config = read_config(dir)?;
    crate::model::check_size(&config, &dir.join(HF_WEIGHTS))?;
    let tensors = read_hf_tensors(dir)?;
    let mut m = Model::build(config.clone(), Tokenizer::gpt2(), device, None);
    m.assign(tensors, &dir.join(HF_WEIGHTS))?;
    Ok(HfGpt {
        vs: m.vs,
        gpt: m.gpt,
        config,
    })
}

fn hf_config_json(c: &GptConfig) -> serde_json::Value {
    let mut v = serde_json::json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_positions": c.n_ctx,
        "n_ctx": c.n_ctx,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": null,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": c.layer_norm_epsilon,
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": true,
        "tie_word_embeddings": true,
        "use_cache": true,
        "torch_dtype": "float32",
    });
    if c.vocab_size > afm_tokenizer::EOT as usize {
        v["bos_token_id"] = afm_tokenizer::EOT.into();
        v["eos_token_id"] = afm_tokenizer::EOT.into();
    }
    v
}

fn afm_config_json(c: &GptConfig, tok: &Tokenizer) -> serde_json::Value {
    // The id space: GPT-2's ids up to the specials, then one id per row
    // after the kept BPE rows (specials, agents, any padding rows).
    let (vocab_size, corpus) = match tok.corpus() {
        Some(k) => (
            afm_tokenizer::EOT as usize + c.vocab_size - k.n_bpe(),
            serde_json::json!(k.kept()),
        ),
        None => (c.vocab_size, serde_json::Value::Null),
    };
    serde_json::json!({
        "architectures": ["AfmForCausalLM"],
        "model_type": AFM_MODEL_TYPE,
        "auto_map": {
            "AutoConfig": "configuration_afm.AfmConfig",
            "AutoModelForCausalLM": "modeling_afm.AfmForCausalLM",
        },
        "vocab_size": vocab_size,
        "n_rows": c.vocab_size,
        "n_positions": c.n_ctx,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_roles": c.n_roles,
        "layer_norm_epsilon": c.layer_norm_epsilon,
        "smear_keys": c.smear_keys,
        "smear_tokens": c.smear_tokens,
        "corpus_ids": corpus,
        "agents": tok.roles().agents(),
        "missing_logit": MISSING_LOGIT,
        "tie_word_embeddings": true,
        "use_cache": false,
        "bos_token_id": afm_tokenizer::EOT,
        "eos_token_id": afm_tokenizer::END,
        "torch_dtype": "float32",
    })
}

/// How [`export`] writes a model.
pub enum ExportKind {
    /// Transformers' `GPT2LMHeadModel`; the role table (if any) beside it.
    Gpt2,
    /// afm's own class (`afm_gpt`), every weight in `model.safetensors`.
    Afm,
}

/// Write `params` (afm names) as an HF directory at `dir` (atomically);
/// see the module docs for the two kinds. `vocab` goes to `afm_vocab.json`
/// (required for [`ExportKind::Afm`]).
pub fn export(
    params: &[(String, Tensor)],
    config: &GptConfig,
    vocab: Option<&Tokenizer>,
    kind: ExportKind,
    dir: &Path,
) -> anyhow::Result<()> {
    let tmp = sibling(dir, "tmp")?;
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let res = (|| {
        let mut hf = Vec::new();
        let mut roles = Vec::new();
        for (n, t) in params {
            if n == "role_emb.weight" && matches!(kind, ExportKind::Gpt2) {
                roles.push((n.clone(), t.shallow_clone()));
            } else {
                hf.push((format!("transformer.{n}"), t.shallow_clone()));
            }
        }
        st::write(&tmp.join(HF_WEIGHTS), &hf)?;
        if !roles.is_empty() {
            st::write(&tmp.join(AFM_ROLE_EMB), &roles)?;
        }
        let json = match kind {
            ExportKind::Gpt2 => hf_config_json(config),
            ExportKind::Afm => {
                let tok = vocab.context("an afm_gpt export needs the model's vocabulary")?;
                for (name, text) in AFM_PY {
                    std::fs::write(tmp.join(name), text)?;
                }
                afm_config_json(config, tok)
            }
        };
        std::fs::write(tmp.join(HF_CONFIG), serde_json::to_string_pretty(&json)?)?;
        if let Some(t) = vocab {
            std::fs::write(tmp.join(AFM_VOCAB), t.to_json())?;
        }
        replace_dir(&tmp, dir)
    })();
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    res.with_context(|| format!("exporting to {}", dir.display()))
}

/// `base` with `extra_agents` added to its role vocabulary (the
/// vocabulary an import extends the model to).
fn with_agents(base: &Tokenizer, extra_agents: &[String]) -> anyhow::Result<Tokenizer> {
    let mut t = base.clone();
    for a in extra_agents {
        t.roles_mut()
            .insert(a)
            .with_context(|| format!("agent role {a:?}"))?;
    }
    Ok(t)
}

/// True when `dir`'s `config.json` names afm's own class.
fn is_afm_export(dir: &Path) -> anyhow::Result<bool> {
    let path = dir.join(HF_CONFIG);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
    Ok(v["model_type"] == AFM_MODEL_TYPE)
}

/// Import an `afm_gpt` directory (written by [`Model::export_hf`] or saved
/// by afm_dist): every weight from `model.safetensors`, the vocabulary
/// (corpus and agents) from `afm_vocab.json`.
fn import_afm(
    dir: &Path,
    config: GptConfig,
    extra_agents: &[String],
    device: Device,
) -> anyhow::Result<Model> {
    let voc_path = dir.join(AFM_VOCAB);
    let text = std::fs::read_to_string(&voc_path).with_context(|| {
        format!(
            "reading {} (an {AFM_MODEL_TYPE} export carries its vocabulary there)",
            voc_path.display()
        )
    })?;
    let base = Tokenizer::from_json(&text).with_context(|| format!("{}", voc_path.display()))?;
    if base.n_vocab() > config.vocab_size {
        bail!(
            "{}: the vocabulary has {} rows but {} says n_rows = {}",
            voc_path.display(),
            base.n_vocab(),
            dir.join(HF_CONFIG).display(),
            config.vocab_size
        );
    }
    let tokenizer = with_agents(&base, extra_agents)?;
    crate::model::check_size(&config, &dir.join(HF_WEIGHTS))?;
    let tensors = read_hf_tensors(dir)?;
    let mut m = Model::build(config, base, device, None);
    m.assign(tensors, &dir.join(HF_WEIGHTS))?;
    m.extend_vocab(tokenizer)?;
    Ok(m)
}

impl Model {
    /// Import an HF GPT-2 directory as an afm model: role embeddings on
    /// (zero rows, so it behaves exactly like the HF model at first), the
    /// vocabulary extended with afm's special tokens and `extra_agents`
    /// (new `wte` rows = mean of GPT-2's rows). A directory exported by afm
    /// keeps its role table and role vocabulary (`afm_*` side files).
    pub fn import_hf(dir: &Path, extra_agents: &[String], device: Device) -> anyhow::Result<Model> {
        let mut config = read_config(dir)?;
        if is_afm_export(dir)? {
            return import_afm(dir, config, extra_agents, device);
        }
        if config.vocab_size < GPT2_VOCAB {
            bail!(
                "{}: vocab_size {} is smaller than GPT-2's {GPT2_VOCAB}: not a GPT-2 BPE model",
                dir.join(HF_CONFIG).display(),
                config.vocab_size
            );
        }
        let voc_path = dir.join(AFM_VOCAB);
        let mut tokenizer = if voc_path.exists() {
            let text = std::fs::read_to_string(&voc_path)
                .with_context(|| format!("reading {}", voc_path.display()))?;
            Tokenizer::from_json(&text).with_context(|| format!("{}", voc_path.display()))?
        } else {
            Tokenizer::new(RoleVocab::new())
        };
        let base = tokenizer.clone();
        tokenizer = with_agents(&base, extra_agents)?;
        crate::model::check_size(&config, &dir.join(HF_WEIGHTS))?;
        let mut tensors = read_hf_tensors(dir)?;
        let roles_path = dir.join(AFM_ROLE_EMB);
        if roles_path.exists() {
            let r = st::read(&roles_path, Device::Cpu)?;
            match r.as_slice() {
                [(n, t)] if n == "role_emb.weight" && t.dim() == 2 => {
                    config.n_roles = t.size()[0] as usize;
                }
                _ => bail!(
                    "{}: expected one tensor role_emb.weight [n_roles, n_embd]",
                    roles_path.display()
                ),
            }
            tensors.extend(r);
        } else {
            config.n_roles = base.roles().n_roles();
            let zeros = Tensor::zeros(
                [config.n_roles as i64, config.n_embd as i64],
                (tch::Kind::Float, Device::Cpu),
            );
            tensors.push(("role_emb.weight".into(), zeros));
        }
        let mut m = Model::build(config, base, device, None);
        m.assign(tensors, &dir.join(HF_WEIGHTS))?;
        m.extend_vocab(tokenizer)?;
        Ok(m)
    }

    /// Export exactly (see the module docs): as plain GPT-2 when
    /// [`Model::is_plain_gpt2`], else as afm's own transformers class.
    pub fn export_hf(&self, dir: &Path) -> anyhow::Result<()> {
        let kind = if self.is_plain_gpt2() {
            ExportKind::Gpt2
        } else {
            ExportKind::Afm
        };
        export(
            &self.named_parameters(),
            &self.config,
            Some(&self.tokenizer),
            kind,
            dir,
        )
    }

    /// True when transformers' own GPT-2 computes exactly this model: the
    /// full GPT-2 vocabulary, no smeared keys or tokens, no role table or
    /// an all-zero one.
    pub fn is_plain_gpt2(&self) -> bool {
        self.tokenizer.corpus().is_none()
            && !self.config.smear_keys
            && !self.config.smear_tokens
            && !self.uses_role_embeddings()
    }

    /// True when the role table has any non-zero entry (HF would ignore it).
    pub fn uses_role_embeddings(&self) -> bool {
        self.gpt
            .role_emb()
            .map(|t| t.abs().max().double_value(&[]) > 0.0)
            .unwrap_or(false)
    }
}
