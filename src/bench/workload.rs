//! The workload: one task sent through `/v1/chat/completions` as a streaming request, timed to
//! the first content chunk and to the end, with its completion-token count and what its prompt
//! cost (see `usage`).

use super::prefix::Framing;
use super::stack::Stack;
use super::task::Task;
use super::usage::PromptUsage;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// What one request produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub answer: String,
    pub latency: Duration,
    /// Time to the first non-empty content chunk.
    pub ttft: Option<Duration>,
    /// From the final usage chunk, else the number of content chunks.
    pub completion_tokens: Option<u64>,
    /// Prompt and cached tokens and prefill time, when the backend reported them.
    pub prompt_usage: Option<PromptUsage>,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request failed: {0}")]
    Transport(String),
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the stream reported an error: {0}")]
    Stream(String),
    #[error("no answer within {0} s (raise [bench] request_timeout)")]
    Timeout(u64),
}

/// How a run sends its tasks.
#[derive(Debug, Clone, Copy)]
pub struct Shape<'a> {
    /// Behind its category's shared prefix, or (`None`) as written.
    pub framing: Option<&'a Framing>,
    /// `false` sends `cache_prompt: false` (llama-server then prefills the whole prompt).
    pub cache_prompt: bool,
    /// Tasks with a schema are sent `response_format: json_schema`.
    pub schema_mode: bool,
}

/// The request body for `task`.
pub fn request_body(task: &Task, shape: Shape<'_>, max_tokens: u32) -> Value {
    let mut body = json!({
        "messages": super::prefix::messages(task, shape.framing),
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if !shape.cache_prompt {
        body["cache_prompt"] = json!(false);
    }
    if let (true, Some(schema)) = (shape.schema_mode, &task.schema) {
        body["response_format"] = json!({
            "type": "json_schema",
            "json_schema": {"name": "answer", "strict": true, "schema": schema},
        });
    }
    body
}

/// Accumulates a server-sent-event stream of chat completion chunks.
#[derive(Debug, Default)]
pub struct StreamState {
    buffer: String,
    pub answer: String,
    pub first_content: Option<Instant>,
    pub content_chunks: u64,
    pub usage_tokens: Option<u64>,
    /// From the chunk with `usage` / `timings` (llama-server sends both in its last one).
    pub prompt_usage: Option<PromptUsage>,
    pub done: bool,
}

impl StreamState {
    /// Feeds raw bytes; complete `data:` lines are parsed as they arrive.
    pub fn feed(&mut self, bytes: &[u8], now: Instant) -> Result<(), RequestError> {
        self.buffer.push_str(&String::from_utf8_lossy(bytes));
        while let Some(end) = self.buffer.find('\n') {
            let line: String = self.buffer.drain(..=end).collect();
            self.line(line.trim(), now)?;
        }
        Ok(())
    }

    /// Handles whatever is left when the stream ends without a final newline.
    pub fn finish(&mut self, now: Instant) -> Result<(), RequestError> {
        let rest = std::mem::take(&mut self.buffer);
        self.line(rest.trim(), now)
    }

    fn line(&mut self, line: &str, now: Instant) -> Result<(), RequestError> {
        let Some(data) = line.strip_prefix("data:").map(str::trim) else {
            return Ok(());
        };
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return Ok(());
        };
        if let Some(err) = chunk.get("error") {
            let msg = err["message"]
                .as_str()
                .map_or_else(|| err.to_string(), str::to_string);
            return Err(RequestError::Stream(msg));
        }
        if let Some(text) = chunk["choices"][0]["delta"]["content"].as_str() {
            if !text.is_empty() {
                self.first_content.get_or_insert(now);
                self.content_chunks += 1;
                self.answer.push_str(text);
            }
        }
        if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
            self.usage_tokens = Some(n);
        }
        if let Some(u) = PromptUsage::from_response(&chunk) {
            self.prompt_usage = Some(self.prompt_usage.unwrap_or_default().merge(u));
        }
        Ok(())
    }
}

