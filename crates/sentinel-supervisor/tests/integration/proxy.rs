//! The OpenAI-compatible proxy against the fake backend: streaming event by event, mid-stream
//! death, auth, body limit, admission, unknown routes, and requests that survive a restart.

use crate::support::{Options, Supervisor};
use serde_json::json;
use std::io::Read;
use std::time::{Duration, Instant};

fn start(mode: &str, config: &'static str, env: Vec<(&'static str, String)>) -> Supervisor {
    let mut all = vec![("FAKE_BACKEND_MODE", mode.to_string())];
    all.extend(env);
    let s = Supervisor::start(Options {
        fake: true,
        config,
        env: all,
        ..Default::default()
    });
    s.wait_health(200, Duration::from_secs(20));
    s
}

fn chat_body(stream: bool) -> serde_json::Value {
    json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "one two three four five"}]})
}

#[test]
fn streams_event_by_event_without_buffering() {
    let s = start("stream-chunks=5,stream-delay=300ms", "", vec![]);
    let started = Instant::now();
    let mut resp = s
        .client()
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&chat_body(true))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    assert!(resp.headers().get("content-length").is_none());
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut arrivals = Vec::new();
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = resp.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        let chunk = String::from_utf8_lossy(&buf[..n]).to_string();
        arrivals.push((started.elapsed(), chunk.matches("data: ").count()));
        text.push_str(&chunk);
    }
    assert!(text.contains("data: [DONE]"), "{text}");
    // The first event arrives long before the last one: nothing buffers the stream.
    let first = arrivals.first().unwrap().0;
    let last = arrivals.last().unwrap().0;
    assert!(last - first >= Duration::from_millis(900), "{arrivals:?}");
    assert!(arrivals.len() >= 4, "events were batched: {arrivals:?}");
}

#[test]
fn backend_death_mid_stream_ends_with_an_error_event() {
    let s = start(
        "stream-chunks=10,stream-delay=100ms,die-mid-stream=3",
        "",
        vec![],
    );
    let started = Instant::now();
    let resp = s
        .client()
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&chat_body(true))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().expect("the stream ends cleanly");
    assert!(started.elapsed() < Duration::from_secs(10));
    let last = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .last()
        .unwrap()
        .to_string();
    let event: serde_json::Value =
        serde_json::from_str(last.trim().trim_start_matches("data: ")).unwrap();
    assert_eq!(event["error"]["type"], "server_error", "{text}");
    assert!(!text.contains("[DONE]"));
    // The supervisor restarts the backend and serves again.
    s.wait_health(200, Duration::from_secs(20));
}

