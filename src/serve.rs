//! `floe serve`: an OpenAI-compatible HTTP server (axum on tokio). The model runs on the thread that called
//! [`serve`] (GPU backends are not shared between threads); HTTP handlers parse and check requests, then queue
//! them to it and stream back what it generates. One generation at a time, in arrival order; a full queue
//! answers 429. Every bad request gets an OpenAI-style JSON error; nothing a client sends stops the server.
//!
//! Prefix reuse: after prefilling a conversation up to its last message (before the assistant turn opens), the
//! worker keeps a copy of the model state there. A later request whose prompt starts with a kept prefix (the
//! next turn of that conversation) continues from the copy and prefills only the rest.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State as AxumState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::backend::Backend;
use crate::chat::{ChatRequest, ChatTemplate};
use crate::generate::{Finish, Generation, Part, Session, ThoughtSplitter};
use crate::model::{Model, State};
use crate::sample::Sampling;
use crate::tool_calls::{Piece, ToolCall, ToolCallParser};

pub struct ServeOptions {
    pub addr: SocketAddr,
    pub api_key: Option<String>,
    /// The name `/v1/models` gives the model.
    pub model_name: String,
    /// Requests waiting or running at most; more get 429.
    pub queue_limit: usize,
    /// Largest request body, bytes.
    pub body_limit: usize,
    /// Prompt plus generated tokens at most.
    pub context: usize,
    /// Conversation states kept for prefix reuse.
    pub keep_states: usize,
    /// Tokens an answer may have when the request does not say.
    pub default_max_tokens: usize,
}

/// What the HTTP side hands the model thread.
struct Job {
    /// The prompt in two parts: the conversation up to its last message (a state is kept there) and the rest.
    prefix: String,
    rest: String,
    generation: Generation,
    tools: Vec<Value>,
    events: UnboundedSender<Event>,
}

/// What the model thread sends back while it works on a job.
enum Event {
    Reasoning(String),
    Content(String),
    Call(ToolCall),
    Done { finish: Finish, prompt_tokens: usize, completion_tokens: usize, tool_calls: bool },
    Failed(String),
}

impl From<Piece> for Event {
    fn from(p: Piece) -> Event {
        match p {
            Piece::Text(t) => Event::Content(t),
            Piece::Call(c) => Event::Call(c),
        }
    }
}

#[derive(Default)]
struct Metrics {
    requests: AtomicU64,
    errors: AtomicU64,
    prompt_tokens: AtomicU64,
    reused_prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    /// Nanoseconds spent generating (for tokens/s).
    generation_nanos: AtomicU64,
    queued: AtomicUsize,
}

struct App {
    jobs: std::sync::Mutex<mpsc::Sender<Job>>,
    options: ServeOptions,
    template: ChatTemplate,
    /// Tokens of a text (for the context-length check before queueing).
    tokenizer: tokenizers::Tokenizer,
    metrics: Arc<Metrics>,
    /// Expert streaming counters, when the model streams.
    store: Option<Arc<crate::store::ExpertStore>>,
}

