//! Token counts and the first generated token of one answer, read from llama-server's response
//! as it passes to the client, without holding it back. The one reader of a response's token
//! accounting: `/metrics` and `/status` count with it, and `sentinel-bench` reads each task's
//! prompt, cached and prefilled tokens and prefill time with [`PromptUsage`].
//!
//! llama-server puts `timings` (`prompt_n` evaluated, `cache_n` reused from the cache,
//! `predicted_n` generated, `prompt_ms` the prefill time) in a whole answer and in the last
//! event of a stream, and the OpenAI `usage` object in a whole answer (and in a stream's usage
//! event when `stream_options.include_usage` is set):
//! ```text
//! "usage":   {"prompt_tokens": 53, "completion_tokens": 4,
//!             "prompt_tokens_details": {"cached_tokens": 48}},
//! "timings": {"cache_n": 48, "prompt_n": 5, "prompt_ms": 215.5, "predicted_n": 4, ...}
//! ```
//! `timings` wins, figure by figure, when both are there: only it tells cached tokens apart in
//! every llama-server version; `usage` fills what it lacks, so an OpenAI-style backend without
//! `timings` still reports what it can. A stream is split into SSE events as its
//! frames pass, keeping only the unfinished line; a JSON answer's frames are kept (shared, not
//! copied) up to [`MAX_JSON_BYTES`] and parsed once it has ended.

use bytes::Bytes;
use serde_json::Value;

/// Largest JSON answer whose token counts are read (larger ones pass uncounted).
pub(crate) const MAX_JSON_BYTES: usize = 1 << 20;

/// Longest SSE line kept while waiting for its end (a longer one stops the reading, not the
/// stream).
const MAX_LINE_BYTES: usize = 256 * 1024;

/// Tokens of one answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tokens {
    /// Prompt tokens, cached ones included.
    pub prompt: u64,
    /// Prompt tokens reused from the cache.
    pub cached: u64,
    pub generated: u64,
}

/// Where counts came from; `timings` is preferred.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Usage,
    Timings,
}

/// The token accounting of one response object or stream event; a figure it does not carry is
/// `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct PromptUsage {
    /// Every token of the prompt, cached or not.
    pub prompt_tokens: Option<u64>,
    /// Prompt tokens reused from the backend's prompt cache (not prefilled again).
    pub cached_tokens: Option<u64>,
    /// Prompt tokens this request prefilled.
    pub prefilled_tokens: Option<u64>,
    /// Time the backend spent prefilling them, in milliseconds (`timings.prompt_ms`).
    pub prefill_ms: Option<f64>,
    /// Tokens generated.
    pub predicted_tokens: Option<u64>,
}

impl PromptUsage {
    /// Reads `timings` and `usage` of one response object or stream event; `None` when it has
    /// neither (an ordinary content chunk).
    pub fn from_response(v: &Value) -> Option<PromptUsage> {
        Self::read(v).map(|(usage, _)| usage)
    }

    fn read(v: &Value) -> Option<(PromptUsage, Source)> {
        let usage = v.get("usage").filter(|u| u.is_object());
        let timings = v.get("timings").filter(|t| t.is_object());
        let source = match (timings, usage) {
            (Some(_), _) => Source::Timings,
            (None, Some(_)) => Source::Usage,
            (None, None) => return None,
        };
        let u = |k: &str| usage.and_then(|u| count(u, k));
        let t = |k: &str| timings.and_then(|t| count(t, k));
        let (prompt_n, cache_n) = (t("prompt_n"), t("cache_n"));
        let prompt_tokens = prompt_n
            .map(|p| p + cache_n.unwrap_or(0))
            .or(u("prompt_tokens"));
        let cached_tokens = cache_n
            .or_else(|| usage.and_then(|u| count(u.get("prompt_tokens_details")?, "cached_tokens")))
            .or(u("cached_tokens"));
        let prefilled_tokens = prompt_n.or(prompt_tokens
            .zip(cached_tokens)
            .map(|(p, c)| p.saturating_sub(c)));
        let usage = PromptUsage {
            prompt_tokens,
            cached_tokens,
            prefilled_tokens,
            prefill_ms: timings
                .and_then(|t| t.get("prompt_ms"))
                .and_then(Value::as_f64),
            predicted_tokens: t("predicted_n").or(u("completion_tokens")),
        };
        Some((usage, source))
    }

