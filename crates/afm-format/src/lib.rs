//! afm-format: the formats every afm crate shares, with neither polars nor
//! libtorch, so that tasks, data, model, train and agents all use one
//! definition of each.
//!
//! - [`Trajectory`] ([`Step`], [`StepKind`]): the normalised record every input format
//!   becomes (task, steps, outcome, metadata).
//! - afm's native trajectory JSONL ([`NativeTrajectory`],
//!   [`Turn`]): what the scripted agents and the runtimes write and the data
//!   pipeline reads.
//! - [`layout`]: THE token layout and loss-mask rule (`<|task|>`, role
//!   tokens, `<|obs|>`, `<|end|>`; owners and weights). Training data and
//!   the runtimes' prompts are both built with it.
//! - [`shards`]: the packed shard files, written by `afm-data` and read by
//!   `afm-train`.
//! - [`SplitMix64`] and [`fnv1a`]: the one seeded
//!   generator and the one stable hash; generated data, data order, weight
//!   initialisation and sampling depend only on their seeds.
//!
//! One trajectory's path: a log line (any input format) -> [`Trajectory`]
//! -> [`layout::encode_trajectory`] and [`layout::Doc`] (tokens, roles,
//! owners, weights) -> packed by `afm-data` into a [`shards::Row`] ->
//! [`shards::Shards`] read by the trainer.

mod hash;
pub mod layout;
mod native;
mod record;
mod rng;
pub mod shards;

pub use hash::fnv1a;
pub use native::{NativeError, NativeTrajectory, Turn};
pub use record::{Step, StepKind, Trajectory};
pub use rng::SplitMix64;