/// Serves `model` until SIGINT or SIGTERM.
pub fn serve<B: Backend>(model: &Model<B>, tokenizer: &tokenizers::Tokenizer, eos: Vec<u32>, template: ChatTemplate, options: ServeOptions) -> Result<()> {
    let (jobs, queue) = mpsc::channel::<Job>();
    let metrics = Arc::new(Metrics::default());
    let addr = options.addr;
    let keep = options.keep_states;
    let app = Arc::new(App {
        jobs: std::sync::Mutex::new(jobs),
        options,
        template,
        tokenizer: tokenizer.clone(),
        metrics: metrics.clone(),
        store: model.store.clone(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind(addr)).with_context(|| format!("cannot listen on {addr}"))?;
    eprintln!("floe: serving on http://{}/v1 (Ctrl-C stops)", listener.local_addr()?);
    let server = std::thread::spawn(move || -> Result<()> {
        let router = router(app);
        runtime.block_on(async move {
            axum::serve(listener, router).with_graceful_shutdown(shutdown_signal()).await.context("the HTTP server failed")
        })
    });
    // The model thread: jobs one at a time until the server is gone (its senders dropped).
    let mut kept: VecDeque<(Vec<u32>, State<B>)> = VecDeque::new();
    while let Ok(job) = queue.recv() {
        let start = Instant::now();
        let result = run_job(model, tokenizer, &eos, &job, &mut kept, keep, &metrics);
        metrics.generation_nanos.fetch_add(start.elapsed().as_nanos() as u64, Relaxed);
        metrics.queued.fetch_sub(1, Relaxed);
        if let Err(e) = result {
            metrics.errors.fetch_add(1, Relaxed);
            let _ = job.events.send(Event::Failed(format!("{e:#}")));
        }
    }
    server.join().map_err(|_| anyhow::anyhow!("the HTTP thread panicked"))?
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    eprintln!("floe: shutting down");
}

/// Runs one job on the model thread: continue from the longest kept prefix, keep the state at the end of this
/// conversation's prefix, generate the answer streaming events; stop as soon as the client is gone.
fn run_job<B: Backend>(
    model: &Model<B>,
    tokenizer: &tokenizers::Tokenizer,
    eos: &[u32],
    job: &Job,
    kept: &mut VecDeque<(Vec<u32>, State<B>)>,
    keep: usize,
    metrics: &Metrics,
) -> Result<()> {
    let encode = |text: &str| -> Result<Vec<u32>> {
        Ok(tokenizer.encode(text, false).map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?.get_ids().to_vec())
    };
    let prefix = encode(&job.prefix)?;
    let rest = encode(&job.rest)?;
    let reuse = kept
        .iter()
        .enumerate()
        .filter(|(_, (ids, _))| ids.len() <= prefix.len() && prefix[..ids.len()] == ids[..])
        .max_by_key(|(_, (ids, _))| ids.len())
        .map(|(i, _)| i);
    let mut session = match reuse {
        Some(i) => {
            let (ids, state) = &kept[i];
            metrics.reused_prompt_tokens.fetch_add(ids.len() as u64, Relaxed);
            Session::resume(model, tokenizer, eos.to_vec(), model.copy_state(state)?, ids.clone())
        }
        None => Session::new(model, tokenizer, eos.to_vec())?,
    };
    let fed = session.history.len();
    session.feed(&prefix[fed..])?;
    if keep > 0 && !prefix.is_empty() && reuse.is_none_or(|i| kept[i].0.len() < prefix.len()) {
        if kept.len() >= keep {
            kept.pop_front();
        }
        kept.push_back((prefix.clone(), session.copy_state()?));
    }
    let mut parts = ThoughtSplitter::new(job.generation.thinking);
    let mut parser = ToolCallParser::with_tools(&job.tools);
    let mut any_call = false;
    let events = &job.events;
    // Thinking goes out as reasoning; the answer through the tool-call parser, as text and calls.
    let mut route = |split: Vec<Part>, parser: &mut ToolCallParser, ended: bool| -> bool {
        let mut out = Vec::new();
        for part in split {
            match part {
                Part::Thought(t) => out.push(Event::Reasoning(t)),
                Part::Answer(t) => out.extend(parser.push(&t).into_iter().map(Event::from)),
            }
        }
        if ended {
            out.extend(parser.finish().into_iter().map(Event::from));
        }
        for event in out {
            any_call |= matches!(event, Event::Call(_));
            if events.send(event).is_err() {
                return false;
            }
        }
        true
    };
    let outcome = session.generate_ids(&rest, &job.generation, |piece| route(parts.push(piece), &mut parser, false) && !events.is_closed())?;
    route(parts.finish(), &mut parser, true);
    metrics.prompt_tokens.fetch_add((prefix.len() + rest.len()) as u64, Relaxed);
    metrics.completion_tokens.fetch_add(outcome.generated_tokens as u64, Relaxed);
    let _ = events.send(Event::Done {
        finish: outcome.finish,
        prompt_tokens: prefix.len() + rest.len(),
        completion_tokens: outcome.generated_tokens,
        tool_calls: any_call,
    });
    Ok(())
}

fn router(app: Arc<App>) -> Router {
    let limit = app.options.body_limit;
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found_error", "no such endpoint") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}

/// An OpenAI-style error response.
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, kind, message: message.into(), param: None }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    fn param(mut self, param: &'static str) -> ApiError {
        self.param = Some(param);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": null}});
        (self.status, Json(body)).into_response()
    }
}

fn check_auth(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &app.options.api_key else { return Ok(()) };
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if g == key => Ok(()),
        _ => Err(ApiError::new(StatusCode::UNAUTHORIZED, "authentication_error", "missing or wrong API key (Authorization: Bearer …)")),
    }
}

