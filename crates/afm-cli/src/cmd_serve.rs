//! `afm serve`: the models behind an OpenAI-compatible API (afm-serve).

use afm_agents::mas::Mas;
use afm_model::{parse_device, Model, Precision};
use afm_serve::{EngineConfig, Limits, ServeConfig, Served};
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    /// The AFM's checkpoint (model id `afm`).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// A multi-agent system, `Planner=CKPT,Coder=CKPT,Reviewer=CKPT` (model ids: the agents).
    #[arg(long)]
    pub mas: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (printed when listening).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Sequences decoded together per model (continuous batching).
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Requests waiting per model; more get 429.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Request bodies larger than this get 413.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Most tokens one request may generate.
    #[arg(long, default_value_t = 1024)]
    pub max_tokens: usize,
    /// Longest a request may take, queueing included (e.g. 60s, 2m).
    #[arg(long, default_value = "60s")]
    pub timeout: String,
    /// libtorch threads per engine (0 = libtorch's choice).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// bf16 matmuls while decoding.
    #[arg(long)]
    pub bf16: bool,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    let device = parse_device(&a.device)?;
    let mut models = Vec::new();
    if let Some(c) = &a.checkpoint {
        let load =
            || Model::load(c, device).with_context(|| format!("--checkpoint {}", c.display()));
        models.push(Served {
            id: "afm".into(),
            agent: None,
            model: load()?,
            // The whole-task worker (/v1/afm/tasks) decodes with its own copy.
            task_model: Some(load()?),
        });
    }
    if let Some(spec) = &a.mas {
        for (agent, dir) in Mas::parse_spec(spec)? {
            let model = Model::load(&dir, device)
                .with_context(|| format!("--mas {agent}: {}", dir.display()))?;
            models.push(Served {
                id: agent.clone(),
                agent: Some(agent),
                model,
                task_model: None,
            });
        }
    }
    anyhow::ensure!(!models.is_empty(), "give --checkpoint, --mas, or both");
    anyhow::ensure!(a.max_batch >= 1, "--max-batch must be at least 1");
    anyhow::ensure!(a.max_queue >= 1, "--max-queue must be at least 1");
    let timeout = Duration::from_secs_f64(
        afm_train::parse_duration(&a.timeout)
            .map_err(|e| anyhow::anyhow!("--timeout {:?}: {e}", a.timeout))?,
    );
    let addr = format!("{}:{}", a.host, a.port)
        .parse()
        .with_context(|| format!("--host {} --port {}", a.host, a.port))?;
    let cfg = ServeConfig {
        addr,
        engine: EngineConfig {
            max_batch: a.max_batch,
            max_queue: a.max_queue,
            precision: Precision::from_bf16(a.bf16),
            threads: a.threads,
        },
        limits: Limits {
            max_tokens: a.max_tokens,
            default_max_tokens: a.max_tokens.min(128),
            ..Limits::default()
        },
        max_body_bytes: a.max_body_bytes,
        timeout,
    };
    let ids: Vec<String> = models.iter().map(|m| m.id.clone()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(afm_serve::serve(models, cfg, |addr| {
        eprintln!(
            "afm serve: listening on http://{addr} (models: {})",
            ids.join(", ")
        );
    }))?;
    eprintln!("afm serve: drained, bye");
    Ok(())
}
