//! The decoding engine: one thread per model that owns the model and a
//! [`Decoder`] of `max_batch` rows, and batches requests continuously.
//!
//! Every loop iteration admits queued jobs into free rows, drops the rows
//! whose client went away or whose deadline passed, feeds every active row
//! in one [`Decoder::feed`] (a new row its whole prompt, a running row its
//! last token; each row has its own KV-cache slots), and samples one token
//! per fed row with that request's own [`RowSampler`]. A request joins the
//! running batch at the next token boundary and leaves it when it stops, so
//! short requests never wait for long ones.

use afm_model::{Decoder, Model, Precision, RowSampler, SamplingConfig};
use afm_tokenizer::Tokenizer;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// Why a generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// A stop token (`Some(id)`) or a stop string (`None`).
    Stop(Option<u32>),
    /// `max_tokens`, or the model context.
    Length,
}

/// What the engine sends back to a request, in order: tokens, then one
/// `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A new token and the text it completes (may be empty: a token can end
    /// in the middle of a UTF-8 character, and text that could start a stop
    /// string is held back).
    Token { id: u32, logprob: f32, text: String },
    /// Finished; `text` is what remained held back (flushed).
    Done {
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
        text: String,
    },
    /// The request could not be served (deadline, decoding error).
    Failed { message: String, timeout: bool },
}

/// What to generate: the prompt, how to sample and when to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingConfig,
    /// Generation ends after any of these (the token itself is not text).
    pub stop_tokens: Vec<u32>,
    /// ... or when the text contains one of these (cut before it).
    pub stop_strings: Vec<String>,
    /// The first generated token may be one of these without stopping
    /// (an agent's role token that opens the turn the model chose).
    pub may_open_with: Vec<u32>,
    /// Drop the text's first leading space (afm segments start with one).
    pub strip_leading_space: bool,
}

/// One request for the engine.
pub struct Job {
    pub req: GenRequest,
    pub deadline: Instant,
    pub out: UnboundedSender<Event>,
}

/// Counters the `/metrics` endpoint reads.
#[derive(Default)]
pub struct Stats {
    pub queued: AtomicU64,
    pub active: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub steps: AtomicU64,
    pub finished: AtomicU64,
    pub cancelled: AtomicU64,
    pub timed_out: AtomicU64,
}

/// The submitting side of a running engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: SyncSender<Job>,
    pub stats: Arc<Stats>,
    pub n_ctx: usize,
    pub tokenizer: Arc<Tokenizer>,
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    QueueFull,
    Stopped,
}

impl EngineHandle {
    /// Queue `job` (never blocks).
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::QueueFull,
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Rows decoded together (the concurrency limit).
    pub max_batch: usize,
    /// Requests waiting for a row (more are refused with 429).
    pub max_queue: usize,
    pub precision: Precision,
    /// libtorch threads of the engine thread (0 = leave as is).
    pub threads: usize,
}

/// Start the engine thread for `model`. It runs until every handle is
/// dropped and its rows are finished.
pub fn start(model: Model, cfg: EngineConfig) -> (EngineHandle, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(cfg.max_queue);
    let stats = Arc::new(Stats::default());
    let handle = EngineHandle {
        tx,
        stats: stats.clone(),
        n_ctx: model.config.n_ctx,
        tokenizer: Arc::new(model.tokenizer.clone()),
    };
    let thread = std::thread::Builder::new()
        .name("afm-engine".into())
        .spawn(move || {
            if cfg.threads > 0 {
                tch::set_num_threads(cfg.threads as i32);
            }
            let _g = tch::no_grad_guard();
            run(&model, &cfg, rx, &stats);
        })
        .expect("spawning the engine thread");
    (handle, thread)
}

struct Active {
    job: Job,
    sampler: RowSampler,
    /// Tokens to feed at the next step.
    pending: Vec<u32>,
    generated: usize,
    /// Bytes of the generated text and how many were sent.
    bytes: Vec<u8>,
    sent: usize,
    stripped: bool,
}

