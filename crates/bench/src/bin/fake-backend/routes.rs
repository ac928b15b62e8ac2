//! The fake's OpenAI and llama-server routes: models, completions (whole and streamed),
//! embeddings, tokenize/detokenize and props, in the JSON shapes the real server uses.

use super::{error, say, Backend, Busy, Shared};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub async fn models(State(b): State<Shared>) -> Json<Value> {
    Json(json!({"object": "list", "data": [
        {"id": b.args.model, "object": "model", "created": now(), "owned_by": "llamacpp"}
    ]}))
}

pub async fn props(State(b): State<Shared>) -> Json<Value> {
    Json(json!({
        "default_generation_settings": {"n_ctx": 4096, "params": {"n_predict": -1}},
        "total_slots": 1, "model_path": b.args.model, "build_info": "fake-backend",
    }))
}

/// llama-server's `--metrics` text, with its names and types (a "counter" without `_total`
/// among them): completions answered so far, and requests being answered now.
pub async fn metrics(State(b): State<Shared>) -> Response {
    let answered = b.ids.load(Ordering::Relaxed);
    let busy = b.busy.load(Ordering::SeqCst);
    let text = format!(
        "# HELP llamacpp:n_decode_total Total number of llama_decode() calls\n\
         # TYPE llamacpp:n_decode_total counter\n\
         llamacpp:n_decode_total {answered}\n\
         # HELP llamacpp:n_tokens_max Largest observed sequence length (prompt + generation)\n\
         # TYPE llamacpp:n_tokens_max counter\n\
         llamacpp:n_tokens_max 0\n\
         # HELP llamacpp:requests_processing Number of requests processing\n\
         # TYPE llamacpp:requests_processing gauge\n\
         llamacpp:requests_processing {busy}\n"
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

fn bad_request(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, message, "invalid_request_error")
}

fn parse_json(body: &Bytes) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

/// Flattens a message `content` (string or array of text parts) or a `prompt` to text.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .map(|p| p.get("text").map_or_else(|| text_of(p), text_of))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

pub async fn chat(State(b): State<Shared>, body: Bytes) -> Response {
    let busy = b.busy();
    let request = match parse_json(&body) {
        Ok(request) => request,
        Err(e) => return bad_request(&e),
    };
    let Some(messages) = request["messages"].as_array() else {
        return bad_request("'messages' is required and must be an array");
    };
    let last_user = messages.iter().rev().find(|m| m["role"] == "user");
    let text = format!(
        "fake: {}",
        last_user
            .map(|m| text_of(&m["content"]))
            .unwrap_or_default()
    );
    let prompt_tokens = messages
        .iter()
        .map(|m| words(&text_of(&m["content"])))
        .sum();
    let reply = Reply::new(&b, Kind::Chat, text, prompt_tokens);
    answer(b, busy, reply, &request).await
}

pub async fn completions(State(b): State<Shared>, body: Bytes) -> Response {
    let busy = b.busy();
    let request = match parse_json(&body) {
        Ok(request) => request,
        Err(e) => return bad_request(&e),
    };
    if request.get("prompt").is_none() {
        return bad_request("'prompt' is required");
    }
    let prompt = text_of(&request["prompt"]);
    let reply = Reply::new(&b, Kind::Text, format!("fake: {prompt}"), words(&prompt));
    answer(b, busy, reply, &request).await
}

#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Text,
}

/// One answer: its text and the fields every object (or stream chunk) of it shares.
#[derive(Clone)]
struct Reply {
    kind: Kind,
    id: String,
    model: String,
    created: u64,
    text: String,
    prompt_tokens: usize,
}

impl Reply {
    fn new(b: &Backend, kind: Kind, text: String, prompt_tokens: usize) -> Reply {
        let prefix = match kind {
            Kind::Chat => "chatcmpl",
            Kind::Text => "cmpl",
        };
        let id = format!("{prefix}-fake{}", b.ids.fetch_add(1, Ordering::Relaxed));
        let (model, created) = (b.args.model.clone(), now());
        Reply {
            kind,
            id,
            model,
            created,
            text,
            prompt_tokens,
        }
    }

    fn usage(&self, completion: usize) -> Value {
        let prompt = self.prompt_tokens;
        json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
    }

