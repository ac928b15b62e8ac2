//! No request can take the backend down: poison requests (the fake backend's `crash-on`, a
//! SIGSEGV on cue) are answered 400 and refused by fingerprint until `proxy.poison_ttl`
//! passes, bystanders of a crash are sent again and answered, client-caused crashes never trip
//! the crash-loop breaker while idle crashes still do, a backend 500 that answers a client's
//! mistake is a 400; and against the real llama-server, the hostile shapes that crashed it or
//! held its slot (deep grammar, self-referencing `chat_parser`, huge enum, out-of-vocabulary
//! ids, an image for a text-only model) are 400s that leave its pid unchanged.

use crate::support::{Options, Supervisor};
use serde_json::json;
use std::time::{Duration, Instant};

/// Quick restarts, and a breaker that trips on the second failure within the window.
const FAST: &str = r#"
[supervisor]
ready_poll_interval = "20ms"
probe_interval = "500ms"
probe_timeout = "2s"
backoff_initial = "100ms"
backoff_max = "400ms"
stop_grace = "1s"
crash_loop_restarts = 1
crash_loop_window = "5m"
"#;

/// `extra_config` follows FAST's `[supervisor]` table: more of its keys, or other tables.
fn fake(mode: &str, extra_config: &str, args: Vec<&'static str>) -> Supervisor {
    let config = format!("{FAST}{extra_config}");
    let s = Supervisor::start(Options {
        fake: true,
        args,
        config: Box::leak(config.into_boxed_str()),
        env: vec![("FAKE_BACKEND_MODE", mode.to_string())],
        ..Default::default()
    });
    s.wait_health(200, Duration::from_secs(20));
    s
}

fn chat(text: &str) -> serde_json::Value {
    json!({"messages": [{"role": "user", "content": text}], "max_tokens": 8})
}

fn code_of(body: &serde_json::Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

fn metrics(s: &Supervisor) -> String {
    s.client()
        .get(format!("{}/metrics", s.url))
        .send()
        .and_then(reqwest::blocking::Response::text)
        .expect("/metrics")
}

/// The value of a sample line `name value` in a Prometheus text.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn twenty_poison_requests_leave_the_backend_ready_after_at_most_one_restart() {
    let s = fake("crash-on=POISON", "", vec![]);
    let first = s.backend_pid();
    for i in 0..20 {
        let (code, body) = s.post("/v1/chat/completions", chat("POISON please"));
        assert_eq!(code, 400, "request {i}: {body}\n{}", s.logs());
        let want = if i == 0 {
            "backend_died_on_request"
        } else {
            "poison_request"
        };
        assert_eq!(code_of(&body), want, "request {i}: {body}");
    }
    let status = s.wait_state("ready", Duration::from_secs(10));
    assert_eq!(status["restarts"], 1, "{status}");
    assert_ne!(s.backend_pid(), first);
    let (code, body) = s.post("/v1/chat/completions", chat("hello"));
    assert_eq!(code, 200, "{body}");
    let m = metrics(&s);
    assert_eq!(sample(&m, "sentinel_poisoned_requests_total"), 1.0);
    assert_eq!(sample(&m, "sentinel_poison_refusals_total"), 19.0);
    let logs = s.logs();
    assert!(
        logs.contains("messages("),
        "the log names the fields: {logs}"
    );
    assert!(
        !logs.contains("POISON please"),
        "the log shows no content: {logs}"
    );
}

