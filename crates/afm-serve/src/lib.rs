//! `afm serve`: afm models behind an OpenAI-compatible HTTP API.
//!
//! - `POST /v1/completions` and `POST /v1/chat/completions` (both stream
//!   with `"stream": true`, as server-sent events ending in `data: [DONE]`);
//!   chat messages are laid out as afm trains them (see [`parse_chat`]).
//! - `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text).
//! - Each model has its own engine thread ([`engine`]): continuous batching
//!   over a KV cache per sequence, up to `max_batch` sequences at once,
//!   `max_queue` waiting (more get 429), bodies over `max_body_bytes` get
//!   413, a request past `timeout` gets 504 (or an error event), a client
//!   that disconnects frees its row at the next token.
//! - SIGTERM or Ctrl-C: stop accepting, finish the requests in flight, exit.
//!
//! Serve one AFM (`--checkpoint`, model id `afm`) and/or a multi-agent
//! system (`--mas Planner=CKPT,...`, one model per agent, model ids the
//! agent names).

mod api;
pub mod engine;
pub mod tasks;

pub use api::{parse_chat, parse_completion, ApiError, Limits, Prepared};
pub use engine::{EngineConfig, EngineHandle, Event, Finish, GenRequest};

use afm_model::Model;
use afm_tokenizer::Tokenizer;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub addr: SocketAddr,
    pub engine: EngineConfig,
    pub limits: Limits,
    pub max_body_bytes: usize,
    /// Longest a request may take, queueing included.
    pub timeout: Duration,
}

/// One served model.
pub struct Served {
    /// Model id in the API.
    pub id: String,
    /// The agent it plays, for a multi-agent system's model.
    pub agent: Option<String>,
    pub model: Model,
    /// A second copy of an AFM for `/v1/afm/tasks` (whole tasks, tool
    /// calls run by the server); None: that endpoint refuses this model.
    pub task_model: Option<Model>,
}

struct Entry {
    handle: EngineHandle,
    agent: Option<String>,
    tasks: Option<tasks::TaskHandle>,
}

#[derive(Default)]
struct Counters {
    /// (endpoint, status) -> count.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency_sum_us: AtomicU64,
    latency_count: AtomicU64,
}

struct AppState {
    models: BTreeMap<String, Entry>,
    cfg: ServeConfig,
    counters: Counters,
    started: u64,
}

type Shared = Arc<AppState>;

/// Run the server until SIGTERM / Ctrl-C, then drain and return. `ready`
/// gets the bound address once the server listens (port 0 picks one).
pub async fn serve(
    models: Vec<Served>,
    cfg: ServeConfig,
    ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    anyhow::ensure!(!models.is_empty(), "serve: no model to serve");
    let mut table = BTreeMap::new();
    let mut threads = Vec::new();
    for s in models {
        anyhow::ensure!(
            !table.contains_key(&s.id),
            "serve: model id {:?} given twice",
            s.id
        );
        let (handle, thread) = engine::start(s.model, cfg.engine.clone());
        threads.push(thread);
        let task_handle = s.task_model.map(|m| {
            let (h, t) = tasks::start(
                m,
                cfg.engine.max_batch,
                cfg.engine.max_queue,
                cfg.engine.threads,
            );
            threads.push(t);
            h
        });
        table.insert(
            s.id,
            Entry {
                handle,
                agent: s.agent,
                tasks: task_handle,
            },
        );
    }
    let state = Arc::new(AppState {
        models: table,
        cfg: cfg.clone(),
        counters: Counters::default(),
        started: now_secs(),
    });
    let app = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/afm/tasks", post(task))
        .route("/v1/afm/tool", post(tool))
        .route("/v1/models", get(models_list))
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind(cfg.addr).await?;
    ready(listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    // Every handler has finished: the engines drain and stop.
    drop(state);
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn request_id(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        now_secs(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, axum::Json(e.body())).into_response()
}

fn count(s: &AppState, endpoint: &str, status: u16, started: Instant) {
    if let Ok(mut m) = s.counters.requests.lock() {
        *m.entry((endpoint.to_string(), status)).or_default() += 1;
    }
    s.counters
        .latency_sum_us
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    s.counters.latency_count.fetch_add(1, Ordering::Relaxed);
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Completion,
    Chat,
}

async fn completions(State(s): State<Shared>, body: Bytes) -> Response {
    handle(s, body, Kind::Completion).await
}

async fn chat(State(s): State<Shared>, body: Bytes) -> Response {
    handle(s, body, Kind::Chat).await
}

/// The model a body names (read before the full parse, which needs the
/// model's tokenizer).
fn model_of(body: &[u8]) -> Result<String, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad("body", format!("the body is not JSON: {e}")))?;
    v.get("model")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad("model", "model is required (see GET /v1/models)"))
}