    fn object(&self, object: &str, choice: Value) -> Value {
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
            "choices": [choice]})
    }

    /// The non-streamed answer, with usage.
    fn whole(&self) -> Value {
        let mut whole = match self.kind {
            Kind::Chat => self.object(
                "chat.completion",
                json!({"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": self.text}}),
            ),
            Kind::Text => self.object(
                "text_completion",
                json!({"index": 0, "finish_reason": "stop",
                "text": self.text, "logprobs": null}),
            ),
        };
        whole["usage"] = self.usage(words(&self.text));
        whole
    }

    /// A stream chunk: `Some(text)` for content, `None` for the final one with `finish_reason`.
    fn chunk(&self, text: Option<&str>, first: bool) -> Value {
        let finish = text.is_none().then_some("stop");
        match self.kind {
            Kind::Chat => {
                let delta = match (text, first) {
                    (None, _) => json!({}),
                    (Some(t), true) => json!({"role": "assistant", "content": t}),
                    (Some(t), false) => json!({"content": t}),
                };
                let choice = json!({"index": 0, "delta": delta, "finish_reason": finish});
                self.object("chat.completion.chunk", choice)
            }
            Kind::Text => self.object(
                "text_completion",
                json!({"index": 0,
                "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish}),
            ),
        }
    }
}

/// Waits `delay`, and not at all when it is zero: `tokio::time::sleep(ZERO)` still waits for the
/// timer's next millisecond tick, which would make the "trivial" upstream of the proxy benchmark
/// answer on a 1 ms grid instead of at once.
async fn pause(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

/// Answers a completion request, whole or as an SSE stream of one word per chunk: the words of
/// the reply repeat until `stream-chunks` chunks are sent, then a final chunk (with usage when
/// `stream_options.include_usage` is set) and `data: [DONE]`.
async fn answer(b: Shared, busy: Busy, reply: Reply, request: &Value) -> Response {
    if b.mode.completions_fail {
        let message = b
            .mode
            .fail_message
            .as_deref()
            .unwrap_or("fake completion failure (completions-fail)");
        return error(StatusCode::INTERNAL_SERVER_ERROR, message, "server_error");
    }
    if b.mode.completions_hang {
        std::future::pending::<()>().await;
    }
    pause(b.mode.response_delay).await;
    if request["stream"] != json!(true) {
        return Json(reply.whole()).into_response();
    }
    let include_usage = request["stream_options"]["include_usage"] == json!(true);
    let chunks = b.mode.stream_chunks;
    let events = futures_util::stream::unfold((0usize, busy), move |(i, busy)| {
        let (b, reply) = (b.clone(), reply.clone());
        async move {
            if i > chunks + 1 {
                return None;
            }
            if i > 0 && i <= chunks {
                pause(b.mode.stream_delay).await;
            }
            if b.mode.die_mid_stream == Some(i) {
                tokio::time::sleep(Duration::from_millis(20)).await; // let sent chunks leave
                say(&format!("error: fake death mid-stream after {i} chunks"));
                if b.mode.segv_mid_stream {
                    super::segfault();
                }
                std::process::exit(1);
            }
            if b.hung() {
                std::future::pending::<()>().await;
            }
            let event = if i < chunks {
                let words: Vec<&str> = reply.text.split_whitespace().collect();
                let word = words
                    .get(i % words.len().max(1))
                    .copied()
                    .unwrap_or_default();
                let text = if i == 0 {
                    word.to_string()
                } else {
                    format!(" {word}")
                };
                reply.chunk(Some(&text), i == 0).to_string()
            } else if i == chunks {
                let mut last = reply.chunk(None, false);
                if include_usage {
                    last["usage"] = reply.usage(chunks);
                }
                last.to_string()
            } else {
                "[DONE]".to_string()
            };
            let bytes = Bytes::from(format!("data: {event}\n\n"));
            Some((Ok::<_, std::convert::Infallible>(bytes), (i + 1, busy)))
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(events))
        .unwrap_or_else(|e| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &e.to_string(),
                "server_error",
            )
        })
}

/// Deterministic 8-dimensional vectors derived from a hash of each input.
pub async fn embeddings(State(b): State<Shared>, body: Bytes) -> Response {
    let _busy = b.busy();
    let request = match parse_json(&body) {
        Ok(request) => request,
        Err(e) => return bad_request(&e),
    };
    let inputs: Vec<String> = match &request["input"] {
        Value::Array(items) => items.iter().map(text_of).collect(),
        Value::Null => return bad_request("'input' is required"),
        other => vec![text_of(other)],
    };
    pause(b.mode.response_delay).await;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let digest = Sha256::digest(input.as_bytes());
            let vector: Vec<f64> = digest
                .iter()
                .take(8)
                .map(|&x| f64::from(x) / 255.0 - 0.5)
                .collect();
            json!({"object": "embedding", "index": index, "embedding": vector})
        })
        .collect();
    let tokens: usize = inputs.iter().map(|i| words(i)).sum();
    let usage = json!({"prompt_tokens": tokens, "total_tokens": tokens});
    Json(json!({"object": "list", "data": data, "model": b.args.model, "usage": usage}))
        .into_response()
}

/// Tokens are the UTF-8 bytes of the text, so `/detokenize` inverts `/tokenize` exactly.
pub async fn tokenize(body: Bytes) -> Response {
    match parse_json(&body) {
        Ok(request) => {
            Json(json!({"tokens": text_of(&request["content"]).into_bytes()})).into_response()
        }
        Err(e) => bad_request(&e),
    }
}

pub async fn detokenize(body: Bytes) -> Response {
    let request = match parse_json(&body) {
        Ok(request) => request,
        Err(e) => return bad_request(&e),
    };
    let bytes: Vec<u8> = request["tokens"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(Value::as_u64)
                .map(|v| (v & 0xff) as u8)
                .collect()
        })
        .unwrap_or_default();
    Json(json!({"content": String::from_utf8_lossy(&bytes)})).into_response()
}