#[test]
fn client_crashes_never_trip_the_breaker_but_idle_crashes_do() {
    let s = fake("crash-on=POISON", "", vec![]);
    for i in 0..3 {
        let (code, body) = s.post("/v1/chat/completions", chat(&format!("POISON {i}")));
        assert_eq!(code, 400, "{body}\n{}", s.logs());
        assert_eq!(code_of(&body), "backend_died_on_request", "{body}");
        s.wait_state("ready", Duration::from_secs(10));
    }
    assert_eq!(s.status().restarts, 3);
    // Two crashes with nothing in flight: more than crash_loop_restarts = 1 in the window.
    let pid = s.backend_pid();
    crate::support::kill(pid, nix::sys::signal::Signal::SIGABRT);
    crate::support::wait_gone(pid, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    s.wait_state("ready", Duration::from_secs(10));
    let pid = s.backend_pid();
    crate::support::kill(pid, nix::sys::signal::Signal::SIGABRT);
    s.wait_state("failed", Duration::from_secs(10));
}

#[test]
fn a_poison_fingerprint_expires_after_poison_ttl() {
    let s = fake("crash-on=POISON", "[proxy]\npoison_ttl = \"8s\"\n", vec![]);
    let (code, body) = s.post("/v1/chat/completions", chat("POISON"));
    assert_eq!((code, code_of(&body)), (400, "backend_died_on_request"));
    s.wait_state("ready", Duration::from_secs(10));
    let (code, body) = s.post("/v1/chat/completions", chat("POISON"));
    assert_eq!((code, code_of(&body)), (400, "poison_request"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("proxy.poison_ttl"),
        "{body}"
    );
    // Key order and spacing do not make it another request.
    let reordered =
        r#"{ "max_tokens": 8, "messages": [ { "content": "POISON", "role": "user" } ] }"#;
    let r = s
        .client()
        .post(format!("{}/v1/chat/completions", s.url))
        .header("content-type", "application/json")
        .body(reordered)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let (code, _) = s.post("/v1/chat/completions", chat("harmless"));
    assert_eq!(code, 200);
    std::thread::sleep(Duration::from_millis(8300));
    let (code, body) = s.post("/v1/chat/completions", chat("POISON"));
    assert_eq!(
        (code, code_of(&body)),
        (400, "backend_died_on_request"),
        "after the ttl the request reaches a backend again: {body}"
    );
}

#[test]
fn a_bystander_of_a_crash_is_sent_again_and_answered() {
    let s = fake(
        "crash-on=POISON,response-delay=1500ms",
        "",
        vec!["--profile", "fast"],
    );
    let first = s.backend_pid();
    let url = s.url.clone();
    let bystander = std::thread::spawn(move || {
        let r = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
            .post(format!("{url}/v1/chat/completions"))
            .json(&chat("an honest question"))
            .send()
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json::<serde_json::Value>().unwrap())
    });
    std::thread::sleep(Duration::from_millis(400));
    let started = Instant::now();
    let (code, body) = s.post("/v1/chat/completions", chat("POISON"));
    assert_eq!(code, 400, "{body}\n{}", s.logs());
    assert_eq!(code_of(&body), "backend_died_on_request", "{body}");
    let (code, body) = bystander.join().unwrap();
    assert_eq!(code, 200, "{body}\n{}", s.logs());
    assert!(body["choices"][0]["message"]["content"].is_string());
    eprintln!(
        "poison: crash with two in flight: poison answered 400 in {:?}, bystander answered",
        started.elapsed()
    );
    let status = s.wait_state("ready", Duration::from_secs(10));
    assert!(status["restarts"].as_u64().unwrap() <= 2, "{status}");
    assert_ne!(s.backend_pid(), first);
}

#[test]
fn a_stream_cut_by_a_crash_is_remembered_as_poison() {
    let s = fake(
        "stream-chunks=10,stream-delay=50ms,die-mid-stream=3,segv-mid-stream",
        "",
        vec![],
    );
    let body = json!({"messages": [{"role": "user", "content": "stream me"}], "max_tokens": 8, "stream": true});
    let r = s
        .client()
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().unwrap_or_default();
    assert!(text.contains("mid-stream"), "{text}");
    s.wait_state("ready", Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, answer) = s.post("/v1/chat/completions", body.clone());
        if code == 400 {
            assert_eq!(code_of(&answer), "poison_request", "{answer}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never refused: {code} {answer}\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_backend_500_that_answers_a_client_mistake_is_a_400_and_no_liveness_failure() {
    let s = fake(
        "completions-fail,fail-message=image input is not supported - hint: you may need to provide the mmproj",
        "liveness_failures = 2\n",
        vec![],
    );
    let pid = s.backend_pid();
    for _ in 0..4 {
        let (code, body) = s.post("/v1/chat/completions", chat("hi"));
        assert_eq!(code, 400, "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("image input is not supported"));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        s.backend_pid(),
        pid,
        "client mistakes are not a failing backend"
    );
}

#[test]
fn real_hostile_requests_get_400_and_the_backend_lives() {
    let _cpu = crate::support::exclusive();
    let s = Supervisor::start(Options {
        args: vec!["--profile", "hostile"],
        config: r"
[profiles.hostile]
cpus = 1.0
slots = 1
grammar = true
",
        ..Default::default()
    });
    s.wait_health(200, Duration::from_secs(180));
    let pid = s.backend_pid();
    let deep = format!("root ::= {}\"a\"{}", "(".repeat(30_000), ")".repeat(30_000));
    let parser: serde_json::Value =
        json!({"root": {"ref": "root"}, "rules": {"root": {"seq": [{"ref": "root"}]}}});
    let values: Vec<String> = (0..5000).map(|i| format!("value number {i}")).collect();
    let huge_enum = json!({"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "string", "enum": values}}});
    let image = json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}], "max_tokens": 4});
    let cases = [
        (
            "/v1/completions",
            json!({"prompt": "x", "grammar": deep, "max_tokens": 4}),
            "grammar_too_complex",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "grammar": deep, "max_tokens": 4}),
            "grammar_too_complex",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "chat_parser": parser, "max_tokens": 4}),
            "unknown_field",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "no_such_field": 1}),
            "unknown_field",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "response_format": huge_enum, "max_tokens": 4}),
            "grammar_too_complex",
        ),
        (
            "/detokenize",
            json!({"tokens": [2, 99_999_999]}),
            "invalid_token",
        ),
        ("/v1/chat/completions", image, "unsupported_content"),
    ];
    for (path, body, want) in cases {
        let started = Instant::now();
        let (code, answer) = s.post(path, body);
        assert_eq!(code, 400, "{path}: {answer}");
        assert_eq!(code_of(&answer), want, "{path}: {answer}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{path} {want}: refused in {:?}",
            started.elapsed()
        );
    }
    // What stays inside the bounds is served: a small grammar, a schema, in-vocabulary ids.
    let (code, body) = s.post(
        "/v1/completions",
        json!({"prompt": "Is the sky blue? Answer:", "grammar": "root ::= \" yes\" | \" no\"", "max_tokens": 4}),
    );
    assert_eq!(code, 200, "{body}");
    let text = body["choices"][0]["text"].as_str().unwrap();
    assert!(text == " yes" || text == " no", "{text:?}");
    let (code, body) = s.post("/detokenize", json!({"tokens": [2, 100]}));
    assert_eq!(code, 200, "{body}");
    assert_eq!(s.backend_pid(), pid, "the backend survived every request");
    assert_eq!(s.status().restarts, 0);
}

