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
