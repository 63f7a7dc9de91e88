//! `afm`: distil a multi-agent system into one model.
//!
//! Each group of verbs lives in its own module and its own crate does the
//! work; this file only wires them together.

mod cmd_agents;
mod cmd_convert;
mod cmd_data;
mod cmd_export;
mod cmd_model;
mod cmd_pipeline;
mod cmd_serve;
mod cmd_tasks;
mod cmd_train;
mod progress;
mod settings;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "afm",
    version,
    about = "Distil a multi-agent system into one agent foundation model"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    #[command(flatten)]
    Model(cmd_model::Cmd),
    #[command(flatten)]
    Data(cmd_data::Cmd),
    #[command(flatten)]
    Export(cmd_export::Cmd),
    #[command(flatten)]
    Train(cmd_train::Cmd),
    #[command(flatten)]
    Tasks(cmd_tasks::Cmd),
    #[command(flatten)]
    Agents(cmd_agents::Cmd),
    #[command(flatten)]
    Pipeline(cmd_pipeline::Cmd),
    /// Convert logs of any input format (or a prepared dataset) to native JSONL or a
    /// trainer's format: LLaMA-Factory ShareGPT, axolotl chat_template, Chain-of-Agents tags.
    Convert(cmd_convert::ConvertArgs),
    /// Serve models behind an OpenAI-compatible HTTP API (completions, chat, streaming, metrics).
    Serve(cmd_serve::ServeArgs),
    /// Speed probes and benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Model speed probe (llama-bench style): training step and greedy decoding tokens/s.
    Model(cmd_model::BenchModelArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    afm_model::device::tune_allocator();
    let result = match cli.cmd {
        Cmd::Model(c) => cmd_model::run(c),
        Cmd::Data(c) => cmd_data::run(c),
        Cmd::Export(c) => cmd_export::run(c),
        Cmd::Train(c) => cmd_train::run(c),
        Cmd::Tasks(c) => cmd_tasks::run(c),
        Cmd::Agents(c) => cmd_agents::run(c),
        Cmd::Pipeline(c) => cmd_pipeline::run(c),
        Cmd::Convert(a) => cmd_convert::run(a),
        Cmd::Serve(a) => cmd_serve::run(a),
        Cmd::Bench(BenchCmd::Model(a)) => cmd_model::bench_model(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("afm: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
