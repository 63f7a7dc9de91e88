//! `RUN/metrics.jsonl` (one JSON record per line) and the PNG loss curves.
//!
//! Records:
//!
//! ```text
//! {"kind":"train","step":10,"lr":0.0003,"loss":2.1,"ce":2.3,"kl":0.4,"grad_norm":1.2,"tokens_per_s":5300.0,"tokens":81920,"elapsed_s":15.2,"per_agent":{"Coder":2.2}}
//! {"kind":"eval","step":100,"val_loss":2.0,"val_acc":0.41,"val_tokens":5120,"per_agent":{"Coder":{"loss":1.9,"acc":0.45,"tokens":3000}}}
//! ```
//!
//! `ce`/`kl` are the weighted means over the step's loss positions (`kl`
//! only over positions that have a teacher, absent without teachers).

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Per-agent validation numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentEval {
    /// Weighted mean cross-entropy of the targets this agent owns.
    pub loss: f64,
    /// Fraction of those targets predicted exactly (argmax).
    pub acc: f64,
    /// Loss positions.
    pub tokens: usize,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    Train {
        step: usize,
        lr: f64,
        loss: f64,
        ce: f64,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        kl: Option<f64>,
        grad_norm: f64,
        tokens_per_s: f64,
        tokens: u64,
        elapsed_s: f64,
        /// Weighted mean CE per owning agent over the logging window.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        per_agent: BTreeMap<String, f64>,
    },
    Eval {
        step: usize,
        val_loss: f64,
        val_acc: f64,
        val_tokens: usize,
        per_agent: BTreeMap<String, AgentEval>,
    },
}

impl Record {
    /// Step of the record.
    pub fn step(&self) -> usize {
        match self {
            Record::Train { step, .. } | Record::Eval { step, .. } => *step,
        }
    }
}

/// Appends records to `RUN/metrics.jsonl` and keeps them for plotting.
pub struct Metrics {
    path: PathBuf,
    pub records: Vec<Record>,
}

impl Metrics {
    /// Open `run/metrics.jsonl`. With `keep_until = Some(s)` (resume) the
    /// records after step `s` (written by the interrupted run after its last
    /// checkpoint) are dropped; with `None` the file starts empty.
    pub fn open(run: &Path, keep_until: Option<usize>) -> anyhow::Result<Self> {
        let path = run.join("metrics.jsonl");
        let mut records = Vec::new();
        if let Some(s) = keep_until {
            if let Ok(text) = std::fs::read_to_string(&path) {
                for (i, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    // A line cut by a kill is dropped; anything else bad is an error.
                    match serde_json::from_str::<Record>(line) {
                        Ok(r) if r.step() <= s => records.push(r),
                        Ok(_) => {}
                        Err(e) if i + 1 == text.lines().count() => {
                            let _ = e;
                        }
                        Err(e) => anyhow::bail!("{}:{}: {e}", path.display(), i + 1),
                    }
                }
            }
        }
        let mut text = String::new();
        for r in &records {
            text.push_str(&serde_json::to_string(r)?);
            text.push('\n');
        }
        // Atomic: a kill while the kept records are rewritten must not lose them.
        afm_tokenizer::atomic::write(&path, text)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self { path, records })
    }

    /// Append a record.
    pub fn push(&mut self, r: Record) -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        writeln!(f, "{}", serde_json::to_string(&r)?)
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.records.push(r);
        Ok(())
    }

    /// Draw `loss.png` (train and validation loss) and
    /// `loss_per_agent.png` (train CE and validation loss per agent) in `run`.
    pub fn plot(&self, run: &Path) -> anyhow::Result<()> {
        let mut train = Vec::new();
        let mut val = Vec::new();
        let mut per_agent: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for r in &self.records {
            match r {
                Record::Train {
                    step,
                    loss,
                    per_agent: pa,
                    ..
                } => {
                    train.push((*step as f64, *loss));
                    for (a, l) in pa {
                        per_agent
                            .entry(format!("train {a}"))
                            .or_default()
                            .push((*step as f64, *l));
                    }
                }
                Record::Eval {
                    step,
                    val_loss,
                    per_agent: pa,
                    ..
                } => {
                    val.push((*step as f64, *val_loss));
                    for (a, e) in pa {
                        per_agent
                            .entry(a.clone())
                            .or_default()
                            .push((*step as f64, e.loss));
                    }
                }
            }
        }
        let mut series = vec![
            ("train".to_string(), train),
            ("validation".to_string(), val),
        ];
        series.retain(|(_, v)| !v.is_empty());
        if !series.is_empty() {
            crate::plot::lines(&run.join("loss.png"), "loss", &series)?;
        }
        let series: Vec<(String, Vec<(f64, f64)>)> = per_agent.into_iter().collect();
        if !series.is_empty() {
            crate::plot::lines(
                &run.join("loss_per_agent.png"),
                "loss per agent (train CE, validation)",
                &series,
            )?;
        }
        Ok(())
    }
}