async fn handle(s: Shared, body: Bytes, kind: Kind) -> Response {
    let started = Instant::now();
    let endpoint = match kind {
        Kind::Completion => "/v1/completions",
        Kind::Chat => "/v1/chat/completions",
    };
    let result = prepare(&s, &body, kind);
    let (entry, p) = match result {
        Ok(x) => x,
        Err(e) => {
            count(&s, endpoint, e.status, started);
            return error_response(&e);
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let job = engine::Job {
        req: p.req.clone(),
        deadline: started + s.cfg.timeout,
        out: tx,
    };
    if let Err(e) = entry.handle.submit(job) {
        let e = match e {
            engine::SubmitError::QueueFull => ApiError::new(
                429,
                "rate_limit_error",
                "the server is at its queue limit; retry later",
            ),
            engine::SubmitError::Stopped => {
                ApiError::new(503, "server_error", "the server is shutting down")
            }
        };
        count(&s, endpoint, e.status, started);
        return error_response(&e);
    }
    let id = request_id(if kind == Kind::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    });
    let created = now_secs();
    let tok = entry.handle.tokenizer.clone();
    if p.stream {
        count(&s, endpoint, 200, started);
        return stream(rx, p, id, created, kind, tok).into_response();
    }
    let r = collect(rx, &p, &id, created, kind, &tok).await;
    match r {
        Ok(v) => {
            count(&s, endpoint, 200, started);
            axum::Json(v).into_response()
        }
        Err(e) => {
            count(&s, endpoint, e.status, started);
            error_response(&e)
        }
    }
}

fn prepare<'a>(
    s: &'a AppState,
    body: &[u8],
    kind: Kind,
) -> Result<(&'a Entry, Prepared), ApiError> {
    let model = model_of(body)?;
    let entry = s.models.get(&model).ok_or_else(|| ApiError {
        status: 404,
        message: format!(
            "model {model:?} is not served here (serving {:?})",
            s.models.keys().collect::<Vec<_>>()
        ),
        param: Some("model".into()),
        kind: "invalid_request_error",
    })?;
    let tok = &entry.handle.tokenizer;
    let n_ctx = entry.handle.n_ctx;
    let p = match kind {
        Kind::Completion => parse_completion(body, tok, n_ctx, &s.cfg.limits)?,
        Kind::Chat => parse_chat(body, tok, n_ctx, &s.cfg.limits, entry.agent.as_deref())?,
    };
    Ok((entry, p))
}

/// The agent whose turn a chat reply is: the requested one, or the role
/// token the model opened with.
fn reply_agent(p: &Prepared, first: Option<u32>, tok: &Tokenizer) -> Option<String> {
    p.agent
        .clone()
        .or_else(|| first.and_then(|t| tok.token_agent(t)).map(str::to_string))
}

fn finish_reason(f: &Finish) -> &'static str {
    match f {
        Finish::Stop(_) => "stop",
        Finish::Length => "length",
    }
}

fn stop_name(f: &Finish, tok: &Tokenizer) -> Value {
    match f {
        Finish::Stop(Some(t)) => tok.special_text(*t).map(Value::from).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

async fn collect(
    mut rx: mpsc::UnboundedReceiver<Event>,
    p: &Prepared,
    id: &str,
    created: u64,
    kind: Kind,
    tok: &Tokenizer,
) -> Result<Value, ApiError> {
    let mut text = String::new();
    let mut first = None;
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Token {
                id: t, text: piece, ..
            } => {
                first.get_or_insert(t);
                text.push_str(&piece);
            }
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
                text: rest,
            } => {
                text.push_str(&rest);
                let choice = match kind {
                    Kind::Completion => json!({
                        "index": 0, "text": text, "logprobs": null,
                        "finish_reason": finish_reason(&finish), "afm_stop": stop_name(&finish, tok),
                    }),
                    Kind::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "name": reply_agent(p, first, tok)},
                        "finish_reason": finish_reason(&finish), "afm_stop": stop_name(&finish, tok),
                    }),
                };
                let object = if kind == Kind::Chat {
                    "chat.completion"
                } else {
                    "text_completion"
                };
                return Ok(json!({
                    "id": id, "object": object, "created": created, "model": p.model,
                    "choices": [choice], "usage": usage(prompt_tokens, completion_tokens),
                }));
            }
            Event::Failed { message, timeout } => {
                return Err(if timeout {
                    ApiError::new(504, "timeout_error", message)
                } else {
                    ApiError::new(500, "server_error", message)
                })
            }
        }
    }
    Err(ApiError::new(500, "server_error", "the engine stopped"))
}

