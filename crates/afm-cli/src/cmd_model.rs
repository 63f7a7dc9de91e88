//! Verbs of afm-model: `import-hf`, `export-hf`, `generate`, and
//! `afm bench model`.

use afm_model::speed;
use afm_model::{
    generate, parse_device, DecodeKernels, GptConfig, Model, Precision, SamplingConfig,
};
use afm_tokenizer::{Tokenizer, END, EOT};
use anyhow::{bail, Context};
use clap::{ArgGroup, Args, Subcommand};
use indicatif::ProgressBar;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum Cmd {
    /// Import a Hugging Face GPT-2 directory, or an afm export (config.json + model.safetensors), as an afm checkpoint.
    ImportHf(ImportHfArgs),
    /// Export an afm checkpoint as a Hugging Face directory, exactly: GPT-2 when the model is
    /// one, else afm's own transformers class (trust_remote_code).
    ExportHf(ExportHfArgs),
    /// Generate a continuation from a checkpoint.
    Generate(GenerateArgs),
}

#[derive(Args)]
pub struct ImportHfArgs {
    /// HF GPT-2 directory.
    #[arg(long)]
    pub from: PathBuf,
    /// Checkpoint directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Agent roles to add, comma separated (e.g. Planner,Coder,Reviewer).
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
}

