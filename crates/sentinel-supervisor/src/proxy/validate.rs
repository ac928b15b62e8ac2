//! Checking a request body once, before admission, so every client error is a 400 in the
//! OpenAI shape instead of llama-server's 500 (or its crash): not UTF-8, not JSON, not an
//! object; a field outside the route's allow-list (the OpenAI API reference's fields for chat
//! completions, completions and embeddings, a named set of llama.cpp extensions, and
//! `proxy.extra_fields`); the types and ranges of the fields llama-server takes without
//! checking them (found by trying them against the pinned llama-server: `messages[].role`
//! missing or not a string, a text part without a string `text`, `tools` not an array of typed
//! objects, `/detokenize` ids outside the vocabulary, an image part for a model without a
//! projector, ...); a `grammar` where the profile turns grammars off, and grammars and JSON
//! schemas beyond `[proxy.grammar]` (measured in `grammar`). Also enforces the profile's cap on
//! generated tokens (inserted when the request names none, a 400 when it asks for more) and
//! `n` at most the profile's slots, and returns the request's poison [`Fingerprint`].

use super::error::ApiError;
use super::grammar::{self, Limits, Unbounded};
use super::poison::Fingerprint;
use bytes::Bytes;
use serde_json::{Map, Value};

/// The routes whose bodies are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Chat,
    Completions,
    Embeddings,
    Tokenize,
    Detokenize,
}

impl Route {
    /// The route of a proxied path, if its body is checked (`/props` has none).
    pub fn of(path: &str) -> Option<Route> {
        match path {
            "/v1/chat/completions" => Some(Route::Chat),
            "/v1/completions" => Some(Route::Completions),
            "/v1/embeddings" => Some(Route::Embeddings),
            "/tokenize" => Some(Route::Tokenize),
            "/detokenize" => Some(Route::Detokenize),
            _ => None,
        }
    }

    /// The path of the route.
    pub fn path(self) -> &'static str {
        match self {
            Route::Chat => "/v1/chat/completions",
            Route::Completions => "/v1/completions",
            Route::Embeddings => "/v1/embeddings",
            Route::Tokenize => "/tokenize",
            Route::Detokenize => "/detokenize",
        }
    }

    fn generates(self) -> bool {
        matches!(self, Route::Chat | Route::Completions)
    }

    /// The fields this route lets through, with what each must be.
    fn fields(self) -> impl Iterator<Item = &'static (&'static str, Spec)> {
        let lists: &[&'static [(&'static str, Spec)]] = match self {
            Route::Chat => &[CHAT, GENERATING, LLAMA_CPP],
            Route::Completions => &[COMPLETIONS, GENERATING, LLAMA_CPP],
            Route::Embeddings => &[EMBEDDINGS],
            Route::Tokenize => &[TOKENIZE],
            Route::Detokenize => &[DETOKENIZE],
        };
        lists.iter().flat_map(|l| l.iter())
    }
}

/// What a field's value must be.
#[derive(Debug, Clone, Copy)]
enum Spec {
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
const MAX_STOP: usize = 16;
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
const PART_TYPES: [&str; 5] = ["text", "image_url", "input_audio", "file", "refusal"];
const MEDIA_PARTS: [&str; 3] = ["image_url", "input_audio", "file"];

/// The cap on generated tokens per request, and the profile it comes from (for the message).
#[derive(Debug, Clone, Copy)]
pub struct TokenCap<'a> {
    pub max_tokens: u32,
    pub profile: &'a str,
}

/// What a body is checked against: the profile, the model and the proxy's settings in force.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub cap: TokenCap<'a>,
    /// The profile's slots (the most `n` may ask for).
    pub slots: usize,
    /// Whether the profile lets a GBNF `grammar` through.
    pub grammar: bool,
    /// `proxy.extra_fields`.
    pub extra_fields: &'a [String],
    /// `[proxy.grammar]`.
    pub limits: &'a Limits,
    /// The model's vocabulary size (from its GGUF header), when known.
    pub vocab_size: Option<u64>,
    /// Whether the backend has a multimodal projector (`--mmproj`).
    pub projector: bool,
}

/// A body that passed.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The body to forward when it had to change (the cap inserted); `None`: as sent.
    pub body: Option<Bytes>,
    pub fingerprint: Fingerprint,
}

