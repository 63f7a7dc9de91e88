//! Verbs of afm-model: import-hf, export-hf, generate, bench model.
//! (Owner: the model work. Skeleton until it lands.)

use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum Cmd {}

#[derive(Args)]
pub struct BenchModelArgs {}

pub fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {}
}

pub fn bench_model(_a: BenchModelArgs) -> anyhow::Result<()> {
    anyhow::bail!("afm bench model is not built yet")
}
