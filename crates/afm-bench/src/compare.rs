//! Multi-agent system vs AFM, measured side by side.
//!
//! Both systems run on the same held-out tasks with the same generation
//! engine (`afm_model::Decoder`, greedy by default), in one process, and the
//! runs are interleaved (AFM batch 1, MAS batch 1, AFM batch 8, MAS batch 8)
//! so that machine noise hits both alike. Nothing is simulated:
//!
//! - task success, tokens (prefill and decode), model calls and tool calls
//!   come from the full evaluation set (`afm_agents::evaluate`);
//! - latency p50/p95 per task comes from the batch-1 runs over the bench
//!   subset (wall clock around each task);
//! - throughput at batch `b` is tasks / wall seconds of the batch-`b` runs
//!   over the same subset;
//! - resident memory is the bytes of the weights each system must keep
//!   loaded (one model vs one per agent);
//! - cost applies the [`PriceTable`] to the measured tokens and calls.

use crate::price::PriceTable;
use crate::report::SystemMetrics;
use afm_agents::mas::Mas;
use afm_agents::{evaluate, EvalReport, RunOptions, TaskRun};
use afm_model::Model;
use afm_tasks::Task;
use std::collections::BTreeMap;

/// One of the two systems under test.
pub enum System<'a> {
    /// One model plays every agent.
    Afm(&'a Model),
    /// One model per agent, called in turn.
    Mas(&'a Mas),
}

impl System<'_> {
    /// `"afm"` or `"mas"`.
    pub fn name(&self) -> &'static str {
        match self {
            System::Afm(_) => "afm",
            System::Mas(_) => "mas",
        }
    }

    /// Run tasks with this system.
    pub fn run(
        &self,
        tasks: &[Task],
        opts: &RunOptions,
        on_done: &mut dyn FnMut(&TaskRun),
    ) -> anyhow::Result<Vec<TaskRun>> {
        match self {
            System::Afm(m) => afm_agents::afm::run_batch_progress(m, tasks, opts, on_done),
            System::Mas(m) => m.run_batch_progress(tasks, opts, on_done),
        }
    }

    /// Models that must be resident.
    pub fn models(&self) -> usize {
        match self {
            System::Afm(_) => 1,
            System::Mas(m) => m.models().len(),
        }
    }

    /// Bytes of resident weights.
    pub fn memory_bytes(&self) -> u64 {
        match self {
            System::Afm(m) => weight_bytes(m),
            System::Mas(m) => m.models().iter().map(|(_, m)| weight_bytes(m)).sum(),
        }
    }
}

/// Bytes of a model's parameters as stored in memory.
pub fn weight_bytes(model: &Model) -> u64 {
    model
        .named_parameters()
        .iter()
        .map(|(_, t)| (t.numel() * t.kind().elt_size_in_bytes()) as u64)
        .sum()
}

/// How the bench runs.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Tasks of the latency/throughput subset (the first N eval tasks).
    pub bench_tasks: usize,
    /// Batch sizes for throughput; batch 1 also gives the latency percentiles.
    pub batches: Vec<usize>,
    /// Runtime options (sampling, precision, limits); `batch` is overridden.
    pub run: RunOptions,
    pub prices: PriceTable,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            bench_tasks: 32,
            batches: vec![1, 8],
            run: RunOptions::default(),
            prices: PriceTable::default(),
        }
    }
}

/// Timing runs of one system at one batch size.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TimingRun {
    pub system: String,
    pub batch: usize,
    pub tasks: usize,
    pub wall_ms: f64,
    pub tasks_per_s: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p95: f64,
}