/// The fields through which llama-server takes the number of tokens to generate
/// (`n_predict` with its aliases, `server-schema.cpp`).
pub const TOKEN_FIELDS: [&str; 3] = ["max_tokens", "max_completion_tokens", "n_predict"];

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Invalid {
    #[error("The request body is not valid UTF-8 (invalid byte at offset {offset}); send JSON encoded as UTF-8.")]
    NotUtf8 { offset: usize },
    #[error("The request body is not valid JSON: {detail}.")]
    NotJson {
        detail: String,
        line: usize,
        column: usize,
    },
    #[error("The request body must be a JSON object, not {found}.")]
    NotObject { found: &'static str },
    #[error("`{field}` is required.")]
    Missing { field: String },
    #[error("`{field}` must be {expected}, not {found}.")]
    WrongType {
        field: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("`{field}` = {asked} is above this server's cap of {cap} generated tokens per request; ask for at most {cap}, or raise `profiles.{profile}.max_tokens` in config.toml.")]
    AboveCap {
        field: &'static str,
        asked: String,
        cap: u32,
        profile: String,
    },
    #[error("`{field}` is not a field POST {route} accepts here (it takes the OpenAI fields of the route and a few llama.cpp extensions); remove it, or let it through with `proxy.extra_fields = [\"{field}\"]` in config.toml.")]
    UnknownField { field: String, route: &'static str },
    #[error("`grammar` is off in profile `{profile}`; send a JSON schema in `response_format` instead, or set `grammar = true` in [profiles.{profile}] in config.toml.")]
    GrammarOff { profile: String },
    #[error("`{field}` = {value} is out of range: it must be {range}.")]
    OutOfRange {
        field: String,
        value: String,
        range: String,
    },
    #[error("`{field}` = {asked} asks for more choices than profile `{profile}` has slots ({slots}); ask for at most {slots}, or raise `profiles.{profile}.slots` in config.toml.")]
    AboveSlots {
        field: &'static str,
        asked: String,
        slots: usize,
        profile: String,
    },
    #[error("`{field}` = {id} is not a token id of this model: its vocabulary has {vocab} tokens (ids 0 to {last}).", last = vocab.saturating_sub(1))]
    NotAToken {
        field: String,
        id: String,
        vocab: u64,
    },
    #[error("`{field}` is an `{kind}` part, but this model takes text only (no multimodal projector); send text, or serve a multimodal model with `--mmproj FILE` in backend.extra_args.")]
    NoProjector { field: String, kind: String },
    #[error("`{field}` has the unknown part type `{kind}` (the types are text, image_url, input_audio, file and refusal).")]
    UnknownPart { field: String, kind: String },
    #[error(transparent)]
    Unbounded(#[from] Unbounded),
}

impl Invalid {
    /// The `code` of the OpenAI error body.
    pub fn code(&self) -> &'static str {
        match self {
            Invalid::NotUtf8 { .. } => "invalid_utf8",
            Invalid::NotJson { .. } => "invalid_json",
            Invalid::NotObject { .. } => "invalid_body",
            Invalid::Missing { .. } => "missing_field",
            Invalid::WrongType { .. } => "invalid_type",
            Invalid::AboveCap { .. } => "max_tokens_above_cap",
            Invalid::UnknownField { .. } => "unknown_field",
            Invalid::GrammarOff { .. } => "grammar_disabled",
            Invalid::OutOfRange { .. } => "out_of_range",
            Invalid::AboveSlots { .. } => "n_above_slots",
            Invalid::NotAToken { .. } => "invalid_token",
            Invalid::NoProjector { .. } | Invalid::UnknownPart { .. } => "unsupported_content",
            Invalid::Unbounded(u) => u.code(),
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> ApiError {
        ApiError::invalid_request(e.code(), e.to_string())
    }
}

/// Checks `body` for `route` against `rules`.
pub fn check(route: Route, body: &[u8], rules: &Rules<'_>) -> Result<Checked, Invalid> {
    let text = std::str::from_utf8(body).map_err(|e| Invalid::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| Invalid::NotJson {
        detail: e.to_string(),
        line: e.line(),
        column: e.column(),
    })?;
    let Value::Object(mut obj) = value else {
        return Err(Invalid::NotObject {
            found: kind(&value),
        });
    };
    check_fields(route, &obj, rules)?;
    match route {
        Route::Chat => {
            check_messages(&obj, rules)?;
            check_tools(&obj, rules)?;
            check_functions(&obj, rules)?;
        }
        // llama-server answers a missing or null `content` with a 500 (found by the fuzz run).
        Route::Tokenize => match present(&obj, "content") {
            None => {
                return Err(Invalid::Missing {
                    field: "content".into(),
                })
            }
            Some(v) if !(v.is_string() || v.is_array()) => {
                return Err(wrong("content", "a string or an array", v))
            }
            Some(_) => {}
        },
        Route::Detokenize => {
            if let Some(v) = present(&obj, "tokens") {
                let Some(tokens) = v.as_array() else {
                    return Err(wrong("tokens", "an array of token ids", v));
                };
                for (i, t) in tokens.iter().enumerate() {
                    token(&format!("tokens[{i}]"), t, rules.vocab_size)?;
                }
            }
        }
        Route::Completions | Route::Embeddings => {}
    }
    if route.generates() {
        check_response_format(&obj, rules)?;
    }
    let mut changed = None;
    if route.generates() && cap_tokens(&mut obj, rules.cap)? {
        let body = serde_json::to_vec(&obj).map_err(|e| Invalid::NotJson {
            detail: e.to_string(),
            line: 0,
            column: 0,
        })?;
        changed = Some(Bytes::from(body));
    }
    Ok(Checked {
        body: changed,
        fingerprint: Fingerprint::of(route.path(), &obj),
    })
}

/// Every field is on the route's allow-list (or in `proxy.extra_fields`), of its type and
/// within its range.
fn check_fields(route: Route, obj: &Map<String, Value>, rules: &Rules<'_>) -> Result<(), Invalid> {
    for (name, value) in obj {
        let Some(&(_, spec)) = route.fields().find(|(n, _)| n == name) else {
            if rules.extra_fields.iter().any(|f| f == name) {
                continue;
            }
            return Err(Invalid::UnknownField {
                field: name.clone(),
                route: route.path(),
            });
        };
        if value.is_null() {
            continue;
        }
        check_value(name, spec, value, rules)?;
    }
    Ok(())
}

fn check_value(name: &str, spec: Spec, v: &Value, rules: &Rules<'_>) -> Result<(), Invalid> {
    let range = |range: String| Invalid::OutOfRange {
        field: name.to_string(),
        value: v.to_string(),
        range,
    };
    match spec {
        Spec::Own => {}
        Spec::Bool if !v.is_boolean() => return Err(wrong(name, "true or false", v)),
        Spec::Str if !v.is_string() => return Err(wrong(name, "a string", v)),
        Spec::Obj if !v.is_object() => return Err(wrong(name, "an object", v)),
        Spec::Arr if !v.is_array() => return Err(wrong(name, "an array", v)),
        Spec::StrOrObj if !(v.is_string() || v.is_object()) => {
            return Err(wrong(name, "a string or an object", v))
        }
        Spec::Num(lo, hi) => match v.as_f64() {
            None => return Err(wrong(name, "a number", v)),
            Some(n) if !(lo..=hi).contains(&n) => {
                return Err(range(format!("a number from {lo} to {hi}")))
            }
            Some(_) => {}
        },
        Spec::Int(lo, hi) => match v.as_i64() {
            None if v.is_u64() || v.is_f64() => {
                return Err(range(format!("an integer from {lo} to {hi}")))
            }
            None => return Err(wrong(name, "an integer", v)),
            Some(n) if !(lo..=hi).contains(&n) => {
                return Err(range(format!("an integer from {lo} to {hi}")))
            }
            Some(_) => {}
        },
        Spec::Slots => match v.as_f64() {
            None => return Err(wrong(name, "a whole number of choices", v)),
            Some(n) if n < 1.0 || n.fract() != 0.0 => {
                return Err(range("a whole number of choices, at least 1".into()))
            }
            Some(n) if n > rules.slots as f64 => {
                return Err(Invalid::AboveSlots {
                    field: "n",
                    asked: v.to_string(),
                    slots: rules.slots,
                    profile: rules.cap.profile.to_string(),
                })
            }
            Some(_) => {}
        },
        Spec::Stop => match v {
            Value::String(_) => {}
            Value::Array(items) => {
                if items.len() > MAX_STOP {
                    return Err(range(format!("at most {MAX_STOP} stop sequences")));
                }
                for (i, s) in items.iter().enumerate() {
                    if !s.is_string() {
                        return Err(wrong(&format!("{name}[{i}]"), "a string", s));
                    }
                }
            }
            _ => return Err(wrong(name, "a string or an array of strings", v)),
        },
        Spec::LogitBias => check_logit_bias(name, v, rules)?,
        Spec::Prompt => check_prompt(name, v, rules)?,
        Spec::Schema => match v {
            Value::Object(_) => grammar::check_schema(name, v, rules.limits)?,
            Value::Bool(_) => {}
            _ => return Err(wrong(name, "a JSON schema (an object)", v)),
        },
        Spec::Grammar => {
            if !rules.grammar {
                return Err(Invalid::GrammarOff {
                    profile: rules.cap.profile.to_string(),
                });
            }
            let Some(text) = v.as_str() else {
                return Err(wrong(name, "a GBNF grammar (a string)", v));
            };
            grammar::check_grammar(name, text, rules.limits)?;
        }
        Spec::OneOf(options) if !v.as_str().is_some_and(|s| options.contains(&s)) => {
            return Err(range(format!("one of {}", options.join(", "))));
        }
        _ => {}
    }
    Ok(())
}

/// A token id: an integer, inside the vocabulary when its size is known.
fn token(field: &str, v: &Value, vocab: Option<u64>) -> Result<(), Invalid> {
    if !(v.is_i64() || v.is_u64()) {
        return Err(wrong(field, "an integer token id", v));
    }
    let limit = vocab.unwrap_or(i32::MAX as u64);
    match v.as_u64() {
        Some(id) if id < limit => Ok(()),
        _ => Err(Invalid::NotAToken {
            field: field.to_string(),
            id: v.to_string(),
            vocab: limit,
        }),
    }
}

/// `prompt` / `input`: text, token ids, or an array of either (token ids checked).
fn check_prompt(name: &str, v: &Value, rules: &Rules<'_>) -> Result<(), Invalid> {
    let expected = "a string, token ids, or an array of strings or of token-id arrays";
    match v {
        Value::String(_) => Ok(()),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let at = format!("{name}[{i}]");
                match item {
                    Value::String(_) => {}
                    Value::Number(_) => token(&at, item, rules.vocab_size)?,
                    Value::Array(ids) => {
                        for (j, id) in ids.iter().enumerate() {
                            token(&format!("{at}[{j}]"), id, rules.vocab_size)?;
                        }
                    }
                    _ => return Err(wrong(&at, expected, item)),
                }
            }
            Ok(())
        }
        _ => Err(wrong(name, expected, v)),
    }
}

/// `logit_bias`: OpenAI's object (token id -> bias from -100 to 100) or llama.cpp's array of
/// `[token, bias]` pairs; a bias may be `false` (never this token).
fn check_logit_bias(name: &str, v: &Value, rules: &Rules<'_>) -> Result<(), Invalid> {
    let bias = |field: String, b: &Value| -> Result<(), Invalid> {
        match b {
            Value::Bool(false) => Ok(()),
            Value::Number(n) if n.as_f64().is_some_and(|n| (-100.0..=100.0).contains(&n)) => Ok(()),
            Value::Number(_) => Err(Invalid::OutOfRange {
                field,
                value: b.to_string(),
                range: "a bias from -100 to 100 (or false)".into(),
            }),
            _ => Err(wrong(&field, "a number from -100 to 100 (or false)", b)),
        }
    };
    match v {
        Value::Object(m) => {
            for (k, b) in m {
                if let Ok(id) = k.parse::<i64>() {
                    token(&format!("{name}.{k}"), &Value::from(id), rules.vocab_size)?;
                }
                bias(format!("{name}.{k}"), b)?;
            }
            Ok(())
        }
        Value::Array(pairs) => {
            for (i, p) in pairs.iter().enumerate() {
                let at = format!("{name}[{i}]");
                match p.as_array().map(Vec::as_slice) {
                    Some([t, b]) => {
                        if t.is_number() {
                            token(&format!("{at}[0]"), t, rules.vocab_size)?;
                        } else if !t.is_string() {
                            return Err(wrong(&format!("{at}[0]"), "a token id or a string", t));
                        }
                        bias(format!("{at}[1]"), b)?;
                    }
                    _ => return Err(wrong(&at, "a [token, bias] pair", p)),
                }
            }
            Ok(())
        }
        _ => Err(wrong(name, "an object of token ids to biases", v)),
    }
}

/// `response_format`: `{"type": "text" | "json_object" | "json_schema"}`, its schema measured.
fn check_response_format(obj: &Map<String, Value>, rules: &Rules<'_>) -> Result<(), Invalid> {
    let Some(v) = present(obj, "response_format") else {
        return Ok(());
    };
    let Some(rf) = v.as_object() else {
        return Err(wrong("response_format", "an object", v));
    };
    match present(rf, "type") {
        Some(Value::String(t)) if ["text", "json_object", "json_schema"].contains(&t.as_str()) => {}
        Some(t) => {
            return Err(Invalid::OutOfRange {
                field: "response_format.type".into(),
                value: t.to_string(),
                range: "one of text, json_object, json_schema".into(),
            })
        }
        None => {
            return Err(Invalid::Missing {
                field: "response_format.type".into(),
            })
        }
    }
    if let Some(s) = present(rf, "schema") {
        schema("response_format.schema", s, rules)?;
    }
    if let Some(js) = present(rf, "json_schema") {
        let Some(js) = js.as_object() else {
            return Err(wrong("response_format.json_schema", "an object", js));
        };
        if let Some(s) = present(js, "schema") {
            schema("response_format.json_schema.schema", s, rules)?;
        }
    }
    Ok(())
}

fn schema(field: &str, v: &Value, rules: &Rules<'_>) -> Result<(), Invalid> {
    match v {
        Value::Object(_) => Ok(grammar::check_schema(field, v, rules.limits)?),
        Value::Bool(_) => Ok(()),
        _ => Err(wrong(field, "a JSON schema (an object)", v)),
    }
}

/// Refuses a request above the cap; inserts `max_tokens = cap` when none is given. Returns
/// whether the body changed.
fn cap_tokens(obj: &mut Map<String, Value>, cap: TokenCap<'_>) -> Result<bool, Invalid> {
    let mut given = false;
    for field in TOKEN_FIELDS {
        let Some(v) = present(obj, field) else {
            continue;
        };
        given = true;
        let above = |asked: String| Invalid::AboveCap {
            field,
            asked,
            cap: cap.max_tokens,
            profile: cap.profile.to_string(),
        };
        match v.as_f64() {
            // llama-server reads -1 as "until the context is full".
            Some(n) if n < 0.0 => return Err(above(format!("{v} (no limit)"))),
            Some(n) if n > f64::from(cap.max_tokens) => return Err(above(v.to_string())),
            Some(_) => {}
            None => return Err(wrong(field, "a number of tokens", v)),
        }
    }
    if !given {
        obj.insert("max_tokens".into(), Value::from(cap.max_tokens));
    }
    Ok(!given)
}

fn check_messages(obj: &Map<String, Value>, rules: &Rules<'_>) -> Result<(), Invalid> {
    let Some(v) = present(obj, "messages") else {
        return Err(Invalid::Missing {
            field: "messages".into(),
        });
    };
    let Some(messages) = v.as_array() else {
        return Err(wrong("messages", "an array of messages", v));
    };
    for (i, m) in messages.iter().enumerate() {
        let at = |k: &str| format!("messages[{i}].{k}");
        let Some(m) = m.as_object() else {
            return Err(wrong(&format!("messages[{i}]"), "an object", m));
        };
        match present(m, "role") {
            None => return Err(Invalid::Missing { field: at("role") }),
            Some(r) if !r.is_string() => return Err(wrong(&at("role"), "a string", r)),
            Some(_) => {}
        }
        if let Some(n) = present(m, "name") {
            if !n.is_string() {
                return Err(wrong(&at("name"), "a string", n));
            }
        }
        match present(m, "content") {
            Some(Value::Array(parts)) => {
                for (j, p) in parts.iter().enumerate() {
                    check_part(&format!("messages[{i}].content[{j}]"), p, rules)?;
                }
            }
            Some(Value::String(_)) | None => {}
            Some(c) => return Err(wrong(&at("content"), "a string or an array of parts", c)),
        }
    }
    Ok(())
}

fn check_part(part: &str, p: &Value, rules: &Rules<'_>) -> Result<(), Invalid> {
    let Some(p) = p.as_object() else {
        return Err(wrong(part, "an object", p));
    };
    match present(p, "type") {
        Some(Value::String(t)) if t == "text" => match present(p, "text") {
            None => Err(Invalid::Missing {
                field: format!("{part}.text"),
            }),
            Some(t) if !t.is_string() => Err(wrong(&format!("{part}.text"), "a string", t)),
            Some(_) => Ok(()),
        },
        Some(Value::String(t)) if MEDIA_PARTS.contains(&t.as_str()) && !rules.projector => {
            Err(Invalid::NoProjector {
                field: part.to_string(),
                kind: t.clone(),
            })
        }
        Some(Value::String(t)) if PART_TYPES.contains(&t.as_str()) => Ok(()),
        Some(Value::String(t)) => Err(Invalid::UnknownPart {
            field: part.to_string(),
            kind: t.clone(),
        }),
        None => Err(Invalid::Missing {
            field: format!("{part}.type"),
        }),
        Some(t) => Err(wrong(&format!("{part}.type"), "a string", t)),
    }
}

fn check_tools(obj: &Map<String, Value>, rules: &Rules<'_>) -> Result<(), Invalid> {
    let Some(v) = present(obj, "tools") else {
        return Ok(());
    };
    let Some(tools) = v.as_array() else {
        return Err(wrong("tools", "an array of tools", v));
    };
    for (i, t) in tools.iter().enumerate() {
        let Some(t) = t.as_object() else {
            return Err(wrong(&format!("tools[{i}]"), "an object", t));
        };
        match present(t, "type") {
            None => {
                return Err(Invalid::Missing {
                    field: format!("tools[{i}].type"),
                })
            }
            Some(Value::String(ty)) if ty == "function" => {
                let at = format!("tools[{i}].function");
                let Some(f) = present(t, "function") else {
                    return Err(Invalid::Missing { field: at });
                };
                check_function(&at, f, rules)?;
            }
            Some(Value::String(_)) => {}
            Some(ty) => return Err(wrong(&format!("tools[{i}].type"), "a string", ty)),
        }
    }
    Ok(())
}

/// The deprecated `functions`: an array of functions, as in `tools`.
fn check_functions(obj: &Map<String, Value>, rules: &Rules<'_>) -> Result<(), Invalid> {
    let Some(v) = present(obj, "functions") else {
        return Ok(());
    };
    let Some(functions) = v.as_array() else {
        return Err(wrong("functions", "an array of functions", v));
    };
    for (i, f) in functions.iter().enumerate() {
        check_function(&format!("functions[{i}]"), f, rules)?;
    }
    Ok(())
}

/// A function: an object with a string `name`; its `parameters` schema measured.
fn check_function(at: &str, f: &Value, rules: &Rules<'_>) -> Result<(), Invalid> {
    let Some(f) = f.as_object() else {
        return Err(wrong(at, "an object", f));
    };
    match present(f, "name") {
        None => {
            return Err(Invalid::Missing {
                field: format!("{at}.name"),
            })
        }
        Some(n) if !n.is_string() => return Err(wrong(&format!("{at}.name"), "a string", n)),
        Some(_) => {}
    }
    if let Some(p) = present(f, "parameters") {
        schema(&format!("{at}.parameters"), p, rules)?;
    }
    Ok(())
}

/// The field's value unless it is absent or `null` (both mean "not given").
fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn wrong(field: &str, expected: &'static str, found: &Value) -> Invalid {
    Invalid::WrongType {
        field: field.to_string(),
        expected,
        found: kind(found),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CAP: TokenCap<'static> = TokenCap {
        max_tokens: 100,
        profile: "balanced",
    };

    fn limits() -> &'static Limits {
        static LIMITS: std::sync::OnceLock<Limits> = std::sync::OnceLock::new();
        LIMITS.get_or_init(|| crate::config::Config::builtin().unwrap().proxy.grammar)
    }

    /// The balanced profile's rules: one slot, no grammar, a 1000-token vocabulary, no projector.
    fn rules() -> Rules<'static> {
        Rules {
            cap: CAP,
            slots: 1,
            grammar: false,
            extra_fields: &[],
            limits: limits(),
            vocab_size: Some(1000),
            projector: false,
        }
    }

    fn chat(extra: Value) -> Vec<u8> {
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        serde_json::to_vec(&body).unwrap()
    }

    /// The body forwarded for an accepted request (`None`: as sent).
    fn passed(route: Route, body: &[u8]) -> Option<Bytes> {
        check(route, body, &rules()).expect("should pass").body
    }

    fn err(route: Route, body: &[u8]) -> Invalid {
        check(route, body, &rules()).expect_err("should be refused")
    }

    #[test]
    fn not_utf8_not_json_not_object() {
        assert_eq!(
            err(Route::Chat, b"{\"a\": \"\xff\"}"),
            Invalid::NotUtf8 { offset: 7 }
        );
        match err(Route::Chat, b"{\n  \"messages\": nope}") {
            Invalid::NotJson { line, column, .. } => assert_eq!((line, column), (2, 16)),
            other => panic!("{other:?}"),
        }
        let e = err(Route::Tokenize, b"[1, 2]");
        assert_eq!(e, Invalid::NotObject { found: "an array" });
        assert!(e.to_string().contains("JSON object"));
        assert!(matches!(
            err(Route::Embeddings, b""),
            Invalid::NotJson { .. }
        ));
    }

    #[test]
    fn message_fields_llama_server_answers_with_500() {
        let cases = [
            (json!({"messages": "hi"}), "messages"),
            (json!({"messages": [1]}), "messages[0]"),
            (json!({"messages": [{"content": "hi"}]}), "messages[0].role"),
            (
                json!({"messages": [{"role": 1, "content": "hi"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "user", "content": "hi", "name": 5}]}),
                "messages[0].name",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]}),
                "messages[0].content[0].text",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}),
                "messages[0].content[0].text",
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                "messages[0].content",
            ),
            (json!({}), "messages"),
        ];
        for (body, field) in cases {
            let e = err(Route::Chat, &serde_json::to_vec(&body).unwrap());
            assert!(
                e.to_string().contains(&format!("`{field}`")),
                "{body}: {e} should name {field}"
            );
        }
    }

    #[test]
    fn tools_tokenize_and_detokenize_types() {
        for (tools, field) in [
            (json!(5), "tools"),
            (json!([5]), "tools[0]"),
            (json!([{}]), "tools[0].type"),
            (json!([{"type": "function"}]), "tools[0].function"),
            (
                json!([{"type": "function", "function": {}}]),
                "tools[0].function.name",
            ),
        ] {
            let e = err(Route::Chat, &chat(json!({ "tools": tools })));
            assert!(e.to_string().contains(&format!("`{field}`")), "{e}");
        }
        let ok_tools = json!([{"type": "function", "function": {"name": "f"}}]);
        assert!(check(
            Route::Chat,
            &chat(json!({"tools": ok_tools, "max_tokens": 5})),
            &rules()
        )
        .is_ok());
        assert_eq!(
            err(Route::Tokenize, br#"{"content": 5}"#).code(),
            "invalid_type"
        );
        assert!(passed(Route::Tokenize, br#"{"content": "hi"}"#).is_none());
        for body in [&br#"{"content": null}"#[..], br#"{}"#] {
            assert_eq!(err(Route::Tokenize, body).code(), "missing_field");
        }
        assert!(err(Route::Detokenize, br#"{"tokens": "x"}"#)
            .to_string()
            .contains("`tokens`"));
        assert!(err(Route::Detokenize, br#"{"tokens": [1, "x"]}"#)
            .to_string()
            .contains("`tokens[1]`"));
        assert!(check(Route::Detokenize, br#"{"tokens": [1, 2]}"#, &rules()).is_ok());
    }

    #[test]
    fn the_cap_is_inserted_when_absent_or_null() {
        for body in [chat(json!({})), chat(json!({"max_tokens": null}))] {
            let out = passed(Route::Chat, &body).expect("rewritten");
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["max_tokens"], 100);
            assert_eq!(v["messages"][0]["content"], "hi");
        }
        let out = passed(Route::Completions, br#"{"prompt": "x"}"#).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap()["max_tokens"],
            100
        );
        // Within the cap, under any of the three names: forwarded as sent.
        for field in TOKEN_FIELDS {
            let body = chat(json!({ field: 100 }));
            assert_eq!(passed(Route::Chat, &body), None);
        }
        // Embeddings generate nothing: no cap.
        assert_eq!(passed(Route::Embeddings, br#"{"input": "x"}"#), None);
    }

    #[test]
    fn above_the_cap_names_the_cap_and_the_key() {
        for (field, value) in [
            ("max_tokens", json!(101)),
            ("max_completion_tokens", json!(5000)),
            ("n_predict", json!(-1)),
            ("max_tokens", json!(100.5)),
        ] {
            let e = err(Route::Chat, &chat(json!({ field: value })));
            assert_eq!(e.code(), "max_tokens_above_cap");
            let m = e.to_string();
            assert!(m.contains("cap of 100"), "{m}");
            assert!(m.contains("`profiles.balanced.max_tokens`"), "{m}");
            assert!(m.contains(field), "{m}");
        }
        let e = err(Route::Chat, &chat(json!({"max_tokens": "5"})));
        assert_eq!(e.code(), "invalid_type");
    }

    #[test]
    fn errors_become_openai_400s() {
        let api: ApiError = err(Route::Chat, b"nope").into();
        assert_eq!(api.status, axum::http::StatusCode::BAD_REQUEST);
        assert_eq!(api.body()["error"]["type"], "invalid_request_error");
        assert_eq!(api.body()["error"]["code"], "invalid_json");
        assert!(api.message.contains("line 1 column 2"), "{}", api.message);
    }
    #[test]
    fn fields_outside_the_allow_list_name_the_key_that_opens_them() {
        let e = err(
            Route::Chat,
            &chat(json!({"chat_parser": {"a": {"ref": "a"}}})),
        );
        assert_eq!(e.code(), "unknown_field");
        let m = e.to_string();
        assert!(
            m.contains("`chat_parser`") && m.contains("proxy.extra_fields"),
            "{m}"
        );
        let e = err(
            Route::Detokenize,
            br#"{"tokens": [1], "with_pieces": true}"#,
        );
        assert_eq!(e.code(), "unknown_field");
        let extra = ["mirostat".to_string()];
        let open = Rules {
            extra_fields: &extra,
            ..rules()
        };
        assert!(check(Route::Chat, &chat(json!({"mirostat": 2})), &open).is_ok());
        // OpenAI's own fields and the named llama.cpp extensions pass, as do nulls.
        let body = chat(
            json!({"model": "m", "temperature": 0.2, "top_p": 1, "seed": 7,
            "stop": ["\n"], "stream": false, "logprobs": true, "top_logprobs": 20, "user": "u",
            "cache_prompt": true, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1,
            "n_probs": 3, "presence_penalty": null, "n": 1, "metadata": {"k": "v"},
            "logit_bias": {"5": -100}}),
        );
        check(Route::Chat, &body, &rules()).unwrap();
        for body in [
            &br#"{"prompt": [1, 2], "echo": false, "logprobs": 2, "suffix": "x"}"#[..],
            br#"{"prompt": [[1, 2], [3]], "stream": true}"#,
        ] {
            check(Route::Completions, body, &rules()).unwrap();
        }
        check(
            Route::Embeddings,
            br#"{"input": ["a", "b"], "model": "m", "encoding_format": "float"}"#,
            &rules(),
        )
        .unwrap();
        check(
            Route::Tokenize,
            br#"{"content": "a", "add_special": true, "with_pieces": true}"#,
            &rules(),
        )
        .unwrap();
    }

    #[test]
    fn types_and_ranges_are_checked() {
        for (field, value, code) in [
            ("temperature", json!(5), "out_of_range"),
            ("temperature", json!("hot"), "invalid_type"),
            ("top_p", json!(-0.5), "out_of_range"),
            ("top_logprobs", json!(21), "out_of_range"),
            ("n_probs", json!(1000000), "out_of_range"),
            ("top_k", json!(1.5), "out_of_range"),
            ("seed", json!(18446744073709551615u64), "out_of_range"),
            ("stop", json!([1]), "invalid_type"),
            ("stop", json!(vec!["x"; 17]), "out_of_range"),
            ("stream", json!("yes"), "invalid_type"),
            ("logit_bias", json!({"5": 1000}), "out_of_range"),
            ("logit_bias", json!({"99999999": 1}), "invalid_token"),
            ("n", json!(2), "n_above_slots"),
            ("n", json!(0), "out_of_range"),
            ("frequency_penalty", json!(1e308), "out_of_range"),
        ] {
            let e = err(Route::Chat, &chat(json!({ field: value })));
            assert_eq!(e.code(), code, "{field}: {e}");
            assert!(e.to_string().contains(&format!("`{field}")), "{e}");
        }
        let e = err(Route::Chat, &chat(json!({"n": 2})));
        assert!(e.to_string().contains("`profiles.balanced.slots`"), "{e}");
    }

    #[test]
    fn grammars_are_off_unless_the_profile_allows_them_and_bounded_when_on() {
        let e = err(
            Route::Completions,
            br#"{"prompt": "x", "grammar": "root ::= \"a\""}"#,
        );
        assert_eq!(e.code(), "grammar_disabled");
        assert!(e.to_string().contains("[profiles.balanced]"), "{e}");
        let on = Rules {
            grammar: true,
            ..rules()
        };
        check(
            Route::Completions,
            br#"{"prompt": "x", "grammar": "root ::= \"a\""}"#,
            &on,
        )
        .unwrap();
        let deep = format!("root ::= {}\"a\"{}", "(".repeat(50_000), ")".repeat(50_000));
        let body = serde_json::to_vec(&json!({"prompt": "x", "grammar": deep})).unwrap();
        let e = check(Route::Completions, &body, &on).unwrap_err();
        assert_eq!(e.code(), "grammar_too_complex");
        assert!(e.to_string().contains("proxy.grammar."), "{e}");
        // Schemas are measured wherever they are.
        let values: Vec<String> = (0..1000).map(|i| format!("v{i}")).collect();
        let huge = json!({"type": "string", "enum": values});
        for extra in [
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": huge}}}),
            json!({"response_format": {"type": "json_object", "schema": huge}}),
            json!({"json_schema": huge}),
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": huge}}]}),
        ] {
            let e = err(Route::Chat, &chat(extra.clone()));
            assert!(e.to_string().contains("proxy.grammar.max_enum"), "{e}");
        }
        let e = err(
            Route::Chat,
            &chat(json!({"response_format": {"type": "xml"}})),
        );
        assert_eq!(e.code(), "out_of_range");
    }

    #[test]
    fn token_ids_are_checked_against_the_vocabulary() {
        let e = err(Route::Detokenize, br#"{"tokens": [1, 999999]}"#);
        assert_eq!(e.code(), "invalid_token");
        let m = e.to_string();
        assert!(
            m.contains("`tokens[1]`") && m.contains("1000 tokens"),
            "{m}"
        );
        assert_eq!(
            err(Route::Detokenize, br#"{"tokens": [-1]}"#).code(),
            "invalid_token"
        );
        assert_eq!(
            err(Route::Completions, br#"{"prompt": [5, 1000]}"#).code(),
            "invalid_token"
        );
        assert_eq!(
            err(Route::Embeddings, br#"{"input": [[1], [1000]]}"#).code(),
            "invalid_token"
        );
        check(Route::Detokenize, br#"{"tokens": [0, 999]}"#, &rules()).unwrap();
    }

    #[test]
    fn media_parts_need_a_projector() {
        let image = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]});
        let body = serde_json::to_vec(&image).unwrap();
        let e = err(Route::Chat, &body);
        assert_eq!(e.code(), "unsupported_content");
        assert!(e.to_string().contains("`messages[0].content[1]`"), "{e}");
        assert!(e.to_string().contains("--mmproj"), "{e}");
        let vision = Rules {
            projector: true,
            ..rules()
        };
        check(Route::Chat, &body, &vision).unwrap();
        let odd = json!({"messages": [{"role": "user", "content": [{"type": "video"}]}]});
        assert_eq!(
            err(Route::Chat, &serde_json::to_vec(&odd).unwrap()).code(),
            "unsupported_content"
        );
    }

    #[test]
    fn the_fingerprint_names_route_and_fields() {
        let a = check(Route::Chat, &chat(json!({"max_tokens": 5})), &rules()).unwrap();
        let b = check(
            Route::Chat,
            br#"{"max_tokens":5,"messages":[{"content":"hi","role":"user"}]}"#,
            &rules(),
        )
        .unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint.route, "/v1/chat/completions");
        let names: Vec<&str> = a
            .fingerprint
            .fields
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(names, ["max_tokens", "messages"]);
    }
}