/// Sends `task` and reads the streamed answer.
pub async fn ask(
    client: &reqwest::Client,
    stack: &Stack,
    task: &Task,
    shape: Shape<'_>,
    max_tokens: u32,
    timeout: Duration,
) -> Result<Outcome, RequestError> {
    let body = request_body(task, shape, max_tokens);
    let started = Instant::now();
    let exchange = async {
        let resp = stack
            .request(client, reqwest::Method::POST, "/v1/chat/completions")
            .json(&body)
            .send()
            .await
            .map_err(|e| RequestError::Transport(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(RequestError::Status {
                status: status.as_u16(),
                body: text.chars().take(300).collect(),
            });
        }
        let mut state = StreamState::default();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let bytes = chunk.map_err(|e| RequestError::Transport(e.to_string()))?;
            state.feed(&bytes, Instant::now())?;
            if state.done {
                break;
            }
        }
        state.finish(Instant::now())?;
        Ok(state)
    };
    let state = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| RequestError::Timeout(timeout.as_secs()))??;
    Ok(Outcome {
        latency: started.elapsed(),
        ttft: state.first_content.map(|t| t.duration_since(started)),
        completion_tokens: state
            .usage_tokens
            .or((state.content_chunks > 0).then_some(state.content_chunks)),
        prompt_usage: state.prompt_usage,
        answer: state.answer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(schema: Option<Value>) -> Task {
        Task {
            id: "t".into(),
            category: "c".into(),
            system: Some("sys".into()),
            prompt: "p".into(),
            scorer: crate::bench::score::Scorer::Technique {
                answer: "T1059".into(),
            },
            schema,
            example_answer: None,
        }
    }

    fn shape(schema_mode: bool) -> Shape<'static> {
        Shape {
            framing: None,
            cache_prompt: true,
            schema_mode,
        }
    }

    #[test]
    fn body_is_deterministic_bounded_and_streams() {
        let b = request_body(&task(Some(json!({"type": "object"}))), shape(true), 64);
        // The backend's default (cache the prompt) is not spelled out; only turning it off is.
        assert!(b.get("cache_prompt").is_none());
        let off = Shape {
            cache_prompt: false,
            ..shape(false)
        };
        assert_eq!(request_body(&task(None), off, 64)["cache_prompt"], false);
        assert_eq!(b["temperature"], 0);
        assert_eq!(b["max_tokens"], 64);
        assert_eq!(b["stream"], true);
        assert_eq!(b["messages"][0]["role"], "system");
        assert_eq!(b["messages"][1]["content"], "p");
        assert_eq!(b["response_format"]["type"], "json_schema");
        assert_eq!(
            b["response_format"]["json_schema"]["schema"]["type"],
            "object"
        );
        assert!(request_body(&task(Some(json!({}))), shape(false), 64)
            .get("response_format")
            .is_none());
        assert!(request_body(&task(None), shape(true), 64)
            .get("response_format")
            .is_none());
    }

    #[test]
    fn parses_a_split_sse_stream() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(5);
        let mut s = StreamState::default();
        s.feed(
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            t0,
        )
        .unwrap();
        assert!(s.first_content.is_none());
        s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"mal", t1)
            .unwrap();
        s.feed(
            b"\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"icious\"}}]}\n\n",
            t1 + Duration::from_millis(5),
        )
        .unwrap();
        s.feed(
            b"data: {\"choices\":[],\"usage\":{\"completion_tokens\":3}}\n\ndata: [DONE]",
            t1,
        )
        .unwrap();
        assert!(!s.done);
        s.finish(t1).unwrap();
        assert!(s.done);
        assert_eq!(s.answer, "malicious");
        assert_eq!(s.content_chunks, 2);
        assert_eq!(s.usage_tokens, Some(3));
        assert_eq!(s.first_content, Some(t1 + Duration::from_millis(5)));
        let mut e = StreamState::default();
        let err = e
            .feed(b"data: {\"error\":{\"message\":\"boom\"}}\n", t0)
            .unwrap_err();
        assert!(err.to_string().contains("boom"));
    }
}
