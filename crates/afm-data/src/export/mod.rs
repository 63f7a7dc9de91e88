//! Exports: afm's data out in the formats trainers read
//! (`afm export-sft --format NAME`, `afm convert --to NAME`).
//!
//! | format | module | reads | writes |
//! |---|---|---|---|
//! | `trl` | [`trl`] | a prepared dataset (`afm prepare --out`) | pre-tokenized packed rows (JSONL) + `afm_export.json` |
//! | `llama-factory` | [`sharegpt`] | trajectories, or a prepared dataset through [`prepared`] | ShareGPT rows |
//! | `axolotl` | [`axolotl`] | the same | `chat_template` rows |
//! | `coa` | [`coa`] | the same | Chain-of-Agents tag rows |
//! | (native) | [`native`] | the same | afm's own JSONL |
//!
//! The text formats write one JSON object per trajectory; [`prepared`]
//! gives back the records a prepared dataset was made from, so they also
//! work from a prepared dataset. What each format keeps and loses:
//! `crates/afm-data/README.md`, section Exports.

pub mod axolotl;
pub mod coa;
pub mod native;
#[cfg(feature = "pipeline")]
pub mod prepared;
pub mod sharegpt;
pub mod trl;

use std::path::PathBuf;

/// An export format (`--format NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportFormat {
    /// TRL `SFTTrainer`: pre-tokenized packed rows for `padding_free` training.
    Trl,
    /// LLaMA-Factory ShareGPT.
    LlamaFactory,
    /// axolotl `chat_template`.
    Axolotl,
    /// Chain-of-Agents tag format.
    Coa,
}

/// Every format with its names on the command line (the first is canonical).
pub const FORMATS: &[(ExportFormat, &[&str])] = &[
    (ExportFormat::Trl, &["trl"]),
    (ExportFormat::LlamaFactory, &["llama-factory", "sharegpt"]),
    (ExportFormat::Axolotl, &["axolotl"]),
    (ExportFormat::Coa, &["coa"]),
];

impl ExportFormat {
    /// The canonical name (`--format NAME`).
    pub fn name(self) -> &'static str {
        FORMATS
            .iter()
            .find(|(f, _)| *f == self)
            .map_or("?", |(_, n)| n[0])
    }
}

impl std::fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ExportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        FORMATS
            .iter()
            .find(|(_, names)| names.contains(&s))
            .map(|(f, _)| *f)
            .ok_or_else(|| {
                let all: Vec<&str> = FORMATS.iter().map(|(_, n)| n[0]).collect();
                format!("unknown export format {s:?} ({})", all.join(", "))
            })
    }
}

/// What an export wrote: each data file with its number of records
/// (lines), and the sidecar that describes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    pub files: Vec<(PathBuf, usize)>,
    pub sidecar: Option<PathBuf>,
}

/// The record's own fields every text export carries after its turns:
/// `id`, and `success`, `score`, `answer` when known.
fn insert_outcome(o: &mut serde_json::Map<String, serde_json::Value>, t: &afm_format::Trajectory) {
    use serde_json::Value;
    o.insert("id".into(), Value::String(t.id.clone()));
    if let Some(s) = t.success {
        o.insert("success".into(), Value::Bool(s));
    }
    if let Some(s) = t.score {
        o.insert("score".into(), serde_json::json!(s));
    }
    if let Some(a) = &t.answer {
        o.insert("answer".into(), Value::String(a.clone()));
    }
}
