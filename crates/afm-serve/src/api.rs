//! The OpenAI request bodies afm serves, parsed and checked into what the
//! engine needs, and the errors a client gets (OpenAI's error object with
//! the HTTP status). Pure functions of the body: no panics on any input
//! (`parse_*` are what a fuzzer would call).

use crate::engine::GenRequest;
use afm_format::layout::{encode_agent_turn, encode_observation, encode_task};
use afm_model::SamplingConfig;
use afm_tokenizer::{Tokenizer, END, EOT, FIRST_ROLE_TOKEN, OBS};
use serde::Deserialize;
use serde_json::Value;

/// An error for the client: HTTP status and OpenAI's error object.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub param: Option<String>,
    pub kind: &'static str,
}

impl ApiError {
    pub fn bad(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
            param: Some(param.into()),
            kind: "invalid_request_error",
        }
    }

    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            kind,
        }
    }

    /// A serde error as a 400 naming the field serde names (`unknown field
    /// \`bogus\``, `missing field \`task\``), else `body`.
    pub fn from_serde(e: serde_json::Error) -> Self {
        let msg = e.to_string();
        let field = msg.split('`').nth(1).unwrap_or("body").to_string();
        ApiError::bad(&field, msg)
    }

    /// `{"error": {...}}`.
    pub fn body(&self) -> Value {
        serde_json::json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": Value::Null,
        }})
    }
}

/// Limits every request is checked against.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most tokens one request may ask for.
    pub max_tokens: usize,
    /// `max_tokens` when the request gives none.
    pub default_max_tokens: usize,
    /// Most stop strings, and their longest length in bytes.
    pub max_stops: usize,
    pub max_stop_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tokens: 1024,
            default_max_tokens: 128,
            max_stops: 4,
            max_stop_len: 64,
        }
    }
}

/// A parsed request: what the engine is asked to do, and how to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub model: String,
    pub req: GenRequest,
    pub stream: bool,
    /// Chat: the agent whose turn is generated (None: the model picks).
    pub agent: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Common {
    model: String,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    max_completion_tokens: Option<i64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    top_k: Option<i64>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    n: Option<i64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    stream_options: Option<Value>,
    #[serde(default)]
    logprobs: Option<Value>,
    #[serde(default)]
    frequency_penalty: Option<f64>,
    #[serde(default)]
    presence_penalty: Option<f64>,
    // Endpoint-specific fields (checked by the caller).
    #[serde(default)]
    prompt: Option<Value>,
    #[serde(default)]
    messages: Option<Value>,
    #[serde(default)]
    agent: Option<String>,
}

fn object(body: &[u8]) -> Result<Common, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad("body", format!("the body is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad("body", "the body must be a JSON object"));
    }
    serde_json::from_value(v).map_err(ApiError::from_serde)
}

