//! Checking a request body once, before admission, so every client error is a 400 in the
//! OpenAI shape instead of llama-server's 500: not UTF-8, not JSON, not an object, or fields
//! of the wrong type that llama-server does not check itself (found by trying them against
//! the pinned llama-server: `messages[].role` missing or not a string, `messages[].name` not a
//! string, a text part without a string `text`, `tools` not an array of typed objects,
//! `/tokenize` `content` and `/detokenize` `tokens` of the wrong type, and any body that is
//! not JSON). Also enforces the profile's cap on generated tokens: inserted when the request
//! names none, a 400 when it asks for more.

use super::error::ApiError;
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

    fn generates(self) -> bool {
        matches!(self, Route::Chat | Route::Completions)
    }
}

/// The cap on generated tokens per request, and the profile it comes from (for the message).
#[derive(Debug, Clone, Copy)]
pub struct TokenCap<'a> {
    pub max_tokens: u32,
    pub profile: &'a str,
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
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> ApiError {
        ApiError::invalid_request(e.code(), e.to_string())
    }
}

/// Checks `body` for `route`. Returns the body to forward when it had to change (the cap
/// inserted), `None` when it goes on as sent.
pub fn check(route: Route, body: &[u8], cap: TokenCap<'_>) -> Result<Option<Bytes>, Invalid> {
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
    match route {
        Route::Chat => {
            check_messages(&obj)?;
            check_tools(&obj)?;
        }
        Route::Tokenize => {
            if let Some(v) = present(&obj, "content") {
                if !(v.is_string() || v.is_array()) {
                    return Err(wrong("content", "a string or an array", v));
                }
            }
        }
        Route::Detokenize => {
            if let Some(v) = present(&obj, "tokens") {
                let Some(tokens) = v.as_array() else {
                    return Err(wrong("tokens", "an array of token ids", v));
                };
                for (i, t) in tokens.iter().enumerate() {
                    if !(t.is_i64() || t.is_u64()) {
                        return Err(wrong(&format!("tokens[{i}]"), "an integer token id", t));
                    }
                }
            }
        }
        Route::Completions | Route::Embeddings => {}
    }
    if route.generates() && cap_tokens(&mut obj, cap)? {
        let body = serde_json::to_vec(&Value::Object(obj)).map_err(|e| Invalid::NotJson {
            detail: e.to_string(),
            line: 0,
            column: 0,
        })?;
        return Ok(Some(Bytes::from(body)));
    }
    Ok(None)
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

fn check_messages(obj: &Map<String, Value>) -> Result<(), Invalid> {
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
                    let part = format!("messages[{i}].content[{j}]");
                    let Some(p) = p.as_object() else {
                        return Err(wrong(&part, "an object", p));
                    };
                    match present(p, "type") {
                        Some(Value::String(t)) if t == "text" => match present(p, "text") {
                            None => {
                                return Err(Invalid::Missing {
                                    field: format!("{part}.text"),
                                })
                            }
                            Some(t) if !t.is_string() => {
                                return Err(wrong(&format!("{part}.text"), "a string", t))
                            }
                            Some(_) => {}
                        },
                        Some(Value::String(_)) => {}
                        None => {
                            return Err(Invalid::Missing {
                                field: format!("{part}.type"),
                            })
                        }
                        Some(t) => return Err(wrong(&format!("{part}.type"), "a string", t)),
                    }
                }
            }
            Some(Value::String(_)) | None => {}
            Some(c) => return Err(wrong(&at("content"), "a string or an array of parts", c)),
        }
    }
    Ok(())
}

fn check_tools(obj: &Map<String, Value>) -> Result<(), Invalid> {
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
                let Some(f) = f.as_object() else {
                    return Err(wrong(&at, "an object", f));
                };
                match present(f, "name") {
                    None => {
                        return Err(Invalid::Missing {
                            field: format!("{at}.name"),
                        })
                    }
                    Some(n) if !n.is_string() => {
                        return Err(wrong(&format!("{at}.name"), "a string", n))
                    }
                    Some(_) => {}
                }
            }
            Some(Value::String(_)) => {}
            Some(ty) => return Err(wrong(&format!("tools[{i}].type"), "a string", ty)),
        }
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

    fn chat(extra: Value) -> Vec<u8> {
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        serde_json::to_vec(&body).unwrap()
    }

    fn err(route: Route, body: &[u8]) -> Invalid {
        check(route, body, CAP).expect_err("should be refused")
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
            CAP
        )
        .is_ok());
        assert_eq!(
            err(Route::Tokenize, br#"{"content": 5}"#).code(),
            "invalid_type"
        );
        assert!(check(Route::Tokenize, br#"{"content": "hi"}"#, CAP)
            .unwrap()
            .is_none());
        assert!(err(Route::Detokenize, br#"{"tokens": "x"}"#)
            .to_string()
            .contains("`tokens`"));
        assert!(err(Route::Detokenize, br#"{"tokens": [1, "x"]}"#)
            .to_string()
            .contains("`tokens[1]`"));
        assert!(check(Route::Detokenize, br#"{"tokens": [1, 2]}"#, CAP).is_ok());
    }

    #[test]
    fn the_cap_is_inserted_when_absent_or_null() {
        for body in [chat(json!({})), chat(json!({"max_tokens": null}))] {
            let out = check(Route::Chat, &body, CAP).unwrap().expect("rewritten");
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["max_tokens"], 100);
            assert_eq!(v["messages"][0]["content"], "hi");
        }
        let out = check(Route::Completions, br#"{"prompt": "x"}"#, CAP)
            .unwrap()
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap()["max_tokens"],
            100
        );
        // Within the cap, under any of the three names: forwarded as sent.
        for field in TOKEN_FIELDS {
            let body = chat(json!({ field: 100 }));
            assert_eq!(check(Route::Chat, &body, CAP).unwrap(), None);
        }
        // Embeddings generate nothing: no cap.
        assert_eq!(
            check(Route::Embeddings, br#"{"input": "x"}"#, CAP).unwrap(),
            None
        );
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
}
