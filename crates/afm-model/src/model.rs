//! [`Model`]: a [`Gpt`] with its parameters, config and tokenizer, and the
//! checkpoint directory format.
//!
//! Checkpoint layout (a directory):
//!
//! | file                | content                                          |
//! |---------------------|--------------------------------------------------|
//! | `model.safetensors` | every parameter, F32, HF GPT-2 names (no prefix) |
//! | `config.json`       | [`GptConfig`]                                    |
//! | `vocab.json`        | the tokenizer's `VocabFile` (`Tokenizer::to_json`) |
//!
//! Saving writes a temporary directory next to the target and renames it
//! into place, so a reader never sees a half-written checkpoint.

use crate::{st, Gpt, GptConfig};
use afm_tokenizer::Tokenizer;
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

/// Weights file of a checkpoint directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Config file of a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";
/// Vocabulary file of a checkpoint directory.
pub const VOCAB_FILE: &str = "vocab.json";

/// A GPT with its variables, configuration and tokenizer.
pub struct Model {
    /// Owns the (f32, trainable) parameters.
    pub vs: nn::VarStore,
    /// The network.
    pub gpt: Gpt,
    /// Its configuration (kept equal to `gpt.config()`).
    pub config: GptConfig,
    /// The tokenizer (role vocabulary) the model was built for.
    pub tokenizer: Tokenizer,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .field("tokenizer", &self.tokenizer)
            .finish()
    }
}

/// Whether AdamW weight decay applies to parameter `name`: only the four
/// matmul weights of each block; never biases, LayerNorms or embeddings
/// (`wte` is the tied LM head, `wpe`, `role_emb`, `smear_tok`).
pub fn weight_decay_applies(name: &str) -> bool {
    let is_embedding = name.starts_with("wte.")
        || name.starts_with("wpe.")
        || name.starts_with("role_emb.")
        || name.starts_with("smear_tok.");
    let is_ln = name.split('.').any(|p| p.starts_with("ln_"));
    !(name.ends_with(".bias") || name.ends_with(".smear") || is_embedding || is_ln)
}

fn check_tokenizer(config: &GptConfig, tokenizer: &Tokenizer) -> anyhow::Result<()> {
    if config.vocab_size < tokenizer.n_vocab() {
        bail!(
            "model vocab_size {} is smaller than the tokenizer's vocabulary {} (use extend_vocab)",
            config.vocab_size,
            tokenizer.n_vocab()
        );
    }
    if config.n_roles > 0 && config.n_roles < tokenizer.roles().n_roles() {
        bail!(
            "model has {} role embeddings but the tokenizer needs {} (use extend_vocab)",
            config.n_roles,
            tokenizer.roles().n_roles()
        );
    }
    Ok(())
}

impl Model {
    /// A freshly initialised model (GPT-2 init, role table zero),
    /// deterministic in `seed` (independent of libtorch's global RNG).
    pub fn new(
        config: GptConfig,
        tokenizer: Tokenizer,
        device: Device,
        seed: i64,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        check_tokenizer(&config, &tokenizer)?;
        Ok(Self::build(config, tokenizer, device, Some(seed as u64)))
    }

    /// Build without tokenizer checks (importers fix the vocabulary after).
    /// `seed: None` leaves the parameters unset (zeros/ones) for loaders.
    pub(crate) fn build(
        config: GptConfig,
        tokenizer: Tokenizer,
        device: Device,
        seed: Option<u64>,
    ) -> Self {
        let vs = nn::VarStore::new(device);
        let gpt = match seed {
            Some(s) => Gpt::new(&vs.root(), &config, s),
            None => Gpt::new_zeroed(&vs.root(), &config),
        };
        Model {
            vs,
            gpt,
            config,
            tokenizer,
        }
    }

    /// Device of the parameters.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// All parameters sorted by name (`h.0.attn.c_attn.weight`, ...,
    /// `role_emb.weight`, `wpe.weight`, `wte.weight`). The tensors share
    /// storage with the model (shallow clones).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<_> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Copy `tensors` (name -> tensor) into the parameters. Every parameter
    /// must be given exactly once with its exact shape; `source` names the
    /// file in errors.
    pub(crate) fn assign(
        &mut self,
        tensors: Vec<(String, Tensor)>,
        source: &Path,
    ) -> anyhow::Result<()> {
        let mut given: BTreeMap<String, Tensor> = BTreeMap::new();
        for (n, t) in tensors {
            if given.insert(n.clone(), t).is_some() {
                bail!("{}: tensor {n:?} appears twice", source.display());
            }
        }
        let params = self.named_parameters();
        for (name, _) in &params {
            if !given.contains_key(name) {
                bail!("{}: missing tensor {name:?}", source.display());
            }
        }
        if let Some(extra) = given.keys().find(|k| !params.iter().any(|(n, _)| n == *k)) {
            bail!(
                "{}: unexpected tensor {extra:?} (not a parameter of this config)",
                source.display()
            );
        }
        let _g = tch::no_grad_guard();
        for (name, mut p) in params {
            let t = &given[&name];
            if t.size() != p.size() {
                bail!(
                    "{}: tensor {name:?} has shape {:?}, the config needs {:?}",
                    source.display(),
                    t.size(),
                    p.size()
                );
            }
            p.copy_(&t.to_kind(Kind::Float).to_device(p.device()));
        }
        Ok(())
    }