/// `stop`: a string or a list of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// The parameters both completion endpoints take.
#[derive(Deserialize)]
struct Params {
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    n: Option<i64>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct ChatBody {
    messages: Vec<Value>,
    #[serde(default)]
    tools: Vec<Value>,
    tool_choice: Option<Value>,
    /// vLLM's spelling for template switches, e.g. {"enable_thinking": false}.
    chat_template_kwargs: Option<Value>,
    #[serde(flatten)]
    params: Params,
}

#[derive(Deserialize)]
struct CompletionBody {
    prompt: Value,
    #[serde(flatten)]
    params: Params,
}

/// A request body, or why it could not be read (too large, cut short).
type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

fn parse<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        let kind = if e.status() == StatusCode::PAYLOAD_TOO_LARGE { "request_too_large" } else { "invalid_request_error" };
        ApiError::new(e.status(), kind, e.body_text())
    })?;
    serde_json::from_slice(&body).map_err(|e| ApiError::bad(format!("invalid request body: {e}")))
}

impl Params {
    /// The generation these parameters ask for, checked.
    fn generation(&self, default_max: usize) -> Result<Generation, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad("only n = 1 is supported").param("n"));
        }
        let max = self.max_completion_tokens.or(self.max_tokens);
        if max.is_some_and(|m| m <= 0) {
            return Err(ApiError::bad("max_tokens must be at least 1").param("max_tokens"));
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::bad("temperature must be between 0 and 2").param("temperature"));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::bad("top_p must be in (0, 1]").param("top_p"));
        }
        let min_p = self.min_p.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&min_p) {
            return Err(ApiError::bad("min_p must be in [0, 1]").param("min_p"));
        }
        for (v, name) in [(self.presence_penalty, "presence_penalty"), (self.frequency_penalty, "frequency_penalty")] {
            if v.is_some_and(|v| !(-2.0..=2.0).contains(&v)) {
                return Err(ApiError::bad(format!("{name} must be between -2 and 2")).param(if name.starts_with('p') { "presence_penalty" } else { "frequency_penalty" }));
            }
        }
        let repetition_penalty = self.repetition_penalty.unwrap_or(1.0);
        if !(repetition_penalty > 0.0 && repetition_penalty.is_finite()) {
            return Err(ApiError::bad("repetition_penalty must be above 0").param("repetition_penalty"));
        }
        let stop = match &self.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > 4 || stop.iter().any(|s| s.is_empty()) {
            return Err(ApiError::bad("stop takes up to 4 non-empty strings").param("stop"));
        }
        Ok(Generation {
            max_tokens: max.map_or(default_max, |m| m as usize),
            sampling: Sampling {
                temperature,
                top_k: self.top_k.unwrap_or(0).max(0) as usize,
                top_p,
                min_p,
                repetition_penalty,
                presence_penalty: self.presence_penalty.unwrap_or(0.0),
                frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
                seed: self.seed.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)),
            },
            stop,
            ..Default::default()
        })
    }
}

