//! The workload: one task sent through `/v1/chat/completions` as a streaming request, timed to
//! the first content chunk and to the end, with its completion-token count and what its prompt
//! cost (see `usage`).

use super::prefix::Framing;
use super::stack::Stack;
use super::task::Task;
use futures_util::StreamExt;
use sentinel_supervisor::metrics::tokens::PromptUsage;
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
    /// `X-Sentinel-Served-By`: `local` or the upstream that answered (`None`: not said).
    pub served_by: Option<String>,
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
    /// Bytes of the line not yet ended: decoded only once whole, so a character split across
    /// network chunks is not mangled.
    buffer: Vec<u8>,
    pub answer: String,
    pub first_content: Option<Instant>,
    pub content_chunks: u64,
    pub usage_tokens: Option<u64>,
    /// From the chunk with `usage` / `timings` (llama-server sends both in its last one).
    pub prompt_usage: Option<PromptUsage>,
    pub done: bool,
}

impl StreamState {
    /// Feeds raw bytes; complete `data:` lines are decoded and parsed as they arrive.
    pub fn feed(&mut self, bytes: &[u8], now: Instant) -> Result<(), RequestError> {
        self.buffer.extend_from_slice(bytes);
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            self.line(String::from_utf8_lossy(&line).trim(), now)?;
        }
        Ok(())
    }

    /// Handles whatever is left when the stream ends without a final newline.
    pub fn finish(&mut self, now: Instant) -> Result<(), RequestError> {
        let rest = std::mem::take(&mut self.buffer);
        self.line(String::from_utf8_lossy(&rest).trim(), now)
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
        let served_by = resp
            .headers()
            .get(sentinel_supervisor::upstream::spill::SERVED_BY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
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
        Ok((state, served_by))
    };
    let (state, served_by) = tokio::time::timeout(timeout, exchange)
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
        served_by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The captured answers of the pinned llama-server (`testdata/`), read through this parser
    // and the product's `PromptUsage`.
    /// The usage a captured SSE stream ends with, read through the bench's stream parser.
    fn streamed(text: &str) -> Option<PromptUsage> {
        let mut s = StreamState::default();
        s.feed(text.as_bytes(), Instant::now()).unwrap();
        s.finish(Instant::now()).unwrap();
        s.prompt_usage
    }

    #[test]
    fn a_cold_stream_prefills_everything() {
        let u = streamed(include_str!("testdata/llama-sse-cold.txt")).unwrap();
        assert_eq!(u.prompt_tokens, Some(53));
        assert_eq!(u.cached_tokens, Some(0));
        assert_eq!(u.prefilled_tokens, Some(53));
        assert_eq!(u.prefill_ms, Some(652.059));
        assert_eq!(u.predicted_tokens, Some(4));
    }

    #[test]
    fn a_warm_stream_reuses_the_cached_prefix() {
        let u = streamed(include_str!("testdata/llama-sse-warm.txt")).unwrap();
        assert_eq!(u.prompt_tokens, Some(53));
        assert_eq!(u.cached_tokens, Some(48));
        assert_eq!(u.prefilled_tokens, Some(5));
        assert_eq!(u.prefill_ms, Some(215.509));
    }

    #[test]
    fn cache_prompt_false_reuses_nothing() {
        let u = streamed(include_str!("testdata/llama-sse-cache-off.txt")).unwrap();
        assert_eq!((u.cached_tokens, u.prefilled_tokens), (Some(0), Some(53)));
    }

    #[test]
    fn a_whole_answer_carries_the_same_figures() {
        let v: Value =
            serde_json::from_str(include_str!("testdata/llama-whole-warm.json")).unwrap();
        let u = PromptUsage::from_response(&v).unwrap();
        assert_eq!(u.prompt_tokens, Some(53));
        assert_eq!(u.cached_tokens, Some(48));
        assert_eq!(u.prefilled_tokens, Some(5));
    }

    fn task(schema: Option<Value>) -> Task {
        Task {
            id: "t".into(),
            category: "c".into(),
            system: Some("sys".into()),
            prompt: "p".into(),
            scorer: crate::score::Scorer::Technique {
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

    #[test]
    fn a_character_split_across_chunks_is_kept_whole() {
        let t0 = Instant::now();
        let event = "data: {\"choices\":[{\"delta\":{\"content\":\"é → ✓\"}}]}\n\n".as_bytes();
        // Cut inside the two-byte 'é' and inside the three-byte '✓'.
        let e = event.iter().position(|&b| b == 0xC3).unwrap() + 1;
        let check = event.iter().position(|&b| b == 0xE2).unwrap();
        let tick = event[check + 1..].iter().position(|&b| b == 0xE2).unwrap() + check + 2;
        let mut s = StreamState::default();
        for chunk in [&event[..e], &event[e..tick], &event[tick..]] {
            s.feed(chunk, t0).unwrap();
        }
        assert_eq!(s.answer, "é → ✓");
        assert_eq!(s.content_chunks, 1);
        // The same split left unended until the stream closes.
        let mut unended = StreamState::default();
        unended.feed(&event[..e], t0).unwrap();
        unended.feed(event[e..].trim_ascii_end(), t0).unwrap();
        unended.finish(t0).unwrap();
        assert_eq!(unended.answer, "é → ✓");
    }

    proptest::proptest! {
        /// However the stream is cut into chunks (even inside a UTF-8 character), the same
        /// answer, chunk count and usage come out.
        #[test]
        fn any_chunking_of_a_stream_gives_the_same_events(
            pieces in proptest::collection::vec("[a-z é€🙂\\\"]{0,6}", 1..8),
            cuts in proptest::collection::vec(0usize..400, 0..12),
        ) {
            let mut stream = Vec::new();
            for p in &pieces {
                let chunk = serde_json::json!({"choices": [{"delta": {"content": p}}]});
                stream.extend_from_slice(format!("data: {chunk}\n\n").as_bytes());
            }
            stream.extend_from_slice(b"data: {\"choices\":[],\"usage\":{\"completion_tokens\":7}}\n\ndata: [DONE]\n\n");
            let now = Instant::now();
            let mut whole = StreamState::default();
            whole.feed(&stream, now).unwrap();
            whole.finish(now).unwrap();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut split = StreamState::default();
            let mut at = 0;
            for c in cuts.into_iter().chain(std::iter::once(stream.len())) {
                split.feed(&stream[at..c], now).unwrap();
                at = c;
            }
            split.finish(now).unwrap();
            proptest::prop_assert_eq!(&split.answer, &pieces.concat());
            proptest::prop_assert_eq!(&split.answer, &whole.answer);
            proptest::prop_assert_eq!(split.content_chunks, whole.content_chunks);
            proptest::prop_assert_eq!(split.usage_tokens, Some(7));
            proptest::prop_assert!(split.done);
        }
    }

    /// The bench's task set against the product's validator: every request it sends passes
    /// unchanged, under the balanced profile's rules (one slot, no grammar).
    #[test]
    fn every_request_the_bench_sends_passes_unchanged() {
        use sentinel_supervisor::proxy::validate::{check, Route, Rules};
        let config = sentinel_supervisor::config::Config::builtin().unwrap();
        let rules = Rules {
            profile: "balanced",
            max_tokens: 100,
            slots: 1,
            grammar: false,
            extra_fields: &[],
            limits: &config.proxy.grammar,
            vocab_size: Some(1000),
            projector: false,
        };
        let tasks = crate::task::parse(
            crate::task::BUILTIN_TASKS,
            std::path::Path::new("tasks.jsonl"),
        )
        .unwrap();
        let schemas = tasks.iter().filter(|t| t.schema.is_some()).count();
        assert!(schemas > 0);
        for task in &tasks {
            for (cache_prompt, schema_mode) in [(true, true), (false, false)] {
                let shape = Shape {
                    framing: None,
                    cache_prompt,
                    schema_mode,
                };
                let body = serde_json::to_vec(&request_body(task, shape, 96)).unwrap();
                let checked = check(Route::Chat, &body, &rules)
                    .unwrap_or_else(|e| panic!("{}: {e}", task.id));
                assert_eq!(checked.body, None, "{}", task.id);
            }
        }
    }
}