fn stream(
    rx: mpsc::UnboundedReceiver<Event>,
    p: Prepared,
    id: String,
    created: u64,
    kind: Kind,
    tok: Arc<Tokenizer>,
) -> Sse<impl tokio_stream::Stream<Item = Result<SseEvent, Infallible>>> {
    let object = if kind == Kind::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let mut first: Option<u32> = None;
    let mut sent_role = false;
    let chunk = move |delta: Value, finish: Value| -> Value {
        let choice = match kind {
            Kind::Chat => json!({"index": 0, "delta": delta, "finish_reason": finish}),
            Kind::Completion => {
                json!({"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")), "logprobs": null, "finish_reason": finish})
            }
        };
        json!({"id": id, "object": object, "created": created, "model": p.model, "choices": [choice]})
    };
    let agent = p.agent.clone();
    // One SSE event per engine event (tokens whose text is held back send
    // nothing), then `[DONE]` once the engine drops the request's channel.
    let events = UnboundedReceiverStream::new(rx).filter_map(move |ev| {
        let mut delta = |text: String, fin: Option<&Finish>, first: Option<u32>| {
            let mut d = json!({"content": text});
            if kind == Kind::Chat && !sent_role {
                d["role"] = json!("assistant");
                d["name"] = json!(agent
                    .clone()
                    .or_else(|| first.and_then(|t| tok.token_agent(t)).map(str::to_string)));
                sent_role = true;
            }
            let f = fin.map(|f| json!(finish_reason(f))).unwrap_or(Value::Null);
            let mut c = chunk(d, f);
            if let Some(f) = fin {
                c["choices"][0]["afm_stop"] = stop_name(f, &tok);
            }
            SseEvent::default().data(c.to_string())
        };
        let e = match ev {
            Event::Token { id: t, text, .. } => {
                first.get_or_insert(t);
                (!text.is_empty()).then(|| delta(text, None, first))
            }
            Event::Done { finish, text, .. } => Some(delta(text, Some(&finish), first)),
            Event::Failed { message, .. } => {
                let e = ApiError::new(500, "server_error", message);
                Some(SseEvent::default().data(e.body().to_string()))
            }
        };
        e.map(Ok)
    });
    let done = tokio_stream::once(Ok(SseEvent::default().data("[DONE]")));
    Sse::new(events.chain(done)).keep_alive(KeepAlive::default())
}

/// `POST /v1/afm/tasks`: one whole task, the server running the tool.
async fn task(State(s): State<Shared>, body: Bytes) -> Response {
    let started = Instant::now();
    let endpoint = "/v1/afm/tasks";
    let r = (|| {
        let model = model_of(&body)?;
        let entry = s.models.get(&model).ok_or_else(|| ApiError {
            status: 404,
            message: format!("model {model:?} is not served here"),
            param: Some("model".into()),
            kind: "invalid_request_error",
        })?;
        let tasks = entry.tasks.as_ref().ok_or_else(|| {
            ApiError::bad(
                "model",
                format!("{model:?} is not an AFM: whole tasks need --checkpoint"),
            )
        })?;
        let req = tasks::TaskRequest::parse(&body, s.cfg.limits.max_tokens)?;
        Ok::<_, ApiError>((tasks.clone(), req))
    })();
    let (handle, req) = match r {
        Ok(x) => x,
        Err(e) => {
            count(&s, endpoint, e.status, started);
            return error_response(&e);
        }
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let id = request_id("task");
    let model = req.model.clone();
    let job = tasks::TaskJob {
        id: id.clone(),
        req,
        deadline: started + s.cfg.timeout,
        out: tx,
    };
    if let Err(e) = handle.submit(job) {
        count(&s, endpoint, e.status, started);
        return error_response(&e);
    }
    match rx.await {
        Ok(Ok(run)) => {
            count(&s, endpoint, 200, started);
            let usage = usage(run.stats.tokens_prefill, run.stats.tokens_decode);
            axum::Json(json!({
                "id": id, "object": "afm.task", "created": now_secs(), "model": model,
                "run": run, "usage": usage,
            }))
            .into_response()
        }
        Ok(Err(message)) => {
            let e = if message.contains("time limit") {
                ApiError::new(504, "timeout_error", message)
            } else {
                ApiError::new(500, "server_error", message)
            };
            count(&s, endpoint, e.status, started);
            error_response(&e)
        }
        Err(_) => {
            let e = ApiError::new(500, "server_error", "the task worker stopped");
            count(&s, endpoint, e.status, started);
            error_response(&e)
        }
    }
}

/// `POST /v1/afm/tool`: the bounded interpreter alone (`{"program"}` ->
/// `{"observation", "ok"}`), for clients that orchestrate the agents.
async fn tool(State(s): State<Shared>, body: Bytes) -> Response {
    let started = Instant::now();
    let req: tasks::ToolRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let e = ApiError::from_serde(e);
            count(&s, "/v1/afm/tool", 400, started);
            return error_response(&e);
        }
    };
    let r = tokio::task::spawn_blocking(move || {
        afm_agents::run_tool(&req.program, &afm_tasks::Limits::default())
    })
    .await;
    match r {
        Ok(t) => {
            count(&s, "/v1/afm/tool", 200, started);
            axum::Json(json!({"observation": t.text, "ok": t.ok})).into_response()
        }
        Err(_) => {
            count(&s, "/v1/afm/tool", 500, started);
            error_response(&ApiError::new(500, "server_error", "the tool failed"))
        }
    }
}

