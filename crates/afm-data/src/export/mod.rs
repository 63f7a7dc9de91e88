//! Exports: afm's trajectories in the formats trainers read.
//!
//! Text exports (one JSON object per trajectory, written as JSONL):
//! [`sharegpt`] (LLaMA-Factory), [`axolotl`] (chat_template), [`coa`]
//! (Chain-of-Agents' tag format) and [`native`] (afm's own). [`prepared`]
//! gives back the records a prepared dataset was made from, so every text
//! export also works from a prepared dataset. What each format keeps and
//! loses: `crates/afm-data/README.md`, section Exports.

pub mod axolotl;
pub mod coa;
pub mod native;
#[cfg(feature = "pipeline")]
pub mod prepared;
pub mod sharegpt;