    /// Load a checkpoint directory (see the module docs). Names, shapes,
    /// dtypes and finiteness are validated.
    pub fn load(dir: &Path, device: Device) -> anyhow::Result<Self> {
        let cfg_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("reading {}", cfg_path.display()))?;
        let config: GptConfig = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid model config", cfg_path.display()))?;
        config
            .validate()
            .with_context(|| format!("{}", cfg_path.display()))?;
        let voc_path = dir.join(VOCAB_FILE);
        let text = std::fs::read_to_string(&voc_path)
            .with_context(|| format!("reading {}", voc_path.display()))?;
        let tokenizer =
            Tokenizer::from_json(&text).with_context(|| format!("{}", voc_path.display()))?;
        check_tokenizer(&config, &tokenizer).with_context(|| format!("{}", dir.display()))?;
        let w_path = dir.join(WEIGHTS_FILE);
        check_size(&config, &w_path)?;
        let tensors = st::read(&w_path, Device::Cpu)?;
        let mut m = Self::build(config, tokenizer, device, None);
        m.assign(tensors, &w_path)?;
        Ok(m)
    }

    /// Save as a checkpoint directory, atomically (temp dir + rename). An
    /// existing checkpoint at `dir` is replaced.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let tmp = sibling(dir, "tmp")?;
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let res = (|| {
            st::write(&tmp.join(WEIGHTS_FILE), &self.named_parameters())?;
            let cfg = serde_json::to_string_pretty(&self.config)?;
            std::fs::write(tmp.join(CONFIG_FILE), cfg)?;
            std::fs::write(tmp.join(VOCAB_FILE), self.tokenizer.to_json())?;
            // Durable before the rename makes it visible.
            afm_tokenizer::atomic::sync_tree(&tmp)?;
            replace_dir(&tmp, dir)
        })();
        if res.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        res.with_context(|| format!("saving checkpoint to {}", dir.display()))
    }

    /// Adopt `tokenizer`, whose role vocabulary must extend the current one
    /// (old agents are a prefix). New token rows of `wte` are the mean of
    /// the existing rows; new rows of the role table are zero (a model
    /// without role embeddings keeps them off). Rebuild any optimizer after.
    ///
    /// Only the role vocabulary is taken from `tokenizer`: the model keeps
    /// its own BPE table (all of GPT-2's, or its corpus vocabulary), so a
    /// pretrained model fine-tunes on data prepared with any vocabulary.
    pub fn extend_vocab(&mut self, tokenizer: Tokenizer) -> anyhow::Result<()> {
        let tokenizer = match self.tokenizer.corpus() {
            None => Tokenizer::new(tokenizer.roles().clone()),
            Some(c) => Tokenizer::new(tokenizer.roles().clone()).with_corpus(c.clone()),
        };
        let old = self.tokenizer.roles().agents();
        let new = tokenizer.roles().agents();
        if new.len() < old.len() || &new[..old.len()] != old {
            bail!("extend_vocab: the new agent list {new:?} does not start with the current one {old:?}");
        }
        let mut config = self.config.clone();
        let _g = tch::no_grad_guard();
        if tokenizer.n_vocab() > config.vocab_size {
            let mut wte = self.gpt.wte().shallow_clone();
            let mean = wte.mean_dim(0, true, Kind::Float);
            let extra = (tokenizer.n_vocab() - config.vocab_size) as i64;
            let grown = Tensor::cat(&[wte.detach(), mean.expand([extra, -1], false)], 0);
            wte.set_data(&grown);
            config.vocab_size = tokenizer.n_vocab();
        }
        if config.n_roles > 0 && tokenizer.roles().n_roles() > config.n_roles {
            if let Some(table) = self.gpt.role_emb() {
                let mut table = table.shallow_clone();
                let extra = (tokenizer.roles().n_roles() - config.n_roles) as i64;
                let zeros =
                    Tensor::zeros([extra, config.n_embd as i64], (Kind::Float, table.device()));
                let grown = Tensor::cat(&[table.detach(), zeros], 0);
                table.set_data(&grown);
            }
            config.n_roles = tokenizer.roles().n_roles();
        }
        self.config = config.clone();
        self.gpt.set_config(config);
        self.tokenizer = tokenizer;
        Ok(())
    }
}

/// Refuse a config whose parameters (f32) could not fit in `weights`
/// before allocating the model (a corrupt `config.json` must not trigger a
/// huge allocation).
pub(crate) fn check_size(config: &GptConfig, weights: &Path) -> anyhow::Result<()> {
    let have = std::fs::metadata(weights)
        .with_context(|| format!("reading {}", weights.display()))?
        .len();
    let need = (config.n_params() as u64).saturating_mul(2); // bf16 at the least
    if need > have {
        bail!(
            "{}: the config needs {} parameters but the file has only {have} bytes: truncated, or config and weights do not match",
            weights.display(),
            config.n_params()
        );
    }
    Ok(())
}

/// `PARENT/.NAME.KIND-PID-NANOS` next to `dir` (same filesystem, so rename works).
pub(crate) fn sibling(dir: &Path, kind: &str) -> anyhow::Result<PathBuf> {
    let name = dir
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{}: not a directory name", dir.display()))?
        .to_string_lossy()
        .into_owned();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok(parent.join(format!(".{name}.{kind}-{}-{nanos}", std::process::id())))
}

/// Move the finished `tmp` directory to `dir`, replacing what is there.
pub(crate) fn replace_dir(tmp: &Path, dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let old = sibling(dir, "old")?;
        std::fs::rename(dir, &old).with_context(|| format!("moving away old {}", dir.display()))?;
        std::fs::rename(tmp, dir)
            .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(tmp, dir)
            .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
    }
    Ok(())
}