/// Message checks the template does not do: roles, content types.
fn check_messages(messages: &[Value]) -> Result<Vec<Value>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad("messages must not be empty").param("messages"));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let Some(obj) = m.as_object() else { return Err(ApiError::bad(format!("messages[{i}] is not an object")).param("messages")) };
        let role = match obj.get("role").and_then(Value::as_str) {
            Some(r @ ("system" | "user" | "assistant" | "tool")) => r,
            Some("developer") => "system",
            Some(other) => return Err(ApiError::bad(format!("messages[{i}]: unknown role `{other}`")).param("messages")),
            None => return Err(ApiError::bad(format!("messages[{i}] has no role")).param("messages")),
        };
        let content = match obj.get("content") {
            None | Some(Value::Null) if role == "assistant" => Value::String(String::new()),
            Some(Value::String(s)) => Value::String(s.clone()),
            // Content parts: the text ones, joined.
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for p in parts {
                    match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        _ => return Err(ApiError::bad(format!("messages[{i}]: only text content parts are supported")).param("messages")),
                    }
                }
                Value::String(text)
            }
            _ => return Err(ApiError::bad(format!("messages[{i}]: content must be a string or a list of parts")).param("messages")),
        };
        let mut message = obj.clone();
        message.insert("role".into(), json!(role));
        message.insert("content".into(), content);
        // Tool-call arguments arrive as JSON strings; templates want objects.
        if let Some(Value::Array(calls)) = message.get_mut("tool_calls") {
            for call in calls {
                if let Some(args) = call.pointer_mut("/function/arguments") {
                    if let Value::String(s) = args {
                        *args = serde_json::from_str(s).map_err(|_| ApiError::bad(format!("messages[{i}]: tool call arguments are not JSON")).param("messages"))?;
                    }
                }
            }
        }
        out.push(Value::Object(message));
    }
    Ok(out)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn request_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{:x}{:04x}", now(), NEXT.fetch_add(1, Relaxed))
}

/// Queues a job; the receiver gets its events. 429 when the queue is full.
fn enqueue(app: &App, job_parts: (String, String, Generation, Vec<Value>)) -> Result<tokio::sync::mpsc::UnboundedReceiver<Event>, ApiError> {
    let (prefix, rest, generation, tools) = job_parts;
    let tokens = |t: &str| app.tokenizer.encode(t, false).map(|e| e.get_ids().len()).unwrap_or(0);
    let prompt_tokens = tokens(&prefix) + tokens(&rest);
    if prompt_tokens + generation.max_tokens > app.options.context {
        return Err(ApiError::bad(format!(
            "the prompt ({prompt_tokens} tokens) plus max_tokens ({}) exceeds the context of {} tokens",
            generation.max_tokens, app.options.context
        ))
        .param("messages"));
    }
    let queued = app.metrics.queued.fetch_add(1, Relaxed);
    if queued >= app.options.queue_limit {
        app.metrics.queued.fetch_sub(1, Relaxed);
        return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "the server is busy: too many queued requests"));
    }
    let (events, receiver) = unbounded_channel();
    let job = Job { prefix, rest, generation, tools, events };
    if app.jobs.lock().unwrap().send(job).is_err() {
        app.metrics.queued.fetch_sub(1, Relaxed);
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the server is shutting down"));
    }
    app.metrics.requests.fetch_add(1, Relaxed);
    Ok(receiver)
}