    /// Keeps every figure `later` has, and ours where it has none (a stream may send `usage`
    /// and `timings` in different events).
    pub fn merge(self, later: PromptUsage) -> PromptUsage {
        PromptUsage {
            prompt_tokens: later.prompt_tokens.or(self.prompt_tokens),
            cached_tokens: later.cached_tokens.or(self.cached_tokens),
            prefilled_tokens: later.prefilled_tokens.or(self.prefilled_tokens),
            prefill_ms: later.prefill_ms.or(self.prefill_ms),
            predicted_tokens: later.predicted_tokens.or(self.predicted_tokens),
        }
    }

    /// The counts `/metrics` adds up (a missing figure counts 0).
    pub(crate) fn tokens(self) -> Tokens {
        Tokens {
            prompt: self.prompt_tokens.unwrap_or(0),
            cached: self.cached_tokens.unwrap_or(0),
            generated: self.predicted_tokens.unwrap_or(0),
        }
    }
}

fn count(v: &Value, key: &str) -> Option<u64> {
    v.get(key)?.as_u64()
}

/// The counts one response object (a whole answer or one stream event) carries.
fn from_value(v: &Value) -> Option<(Tokens, Source)> {
    PromptUsage::read(v).map(|(usage, source)| (usage.tokens(), source))
}

/// Whether a stream event carries generated text (OpenAI chat `delta.content`, OpenAI text
/// `text`, or llama-server's native `content`).
fn has_token(v: &Value) -> bool {
    let non_empty = |v: Option<&Value>| v.and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    let choice = v.get("choices").and_then(|c| c.get(0));
    non_empty(
        choice
            .and_then(|c| c.get("delta"))
            .and_then(|d| d.get("content")),
    ) || non_empty(choice.and_then(|c| c.get("text")))
        || non_empty(v.get("content"))
}

/// Reads one response body as it passes.
#[derive(Debug)]
pub(crate) enum Reader {
    Sse(SseReader),
    Json {
        frames: Vec<Bytes>,
        len: usize,
        overflow: bool,
    },
}

impl Reader {
    /// A reader for a body of `content_type`; `None` when it cannot carry token counts.
    pub(crate) fn for_content_type(content_type: Option<&str>) -> Option<Reader> {
        let ct = content_type?.trim().to_ascii_lowercase();
        if ct.starts_with("text/event-stream") {
            Some(Reader::Sse(SseReader::default()))
        } else if ct.starts_with("application/json") {
            Some(Reader::Json {
                frames: Vec::new(),
                len: 0,
                overflow: false,
            })
        } else {
            None
        }
    }

    /// Takes one data frame; true when it held a stream's first generated token.
    pub(crate) fn feed(&mut self, data: &Bytes) -> bool {
        match self {
            Reader::Sse(sse) => sse.feed(data),
            Reader::Json {
                frames,
                len,
                overflow,
            } => {
                *len += data.len();
                if *len > MAX_JSON_BYTES {
                    *overflow = true;
                    frames.clear();
                } else if !*overflow {
                    frames.push(data.clone());
                }
                false
            }
        }
    }

    /// The answer's counts, once its body has ended (or been cut off).
    pub(crate) fn finish(self) -> Option<Tokens> {
        match self {
            Reader::Sse(sse) => sse.best.map(|(t, _)| t),
            Reader::Json { overflow: true, .. } => None,
            Reader::Json { frames, .. } => {
                let v: Value = serde_json::from_slice(&frames.concat()).ok()?;
                from_value(&v).map(|(t, _)| t)
            }
        }
    }
}

/// Splits a stream into SSE events, looking into those that may matter.
#[derive(Debug, Default)]
pub(crate) struct SseReader {
    /// The unfinished line.
    line: Vec<u8>,
    /// The `data:` lines of the unfinished event.
    data: Vec<u8>,
    best: Option<(Tokens, Source)>,
    first_token_seen: bool,
    /// A line too long to keep: reading stopped.
    gave_up: bool,
}

