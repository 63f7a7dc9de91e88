//! afm-data: turns multi-agent logs into packed, masked training shards.
//!
//! Pipeline ([`prepare()`]): validate -> normalise -> score and filter ->
//! dedup -> split by task -> curriculum -> augment -> format -> tokenize ->
//! mask -> window -> pack -> write.
//!
//! - [`ingest`]: the input formats (native JSONL, AG2 logs, OpenAI messages,
//!   Chain-of-Agents tags), validation and rejects.
//! - [`agents`]: agent renames and observation agents (TOML map).
//! - [`format`]: THE trajectory format and loss-mask rule (the agent runtime
//!   reuses it to build prompts).
//! - [`score`]: quality score, curriculum difficulty, dedup/split keys.
//! - [`augment`]: target-preserving augmentations.
//! - [`window`]: long trajectories (drop, truncate, window).
//! - [`pack`]: padding-free best-fit packing into rows.
//! - [`shards`]: the packed shard format, the contract with `afm-train`.
//!
//! See `crates/afm-data/README.md` for the formats, formulas and numbers.

pub mod agents;
#[cfg(feature = "pipeline")]
pub mod augment;
pub mod format;
pub mod ingest;
pub mod pack;
#[cfg(feature = "pipeline")]
pub mod prepare;
pub mod record;
pub mod score;
pub mod shards;
pub mod window;

pub use agents::AgentsMap;
pub use format::{AgentWeights, Doc};
pub use ingest::{read_file, Format, Limits};
#[cfg(feature = "pipeline")]
pub use prepare::{prepare, prepare_with_progress, Manifest, PrepareConfig, Progress};
pub use record::{Step, StepKind, Trajectory};
pub use window::LongMode;