async fn chat_completions(AxumState(app): AxumState<Arc<App>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    check_auth(&app, &headers)?;
    let body: ChatBody = parse(body)?;
    let messages = check_messages(&body.messages)?;
    let mut generation = body.params.generation(app.options.default_max_tokens)?;
    let tools = match body.tool_choice.as_ref().and_then(Value::as_str) {
        Some("none") => vec![],
        _ => body.tools.clone(),
    };
    let enable_thinking = body.chat_template_kwargs.as_ref().and_then(|k| k.get("enable_thinking")).and_then(Value::as_bool);
    let render = |add_generation_prompt: bool| {
        let request = ChatRequest { messages: &messages, tools: &tools, add_generation_prompt, enable_thinking };
        app.template.render(&request).map_err(|e| ApiError::bad(format!("{e:#}")))
    };
    let full = render(true)?;
    // The conversation before the assistant turn opens: where a state is kept for the next turn.
    let before = render(false)?;
    let (prefix, rest) = match full.strip_prefix(&before) {
        Some(rest) => (before.clone(), rest.to_string()),
        None => (String::new(), full.clone()),
    };
    generation.thinking = full.ends_with("<think>\n");
    let stream = body.params.stream;
    let include_usage = body.params.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let receiver = enqueue(&app, (prefix, rest, generation, tools))?;
    let (id, created, model) = (request_id("chatcmpl"), now(), app.options.model_name.clone());
    if stream {
        return Ok(stream_chat(receiver, id, created, model, include_usage));
    }
    let (mut reasoning, mut content, mut calls) = (String::new(), String::new(), Vec::new());
    let mut receiver = receiver;
    while let Some(event) = receiver.recv().await {
        match event {
            Event::Reasoning(t) => reasoning.push_str(&t),
            Event::Content(t) => content.push_str(&t),
            Event::Call(c) => calls.push(c),
            Event::Failed(e) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e)),
            Event::Done { finish, prompt_tokens, completion_tokens, tool_calls } => {
                let mut message = json!({"role": "assistant", "content": if content.is_empty() && tool_calls { Value::Null } else { json!(content) }});
                if !reasoning.is_empty() {
                    message["reasoning_content"] = json!(reasoning);
                }
                if !calls.is_empty() {
                    message["tool_calls"] = json!(calls.iter().enumerate().map(|(i, c)| tool_call_json(&id, i, c)).collect::<Vec<_>>());
                }
                let finish_reason = if tool_calls { "tool_calls" } else { finish.reason() };
                return Ok(Json(json!({
                    "id": id, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": null}],
                    "usage": usage(prompt_tokens, completion_tokens),
                }))
                .into_response());
            }
        }
    }
    Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the generation ended without a result"))
}

