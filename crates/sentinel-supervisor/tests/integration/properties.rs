//! Property tests (proptest): config parsing and request validation never panic on random
//! input, config errors name the key at fault, and a refused body is always a 400.

use proptest::prelude::*;
use sentinel_supervisor::config::Config;
use sentinel_supervisor::proxy::error::ApiError;
use sentinel_supervisor::proxy::validate::{check, Route, Rules};
use std::path::Path;

/// A profile with 16 tokens per request, two slots, grammars on.
fn rules(limits: &sentinel_supervisor::proxy::grammar::Limits) -> Rules<'_> {
    Rules {
        profile: "p",
        max_tokens: 16,
        slots: 2,
        grammar: true,
        extra_fields: &[],
        limits,
        vocab_size: Some(1000),
        projector: false,
    }
}

/// Keys of the config file, as `section.key` (profiles included).
const KEYS: &[&str] = &[
    "listen",
    "default_profile",
    "model_alias",
    "api_keys",
    "backend.ctx_size",
    "backend.extra_args",
    "supervisor.startup_timeout",
    "supervisor.probe_interval",
    "supervisor.liveness_failures",
    "supervisor.backoff_max",
    "proxy.max_body_bytes",
    "proxy.queue_len",
    "proxy.queue_timeout",
    "proxy.max_tokens",
    "proxy.header_read_timeout",
    "proxy.body_read_timeout",
    "proxy.max_header_bytes",
    "proxy.max_headers",
    "proxy.max_connections",
    "governor.method",
    "governor.period",
    "governor.feedback_gain",
    "profiles.fast.cpus",
    "profiles.fast.threads",
    "profiles.fast.priority",
    "profiles.fast.slots",
    "profiles.fast.max_tokens",
    "profiles.fast.adaptive",
    "profiles.fast.method",
    "profiles.fast.period",
    "profiles.fast.pin",
    "profiles.balanced.ctx_size",
];

/// A random TOML value: numbers of every size and sign, strings (durations, words, junk),
/// booleans, arrays.
fn toml_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("TOML has no NaN literal here", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
        Just("nan".to_string()),
        Just("inf".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        "[a-z0-9 .:/]{0,12}".prop_map(|s| format!("{s:?}")),
        "[0-9]{1,4}(ms|s|m|h|x|)".prop_map(|s| format!("{s:?}")),
        ".{0,8}".prop_map(|s| format!("{s:?}")),
    ];
    prop_oneof![
        3 => leaf.clone(),
        1 => proptest::collection::vec(leaf, 0..3).prop_map(|v| format!("[{}]", v.join(", "))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn config_with_a_random_value_never_panics_and_errors_name_the_key(
        key in proptest::sample::select(KEYS),
        value in toml_value(),
    ) {
        let text = match key.rsplit_once('.') {
            Some((table, k)) => format!("[{table}]\n{k} = {value}\n"),
            None => format!("{key} = {value}\n"),
        };
        if let Err(e) = Config::from_layers(Some((Path::new("user.toml"), &text))) {
            let message = e.to_string();
            let leaf = key.rsplit('.').next().unwrap();
            // The key, or for an unparsable file its position, is named.
            prop_assert!(
                message.contains(leaf) || message.contains("line") || message.contains("governor"),
                "{text:?} -> {message}"
            );
        }
    }

    #[test]
    fn random_bytes_are_refused_with_400_or_passed(
        route in proptest::sample::select(&[Route::Chat, Route::Completions, Route::Embeddings, Route::Tokenize, Route::Detokenize][..]),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let limits = Config::builtin().unwrap().proxy.grammar;
        if let Err(e) = check(route, &body, &rules(&limits)) {
            prop_assert_eq!(ApiError::from(e).status.as_u16(), 400);
        }
    }

    #[test]
    fn random_json_is_refused_with_400_or_passed_capped(
        route in proptest::sample::select(&[Route::Chat, Route::Completions, Route::Tokenize, Route::Detokenize][..]),
        value in json_value(),
    ) {
        let limits = Config::builtin().unwrap().proxy.grammar;
        let body = serde_json::to_vec(&value).unwrap();
        match check(route, &body, &rules(&limits)) {
            Err(e) => {
                let api = ApiError::from(e);
                prop_assert_eq!(api.status.as_u16(), 400);
                prop_assert_eq!(api.kind, "invalid_request_error");
            }
            // A generating request that passes never asks for more than the cap.
            Ok(checked) if matches!(route, Route::Chat | Route::Completions) => {
                let sent: serde_json::Value =
                    serde_json::from_slice(checked.body.as_deref().unwrap_or(&body)).unwrap();
                let asked: Vec<f64> = ["max_tokens", "max_completion_tokens", "n_predict"]
                    .iter()
                    .filter_map(|k| sent.get(*k).and_then(serde_json::Value::as_f64))
                    .collect();
                prop_assert!(!asked.is_empty(), "no cap in {sent}");
                prop_assert!(asked.iter().all(|n| (0.0..=16.0).contains(n)), "{sent}");
            }
            Ok(_) => {}
        }
    }
}

/// Random JSON shaped like requests: objects with the fields the validator looks at, holding
/// values of every type.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{json, Value};
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        (-5.0f64..5000.0).prop_map(Value::from),
        "[a-z]{0,5}".prop_map(Value::from),
        Just(json!("text")),
        Just(json!("function")),
        Just(json!("user")),
    ];
    let keys = proptest::sample::select(vec![
        "messages",
        "role",
        "content",
        "name",
        "type",
        "text",
        "tools",
        "function",
        "tokens",
        "max_tokens",
        "max_completion_tokens",
        "n_predict",
        "prompt",
        "stream",
    ]);
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(keys.clone(), inner, 0..5).prop_map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}
