//! afm-bench: measure what distilling a multi-agent system into one model
//! gains, honestly and side by side.
//!
//! - [`price`]: the cost model (per 1K input/output tokens and per call),
//!   documented defaults, overridable in TOML.
//! - [`stats`]: percentiles and summaries of measured samples.
//! - [`report`]: `report.json`, `report.md` and PNG charts.

pub mod price;
pub mod report;
pub mod stats;