fn run(model: &Model, cfg: &EngineConfig, rx: Receiver<Job>, stats: &Stats) {
    let tok = &model.tokenizer;
    let mut dec = Decoder::new(model, cfg.max_batch, cfg.precision);
    let mut rows: Vec<Option<Active>> = (0..cfg.max_batch).map(|_| None).collect();
    let mut open = true;
    loop {
        // Admit queued jobs into free rows.
        let mut admitted = false;
        while open {
            let Some(slot) = rows.iter().position(Option::is_none) else {
                break;
            };
            let job = if rows.iter().all(Option::is_none) && !admitted {
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(j) => j,
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            } else {
                match rx.try_recv() {
                    Ok(j) => j,
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            };
            stats.queued.fetch_sub(1, Ordering::Relaxed);
            admitted = true;
            let sampler = match RowSampler::new(job.req.sampling.clone()) {
                Ok(s) => s,
                Err(e) => {
                    let _ = job.out.send(Event::Failed {
                        message: format!("{e:#}"),
                        timeout: false,
                    });
                    continue;
                }
            };
            if let Err(e) = dec.reset_row(slot) {
                let _ = job.out.send(Event::Failed {
                    message: format!("{e:#}"),
                    timeout: false,
                });
                continue;
            }
            stats
                .prompt_tokens
                .fetch_add(job.req.prompt.len() as u64, Ordering::Relaxed);
            rows[slot] = Some(Active {
                pending: job.req.prompt.clone(),
                job,
                sampler,
                generated: 0,
                bytes: Vec::new(),
                sent: 0,
                stripped: false,
            });
        }
        // Drop rows whose client left or whose time is up.
        let now = Instant::now();
        for r in rows.iter_mut() {
            let Some(a) = r else { continue };
            if a.job.out.is_closed() {
                stats.cancelled.fetch_add(1, Ordering::Relaxed);
                *r = None;
            } else if now >= a.job.deadline {
                stats.timed_out.fetch_add(1, Ordering::Relaxed);
                let _ = a.job.out.send(Event::Failed {
                    message: "the request ran past its time limit".into(),
                    timeout: true,
                });
                *r = None;
            }
        }
        let active = rows.iter().filter(|r| r.is_some()).count();
        stats.active.store(active as u64, Ordering::Relaxed);
        if active == 0 {
            if !open {
                return;
            }
            continue;
        }
        let feeds: Vec<(usize, Vec<u32>)> = rows
            .iter_mut()
            .enumerate()
            .filter_map(|(i, r)| r.as_mut().map(|a| (i, std::mem::take(&mut a.pending))))
            .collect();
        let (logits, width) = match dec.feed(&feeds).and_then(|l| host_rows(&l, &feeds)) {
            Ok(l) => l,
            Err(e) => {
                for (i, _) in &feeds {
                    if let Some(a) = rows[*i].take() {
                        let _ = a.job.out.send(Event::Failed {
                            message: format!("decoding failed: {e:#}"),
                            timeout: false,
                        });
                    }
                }
                continue;
            }
        };
        stats.steps.fetch_add(1, Ordering::Relaxed);
        for ((i, _), row_logits) in feeds.iter().zip(logits.chunks(width)) {
            let a = rows[*i].as_mut().expect("fed rows are active");
            let done = match step_row(a, row_logits, tok, dec.row_len(*i), model.config.n_ctx) {
                Ok(d) => d,
                Err(e) => Some(Err(format!("{e:#}"))),
            };
            stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
            if let Some(end) = done {
                let a = rows[*i].take().expect("active");
                let event = match end {
                    Ok(finish) => {
                        let text = flush(&a);
                        Event::Done {
                            finish,
                            prompt_tokens: a.job.req.prompt.len(),
                            completion_tokens: a.generated,
                            text,
                        }
                    }
                    Err(message) => Event::Failed {
                        message,
                        timeout: false,
                    },
                };
                stats.finished.fetch_add(1, Ordering::Relaxed);
                let _ = a.job.out.send(event);
            }
        }
    }
}

/// The fed rows' logits, on the host, in feed order: one flat buffer and
/// the row width (one copy per step, no per-row allocation).
fn host_rows(
    logits: &tch::Tensor,
    feeds: &[(usize, Vec<u32>)],
) -> anyhow::Result<(Vec<f32>, usize)> {
    let idx: Vec<i64> = feeds.iter().map(|f| f.0 as i64).collect();
    let sel = logits
        .index_select(0, &tch::Tensor::from_slice(&idx).to_device(logits.device()))
        .to_device(tch::Device::Cpu)
        .to_kind(tch::Kind::Float)
        .contiguous();
    let v = sel.size()[1] as usize;
    Ok((Vec::<f32>::try_from(sel.view([-1]))?, v))
}

/// Sample one token for row `a`; `Some` when the row is finished.
fn step_row(
    a: &mut Active,
    logits: &[f32],
    tok: &Tokenizer,
    row_len: usize,
    n_ctx: usize,
) -> anyhow::Result<Option<Result<Finish, String>>> {
    let (row, logprob) = a.sampler.pick(logits)?;
    let id = tok
        .id_of_row(row)
        .ok_or_else(|| anyhow::anyhow!("sampled row {row} has no token id"))?;
    let opening = a.generated == 0 && a.job.req.may_open_with.contains(&id);
    a.generated += 1;
    if !opening && a.job.req.stop_tokens.contains(&id) {
        return Ok(Some(Ok(Finish::Stop(Some(id)))));
    }
    let mut text = String::new();
    if !opening && !tok.is_special(id) {
        a.bytes.extend(tok.token_bytes(id)?);
        if !a.stripped && !a.bytes.is_empty() {
            a.stripped = true;
            if a.job.req.strip_leading_space && a.bytes[0] == b' ' {
                a.bytes.remove(0);
            }
        }
        // A stop string ends the text before it.
        if let Some(cut) = find_stop(&a.bytes, &a.job.req.stop_strings) {
            a.bytes.truncate(cut);
            return Ok(Some(Ok(Finish::Stop(None))));
        }
        text = take_text(a);
    }
    let _ = a.job.out.send(Event::Token { id, logprob, text });
    if a.generated >= a.job.req.max_tokens || row_len + 1 > n_ctx {
        return Ok(Some(Ok(Finish::Length)));
    }
    a.pending = vec![id];
    Ok(None)
}

fn find_stop(bytes: &[u8], stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| bytes.windows(s.len()).position(|w| w == s.as_bytes()))
        .min()
}