fn common(
    c: &Common,
    limits: &Limits,
    n_ctx: usize,
    prompt_len: usize,
) -> Result<(usize, SamplingConfig, Vec<String>), ApiError> {
    if c.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad("n", "only n = 1 is supported"));
    }
    for (name, v) in [
        ("frequency_penalty", c.frequency_penalty),
        ("presence_penalty", c.presence_penalty),
    ] {
        if v.is_some_and(|x| x != 0.0) {
            return Err(ApiError::bad(
                name,
                format!("{name} is not supported (give 0 or leave it out)"),
            ));
        }
    }
    if c.logprobs
        .as_ref()
        .is_some_and(|l| !l.is_null() && l != &Value::Bool(false))
    {
        return Err(ApiError::bad("logprobs", "logprobs are not supported"));
    }
    let _ = (&c.user, &c.stream_options);
    let asked = c.max_completion_tokens.or(c.max_tokens);
    let max_tokens = match asked {
        None => limits.default_max_tokens,
        Some(m) if m >= 1 && (m as u64) <= limits.max_tokens as u64 => m as usize,
        Some(m) => {
            return Err(ApiError::bad(
                "max_tokens",
                format!("max_tokens must be in 1..={}, got {m}", limits.max_tokens),
            ))
        }
    };
    if prompt_len == 0 {
        return Err(ApiError::bad("prompt", "the prompt is empty"));
    }
    if prompt_len + 1 > n_ctx {
        return Err(ApiError::bad(
            "prompt",
            format!("the prompt has {prompt_len} tokens; the model's context is {n_ctx}"),
        ));
    }
    let temperature = c.temperature.unwrap_or(1.0);
    let top_k = match c.top_k {
        None | Some(0) => None,
        Some(k) if k > 0 => Some(k as usize),
        Some(k) => {
            return Err(ApiError::bad(
                "top_k",
                format!("top_k must be >= 0, got {k}"),
            ))
        }
    };
    let seed = match c.seed {
        Some(s) => s as u64,
        None => crate::engine::fresh_seed(),
    };
    let sampling = SamplingConfig {
        temperature,
        top_k,
        top_p: c.top_p.filter(|&p| p != 1.0),
        seed,
    };
    if let Some((field, why)) = sampling.problem() {
        return Err(ApiError::bad(field, why));
    }
    let stops: Vec<String> = match &c.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::bad("stop", "stop must be a string or a list of strings")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::bad(
                "stop",
                "stop must be a string or a list of strings",
            ))
        }
    };
    if stops.len() > limits.max_stops || stops.iter().any(|s| s.len() > limits.max_stop_len) {
        return Err(ApiError::bad(
            "stop",
            format!(
                "at most {} stop strings of at most {} bytes",
                limits.max_stops, limits.max_stop_len
            ),
        ));
    }
    Ok((max_tokens, sampling, stops))
}

/// `POST /v1/completions`: `prompt` is a string (BPE-encoded as is, no
/// special tokens) or a list of token ids (fed exactly). Generation stops
/// at `<|end|>` or `<|endoftext|>` (or a stop string).
pub fn parse_completion(
    body: &[u8],
    tok: &Tokenizer,
    n_ctx: usize,
    limits: &Limits,
) -> Result<Prepared, ApiError> {
    let c = object(body)?;
    if c.messages.is_some() || c.agent.is_some() {
        return Err(ApiError::bad(
            "messages",
            "messages and agent belong to /v1/chat/completions",
        ));
    }
    let prompt = match &c.prompt {
        Some(Value::String(s)) => tok.encode(s),
        Some(Value::Array(a)) if a.iter().all(|x| x.is_u64()) => {
            let ids: Vec<u32> = a
                .iter()
                .map(|x| x.as_u64().unwrap_or(u64::MAX).min(u32::MAX as u64) as u32)
                .collect();
            if let Some(&bad) = ids.iter().find(|&&i| tok.row(i).is_none()) {
                return Err(ApiError::bad(
                    "prompt",
                    format!("token id {bad} is not in the model's vocabulary"),
                ));
            }
            ids
        }
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            tok.encode(a[0].as_str().unwrap_or(""))
        }
        Some(_) => {
            return Err(ApiError::bad(
                "prompt",
                "prompt must be a string or a list of token ids",
            ))
        }
        None => return Err(ApiError::bad("prompt", "prompt is required")),
    };
    let (max_tokens, sampling, stop_strings) = common(&c, limits, n_ctx, prompt.len())?;
    Ok(Prepared {
        model: c.model,
        req: GenRequest {
            prompt,
            max_tokens,
            sampling,
            stop_tokens: vec![END, EOT],
            stop_strings,
            may_open_with: Vec::new(),
            strip_leading_space: false,
        },
        stream: c.stream.unwrap_or(false),
        agent: None,
    })
}

