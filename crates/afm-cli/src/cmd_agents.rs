//! Verbs of afm-agents: run, eval. (Skeleton until that work lands.)

use clap::Subcommand;

#[derive(Subcommand)]
pub enum Cmd {}

pub fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {}
}
