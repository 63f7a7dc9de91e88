//! `afm export-sft`: afm's data out in a trainer's format
//! (`afm_data::export`; one call per format).

use crate::cmd_convert::{self, ConvertArgs, Split, Target};
use afm_data::export::{prepared, trl, ExportFormat};
use afm_data::Format;
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
    ///
    /// llama-factory (ShareGPT), axolotl, coa: from a prepared dataset
    /// (train.jsonl and val.jsonl, the records each split was made from) or
    /// from logs of any input format (FORMAT.jsonl); the same writers as
    /// `afm convert --to sharegpt|axolotl|coa`, which says what each keeps.
    /// See crates/afm-data/README.md, "Exports".
    #[command(name = "export-sft")]
    ExportSft(ExportArgs),
}

#[derive(Args)]
pub struct ExportArgs {
    /// Target format: trl, llama-factory, axolotl, coa.
    #[arg(long)]
    pub format: ExportFormat,
    /// What to export: a prepared dataset directory (every format), or
    /// log files/directories (the text formats).
    #[arg(long)]
    pub input: PathBuf,
    /// Output directory (created if needed).
    #[arg(long)]
    pub out: PathBuf,
    /// Text formats: train only this agent's turns.
    #[arg(long)]
    pub only_agent: Option<String>,
    /// Text formats: loss weight of an agent, NAME=W (repeatable).
    #[arg(long = "agent-weight")]
    pub agent_weight: Vec<String>,
}

pub fn run(cmd: Cmd) -> anyhow::Result<()> {
    let Cmd::ExportSft(a) = cmd;
    let to = match a.format {
        ExportFormat::Trl => {
            if a.only_agent.is_some() || !a.agent_weight.is_empty() {
                anyhow::bail!(
                    "--only-agent/--agent-weight: trl exports the weights the dataset was prepared with; prepare it again to change them"
                );
            }
            let w = trl::write(&a.input, &a.out)?;
            for (path, records) in &w.files {
                println!("wrote {} ({records} rows)", path.display());
            }
            if let Some(path) = &w.sidecar {
                println!("wrote {} (tokenizer, roles, counts)", path.display());
            }
            return Ok(());
        }
        ExportFormat::LlamaFactory => Target::Sharegpt,
        ExportFormat::Axolotl => Target::Axolotl,
        ExportFormat::Coa => Target::Coa,
    };
    std::fs::create_dir_all(&a.out)?;
    let outs = if prepared::is_prepared(&a.input) {
        vec![
            (Split::Train, "train.jsonl".to_string()),
            (Split::Val, "val.jsonl".to_string()),
        ]
    } else {
        vec![(Split::Train, format!("{}.jsonl", a.format))]
    };
    for (split, file) in outs {
        cmd_convert::run(ConvertArgs {
            input: vec![a.input.clone()],
            format: Format::Auto,
            agents_map: None,
            agent_weight: a.agent_weight.clone(),
            only_agent: a.only_agent.clone(),
            to,
            split,
            max_field_bytes: None,
            out: a.out.join(file),
        })?;
    }
    Ok(())
}