/// Item 6 of issue 20, run by `scripts/fuzz --real`: `FUZZ_CASES` (default 20 000) bodies
/// generated from the OpenAI request schemas with hostile values (huge, negative and
/// fractional numbers, deep nesting, long strings, wrong types, unknown and llama.cpp-only
/// fields, unbounded grammars and schemas, out-of-vocabulary ids, media parts), one client,
/// against the real llama-server; after each, the answer must be 2xx or 4xx and the backend's
/// pid unchanged. Prints the figures.
#[test]
#[ignore = "20 000 requests against the real backend (minutes); run with scripts/fuzz --real"]
fn fuzz_real_backend_with_hostile_bodies() {
    use rand::SeedableRng;
    let _cpu = crate::support::exclusive();
    let cases: usize = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let s = Supervisor::start(Options {
        args: vec!["--profile", "hostile"],
        config: r"
[profiles.hostile]
cpus = 1.0
slots = 1
grammar = true
max_tokens = 2
",
        ..Default::default()
    });
    s.wait_health(200, Duration::from_secs(180));
    let pid = s.backend_pid();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut ok, mut client_err, mut server_err, mut deaths) = (0usize, 0usize, 0usize, 0usize);
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    let started = Instant::now();
    for case in 0..cases {
        let (path, body) = fuzz::body(&mut rng);
        let r = client
            .post(format!("{}{path}", s.url))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .unwrap_or_else(|e| panic!("case {case}: no answer: {e}\n{}", s.logs()));
        let code = r.status().as_u16();
        let answer: serde_json::Value = r.json().unwrap_or(serde_json::Value::Null);
        match code {
            200..=299 => ok += 1,
            400..=499 => {
                client_err += 1;
                *codes.entry(code_of(&answer).to_string()).or_default() += 1;
            }
            _ => {
                server_err += 1;
                eprintln!(
                    "fuzz: case {case}: {code} on {path}: {answer} (body {} bytes: {})",
                    body.len(),
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                );
            }
        }
        let now = s.status();
        if now.backend.as_ref().map(|b| b.pid) != Some(pid) || now.restarts > 0 {
            deaths += 1;
            eprintln!(
                "fuzz: case {case}: the backend died on {path}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
            s.wait_state("ready", Duration::from_secs(120));
            break;
        }
    }
    eprintln!(
        "fuzz: {cases} cases in {:.0?} (seed {seed}): {ok} 2xx, {client_err} 4xx, {server_err} 5xx, {deaths} backend deaths; 4xx codes: {codes:?}",
        started.elapsed()
    );
    assert_eq!((server_err, deaths), (0, 0), "{}", s.logs());
}