/// Run the timing part of the bench for both systems, interleaved.
pub fn timings(
    systems: &[System<'_>],
    tasks: &[Task],
    opts: &BenchOptions,
    on_done: &mut dyn FnMut(&str, usize, &TaskRun),
) -> anyhow::Result<Vec<TimingRun>> {
    let subset = &tasks[..opts.bench_tasks.min(tasks.len())];
    if subset.is_empty() {
        anyhow::bail!("the bench needs at least one task");
    }
    let mut out = Vec::new();
    for &b in &opts.batches {
        if b == 0 {
            anyhow::bail!("batch sizes must be >= 1");
        }
        for s in systems {
            let run = RunOptions {
                batch: b,
                ..opts.run.clone()
            };
            let name = s.name();
            let runs = s.run(subset, &run, &mut |r| on_done(name, b, r))?;
            let rep = evaluate(&runs, None);
            out.push(TimingRun {
                system: name.to_string(),
                batch: b,
                tasks: runs.len(),
                wall_ms: rep.wall_ms,
                tasks_per_s: if rep.wall_ms > 0.0 {
                    runs.len() as f64 / (rep.wall_ms / 1000.0)
                } else {
                    f64::NAN
                },
                latency_ms_p50: rep.latency_ms_p50,
                latency_ms_p95: rep.latency_ms_p95,
            });
        }
    }
    Ok(out)
}

/// Combine a full evaluation and the timing runs of one system into the
/// report's metrics.
pub fn metrics(
    system: &System<'_>,
    eval: &EvalReport,
    timing: &[TimingRun],
    prices: &PriceTable,
) -> SystemMetrics {
    let mine: Vec<&TimingRun> = timing
        .iter()
        .filter(|t| t.system == system.name())
        .collect();
    let b1 = mine.iter().find(|t| t.batch == 1);
    let throughput: BTreeMap<String, f64> = mine
        .iter()
        .map(|t| (t.batch.to_string(), t.tasks_per_s))
        .collect();
    SystemMetrics {
        tasks: eval.tasks,
        success_rate: eval.success_rate,
        latency_ms_p50: b1.map_or(f64::NAN, |t| t.latency_ms_p50),
        latency_ms_p95: b1.map_or(f64::NAN, |t| t.latency_ms_p95),
        throughput_tasks_per_s: throughput,
        tokens_prefill: eval.tokens_prefill as u64,
        tokens_decode: eval.tokens_decode as u64,
        calls: eval.calls as u64,
        tool_calls: eval.tool_calls as u64,
        models: system.models(),
        memory_bytes: system.memory_bytes(),
        cost: prices.cost(
            eval.tokens_prefill as u64,
            eval.tokens_decode as u64,
            eval.calls as u64,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use afm_model::GptConfig;
    use afm_tokenizer::{RoleVocab, Tokenizer};

    fn tiny(seed: i64) -> Model {
        let tok = Tokenizer::new(RoleVocab::from_agents(["Planner", "Coder", "Reviewer"]).unwrap());
        let cfg = GptConfig::preset("tiny", tok.n_vocab(), tok.roles().n_roles()).unwrap();
        Model::new(cfg, tok, tch::Device::Cpu, seed).unwrap()
    }

    #[test]
    fn measures_both_systems_from_real_runs() {
        let afm = tiny(1);
        let mas = Mas::from_models(vec![
            ("Planner".into(), tiny(2)),
            ("Coder".into(), tiny(3)),
            ("Reviewer".into(), tiny(4)),
        ])
        .unwrap();
        let (_, tasks) = afm_tasks::generate(7, 0, 3).unwrap();
        let opts = BenchOptions {
            bench_tasks: 2,
            batches: vec![1, 2],
            run: RunOptions {
                max_new_tokens: 8,
                ..RunOptions::default()
            },
            prices: PriceTable::default(),
        };
        let systems = [System::Afm(&afm), System::Mas(&mas)];
        let mut seen = 0;
        let t = timings(&systems, &tasks, &opts, &mut |_, _, _| seen += 1).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(seen, 8);
        assert!(t.iter().all(|r| r.tasks == 2 && r.wall_ms > 0.0));
        let runs = systems[1].run(&tasks, &opts.run, &mut |_| {}).unwrap();
        let eval = evaluate(&runs, None);
        let m = metrics(&systems[1], &eval, &t, &opts.prices);
        assert_eq!(m.models, 3);
        assert_eq!(m.memory_bytes, 3 * weight_bytes(&afm));
        assert_eq!(m.tokens_prefill, eval.tokens_prefill as u64);
        assert!(m.calls >= 3, "MAS calls each agent at least once per task");
        assert_eq!(m.throughput_tasks_per_s.len(), 2);
        assert!(m.cost > 0.0);
    }
}
