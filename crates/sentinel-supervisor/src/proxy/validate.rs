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

mod fields;
#[cfg(test)]
mod tests;
mod values;

use super::error::ApiError;
use super::grammar::{self, Limits, Unbounded};
use super::poison::Fingerprint;
use bytes::Bytes;
use serde_json::{Map, Value};
use values::{
    check_functions, check_messages, check_response_format, check_tools, check_value, token,
};

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
    pub(crate) fn of(path: &str) -> Option<Route> {
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
    pub(crate) fn path(self) -> &'static str {
        match self {
            Route::Chat => "/v1/chat/completions",
            Route::Completions => "/v1/completions",
            Route::Embeddings => "/v1/embeddings",
            Route::Tokenize => "/tokenize",
            Route::Detokenize => "/detokenize",
        }
    }
}

/// What a body is checked against: the profile, the model and the proxy's settings in force.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// The profile's name (for the messages that name its keys).
    pub profile: &'a str,
    /// The profile's cap on generated tokens per request.
    pub max_tokens: u32,
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
pub(crate) const TOKEN_FIELDS: [&str; 3] = ["max_tokens", "max_completion_tokens", "n_predict"];

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
    pub(crate) fn code(&self) -> &'static str {
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
            check_response_format(&obj, rules)?;
        }
        Route::Completions => check_response_format(&obj, rules)?,
        // llama-server answers a missing or null `content` with a 500 (found by the fuzz run).
        Route::Tokenize => {
            let v = required(&obj, "content", "content")?;
            if !(v.is_string() || v.is_array()) {
                return Err(wrong("content", "a string or an array", v));
            }
        }
        Route::Detokenize => {
            let tokens = array(&obj, "tokens", "an array of token ids")?;
            for (i, t) in tokens.into_iter().flatten().enumerate() {
                token(&format!("tokens[{i}]"), t, rules.vocab_size)?;
            }
        }
        Route::Embeddings => {}
    }
    let mut changed = None;
    let generates = matches!(route, Route::Chat | Route::Completions);
    if generates && cap_tokens(&mut obj, rules)? {
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
        let Some(&(_, spec)) = fields::allowed(route).find(|(n, _)| n == name) else {
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

/// Refuses a request above the cap; inserts `max_tokens = cap` when none is given. Returns
/// whether the body changed.
fn cap_tokens(obj: &mut Map<String, Value>, rules: &Rules<'_>) -> Result<bool, Invalid> {
    let mut given = false;
    for field in TOKEN_FIELDS {
        let Some(v) = present(obj, field) else {
            continue;
        };
        given = true;
        let above = |asked: String| Invalid::AboveCap {
            field,
            asked,
            cap: rules.max_tokens,
            profile: rules.profile.to_string(),
        };
        match v.as_f64() {
            // llama-server reads -1 as "until the context is full".
            Some(n) if n < 0.0 => return Err(above(format!("{v} (no limit)"))),
            Some(n) if n > f64::from(rules.max_tokens) => return Err(above(v.to_string())),
            Some(_) => {}
            None => return Err(wrong(field, "a number of tokens", v)),
        }
    }
    if !given {
        obj.insert("max_tokens".into(), Value::from(rules.max_tokens));
    }
    Ok(!given)
}

/// The field's value unless it is absent or `null` (both mean "not given").
fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// `key` of `obj`, which must be given (`field` in the message).
fn required<'a>(obj: &'a Map<String, Value>, key: &str, field: &str) -> Result<&'a Value, Invalid> {
    present(obj, key).ok_or_else(|| Invalid::Missing {
        field: field.to_string(),
    })
}

/// `key` of `obj` as an array when given; `expected` names it otherwise.
fn array<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    expected: &'static str,
) -> Result<Option<&'a Vec<Value>>, Invalid> {
    present(obj, key)
        .map(|v| v.as_array().ok_or_else(|| wrong(key, expected, v)))
        .transpose()
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