fn tool_call_json(id: &str, i: usize, c: &ToolCall) -> Value {
    json!({"id": format!("call_{}_{i}", id.rsplit('-').next().unwrap_or("0")), "type": "function",
           "function": {"name": c.name, "arguments": c.arguments_json()}})
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`. A task turns the model thread's events
/// into chunks; when the client goes away the response (and with it the task's channel) is dropped, the task
/// stops, and the model thread stops at its next token.
fn stream_chat(
    mut receiver: tokio::sync::mpsc::UnboundedReceiver<Event>,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
) -> Response {
    let (out, body) = unbounded_channel::<Result<SseEvent, Infallible>>();
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Option<&str>| {
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]})
        };
        let send = |v: Value| out.send(Ok(SseEvent::default().data(v.to_string()))).is_ok();
        if !send(chunk(json!({"role": "assistant", "content": ""}), None)) {
            return;
        }
        let mut calls = 0;
        while let Some(event) = receiver.recv().await {
            let sent = match event {
                Event::Reasoning(t) => send(chunk(json!({"reasoning_content": t}), None)),
                Event::Content(t) => send(chunk(json!({"content": t}), None)),
                Event::Call(c) => {
                    let mut call = tool_call_json(&id, calls, &c);
                    call["index"] = json!(calls);
                    calls += 1;
                    send(chunk(json!({"tool_calls": [call]}), None))
                }
                Event::Done { finish, prompt_tokens, completion_tokens, tool_calls } => {
                    let reason = if tool_calls { "tool_calls" } else { finish.reason() };
                    let mut ok = send(chunk(json!({}), Some(reason)));
                    if include_usage {
                        let mut u = chunk(json!({}), None);
                        u["choices"] = json!([]);
                        u["usage"] = usage(prompt_tokens, completion_tokens);
                        ok &= send(u);
                    }
                    ok
                }
                Event::Failed(e) => send(json!({"error": {"message": e, "type": "server_error", "param": null, "code": null}})),
            };
            if !sent {
                return;
            }
        }
        let _ = out.send(Ok(SseEvent::default().data("[DONE]")));
    });
    Sse::new(UnboundedReceiverStream::new(body)).keep_alive(KeepAlive::default()).into_response()
}

async fn completions(AxumState(app): AxumState<Arc<App>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    check_auth(&app, &headers)?;
    let body: CompletionBody = parse(body)?;
    let prompt = match &body.prompt {
        Value::String(s) => s.clone(),
        Value::Array(a) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap().to_string(),
        _ => return Err(ApiError::bad("prompt must be a string").param("prompt")),
    };
    if prompt.is_empty() {
        return Err(ApiError::bad("prompt must not be empty").param("prompt"));
    }
    if body.params.stream {
        return Err(ApiError::bad("streaming is supported on /v1/chat/completions only").param("stream"));
    }
    let generation = body.params.generation(app.options.default_max_tokens)?;
    let mut receiver = enqueue(&app, (String::new(), prompt, generation, vec![]))?;
    let (id, created, model) = (request_id("cmpl"), now(), app.options.model_name.clone());
    let mut text = String::new();
    while let Some(event) = receiver.recv().await {
        match event {
            Event::Reasoning(t) | Event::Content(t) => text.push_str(&t),
            Event::Call(c) => text.push_str(&format!("<tool_call>{}</tool_call>", c.arguments_json())),
            Event::Failed(e) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e)),
            Event::Done { finish, prompt_tokens, completion_tokens, .. } => {
                return Ok(Json(json!({
                    "id": id, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": text, "finish_reason": finish.reason(), "logprobs": null}],
                    "usage": usage(prompt_tokens, completion_tokens),
                }))
                .into_response());
            }
        }
    }
    Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the generation ended without a result"))
}

async fn models(AxumState(app): AxumState<Arc<App>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    check_auth(&app, &headers)?;
    Ok(Json(json!({"object": "list", "data": [{"id": app.options.model_name, "object": "model", "created": 0, "owned_by": "floe"}]})))
}

async fn metrics(AxumState(app): AxumState<Arc<App>>) -> String {
    let m = &app.metrics;
    let secs = m.generation_nanos.load(Relaxed) as f64 * 1e-9;
    let completion = m.completion_tokens.load(Relaxed);
    let mut out = format!(
        "# TYPE floe_requests_total counter\nfloe_requests_total {}\n\
         # TYPE floe_request_errors_total counter\nfloe_request_errors_total {}\n\
         # TYPE floe_prompt_tokens_total counter\nfloe_prompt_tokens_total {}\n\
         # TYPE floe_prompt_tokens_reused_total counter\nfloe_prompt_tokens_reused_total {}\n\
         # TYPE floe_completion_tokens_total counter\nfloe_completion_tokens_total {completion}\n\
         # TYPE floe_generation_seconds_total counter\nfloe_generation_seconds_total {secs:.3}\n\
         # TYPE floe_tokens_per_second gauge\nfloe_tokens_per_second {:.2}\n\
         # TYPE floe_queue_length gauge\nfloe_queue_length {}\n",
        m.requests.load(Relaxed),
        m.errors.load(Relaxed),
        m.prompt_tokens.load(Relaxed),
        m.reused_prompt_tokens.load(Relaxed),
        if secs > 0.0 { completion as f64 / secs } else { 0.0 },
        m.queued.load(Relaxed),
    );
    if let Some(store) = &app.store {
        let s = store.stats();
        out += &format!(
            "# TYPE floe_expert_bytes_read_total counter\nfloe_expert_bytes_read_total {}\n\
             # TYPE floe_expert_cache_hit_rate gauge\nfloe_expert_cache_hit_rate{{cache=\"gpu\"}} {}\nfloe_expert_cache_hit_rate{{cache=\"ram\"}} {}\n",
            s.bytes_read,
            s.device_hit_rate().unwrap_or(0.0),
            s.ram_hit_rate().unwrap_or(0.0)
        );
    }
    out
}