#[test]
fn api_keys_are_required_when_configured() {
    let s = start("", "", vec![("SENTINEL_API_KEY", "sk-test-123".into())]);
    let url = format!("{}/v1/chat/completions", s.url);
    let c = s.client();
    let r = c.post(&url).json(&chat_body(false)).send().unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let r = c
        .post(&url)
        .bearer_auth("wrong")
        .json(&chat_body(false))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(&url)
        .bearer_auth("sk-test-123")
        .json(&chat_body(false))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(&url)
        .header("x-api-key", "sk-test-123")
        .json(&chat_body(false))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // /health stays open for monitors, unknown routes are 404 without a key, and every other
    // route of the supervisor needs one.
    assert_eq!(s.get("/health").0, 200);
    assert_eq!(s.get("/v1/nope").0, 404);
    for path in ["/status", "/v1/models", "/props"] {
        let (code, body) = s.get(path);
        assert_eq!(code, 401, "{path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_api_key", "{path}");
        let r = c
            .get(format!("{}{path}", s.url))
            .bearer_auth("sk-test-123")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

#[test]
fn bodies_over_the_limit_get_413() {
    let s = start("", "[proxy]\nmax_body_bytes = 1024\n", vec![]);
    let big = "x".repeat(4096);
    let (code, body) = s.post(
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": big}]}),
    );
    assert_eq!(code, 413);
    assert_eq!(body["error"]["code"], "request_too_large");
    let (code, _) = s.post("/v1/chat/completions", chat_body(false));
    assert_eq!(code, 200);
}

#[test]
fn unknown_routes_and_disabled_embeddings_are_openai_404s() {
    let s = start("", "model_alias = \"sec-model\"\n", vec![]);
    let (code, body) = s.get("/v1/nope");
    assert_eq!(code, 404);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (code, body) = s.post("/v1/embeddings", json!({"input": "x"}));
    assert_eq!(code, 404);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("embeddings = true"));
    let (code, body) = s.get("/v1/models");
    assert_eq!(code, 200);
    assert_eq!(body["data"][0]["id"], "sec-model");
    let (code, body) = s.post("/tokenize", json!({"content": "hello world"}));
    assert_eq!(code, 200, "{body}");
}

#[test]
fn a_full_queue_gets_429_with_retry_after() {
    let s = start("response-delay=1500ms", "[proxy]\nqueue_len = 0\n", vec![]);
    let url = format!("{}/v1/chat/completions", s.url);
    let slow = {
        let (c, url) = (s.client(), url.clone());
        std::thread::spawn(move || {
            c.post(&url)
                .json(&chat_body(false))
                .send()
                .unwrap()
                .status()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let r = s
        .client()
        .post(&url)
        .json(&chat_body(false))
        .send()
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(slow.join().unwrap(), 200);
}

#[test]
fn a_backend_that_stays_down_past_the_wait_gets_503_with_retry_after() {
    let s = Supervisor::start(Options {
        fake: true,
        config: "[proxy]\nqueue_timeout = \"500ms\"\n",
        env: vec![("FAKE_BACKEND_MODE", "load=30s".into())],
        ..Default::default()
    });
    let r = s
        .client()
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&chat_body(false))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: serde_json::Value = r.json().unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not ready"));
}

#[test]
fn a_kept_alive_connection_closed_under_the_proxy_is_retried_once() {
    // The backend closes the connection of the first request without answering, as llama-server
    // does with an idle keep-alive connection, while its /health stays ok: only the proxy's
    // one retry can turn that into an answer (without it the client gets a 502).
    let s = start("drop-request=1", "", vec![]);
    let pid = s.backend_pid();
    let (code, body) = s.post("/v1/chat/completions", chat_body(false));
    assert_eq!(code, 200, "{body}\n{}", s.logs());
    assert_eq!(body["object"], "chat.completion", "{body}");
    let logs = s.logs();
    assert!(
        logs.contains("closing the connection of request 1 unanswered"),
        "the first attempt was not dropped, so the retry was not exercised:\n{logs}"
    );
    // Nobody restarted anything: the same backend answered the retry.
    assert_eq!(s.backend_pid(), pid);
    // The retry is spent on that request: the next one is answered at the first attempt.
    let (code, _) = s.post("/v1/chat/completions", chat_body(false));
    assert_eq!(code, 200);
}

#[test]
fn a_request_while_the_backend_restarts_waits_for_the_next_one() {
    // A long backoff: the request surely arrives after the supervisor noticed the death and
    // before the next backend is up, so it takes the wait path.
    let s = start("", "[supervisor]\nbackoff_initial = \"1500ms\"\n", vec![]);
    let pid = s.backend_pid();
    crate::support::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let noticed = s.wait_health(503, Duration::from_secs(5));
    assert_ne!(noticed["state"], "ready", "{noticed}");
    let started = Instant::now();
    let (code, body) = s.post("/v1/chat/completions", chat_body(false));
    assert_eq!(code, 200, "{body}\n{}", s.logs());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "answered in {:?}: the request did not wait for the restart",
        started.elapsed()
    );
    assert_ne!(s.backend_pid(), pid);
}

/// CPU seconds used so far by a process (the meter's exact reader).
fn cpu_seconds(pid: i32) -> f64 {
    sentinel_supervisor::meter::process_cpu(pid)
        .expect("backend alive")
        .as_secs_f64()
}

#[test]
fn a_client_that_disconnects_cancels_the_upstream_request() {
    let _cpu = crate::support::exclusive();
    // The fake backend spins a core for as long as it is answering a request.
    let s = start("burn,stream-chunks=400,stream-delay=50ms", "", vec![]);
    let backend = s.backend_pid();
    let mut resp = s
        .client()
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&chat_body(true))
        .send()
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(resp.read(&mut buf).unwrap() > 0);
    let before = cpu_seconds(backend);
    std::thread::sleep(Duration::from_secs(1));
    let busy = cpu_seconds(backend) - before;
    assert!(
        busy > 0.3,
        "the fake backend should be busy while streaming: {busy}"
    );
    drop(resp);
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_seconds(backend);
    std::thread::sleep(Duration::from_secs(1));
    let after_drop = cpu_seconds(backend) - before;
    assert!(
        after_drop < 0.1,
        "the upstream request kept running after the client left: {after_drop} s of CPU"
    );
    assert_eq!(s.status().in_flight, 0);
}