async fn models_list(State(s): State<Shared>) -> Response {
    let data: Vec<Value> = s
        .models
        .iter()
        .map(|(id, e)| {
            json!({"id": id, "object": "model", "created": s.started, "owned_by": "afm",
                   "agent": e.agent, "agents": e.handle.tokenizer.roles().agents()})
        })
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn metrics(State(s): State<Shared>) -> Response {
    let mut out = String::new();
    out.push_str("# HELP afm_requests_total Requests answered, by endpoint and HTTP status.\n# TYPE afm_requests_total counter\n");
    if let Ok(m) = s.counters.requests.lock() {
        for ((ep, code), n) in m.iter() {
            out.push_str(&format!(
                "afm_requests_total{{endpoint=\"{ep}\",code=\"{code}\"}} {n}\n"
            ));
        }
    }
    let sum = s.counters.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
    let cnt = s.counters.latency_count.load(Ordering::Relaxed);
    out.push_str(&format!(
        "# HELP afm_request_seconds Time to the response head (streams: to the first byte).\n# TYPE afm_request_seconds summary\nafm_request_seconds_sum {sum}\nafm_request_seconds_count {cnt}\n"
    ));
    type Gauge = (
        &'static str,
        &'static str,
        &'static str,
        fn(&engine::Stats) -> u64,
    );
    let per_model: [Gauge; 8] = [
        (
            "afm_queued_requests",
            "gauge",
            "Requests waiting for a row.",
            |x| x.queued.load(Ordering::Relaxed),
        ),
        (
            "afm_active_sequences",
            "gauge",
            "Sequences in the running batch.",
            |x| x.active.load(Ordering::Relaxed),
        ),
        (
            "afm_prompt_tokens_total",
            "counter",
            "Prompt tokens fed.",
            |x| x.prompt_tokens.load(Ordering::Relaxed),
        ),
        (
            "afm_generated_tokens_total",
            "counter",
            "Tokens generated.",
            |x| x.generated_tokens.load(Ordering::Relaxed),
        ),
        (
            "afm_engine_steps_total",
            "counter",
            "Batched decoding steps.",
            |x| x.steps.load(Ordering::Relaxed),
        ),
        (
            "afm_finished_total",
            "counter",
            "Sequences finished.",
            |x| x.finished.load(Ordering::Relaxed),
        ),
        (
            "afm_cancelled_total",
            "counter",
            "Sequences dropped because the client left.",
            |x| x.cancelled.load(Ordering::Relaxed),
        ),
        (
            "afm_timed_out_total",
            "counter",
            "Sequences past their time limit.",
            |x| x.timed_out.load(Ordering::Relaxed),
        ),
    ];
    for (name, typ, help, get) in per_model {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {typ}\n"));
        for (id, e) in &s.models {
            out.push_str(&format!(
                "{name}{{model=\"{id}\"}} {}\n",
                get(&e.handle.stats)
            ));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
