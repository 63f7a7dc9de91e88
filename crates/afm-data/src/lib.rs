//! afm-data: turns multi-agent logs into packed, masked training shards.
//!
//! Pipeline ([`prepare()`]): validate -> normalise -> score and filter ->
//! dedup -> split by task -> curriculum -> augment -> format -> tokenize ->
//! mask -> window -> pack -> write.
//!
//! - [`prepare`](mod@prepare): the recipe [`Prepare`] (setup, read, plan,
//!   vocabulary, write, finish) that [`prepare()`] and [`prepare_with`] run.
//! - [`ingest`]: the input formats (one module per framework's logs, one
//!   importer table), validation and rejects.
//! - [`export`]: out to a trainer's format: TRL's pre-tokenized rows from a
//!   prepared dataset; LLaMA-Factory ShareGPT, axolotl chat_template,
//!   Chain-of-Agents tags and native JSONL from trajectories or a prepared
//!   dataset.
//! - [`agents`]: agent renames and observation agents (TOML map).
//! - [`score`]: quality score, curriculum difficulty, dedup/split keys.
//! - [`augment`]: target-preserving augmentations; re-solving a record
//!   needs a task world the caller injects ([`augment::Resolver`]).
//! - [`window`]: long trajectories (drop, truncate, window).
//! - [`pack`]: padding-free best-fit packing into rows.
//!
//! The formats it reads and writes are `afm-format`'s: the record
//! (`afm_format::Trajectory`), the token layout and loss-mask rule
//! (`afm_format::layout`) and the shard files (`afm_format::shards`).
//!
//! See `crates/afm-data/README.md` for the formats, formulas and numbers.

pub mod agents;
#[cfg(feature = "pipeline")]
pub mod augment;
pub mod export;
pub mod ingest;
pub mod pack;
#[cfg(feature = "pipeline")]
pub mod prepare;
pub mod score;
pub mod window;

pub use afm_format::layout::AgentWeights; // part of `PrepareConfig`
pub use agents::AgentsMap;
#[cfg(feature = "pipeline")]
pub use augment::Resolver;
pub use ingest::{read_file, Format, IngestLimits};
#[cfg(feature = "pipeline")]
pub use prepare::{prepare, prepare_with, Manifest, Prepare, PrepareConfig, Progress};
pub use window::LongMode;
