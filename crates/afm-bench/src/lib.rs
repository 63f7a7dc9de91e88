//! afm-bench: measure what distilling a multi-agent system into one model
//! gains, honestly and side by side.
//!
//! - [`PriceTable`]: the cost model (per 1K input/output tokens and per call),
//!   documented defaults, overridable in TOML.
//! - [`MeanSpread`]: mean and spread over seeds (ablation).
//! - [`compare`]: run the multi-agent system and the AFM on the same
//!   held-out tasks with the same generation engine, interleaved, and turn
//!   the runs into [`SystemMetrics`].
//! - [`scripted_reference`]: the scripted agents (the source of the training data)
//!   measured on the same held-out tasks, as the report's reference.
//! - [`Report`]: `report.json`, `report.md` and PNG charts (summary table,
//!   learning curve).

pub mod compare;
mod price;
mod reference;
mod report;
mod stats;

pub use price::PriceTable;
pub use reference::scripted_reference;
pub use report::{today_utc, CurvePoint, Machine, Report, SystemMetrics};
pub use stats::MeanSpread;
