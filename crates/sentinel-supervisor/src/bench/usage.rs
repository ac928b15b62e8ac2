//! What one request's prompt cost, as the backend reports it: prompt tokens, how many of them
//! came from llama-server's prompt cache, and the prefill time.
//!
//! The pinned llama-server (see `src/bench/testdata/`, captured from it) sends, in a whole
//! answer and in the last SSE chunk of a stream (the one with `usage`):
//! ```text
//! "usage":   {"prompt_tokens": 53, "completion_tokens": 4,
//!             "prompt_tokens_details": {"cached_tokens": 48}},
//! "timings": {"cache_n": 48, "prompt_n": 5, "prompt_ms": 215.5, "predicted_n": 4, ...}
//! ```
//! `usage.prompt_tokens` is the whole prompt, cached or not; `timings.prompt_n` only the tokens
//! prefilled by this request, `timings.cache_n` the ones reused. Either source is read, so an
//! OpenAI-style backend without `timings` still reports what it can.

use serde::Serialize;
use serde_json::Value;

/// The prompt accounting of one request; a figure the backend did not send is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PromptUsage {
    /// Every token of the prompt, cached or not.
    pub prompt_tokens: Option<u64>,
    /// Prompt tokens reused from the backend's prompt cache (not prefilled again).
    pub cached_tokens: Option<u64>,
    /// Prompt tokens this request prefilled.
    pub prefilled_tokens: Option<u64>,
    /// Time the backend spent prefilling them, in milliseconds (`timings.prompt_ms`).
    pub prefill_ms: Option<f64>,
    /// Tokens generated (`timings.predicted_n`).
    pub predicted_tokens: Option<u64>,
}

impl PromptUsage {
    /// Reads `usage` and `timings` of one response object or stream chunk; `None` when it has
    /// neither (an ordinary content chunk).
    pub fn from_response(v: &Value) -> Option<PromptUsage> {
        let usage = v.get("usage").filter(|u| u.is_object());
        let timings = v.get("timings").filter(|t| t.is_object());
        if usage.is_none() && timings.is_none() {
            return None;
        }
        let u = |k: &str| usage.and_then(|u| u.get(k)).and_then(Value::as_u64);
        let t = |k: &str| timings.and_then(|t| t.get(k)).and_then(Value::as_u64);
        let cache_n = t("cache_n");
        let prompt_n = t("prompt_n");
        let details_cached = usage
            .and_then(|u| u["prompt_tokens_details"]["cached_tokens"].as_u64())
            .or_else(|| {
                usage
                    .and_then(|u| u.get("cached_tokens"))
                    .and_then(Value::as_u64)
            });
        let prompt_tokens = u("prompt_tokens").or(prompt_n.zip(cache_n).map(|(p, c)| p + c));
        let cached_tokens = cache_n.or(details_cached);
        let prefilled_tokens = prompt_n.or(prompt_tokens
            .zip(cached_tokens)
            .map(|(p, c)| p.saturating_sub(c)));
        Some(PromptUsage {
            prompt_tokens,
            cached_tokens,
            prefilled_tokens,
            prefill_ms: timings
                .and_then(|t| t.get("prompt_ms"))
                .and_then(Value::as_f64),
            predicted_tokens: t("predicted_n"),
        })
    }

    /// Keeps every figure `later` has, and ours where it has none (a stream may send `usage`
    /// and `timings` in different chunks).
    pub fn merge(self, later: PromptUsage) -> PromptUsage {
        PromptUsage {
            prompt_tokens: later.prompt_tokens.or(self.prompt_tokens),
            cached_tokens: later.cached_tokens.or(self.cached_tokens),
            prefilled_tokens: later.prefilled_tokens.or(self.prefilled_tokens),
            prefill_ms: later.prefill_ms.or(self.prefill_ms),
            predicted_tokens: later.predicted_tokens.or(self.predicted_tokens),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::workload::StreamState;
    use std::time::Instant;

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

    #[test]
    fn openai_usage_alone_or_timings_alone_still_count() {
        // OpenAI's shape: no timings, cached tokens only in the details.
        let openai = serde_json::json!({"usage": {"prompt_tokens": 1200, "completion_tokens": 3,
            "prompt_tokens_details": {"cached_tokens": 1024}}});
        let u = PromptUsage::from_response(&openai).unwrap();
        assert_eq!(u.cached_tokens, Some(1024));
        assert_eq!(u.prefilled_tokens, Some(176));
        assert_eq!(u.prefill_ms, None);
        // Timings alone: the prompt is what was prefilled plus what was reused.
        let timings =
            serde_json::json!({"timings": {"prompt_n": 7, "cache_n": 40, "prompt_ms": 9.5}});
        let u = PromptUsage::from_response(&timings).unwrap();
        assert_eq!(u.prompt_tokens, Some(47));
        // A content chunk carries neither.
        let chunk = serde_json::json!({"choices": [{"delta": {"content": "x"}}]});
        assert_eq!(PromptUsage::from_response(&chunk), None);
        // Split across chunks, the later figure wins and the earlier fills gaps.
        let merged = PromptUsage::from_response(&openai).unwrap().merge(u);
        assert_eq!(merged.prompt_tokens, Some(47));
        assert_eq!(merged.prefill_ms, Some(9.5));
    }
}