/// Request bodies from the OpenAI schemas, with hostile values.
mod fuzz {
    use rand::seq::IndexedRandom;
    use rand::Rng;
    use serde_json::{json, Map, Value};

    const FIELDS: &[&str] = &[
        "model",
        "messages",
        "prompt",
        "temperature",
        "top_p",
        "n",
        "stream",
        "stop",
        "max_tokens",
        "max_completion_tokens",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "seed",
        "user",
        "tools",
        "tool_choice",
        "response_format",
        "stream_options",
        "parallel_tool_calls",
        "metadata",
        "echo",
        "suffix",
        "best_of",
        "cache_prompt",
        "top_k",
        "min_p",
        "typical_p",
        "repeat_penalty",
        "repeat_last_n",
        "n_predict",
        "n_probs",
        "json_schema",
        "grammar",
        "input",
        "encoding_format",
        "dimensions",
        "content",
        "tokens",
        "add_special",
        "with_pieces",
        // llama.cpp-only fields outside the allow-list, and made-up ones.
        "chat_parser",
        "grammar_lazy",
        "grammar_triggers",
        "samplers",
        "id_slot",
        "lora",
        "n_indent",
        "t_max_predict_ms",
        "dry_multiplier",
        "mirostat",
        "chat_template_kwargs",
        "x_unknown",
        "__proto__",
        "",
    ];

    fn long_string(rng: &mut impl Rng) -> String {
        let n = *[1usize, 100, 10_000, 200_000].choose(rng).unwrap();
        let c = *['a', '(', '{', '"', '\u{0}', 'é', '🙂', '\\']
            .choose(rng)
            .unwrap();
        std::iter::repeat(c).take(n).collect()
    }

    fn deep(rng: &mut impl Rng) -> Value {
        let mut v = json!("x");
        for _ in 0..rng.random_range(1..120) {
            v = if rng.random_bool(0.5) {
                json!([v])
            } else {
                json!({"a": v})
            };
        }
        v
    }

    fn grammar(rng: &mut impl Rng) -> Value {
        match rng.random_range(0..5) {
            0 => {
                let n = rng.random_range(1..40_000);
                json!(format!("root ::= {}\"a\"{}", "(".repeat(n), ")".repeat(n)))
            }
            1 => json!(format!(
                "root ::= \"a\"{{{},{}}}",
                rng.random_range(0..10),
                rng.random::<u32>()
            )),
            2 => json!("root ::= root"),
            3 => json!(format!("root ::= [{}", long_string(rng))),
            _ => json!("root ::= \" yes\" | \" no\""),
        }
    }