/// The newly sendable text: complete UTF-8 characters, minus a tail that
/// could still become a stop string.
fn take_text(a: &mut Active) -> String {
    let hold = a
        .job
        .req
        .stop_strings
        .iter()
        .map(|s| s.len().saturating_sub(1))
        .max()
        .unwrap_or(0);
    let end = a.bytes.len().saturating_sub(hold).max(a.sent);
    let chunk = &a.bytes[a.sent..end];
    let valid = match std::str::from_utf8(chunk) {
        Ok(s) => s.len(),
        Err(e) => e.valid_up_to(),
    };
    let text = String::from_utf8_lossy(&chunk[..valid]).into_owned();
    a.sent += valid;
    text
}

/// What was held back, at the end (invalid UTF-8 replaced).
fn flush(a: &Active) -> String {
    String::from_utf8_lossy(&a.bytes[a.sent.min(a.bytes.len())..]).into_owned()
}

/// A seed for requests that give none: distinct per request.
pub fn fresh_seed() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0x5EED);
    NEXT.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_cut_the_text_and_hold_back_a_possible_start() {
        assert_eq!(find_stop(b"abc STOP x", &["STOP".into()]), Some(4));
        assert_eq!(find_stop(b"abc", &["STOP".into(), String::new()]), None);
    }
}