impl SseReader {
    fn feed(&mut self, mut chunk: &[u8]) -> bool {
        let mut first = false;
        while !self.gave_up && !chunk.is_empty() {
            if let Some(end) = chunk.iter().position(|&b| b == b'\n') {
                let line = if self.line.is_empty() {
                    &chunk[..end]
                } else {
                    self.line.extend_from_slice(&chunk[..end]);
                    &self.line[..]
                };
                let line = line.strip_suffix(b"\r").unwrap_or(line).to_vec();
                self.line.clear();
                first |= self.on_line(&line);
                chunk = &chunk[end + 1..];
            } else {
                if self.line.len() + chunk.len() > MAX_LINE_BYTES {
                    self.gave_up = true;
                    self.line = Vec::new();
                    self.data = Vec::new();
                } else {
                    self.line.extend_from_slice(chunk);
                }
                chunk = &[];
            }
        }
        first
    }

    fn on_line(&mut self, line: &[u8]) -> bool {
        if line.is_empty() {
            let data = std::mem::take(&mut self.data);
            return self.on_event(&data);
        }
        if let Some(rest) = line.strip_prefix(b"data:") {
            let rest = rest.strip_prefix(b" ").unwrap_or(rest);
            if !self.data.is_empty() {
                self.data.push(b'\n');
            }
            if self.data.len() + rest.len() > MAX_LINE_BYTES {
                self.gave_up = true;
                return false;
            }
            self.data.extend_from_slice(rest);
        }
        false
    }

