//! afm-data: turns multi-agent logs into packed, masked training shards.
//!
//! Pipeline ([`prepare()`]): validate -> normalise -> score and filter ->
//! dedup -> split by task -> curriculum -> augment -> format -> tokenize ->
//! mask -> window -> pack -> write.
//!
//! - the recipe [`Prepare`] (setup, read, plan,
//!   vocabulary, write, finish) that [`prepare()`] and [`prepare_with`] run.
//! - [`ingest`]: the input formats (one module per framework's logs, one
//!   importer table), validation and rejects.
//! - [`export`]: out to a trainer's format: TRL's pre-tokenized rows from a
//!   prepared dataset; LLaMA-Factory ShareGPT, axolotl chat_template,
//!   Chain-of-Agents tags and native JSONL from trajectories or a prepared
//!   dataset.
//! - [`AgentsMap`]: agent renames and observation agents (TOML map).
//! - [`quality`]: the quality score (also curriculum difficulty and
//!   dedup/split keys).
//! - [`apply`]: target-preserving augmentations ([`Transform`]); re-solving
//!   a record needs a task world the caller injects ([`Resolver`]).
//! - [`LongMode`]: long trajectories (drop, truncate, window).
//! - [`Packer`]: padding-free best-fit packing into rows.
//!
//! The formats it reads and writes are `afm-format`'s: the record
//! (`afm_format::Trajectory`), the token layout and loss-mask rule
//! (`afm_format::layout`) and the shard files (`afm_format::shards`).
//!
//! See `crates/afm-data/README.md` for the formats, formulas and numbers.

mod agents;
#[cfg(feature = "pipeline")]
mod augment;
pub mod export;
pub mod ingest;
mod pack;
#[cfg(feature = "pipeline")]
mod prepare;
// Most of these serve `prepare` (the `pipeline` feature).
#[cfg_attr(not(feature = "pipeline"), allow(dead_code))]
mod score;
#[cfg_attr(not(feature = "pipeline"), allow(dead_code))]
mod window;

pub use afm_format::layout::AgentWeights; // part of `PrepareConfig`
pub use agents::{is_default_observation, AgentsMap};
#[cfg(feature = "pipeline")]
pub use augment::{apply, Resolver, Transform, TEMPLATES};
pub use ingest::{read_file, Format, IngestLimits};
pub use pack::{PackStats, Packed, Packer};
#[cfg(feature = "pipeline")]
pub use prepare::{
    prepare, prepare_with, read_manifest, Manifest, Prepare, PrepareConfig, Progress, SCORE_RANGE,
};
pub use score::{quality, Quality};
pub use window::LongMode;
