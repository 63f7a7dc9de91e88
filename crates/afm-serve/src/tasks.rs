//! Whole tasks in one call: `POST /v1/afm/tasks` runs afm's AFM runtime
//! (`afm_agents::afm::run_batch`): the model writes every agent's turn, and
//! when it emits `<|obs|>` the server runs the bounded interpreter and
//! feeds the observation back into the same KV cache, until `<|end|>`.
//! `POST /v1/afm/tool` runs the same interpreter alone, for a client that
//! orchestrates the agents itself (the multi-agent system over HTTP).
//!
//! One worker thread per AFM model takes the queued tasks with the same
//! options, up to `max_batch` at a time, and decodes them together.

use crate::api::ApiError;
use afm_agents::{Route, RunOptions, TaskRun};
use afm_model::Model;
use serde::Deserialize;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Instant;
use tokio::sync::oneshot;

/// A task request's options (the runtime's, per request).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    pub model: String,
    /// The task text (what `<|task|>` opens).
    pub task: String,
    /// Most tokens the model samples for the whole task.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    #[serde(default = "default_tool_calls")]
    pub max_tool_calls: usize,
    #[serde(default)]
    pub temperature: f64,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub seed: u64,
    /// Let the model sample every hand-off (default: the runtime writes
    /// the ones the orchestration fixes, as `afm eval` does).
    #[serde(default)]
    pub free_route: bool,
}

fn default_max_tokens() -> usize {
    160
}

fn default_tool_calls() -> usize {
    4
}

/// `POST /v1/afm/tool`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolRequest {
    pub program: String,
}

impl TaskRequest {
    /// Parse and check a body against the server's token limit.
    pub fn parse(body: &[u8], max_tokens: usize) -> Result<Self, ApiError> {
        let r: TaskRequest = serde_json::from_slice(body).map_err(ApiError::from_serde)?;
        if r.task.trim().is_empty() {
            return Err(ApiError::bad("task", "task must be a non-empty string"));
        }
        if r.max_tokens == 0 || r.max_tokens > max_tokens {
            return Err(ApiError::bad(
                "max_tokens",
                format!(
                    "max_tokens must be in 1..={max_tokens}, got {}",
                    r.max_tokens
                ),
            ));
        }
        if r.max_tool_calls > 16 {
            return Err(ApiError::bad(
                "max_tool_calls",
                "max_tool_calls must be at most 16",
            ));
        }
        let o = r.options(1);
        if let Some((field, why)) = o.sampling().problem() {
            return Err(ApiError::bad(field, why));
        }
        Ok(r)
    }

    fn options(&self, batch: usize) -> RunOptions {
        RunOptions {
            batch,
            max_new_tokens: self.max_tokens,
            max_tool_calls: self.max_tool_calls,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            route: if self.free_route {
                Route::free()
            } else {
                Route::task_world()
            },
            ..RunOptions::default()
        }
    }

    /// Requests that can share one batch.
    fn same_options(&self, o: &TaskRequest) -> bool {
        let key = |r: &TaskRequest| {
            (
                r.max_tokens,
                r.max_tool_calls,
                r.temperature.to_bits(),
                r.top_k,
                r.top_p.map(f64::to_bits),
                r.seed,
                r.free_route,
            )
        };
        key(self) == key(o)
    }
}

/// A queued task.
pub struct TaskJob {
    pub id: String,
    pub req: TaskRequest,
    pub deadline: Instant,
    pub out: oneshot::Sender<Result<TaskRun, String>>,
}

/// Submit side of a task worker.
#[derive(Clone)]
pub struct TaskHandle {
    tx: SyncSender<TaskJob>,
}

impl TaskHandle {
    /// Queue a task; `false` when the queue is full or the worker stopped.
    pub fn submit(&self, job: TaskJob) -> Result<(), ApiError> {
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => ApiError::new(
                429,
                "rate_limit_error",
                "the task queue is full; retry later",
            ),
            TrySendError::Disconnected(_) => {
                ApiError::new(503, "server_error", "the server is shutting down")
            }
        })
    }
}

/// Start the worker for `model` (the AFM).
pub fn start(
    model: Model,
    max_batch: usize,
    max_queue: usize,
    threads: usize,
) -> (TaskHandle, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(max_queue);
    let t = std::thread::Builder::new()
        .name("afm-tasks".into())
        .spawn(move || {
            if threads > 0 {
                tch::set_num_threads(threads as i32);
            }
            run(&model, max_batch.max(1), rx)
        })
        .expect("spawning the task worker");
    (TaskHandle { tx }, t)
}

fn run(model: &Model, max_batch: usize, rx: Receiver<TaskJob>) {
    let mut waiting: Vec<TaskJob> = Vec::new();
    loop {
        if waiting.is_empty() {
            match rx.recv() {
                Ok(j) => waiting.push(j),
                Err(_) => return,
            }
        }
        while let Ok(j) = rx.try_recv() {
            waiting.push(j);
        }
        // The first waiting task's options, and every task that shares them.
        let first = waiting.remove(0);
        let mut batch = vec![first];
        let mut i = 0;
        while i < waiting.len() && batch.len() < max_batch {
            if waiting[i].req.same_options(&batch[0].req) {
                batch.push(waiting.remove(i));
            } else {
                i += 1;
            }
        }
        let now = Instant::now();
        let (live, late): (Vec<TaskJob>, Vec<TaskJob>) = batch
            .into_iter()
            .filter(|j| !j.out.is_closed())
            .partition(|j| j.deadline > now);
        for j in late {
            let _ = j
                .out
                .send(Err("the request ran past its time limit".into()));
        }
        if live.is_empty() {
            continue;
        }
        let tasks: Vec<afm_agents::Task> = live
            .iter()
            .map(|j| afm_agents::Task {
                id: j.id.clone(),
                family: String::new(),
                op: String::new(),
                level: 0,
                prompt: j.req.task.clone(),
                inputs: serde_json::Value::Null,
                answer: String::new(),
            })
            .collect();
        let opts = live[0].req.options(live.len());
        match afm_agents::afm::run_batch(model, &tasks, &opts) {
            Ok(runs) => {
                for (j, r) in live.into_iter().zip(runs) {
                    let _ = j.out.send(Ok(r));
                }
            }
            Err(e) => {
                for j in live {
                    let _ = j.out.send(Err(format!("{e:#}")));
                }
            }
        }
    }
}
