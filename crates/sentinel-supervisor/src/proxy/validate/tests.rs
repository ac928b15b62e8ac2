use super::*;
use serde_json::json;

fn limits() -> &'static Limits {
    static LIMITS: std::sync::OnceLock<Limits> = std::sync::OnceLock::new();
    LIMITS.get_or_init(|| crate::config::Config::builtin().unwrap().proxy.grammar)
}

/// The balanced profile's rules: one slot, no grammar, a 1000-token vocabulary, no projector.
fn rules() -> Rules<'static> {
    Rules {
        profile: "balanced",
        max_tokens: 100,
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
    for body in [&br#"{"content": null}"#[..], br"{}"] {
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