#[derive(Args)]
pub struct ExportHfArgs {
    /// afm checkpoint directory.
    #[arg(long)]
    pub from: PathBuf,
    /// HF directory to write.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args)]
#[command(group(ArgGroup::new("input").required(true).args(["prompt", "prompt_tokens"])))]
pub struct GenerateArgs {
    /// afm checkpoint directory.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Prompt text, BPE-encoded as is (no special tokens are added).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Raw prompt token ids, comma separated (fed exactly; no special tokens added).
    #[arg(long, value_delimiter = ',')]
    pub prompt_tokens: Option<Vec<u32>>,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Argmax decoding (the default when no sampling option is given).
    #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p"])]
    pub greedy: bool,
    /// Sampling temperature (default 1.0 when --top-k/--top-p is given).
    #[arg(long)]
    pub temperature: Option<f64>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop token ids (default: <|end|> and <|endoftext|>); `--stop-tokens none` disables.
    #[arg(long, value_delimiter = ',')]
    pub stop_tokens: Option<Vec<String>>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// bf16 matmuls (f32 master weights and logits).
    #[arg(long)]
    pub bf16: bool,
    /// Print one JSON object {"tokens","logprobs","text","stop"}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct BenchModelArgs {
    /// Model preset: tiny, mini, gpt2, gpt2-medium (random weights).
    #[arg(long, default_value = "mini")]
    pub preset: String,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Sequence length of the training batch (default: the preset's n_ctx).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// bf16 matmuls.
    #[arg(long)]
    pub bf16: bool,
    /// Timed training steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Greedy decoding: prompt length and new tokens (batch 1).
    #[arg(long, default_value_t = 32)]
    pub prompt_len: usize,
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// Skip the training (or the decoding) measurement.
    #[arg(long)]
    pub no_train: bool,
    #[arg(long)]
    pub no_generate: bool,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Threads while decoding (default: as --threads). 1 avoids OpenMP
    /// barrier stalls on a busy machine, where batch-1 ops are tiny.
    #[arg(long)]
    pub decode_threads: Option<i32>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::ImportHf(a) => import_hf(a),
        Cmd::ExportHf(a) => export_hf(a),
        Cmd::Generate(a) => generate_cmd(a),
    }
}

fn import_hf(a: ImportHfArgs) -> anyhow::Result<()> {
    let roles: Vec<String> = a
        .roles
        .iter()
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .collect();
    let m = Model::import_hf(&a.from, &roles, tch::Device::Cpu)?;
    m.save(&a.out)?;
    eprintln!(
        "imported {} -> {}: {} layers, width {}, vocab {} (agents: {:?}), {} role embeddings",
        a.from.display(),
        a.out.display(),
        m.config.n_layer,
        m.config.n_embd,
        m.config.vocab_size,
        m.tokenizer.roles().agents(),
        m.config.n_roles
    );
    Ok(())
}

fn export_hf(a: ExportHfArgs) -> anyhow::Result<()> {
    let m = Model::load(&a.from, tch::Device::Cpu)?;
    m.export_hf(&a.out)?;
    let how = if m.is_plain_gpt2() {
        "transformers' GPT2LMHeadModel"
    } else {
        "afm's own class: load with AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)"
    };
    eprintln!(
        "exported {} -> {} as {how}",
        a.from.display(),
        a.out.display()
    );
    Ok(())
}

fn sampling(a: &GenerateArgs) -> SamplingConfig {
    let sampled = a.temperature.is_some() || a.top_k.is_some() || a.top_p.is_some();
    if a.greedy || !sampled {
        return SamplingConfig::greedy();
    }
    SamplingConfig {
        temperature: a.temperature.unwrap_or(1.0),
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
    }
}

fn stop_tokens(a: &GenerateArgs, tok: &Tokenizer) -> anyhow::Result<Vec<u32>> {
    match &a.stop_tokens {
        None => Ok(vec![END, EOT]),
        Some(v) if v.len() == 1 && v[0] == "none" => Ok(vec![]),
        Some(v) => v
            .iter()
            .map(|s| {
                let id: u32 = s
                    .trim()
                    .parse()
                    .with_context(|| format!("--stop-tokens: {s:?} is not a token id"))?;
                if tok.row(id).is_none() {
                    bail!(
                        "--stop-tokens: {id} is not in the model's vocabulary ({} rows)",
                        tok.n_vocab()
                    );
                }
                Ok(id)
            })
            .collect(),
    }
}

fn generate_cmd(a: GenerateArgs) -> anyhow::Result<()> {
    let device = parse_device(&a.device)?;
    let m = Model::load(&a.checkpoint, device)?;
    let prompt: Vec<u32> = match (&a.prompt, &a.prompt_tokens) {
        (Some(text), _) => m.tokenizer.encode(text),
        (None, Some(ids)) => {
            if let Some(&bad) = ids.iter().find(|&&i| m.tokenizer.row(i).is_none()) {
                bail!(
                    "--prompt-tokens: id {bad} is not in the model vocabulary ({} rows)",
                    m.config.vocab_size
                );
            }
            ids.clone()
        }
        (None, None) => bail!("give --prompt or --prompt-tokens"),
    };
    let cfg = sampling(&a);
    let stop = stop_tokens(&a, &m.tokenizer)?;
    let g = generate(
        &m,
        &[prompt],
        a.max_new_tokens,
        &stop,
        &cfg,
        Precision::from_bf16(a.bf16),
    )?;
    let g = &g[0];
    let text = m.tokenizer.decode(&g.tokens)?;
    if a.json {
        let j = serde_json::json!({
            "tokens": g.tokens,
            "logprobs": g.logprobs,
            "text": text,
            "stop": g.stop,
        });
        println!("{j}");
    } else {
        println!("{text}");
    }
    Ok(())
}

pub fn bench_model(a: BenchModelArgs) -> anyhow::Result<()> {
    if let Some(t) = a.threads {
        if t < 1 {
            bail!("--threads must be >= 1");
        }
        tch::set_num_threads(t);
    }
    let device = parse_device(&a.device)?;
    let tok = Tokenizer::gpt2();
    let config = GptConfig::preset(&a.preset, tok.n_vocab(), tok.roles().n_roles())?;
    let ctx = a.ctx.unwrap_or(config.n_ctx);
    if ctx == 0 || ctx > config.n_ctx {
        bail!(
            "--ctx must be in 1..={} for preset {}",
            config.n_ctx,
            a.preset
        );
    }
    if !a.no_generate && (a.prompt_len == 0 || a.prompt_len + a.new_tokens > config.n_ctx) {
        bail!(
            "--prompt-len + --new-tokens must be in 1..={}",
            config.n_ctx
        );
    }
    let precision = Precision::from_bf16(a.bf16);
    let model = Model::new(config.clone(), tok, device, 0)?;
    let mut out = serde_json::json!({
        "preset": a.preset,
        "params": config.n_params(),
        "batch": a.batch,
        "ctx": ctx,
        "precision": if a.bf16 { "bf16" } else { "f32" },
        "threads": tch::get_num_threads(),
        "device": a.device,
    });
    if !a.no_train {
        // The trainer's real step (data stream, fused loss, clipping, this
        // project's AdamW), not a stand-in loop.
        let pb = progress(a.steps as u64 + 1, "train steps", a.json);
        let scratch = tempfile::tempdir().context("creating a scratch directory")?;
        let cfg = afm_train::TrainConfig {
            preset: Some(a.preset.clone()),
            batch_size: a.batch,
            bf16: a.bf16,
            device: a.device.clone(),
            threads: a.threads.map_or(0, |t| t as usize),
            ..Default::default()
        };
        let s = afm_train::trainer_step_speed(&cfg, ctx, 1, a.steps, scratch.path(), || pb.inc(1))?;
        pb.finish_and_clear();
        out["train_tokens_per_s"] = s.tokens_per_s.into();
        out["train_loss"] = s.loss.into();
        if device == tch::Device::Cpu {
            let peak = speed::matmul_peak_gflops(precision.kind(), 1024);
            let achieved = s.tokens_per_s * s.flops_per_token / 1e9;
            out["train_gflops"] = achieved.into();
            out["matmul_peak_gflops"] = peak.into();
            out["mfu"] = (achieved / peak).into();
        }
    }
    if !a.no_generate {
        if let Some(t) = a.decode_threads {
            if t < 1 {
                bail!("--decode-threads must be >= 1");
            }
            tch::set_num_threads(t);
        }
        out["decode_threads"] = tch::get_num_threads().into();
        let gps = speed::generate_tokens_per_s(&model, a.prompt_len, a.new_tokens, precision)?;
        out["generate_tokens_per_s"] = gps.into();
        if device == tch::Device::Cpu {
            // The same decoding on libtorch ops only, in the same run.
            afm_model::set_decode_kernels(DecodeKernels::Libtorch);
            let lt = speed::generate_tokens_per_s(&model, a.prompt_len, a.new_tokens, precision);
            afm_model::set_decode_kernels(DecodeKernels::Rust);
            out["generate_libtorch_tokens_per_s"] = lt?.into();
        }
        if device == tch::Device::Cpu {
            // The memory roofline of batch-1 decoding: every step reads all
            // matmul weights once.
            let bytes = speed::decode_weight_bytes(&model, precision);
            let gbps = speed::read_bandwidth_gbps();
            out["decode_weight_bytes"] = bytes.into();
            out["read_bandwidth_gbps"] = gbps.into();
            out["libtorch_matvec_bandwidth_gbps"] =
                speed::matvec_bandwidth_gbps(precision.kind()).into();
            out["generate_roofline_tokens_per_s"] = (gbps * 1e9 / bytes).into();
        }
        out["generate_prompt_len"] = a.prompt_len.into();
        out["generate_new_tokens"] = a.new_tokens.into();
    }
    if a.json {
        println!("{out}");
    } else {
        println!(
            "afm bench model: preset {} ({} params), {} threads, {}",
            a.preset,
            config.n_params(),
            tch::get_num_threads(),
            out["precision"]
        );
        if let Some(t) = out.get("train_tokens_per_s") {
            println!(
                "  train step  batch {} x ctx {}: {:.0} tokens/s{}",
                a.batch,
                ctx,
                t.as_f64().unwrap_or(0.0),
                out.get("mfu")
                    .and_then(|m| m.as_f64())
                    .map(|m| format!(
                        " (MFU {:.1}% of a measured {:.0} GFLOP/s matmul peak)",
                        m * 100.0,
                        out["matmul_peak_gflops"].as_f64().unwrap_or(0.0)
                    ))
                    .unwrap_or_default()
            );
        }
        if let Some(g) = out.get("generate_tokens_per_s") {
            println!(
                "  greedy decode batch 1, {} new after {}-token prompt: {:.0} tokens/s{}{}",
                a.new_tokens,
                a.prompt_len,
                g.as_f64().unwrap_or(0.0),
                out.get("generate_libtorch_tokens_per_s")
                    .and_then(|l| l.as_f64())
                    .map(|l| format!(" (libtorch ops only: {l:.0} tokens/s)"))
                    .unwrap_or_default(),
                out.get("generate_roofline_tokens_per_s")
                    .and_then(|r| r.as_f64())
                    .map(|r| format!(
                        " (memory roofline {r:.0} tokens/s: {:.0} MB of weights a token at a measured {:.1} GB/s read bandwidth; libtorch's matvec reads at {:.1} GB/s)",
                        out["decode_weight_bytes"].as_f64().unwrap_or(0.0) / 1e6,
                        out["read_bandwidth_gbps"].as_f64().unwrap_or(0.0),
                        out["libtorch_matvec_bandwidth_gbps"].as_f64().unwrap_or(0.0)
                    ))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

fn progress(n: u64, what: &str, hidden: bool) -> ProgressBar {
    crate::progress::bar_if(!hidden, n, what)
}