    fn schema(rng: &mut impl Rng) -> Value {
        match rng.random_range(0..6) {
            0 => {
                let n = rng.random_range(1..3000);
                json!({"type": "string", "enum": (0..n).map(|i| format!("v{i}")).collect::<Vec<_>>()})
            }
            1 => json!({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}),
            2 => {
                json!({"type": "array", "minItems": rng.random::<u32>(), "items": {"type": "string"}})
            }
            3 => json!({"type": "string", "pattern": format!("^a{{1,{}}}$", rng.random::<u32>())}),
            4 => deep(rng),
            _ => {
                json!({"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}}, "required": ["answer"]})
            }
        }
    }

    fn number(rng: &mut impl Rng) -> Value {
        match rng.random_range(0..9) {
            0 => json!(1e308),
            1 => json!(-1e308),
            2 => json!(-1),
            3 => json!(i64::MAX),
            4 => json!(u64::MAX),
            5 => json!(0.5),
            6 => json!(rng.random_range(-5..300_000)),
            7 => json!(0),
            _ => json!(2),
        }
    }

    fn hostile(rng: &mut impl Rng, field: &str) -> Value {
        match (field, rng.random_range(0..12)) {
            ("grammar", 0..=6) => grammar(rng),
            ("json_schema", 0..=6) => schema(rng),
            ("response_format", 0..=6) => {
                json!({"type": "json_schema", "json_schema": {"name": "a", "schema": schema(rng)}})
            }
            ("tools", 0..=6) => {
                json!([{"type": "function", "function": {"name": "f", "parameters": schema(rng)}}])
            }
            ("tokens" | "prompt" | "input" | "content", 0..=4) => {
                json!((0..rng.random_range(1..20))
                    .map(|_| number(rng))
                    .collect::<Vec<_>>())
            }
            ("messages", 0..=6) => messages(rng),
            ("chat_parser", _) => json!({"root": {"ref": "root"}}),
            (_, 0..=3) => number(rng),
            (_, 4) => json!(long_string(rng)),
            (_, 5) => deep(rng),
            (_, 6) => json!(rng.random_bool(0.5)),
            (_, 7) => json!({}),
            (_, 8) => json!([]),
            (_, 9) => Value::Null,
            (_, 10) => json!(["\n", long_string(rng)]),
            _ => json!({"a": number(rng)}),
        }
    }

    fn messages(rng: &mut impl Rng) -> Value {
        let part = match rng.random_range(0..6) {
            0 => {
                json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}})
            }
            1 => json!({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}),
            2 => json!({"type": "video"}),
            3 => json!({"type": "text", "text": number(rng)}),
            4 => json!({"type": "text"}),
            _ => json!({"type": "text", "text": "hi"}),
        };
        let role = *["user", "system", "assistant", "tool", "developer", "nobody"]
            .choose(rng)
            .unwrap();
        let content = match rng.random_range(0..4) {
            0 => json!([part]),
            1 => json!(long_string(rng)),
            2 => number(rng),
            _ => json!("hi"),
        };
        let n = rng.random_range(1..4);
        json!((0..n)
            .map(|_| json!({"role": role, "content": content}))
            .collect::<Vec<_>>())
    }

    /// One request: a route and a JSON body (sometimes not JSON at all).
    pub(super) fn body(rng: &mut impl Rng) -> (&'static str, Vec<u8>) {
        let (path, mut base) = match rng.random_range(0..10) {
            0..=4 => (
                "/v1/chat/completions",
                json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
            ),
            5..=6 => ("/v1/completions", json!({"prompt": "hi", "max_tokens": 1})),
            7 => ("/tokenize", json!({"content": "hi"})),
            _ => ("/detokenize", json!({"tokens": [2, 100]})),
        };
        let obj: &mut Map<String, Value> = base.as_object_mut().unwrap();
        for _ in 0..rng.random_range(0..4) {
            let field = *FIELDS.choose(rng).unwrap();
            obj.insert(field.to_string(), hostile(rng, field));
        }
        let mut bytes = serde_json::to_vec(&base).unwrap();
        if rng.random_ratio(1, 50) {
            let cut = rng.random_range(0..bytes.len());
            bytes.truncate(cut);
        }
        (path, bytes)
    }
}
