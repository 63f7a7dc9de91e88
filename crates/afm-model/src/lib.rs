//! afm-model: GPT-2 with agent-role embeddings in libtorch (tch).
//!
//! - [`GptConfig`] (presets `tiny`, `mini`, `gpt2`, `gpt2-medium`) and
//!   [`Gpt`] (the whole network in `gpt.rs`): packed-document attention
//!   (`docs`), LM head only at `select`ed positions, explicit bf16 mixed
//!   precision ([`Precision`]).
//! - [`Model`]: parameters + config + tokenizer; checkpoint directories
//!   (`model.safetensors`, `config.json`, `vocab.json`), `extend_vocab`.
//! - [`hf`]: import/export of Hugging Face GPT-2 directories.
//! - [`Decoder`] / [`generate`]: batched KV-cache decoding with greedy,
//!   temperature, top-k and top-p sampling and stop tokens.
//! - [`parse_device`]: `cpu`, `cuda[:N]`, `auto`.

mod config;
pub mod device;
mod generate;
mod gpt;
pub mod hf;
mod model;
mod rng;
mod simd;
pub mod speed;
mod st;
mod xent;

pub use config::GptConfig;
pub use device::{parse_device, test_device};
pub use generate::{generate, Decoder, Generation, RowSampler, SamplingConfig};
pub use gpt::{
    decode_kernels, positions_from_docs, set_decode_kernels, CachedStep, DecodeKernels,
    ForwardArgs, Gpt, KvCache, LmDistill, LmLoss, Precision, Weights,
};
pub use model::{weight_decay_applies, Model, CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE};
