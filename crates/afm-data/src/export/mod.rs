//! Exports: afm's data out in the format of the trainer a user already runs
//! (`afm export-sft --format NAME`). One module per format; [`write`] picks it.
//!
//! | format          | module    | reads                                   | writes |
//! |-----------------|-----------|-----------------------------------------|--------|
//! | `trl`           | [`trl`]   | a prepared dataset (`afm prepare --out`) | pre-tokenized packed rows, JSONL, + `afm_export.json` |
//!
//! What each format keeps and loses: `crates/afm-data/README.md`, "Exports".

pub mod trl;

use std::path::{Path, PathBuf};

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

/// What an export wrote: each file with its number of records (lines).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    pub files: Vec<(PathBuf, usize)>,
}

/// Export `input` (a prepared dataset directory, or trajectories, as the
/// format needs) into the directory `out` as `format`.
pub fn write(format: ExportFormat, input: &Path, out: &Path) -> anyhow::Result<Written> {
    match format {
        ExportFormat::Trl => trl::write(input, out),
        // The text formats plug in here, one call each (their modules are
        // built on another branch): sharegpt::write / axolotl::write / coa::write.
        ExportFormat::LlamaFactory | ExportFormat::Axolotl | ExportFormat::Coa => {
            anyhow::bail!("export format `{format}` is not wired in on this branch")
        }
    }
}