    /// One whole event; true when it is the first with a generated token.
    fn on_event(&mut self, data: &[u8]) -> bool {
        let wanted_first = !self.first_token_seen;
        let may_count = contains(data, b"\"timings\"") || contains(data, b"\"usage\"");
        if data.is_empty() || data == b"[DONE]" || !(wanted_first || may_count) {
            return false;
        }
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            return false;
        };
        if may_count {
            if let Some((tokens, source)) = from_value(&v) {
                if self.best.map_or(true, |(_, best)| source >= best) {
                    self.best = Some((tokens, source));
                }
            }
        }
        if wanted_first && has_token(&v) {
            self.first_token_seen = true;
            return true;
        }
        false
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama-server's stream, as it sent it (ids and model trimmed).
    const STREAM: &str = concat!(
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null}}],\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\"<\"}}],\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\"im\"}}],\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[{\"finish_reason\":\"length\",\"index\":0,\"delta\":{}}],\"object\":\"chat.completion.chunk\",\"timings\":{\"cache_n\":20,\"prompt_n\":5,\"prompt_ms\":204.5,\"predicted_n\":3,\"predicted_ms\":123.7}}\n\n",
        "data: [DONE]\n\n",
    );

    /// Feeds `text` in frames of `size` bytes; returns the frame index of the first token.
    fn feed_in(reader: &mut Reader, text: &str, size: usize) -> Option<usize> {
        let mut first = None;
        for (i, frame) in text.as_bytes().chunks(size).enumerate() {
            if reader.feed(&Bytes::copy_from_slice(frame)) {
                assert!(first.is_none(), "two first tokens");
                first = Some(i);
            }
        }
        first
    }

    #[test]
    fn a_stream_yields_its_last_timings_and_first_token_in_any_framing() {
        let want = Tokens {
            prompt: 25,
            cached: 20,
            generated: 3,
        };
        let token_at = STREAM.find("\"<\"").unwrap();
        for size in [1, 7, 64, 333, STREAM.len()] {
            let mut r = Reader::for_content_type(Some("text/event-stream")).unwrap();
            let first = feed_in(&mut r, STREAM, size).expect("a first token");
            // The frame holding the end of the first token's event, never the role-only one.
            let event_end = STREAM[token_at..].find("\n\n").unwrap() + token_at + 1;
            assert_eq!(first, event_end / size, "frames of {size}");
            assert_eq!(r.finish(), Some(want), "frames of {size}");
        }
    }

    #[test]
    fn crlf_lines_and_a_usage_event_after_timings_keep_the_timings() {
        let stream = STREAM.replace("\n", "\r\n").replace(
            "data: [DONE]",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":25,\"completion_tokens\":3}}\r\n\r\ndata: [DONE]",
        );
        let mut r = Reader::for_content_type(Some("text/event-stream; charset=utf-8")).unwrap();
        assert!(feed_in(&mut r, &stream, 10).is_some());
        assert_eq!(r.finish().unwrap().cached, 20);
    }

    #[test]
    fn a_stream_without_counts_has_none() {
        let mut r = Reader::for_content_type(Some("text/event-stream")).unwrap();
        let stream = "data: {\"choices\":[{\"text\":\"hi\"}]}\n\ndata: [DONE]\n\n";
        let event_end = stream.find("\n\n").unwrap() + 1;
        assert_eq!(feed_in(&mut r, stream, 5), Some(event_end / 5));
        assert_eq!(r.finish(), None);
    }

    #[test]
    fn whole_answers_prefer_timings_and_fall_back_to_usage() {
        let whole = r#"{"choices":[],"usage":{"completion_tokens":5,"prompt_tokens":25,"total_tokens":30,"prompt_tokens_details":{"cached_tokens":4}},"timings":{"cache_n":0,"prompt_n":25,"predicted_n":5}}"#;
        let mut r = Reader::for_content_type(Some("application/json")).unwrap();
        assert_eq!(feed_in(&mut r, whole, 16), None);
        assert_eq!(
            r.finish(),
            Some(Tokens {
                prompt: 25,
                cached: 0,
                generated: 5
            })
        );
        let usage_only = r#"{"usage":{"completion_tokens":5,"prompt_tokens":25,"prompt_tokens_details":{"cached_tokens":4}}}"#;
        let mut r = Reader::for_content_type(Some("application/json")).unwrap();
        feed_in(&mut r, usage_only, 3);
        assert_eq!(
            r.finish(),
            Some(Tokens {
                prompt: 25,
                cached: 4,
                generated: 5
            })
        );
        let embeddings =
            r#"{"object":"list","data":[],"usage":{"prompt_tokens":7,"total_tokens":7}}"#;
        let mut r = Reader::for_content_type(Some("application/json")).unwrap();
        feed_in(&mut r, embeddings, 100);
        assert_eq!(r.finish().unwrap().prompt, 7);
    }

    #[test]
    fn oversized_or_foreign_bodies_are_not_read() {
        assert!(Reader::for_content_type(Some("text/plain")).is_none());
        assert!(Reader::for_content_type(None).is_none());
        let mut r = Reader::for_content_type(Some("application/json")).unwrap();
        let big = Bytes::from(vec![b' '; MAX_JSON_BYTES / 2 + 1]);
        r.feed(&big);
        r.feed(&big);
        r.feed(&Bytes::from_static(br#"{"usage":{"prompt_tokens":1}}"#));
        assert_eq!(r.finish(), None);
        // A line longer than the limit stops the reading without failing.
        let mut r = Reader::for_content_type(Some("text/event-stream")).unwrap();
        let long = format!("data: {}", "x".repeat(MAX_LINE_BYTES + 1));
        assert_eq!(feed_in(&mut r, &long, 4096), None);
        assert_eq!(feed_in(&mut r, STREAM, 64), None);
        assert_eq!(r.finish(), None);
    }

    #[test]
    fn openai_usage_alone_or_timings_alone_still_count() {
        // OpenAI's shape: no timings, cached tokens only in the details.
        let openai = serde_json::json!({"usage": {"prompt_tokens": 1200, "completion_tokens": 3,
            "prompt_tokens_details": {"cached_tokens": 1024}}});
        let u = PromptUsage::from_response(&openai).unwrap();
        assert_eq!(u.cached_tokens, Some(1024));
        assert_eq!(u.prefilled_tokens, Some(176));
        assert_eq!(u.prefill_ms, None);
        assert_eq!(u.predicted_tokens, Some(3));
        // Timings alone: the prompt is what was prefilled plus what was reused.
        let timings =
            serde_json::json!({"timings": {"prompt_n": 7, "cache_n": 40, "prompt_ms": 9.5}});
        let u = PromptUsage::from_response(&timings).unwrap();
        assert_eq!(u.prompt_tokens, Some(47));
        // A content chunk carries neither.
        let chunk = serde_json::json!({"choices": [{"delta": {"content": "x"}}]});
        assert_eq!(PromptUsage::from_response(&chunk), None);
        // Split across events, the later figure wins and the earlier fills gaps.
        let merged = PromptUsage::from_response(&openai).unwrap().merge(u);
        assert_eq!(merged.prompt_tokens, Some(47));
        assert_eq!(merged.prefill_ms, Some(9.5));
        assert_eq!(
            merged.tokens(),
            Tokens {
                prompt: 47,
                cached: 40,
                generated: 3
            }
        );
    }
}
