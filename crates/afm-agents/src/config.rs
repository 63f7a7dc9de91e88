//! The configuration of `afm eval` and `afm run`: who plays the agents,
//! how they decode, and (for `eval`) which tasks, where the runs go and
//! what they are compared with. Its `Default` is the one place the
//! defaults live; the CLI lays a TOML file, its flags and `--set` over it.

use crate::afm::{Route, RunOptions};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// See the module docs. `checkpoint` (the AFM) or `mas` (one checkpoint
/// per agent) names the system; exactly one of them is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// AFM checkpoint directory (one model plays every agent).
    pub checkpoint: Option<PathBuf>,
    /// The MAS: `Planner=DIR,Coder=DIR,Reviewer=DIR`.
    pub mas: Option<String>,
    /// cpu, cuda, cuda:N or auto.
    pub device: String,
    /// Decode in bf16 (f32 otherwise).
    pub bf16: bool,
    /// libtorch intra-op CPU threads (0 = libtorch's choice). 1 is often
    /// fastest for small models on a busy CPU.
    pub threads: usize,
    /// Sampling temperature (0 = greedy).
    pub temperature: f64,
    /// Keep only the k most likely tokens when sampling.
    pub top_k: Option<usize>,
    /// Nucleus sampling threshold, in (0, 1].
    pub top_p: Option<f64>,
    /// Sampling seed.
    pub seed: u64,
    /// AFM: most tokens sampled per task; MAS: per agent turn.
    pub max_new_tokens: usize,
    /// Most interpreter calls per task.
    pub max_tool_calls: usize,
    /// MAS: most Coder retries the Reviewer may ask for.
    pub max_retries: usize,
    /// AFM: sample every role token, the Planner's first and the Reviewer's
    /// after each observation included (default: the runtime writes those
    /// two, as the MAS orchestrator does; see [`Route`]).
    pub free_route: bool,
    /// `eval`: the task file (JSONL, e.g. `datasets/tasks/test.jsonl`).
    pub tasks: Option<PathBuf>,
    /// `eval`: tasks decoded together.
    pub batch: usize,
    /// `eval`: only the first N tasks (0 = all).
    pub limit: usize,
    /// `eval`: write the runs (trajectories + accounting) as JSONL here.
    pub out: Option<PathBuf>,
    /// `eval`: a reference run (a previous `out` file, or any JSONL/JSON of
    /// `{"id","answer"}` records) for final-answer agreement.
    pub compare: Option<PathBuf>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        let r = RunOptions::default();
        Self {
            checkpoint: None,
            mas: None,
            device: "cpu".into(),
            bf16: r.bf16,
            threads: 0,
            temperature: r.temperature,
            top_k: r.top_k,
            top_p: r.top_p,
            seed: r.seed,
            max_new_tokens: r.max_new_tokens,
            max_tool_calls: r.max_tool_calls,
            max_retries: r.max_retries,
            free_route: false,
            tasks: None,
            batch: r.batch,
            limit: 0,
            out: None,
            compare: None,
        }
    }
}

/// A rejected [`EvalConfig`] value.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("eval config: {field}: {message}")]
pub struct EvalConfigError {
    /// The field's name (`top_p`).
    pub field: String,
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> EvalConfigError {
    EvalConfigError {
        field: field.into(),
        message: message.into(),
    }
}

impl EvalConfig {
    /// Check every field; an error names the field.
    pub fn validate(&self) -> Result<(), EvalConfigError> {
        match (&self.checkpoint, &self.mas) {
            (Some(_), None) | (None, Some(_)) => {}
            (Some(_), Some(_)) => {
                return Err(bad("mas", "give `checkpoint` (AFM) or `mas`, not both"))
            }
            (None, None) => {
                return Err(bad(
                    "checkpoint",
                    "give `checkpoint` (AFM) or `mas` (Planner=DIR,Coder=DIR,Reviewer=DIR)",
                ))
            }
        }
        if let Some((field, why)) = self.run_options().sampling().problem() {
            return Err(bad(field, why));
        }
        for (field, v) in [
            ("max_new_tokens", self.max_new_tokens),
            ("batch", self.batch),
        ] {
            if v == 0 {
                return Err(bad(field, "must be >= 1"));
            }
        }
        Ok(())
    }

    /// The runtimes' options at this config's decoding settings.
    pub fn run_options(&self) -> RunOptions {
        RunOptions {
            batch: self.batch,
            max_new_tokens: self.max_new_tokens,
            max_tool_calls: self.max_tool_calls,
            max_retries: self.max_retries,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            bf16: self.bf16,
            route: if self.free_route {
                Route::free()
            } else {
                Route::task_world()
            },
            ..RunOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn afm() -> EvalConfig {
        EvalConfig {
            checkpoint: Some("ck".into()),
            ..EvalConfig::default()
        }
    }

    #[test]
    fn defaults_are_the_runtimes_and_bad_values_name_the_field() {
        assert!(afm().validate().is_ok());
        let o = afm().run_options();
        let d = RunOptions::default();
        assert_eq!(
            (o.batch, o.max_new_tokens, o.max_tool_calls, o.max_retries),
            (d.batch, d.max_new_tokens, d.max_tool_calls, d.max_retries)
        );
        assert_eq!(o.route, Route::task_world());
        type Case = (Box<dyn Fn(&mut EvalConfig)>, &'static str);
        let cases: Vec<Case> = vec![
            (Box::new(|c| c.checkpoint = None), "checkpoint"),
            (Box::new(|c| c.mas = Some("Planner=a".into())), "mas"),
            (Box::new(|c| c.temperature = -1.0), "temperature"),
            (Box::new(|c| c.top_k = Some(0)), "top_k"),
            (Box::new(|c| c.top_p = Some(1.5)), "top_p"),
            (Box::new(|c| c.max_new_tokens = 0), "max_new_tokens"),
            (Box::new(|c| c.batch = 0), "batch"),
        ];
        for (f, field) in cases {
            let mut c = afm();
            f(&mut c);
            let e = c.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }
}
