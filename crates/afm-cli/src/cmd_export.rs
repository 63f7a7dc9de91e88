//! `afm export-sft`: afm's data out in a trainer's format
//! (`afm_data::export`; one call per format).

use afm_data::export::{self, ExportFormat};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum Cmd {
    /// Export SFT data for another trainer.
    ///
    /// trl: from a prepared dataset (`afm prepare --out DIR`), one JSONL line
    /// per packed row, exactly as afm packed it (padding left out):
    /// input_ids, labels (-100 = no loss; TRL's convention, same positions as
    /// input_ids, the model shifts), position_ids (restarting per document),
    /// seq_lengths, agent_ids (role of each input token), owner_ids and
    /// loss_weights (afm's per-token weight, aligned with labels); writes
    /// train.jsonl, val.jsonl and afm_export.json (tokenizer, special tokens,
    /// role names, row_len, counts). In TRL: `SFTConfig(padding_free=True,
    /// max_length=None, dataset_kwargs={"skip_prepare_dataset": True})`.
    /// See crates/afm-data/README.md, "Exports".
    #[command(name = "export-sft")]
    ExportSft(ExportArgs),
}

#[derive(Args)]
pub struct ExportArgs {
    /// Target format: trl, llama-factory, axolotl, coa.
    #[arg(long)]
    pub format: ExportFormat,
    /// What to export: a prepared dataset directory (trl).
    #[arg(long)]
    pub input: PathBuf,
    /// Output directory (created if needed).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::ExportSft(a) => {
            let w = export::write(a.format, &a.input, &a.out)?;
            for (path, records) in &w.files {
                println!("wrote {} ({records} records)", path.display());
            }
            Ok(())
        }
    }
}
