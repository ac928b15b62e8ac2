//! The allow-lists: for each route, the fields it takes and what each one's value must be
//! ([`Spec`]), from the OpenAI API reference and the named llama.cpp extensions.

use super::Route;

/// The fields `route` lets through, with what each must be.
pub(super) fn allowed(route: Route) -> impl Iterator<Item = &'static (&'static str, Spec)> {
    let lists: &[&'static [(&'static str, Spec)]] = match route {
        Route::Chat => &[CHAT, GENERATING, LLAMA_CPP],
        Route::Completions => &[COMPLETIONS, GENERATING, LLAMA_CPP],
        Route::Embeddings => &[EMBEDDINGS],
        Route::Tokenize => &[TOKENIZE],
        Route::Detokenize => &[DETOKENIZE],
    };
    lists.iter().flat_map(|l| l.iter())
}

/// What a field's value must be.
#[derive(Debug, Clone, Copy)]
pub(super) enum Spec {
    /// Checked by its own code (messages, tools, the token cap, response_format, ...).
    Own,
    Bool,
    Str,
    Obj,
    Arr,
    StrOrObj,
    /// A number in the closed range.
    Num(f64, f64),
    /// An integer in the closed range.
    Int(i64, i64),
    /// 1 to the profile's slots.
    Slots,
    /// A string or an array of at most [`MAX_STOP`] strings.
    Stop,
    LogitBias,
    /// Text or token ids (`prompt`, `input`).
    Prompt,
    /// A JSON schema, measured against `[proxy.grammar]`.
    Schema,
    /// A GBNF grammar: only where the profile allows it, measured against `[proxy.grammar]`.
    Grammar,
    OneOf(&'static [&'static str]),
}

/// Most stop sequences in `stop`.
pub(super) const MAX_STOP: usize = 16;
/// Top log-probabilities per token (`top_logprobs`, `logprobs`, `n_probs`).
const MAX_PROBS: i64 = 20;

/// Fields of both generating routes (OpenAI).
const GENERATING: &[(&str, Spec)] = &[
    ("model", Spec::Str),
    ("frequency_penalty", Spec::Num(-2.0, 2.0)),
    ("presence_penalty", Spec::Num(-2.0, 2.0)),
    ("logit_bias", Spec::LogitBias),
    ("max_tokens", Spec::Own),
    ("n", Spec::Slots),
    ("seed", Spec::Int(i64::MIN, i64::MAX)),
    ("stop", Spec::Stop),
    ("stream", Spec::Bool),
    ("stream_options", Spec::Obj),
    ("temperature", Spec::Num(0.0, 2.0)),
    ("top_p", Spec::Num(0.0, 1.0)),
    ("user", Spec::Str),
    ("response_format", Spec::Own),
];

/// Chat completions only (OpenAI).
const CHAT: &[(&str, Spec)] = &[
    ("messages", Spec::Own),
    ("audio", Spec::Obj),
    ("function_call", Spec::StrOrObj),
    ("functions", Spec::Own),
    ("logprobs", Spec::Bool),
    ("max_completion_tokens", Spec::Own),
    ("metadata", Spec::Obj),
    ("modalities", Spec::Arr),
    ("parallel_tool_calls", Spec::Bool),
    ("prediction", Spec::Obj),
    ("prompt_cache_key", Spec::Str),
    ("reasoning_effort", Spec::Str),
    ("safety_identifier", Spec::Str),
    ("service_tier", Spec::Str),
    ("store", Spec::Bool),
    ("tool_choice", Spec::StrOrObj),
    ("tools", Spec::Own),
    ("top_logprobs", Spec::Int(0, MAX_PROBS)),
    ("verbosity", Spec::Str),
    ("web_search_options", Spec::Obj),
];

/// Completions only (OpenAI's legacy route).
const COMPLETIONS: &[(&str, Spec)] = &[
    ("prompt", Spec::Prompt),
    ("best_of", Spec::Int(0, 20)),
    ("echo", Spec::Bool),
    ("logprobs", Spec::Int(0, MAX_PROBS)),
    ("suffix", Spec::Str),
];

/// The llama.cpp extensions this product's users need, bounded.
const LLAMA_CPP: &[(&str, Spec)] = &[
    ("cache_prompt", Spec::Bool),
    ("top_k", Spec::Int(0, 1 << 20)),
    ("min_p", Spec::Num(0.0, 1.0)),
    ("typical_p", Spec::Num(0.0, 1.0)),
    ("repeat_penalty", Spec::Num(0.0, 10.0)),
    ("repeat_last_n", Spec::Int(-1, 1 << 20)),
    ("n_predict", Spec::Own),
    ("n_probs", Spec::Int(0, MAX_PROBS)),
    ("json_schema", Spec::Schema),
    ("grammar", Spec::Grammar),
];

const EMBEDDINGS: &[(&str, Spec)] = &[
    ("input", Spec::Prompt),
    ("model", Spec::Str),
    ("dimensions", Spec::Int(1, 1 << 16)),
    ("encoding_format", Spec::OneOf(&["float", "base64"])),
    ("user", Spec::Str),
];

const TOKENIZE: &[(&str, Spec)] = &[
    ("content", Spec::Own),
    ("add_special", Spec::Bool),
    ("parse_special", Spec::Bool),
    ("with_pieces", Spec::Bool),
];

const DETOKENIZE: &[(&str, Spec)] = &[("tokens", Spec::Own)];

/// Content part types of a chat message, and those that need a multimodal projector.
pub(super) const PART_TYPES: [&str; 5] = ["text", "image_url", "input_audio", "file", "refusal"];
pub(super) const MEDIA_PARTS: [&str; 3] = ["image_url", "input_audio", "file"];