/// `POST /v1/chat/completions`, in afm's layout:
///
/// - the first `system`/`user` messages are the task (`<|task|>` + text;
///   several are joined with a newline);
/// - an `assistant` message is agent `name`'s turn (`name` is required:
///   it maps to the agent's role token);
/// - a `tool` message, or a `user` message after the first turn, is an
///   observation (`<|obs|>` + text).
///
/// The reply is one agent turn: `agent` (a request field; the OpenAI
/// client sends it with `extra_body`), else the model's own agent when it
/// serves one agent, else the agent the model picks (its first token).
/// The turn ends at `<|end|>`, `<|obs|>` (a tool call), or another agent's
/// role token.
pub fn parse_chat(
    body: &[u8],
    tok: &Tokenizer,
    n_ctx: usize,
    limits: &Limits,
    own_agent: Option<&str>,
) -> Result<Prepared, ApiError> {
    let c = object(body)?;
    if c.prompt.is_some() {
        return Err(ApiError::bad(
            "prompt",
            "prompt belongs to /v1/completions; send messages",
        ));
    }
    let Some(Value::Array(msgs)) = &c.messages else {
        return Err(ApiError::bad(
            "messages",
            "messages must be a non-empty list",
        ));
    };
    if msgs.is_empty() {
        return Err(ApiError::bad(
            "messages",
            "messages must be a non-empty list",
        ));
    }
    let mut task: Vec<String> = Vec::new();
    let mut turns: Vec<u32> = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let field = |f: &str| format!("messages[{i}].{f}");
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad(&field("role"), "role must be a string"))?;
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .map(|p| p.get("text").and_then(Value::as_str).map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ApiError::bad(&field("content"), "content parts must be text"))?
                .join(""),
            Some(Value::Null) | None if role == "assistant" => String::new(),
            _ => return Err(ApiError::bad(&field("content"), "content must be a string")),
        };
        match role {
            "system" | "user" if turns.is_empty() => task.push(content),
            "user" | "tool" => {
                if task.is_empty() {
                    return Err(ApiError::bad(
                        &field("role"),
                        "the first message must be the task (system or user)",
                    ));
                }
                turns.extend(encode_observation(tok, &content));
            }
            "assistant" => {
                if task.is_empty() {
                    return Err(ApiError::bad(
                        &field("role"),
                        "the first message must be the task (system or user)",
                    ));
                }
                let name = m.get("name").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::bad(
                        &field("name"),
                        "an assistant message needs name: the agent who spoke",
                    )
                })?;
                let t = encode_agent_turn(tok, name, &content).map_err(|_| {
                    ApiError::bad(
                        &field("name"),
                        format!(
                            "{name:?} is not an agent of this model ({:?})",
                            tok.roles().agents()
                        ),
                    )
                })?;
                turns.extend(t);
            }
            other => {
                return Err(ApiError::bad(
                    &field("role"),
                    format!("role {other:?} is not system, user, assistant or tool"),
                ))
            }
        }
    }
    let mut prompt = encode_task(tok, &task.join("\n"));
    prompt.extend(turns);
    let agent = c.agent.clone().or_else(|| own_agent.map(str::to_string));
    let mut may_open_with = Vec::new();
    if let Some(a) = &agent {
        let t = tok.role_token(a).ok_or_else(|| {
            ApiError::bad(
                "agent",
                format!(
                    "{a:?} is not an agent of this model ({:?})",
                    tok.roles().agents()
                ),
            )
        })?;
        prompt.push(t);
    } else {
        may_open_with = (0..tok.roles().len() as u32)
            .map(|i| FIRST_ROLE_TOKEN + i)
            .collect();
    }
    let (max_tokens, sampling, stop_strings) = common(&c, limits, n_ctx, prompt.len())?;
    let mut stop_tokens = vec![END, EOT, OBS];
    stop_tokens.extend((0..tok.roles().len() as u32).map(|i| FIRST_ROLE_TOKEN + i));
    Ok(Prepared {
        model: c.model,
        req: GenRequest {
            prompt,
            max_tokens,
            sampling,
            stop_tokens,
            stop_strings,
            may_open_with,
            strip_leading_space: true,
        },
        stream: c.stream.unwrap_or(false),
        agent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use afm_tokenizer::RoleVocab;

    fn tok() -> Tokenizer {
        Tokenizer::new(RoleVocab::from_agents(["Planner", "Coder", "Reviewer"]).unwrap())
    }

    #[test]
    fn chat_messages_become_afm_layout() {
        let t = tok();
        let body = br#"{"model":"afm","messages":[{"role":"user","content":"sum of [1, 2]"},
            {"role":"assistant","name":"Planner","content":"Add them."}],"agent":"Coder","temperature":0}"#;
        let p = parse_chat(body, &t, 256, &Limits::default(), None).unwrap();
        let mut want = encode_task(&t, "sum of [1, 2]");
        want.extend(encode_agent_turn(&t, "Planner", "Add them.").unwrap());
        want.push(t.role_token("Coder").unwrap());
        assert_eq!(p.req.prompt, want);
        assert_eq!(p.agent.as_deref(), Some("Coder"));
        assert!(p.req.stop_tokens.contains(&OBS) && p.req.sampling.temperature == 0.0);
    }

    /// Mutated and random bodies (bytes flipped, cut, spliced, fields
    /// swapped for other JSON) never panic: every one parses or gets a 4xx.
    #[test]
    fn mutated_bodies_never_panic() {
        let t = tok();
        let l = Limits::default();
        let seeds: [&[u8]; 4] = [
            br#"{"model":"afm","prompt":"sum of [1, 2]","max_tokens":8,"temperature":0.7,"top_p":0.9,"stop":["\n"],"stream":true}"#,
            br#"{"model":"afm","prompt":[50257, 262, 995],"seed":3,"top_k":5}"#,
            br#"{"model":"afm","messages":[{"role":"system","content":"t"},{"role":"user","content":"x"},{"role":"assistant","name":"Coder","content":"print(1)"},{"role":"tool","content":"1"}],"agent":"Reviewer"}"#,
            br#"{"model":"afm","messages":[{"role":"user","content":[{"type":"text","text":"a"}]}],"n":1,"logprobs":false}"#,
        ];
        let pieces: [&[u8]; 10] = [
            b"null",
            b"-1",
            b"1e400",
            b"\"\\u0000\"",
            b"[]",
            b"{}",
            b"\"<|end|>\"",
            b"18446744073709551616",
            b"true",
            b"[[[[",
        ];
        let mut rng = afm_format::SplitMix64::new(7);
        for i in 0..20_000 {
            let mut b = seeds[i % seeds.len()].to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(b.len() as u64 + 1) as usize;
                match rng.below(4) {
                    0 => b.truncate(at),
                    1 if at < b.len() => b[at] = rng.below(256) as u8,
                    2 => {
                        let p = pieces[rng.below(pieces.len() as u64) as usize];
                        b.splice(at..at, p.iter().copied());
                    }
                    _ => {
                        let end = (at + rng.below(8) as usize).min(b.len());
                        b.drain(at..end);
                    }
                }
            }
            for r in [
                parse_completion(&b, &t, 128, &l).err(),
                parse_chat(&b, &t, 128, &l, None).err(),
            ]
            .into_iter()
            .flatten()
            {
                assert!((400..500).contains(&r.status), "{r:?}");
            }
        }
    }

    #[test]
    fn bad_requests_name_the_field() {
        let t = tok();
        let l = Limits::default();
        let cases: [(&[u8], &str); 8] = [
            (b"not json", "body"),
            (b"[1]", "body"),
            (br#"{"model":"afm"}"#, "prompt"),
            (
                br#"{"model":"afm","prompt":"x","max_tokens":0}"#,
                "max_tokens",
            ),
            (
                br#"{"model":"afm","prompt":"x","temperature":-1}"#,
                "temperature",
            ),
            (br#"{"model":"afm","prompt":"x","n":2}"#, "n"),
            (br#"{"model":"afm","prompt":"x","bogus":1}"#, "bogus"),
            (br#"{"model":"afm","prompt":[999999999]}"#, "prompt"),
        ];
        for (body, field) in cases {
            let e = parse_completion(body, &t, 256, &l).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, Some(field)), "{e:?}");
        }
        let e = parse_chat(br#"{"model":"afm","messages":[{"role":"user","content":"t"},{"role":"assistant","content":"x"}]}"#, &t, 256, &l, None).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[1].name"));
        let e = parse_chat(
            br#"{"model":"afm","messages":[{"role":"user","content":"t"}],"agent":"Nobody"}"#,
            &t,
            256,
            &l,
            None,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("agent"));
    }
}
