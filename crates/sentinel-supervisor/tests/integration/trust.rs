//! Trust: the backend's secret on no command line (real llama-server), an OpenAI-shaped error
//! body for every status the proxy produces (with `Retry-After` on 429 and 503), slow and
//! abusive clients, and the per-profile `max_tokens` cap.

use crate::support::{Options, Supervisor};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn start(mode: &str, config: &'static str) -> Supervisor {
    let s = Supervisor::start(Options {
        fake: true,
        config,
        env: vec![("FAKE_BACKEND_MODE", mode.to_string())],
        ..Default::default()
    });
    s.wait_health(200, Duration::from_secs(20));
    s
}

fn addr(s: &Supervisor) -> String {
    s.url.trim_start_matches("http://").to_string()
}

fn chat() -> Value {
    json!({"messages": [{"role": "user", "content": "one two"}]})
}

/// Sends raw bytes, returns (status, retry-after, body as JSON) of the answer.
fn raw(s: &Supervisor, request: &[u8]) -> (u16, Option<String>, Value) {
    let mut c = TcpStream::connect(addr(s)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    parse(&String::from_utf8_lossy(&out))
}

fn parse(resp: &str) -> (u16, Option<String>, Value) {
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let retry = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("retry-after")
            .then(|| v.trim().to_string())
    });
    (
        status,
        retry,
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn assert_openai(what: &str, status: u16, want: u16, retry: &Option<String>, body: &Value) {
    assert_eq!(status, want, "{what}: {body}");
    for k in ["message", "type", "code"] {
        assert!(
            body["error"][k].is_string(),
            "{what}: `error.{k}` missing: {body}"
        );
    }
    let must_wait = matches!(want, 429 | 503);
    assert_eq!(
        retry.is_some(),
        must_wait,
        "{what}: Retry-After {retry:?} on {want}"
    );
}

fn post_raw(path: &str, body: &[u8], extra: &str) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

#[test]
fn every_client_error_is_an_openai_4xx() {
    let s = start(
        "",
        "[proxy]\nmax_body_bytes = 4096\nbody_read_timeout = \"500ms\"\n",
    );
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "not JSON",
            post_raw("/v1/chat/completions", b"{nope", ""),
            400,
            "invalid_json",
        ),
        (
            "not UTF-8",
            post_raw("/v1/chat/completions", b"{\"a\":\"\xff\xfe\"}", ""),
            400,
            "invalid_utf8",
        ),
        (
            "not an object",
            post_raw("/v1/completions", b"[1]", ""),
            400,
            "invalid_body",
        ),
        (
            "role missing",
            post_raw(
                "/v1/chat/completions",
                br#"{"messages":[{"content":"x"}]}"#,
                "",
            ),
            400,
            "missing_field",
        ),
        (
            "tokens wrong type",
            post_raw("/detokenize", br#"{"tokens":"x"}"#, ""),
            400,
            "invalid_type",
        ),
        (
            "unknown route",
            b"GET /v1/nope HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(),
            404,
            "not_found",
        ),
        (
            "wrong method",
            b"GET /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(),
            405,
            "method_not_allowed",
        ),
        (
            "body too large",
            post_raw("/v1/chat/completions", &[b' '; 8192], ""),
            413,
            "request_too_large",
        ),
        (
            "64 KiB header line",
            post_raw(
                "/v1/chat/completions",
                b"{}",
                &format!("x-big: {}\r\n", "a".repeat(64 * 1024)),
            ),
            431,
            "headers_too_large",
        ),
    ];
    for (what, request, want, code) in cases {
        let (status, retry, body) = raw(&s, &request);
        assert_openai(what, status, want, &retry, &body);
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        if want == 400 {
            assert_eq!(body["error"]["type"], "invalid_request_error");
        }
    }
    // Line and column of a JSON error.
    let (_, _, body) = raw(
        &s,
        &post_raw("/v1/chat/completions", b"{\n  \"a\": nope}", ""),
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("line 2 column"), "{message}");
    // The backend is still fine.
    assert_eq!(s.post("/v1/chat/completions", chat()).0, 200);
}

#[test]
fn api_key_404_429_503_504_have_the_openai_shape() {
    let s = Supervisor::start(Options {
        fake: true,
        config: "[proxy]\nqueue_len = 0\nupstream_timeout = \"700ms\"\n",
        env: vec![
            ("FAKE_BACKEND_MODE", "response-delay=1500ms".into()),
            ("SENTINEL_API_KEY", "sk-t".into()),
        ],
        ..Default::default()
    });
    s.wait_health(200, Duration::from_secs(20));
    let body = serde_json::to_vec(&chat()).unwrap();
    let (status, retry, b) = raw(&s, &post_raw("/v1/chat/completions", &body, ""));
    assert_openai("no key", status, 401, &retry, &b);
    let auth = "authorization: Bearer sk-t\r\n";
    // One request holds the only slot until its upstream timeout (504); the next, with no
    // queue, gets 429.
    let slow = {
        let (a, req) = (addr(&s), post_raw("/v1/chat/completions", &body, auth));
        std::thread::spawn(move || {
            let mut c = TcpStream::connect(a).unwrap();
            c.write_all(&req).unwrap();
            let mut out = Vec::new();
            let _ = c.read_to_end(&mut out);
            parse(&String::from_utf8_lossy(&out))
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let (status, retry, b) = raw(&s, &post_raw("/v1/chat/completions", &body, auth));
    assert_openai("queue full", status, 429, &retry, &b);
    let (status, retry, b) = slow.join().unwrap();
    assert_openai("upstream timeout", status, 504, &retry, &b);

    // 503 while the backend is down for good: stop it and keep it from coming back.
    let s = Supervisor::start(Options {
        fake: true,
        config: "[proxy]\nqueue_timeout = \"300ms\"\n",
        env: vec![("FAKE_BACKEND_MODE", "load=60s".into())],
        ..Default::default()
    });
    let (status, retry, b) = raw(&s, &post_raw("/v1/chat/completions", &body, ""));
    assert_openai("backend not ready", status, 503, &retry, &b);
}

#[test]
fn a_slow_body_gets_408_and_never_takes_a_slot() {
    let s = start("", "[proxy]\nbody_read_timeout = \"1s\"\n");
    let mut c = TcpStream::connect(addr(&s)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = serde_json::to_vec(&chat()).unwrap();
    c.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let started = Instant::now();
    // Trickle the body; meanwhile the request is neither in flight nor queued.
    for b in &body[..5] {
        c.write_all(&[*b]).unwrap();
        let (_, st) = s.get("/status");
        assert_eq!(st["in_flight"], 0, "{st}");
        assert_eq!(st["queued"], 0, "{st}");
        std::thread::sleep(Duration::from_millis(150));
    }
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let (status, retry, b) = parse(&String::from_utf8_lossy(&out));
    assert_openai("slow body", status, 408, &retry, &b);
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("proxy.body_read_timeout"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(s.post("/v1/chat/completions", chat()).0, 200);
}

#[test]
fn a_slow_head_is_cut_by_closing_the_connection() {
    let s = start("", "[proxy]\nheader_read_timeout = \"1s\"\n");
    let mut c = TcpStream::connect(addr(&s)).unwrap();
    let started = Instant::now();
    let head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n";
    let mut cut = false;
    for b in head {
        if c.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let n = c.read_to_end(&mut out).unwrap_or(0);
    assert!(
        cut || n == 0,
        "hyper closes without an answer: {:?}",
        String::from_utf8_lossy(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(head.len() as u64 / 5 + 2));
}

/// Reads one HTTP/1.1 answer with a `content-length` body from a kept-alive connection:
/// (status, body as JSON), or None when the server closed it first.
fn read_answer(c: &mut TcpStream) -> Option<(u16, Value)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match c.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let (status, _, _) = parse(&head);
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    let mut body = vec![0u8; length];
    c.read_exact(&mut body).ok()?;
    Some((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// A kept-alive `GET /health` on `c`: whether the server answered it 200 (so it holds `c`
/// open and counts it).
fn health_on(c: &mut TcpStream) -> Option<(u16, Value)> {
    c.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .ok()?;
    read_answer(c)
}

/// Opens a connection the server has accepted and keeps open: one that answered a kept-alive
/// request. A connection the server still counts after the client closed it (the harness's
/// readiness probe, until the server reads its close) can take a slot for a moment, so a
/// refused one is retried.
fn held_connection(s: &Supervisor) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = TcpStream::connect(addr(s)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        match health_on(&mut c) {
            Some((200, _)) => return c,
            Some((503, b)) if b["error"]["code"] == "too_many_connections" => {}
            other => panic!("holding a connection: {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "a slot never freed for a held connection"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn connections_beyond_the_cap_are_refused_with_503() {
    // The head timeout also ends idle keep-alive connections: long enough that the held
    // ones outlive the test on a loaded machine.
    let s = start(
        "",
        "[proxy]\nmax_connections = 3\nheader_read_timeout = \"60s\"\n",
    );
    let mut held: Vec<_> = (0..3).map(|_| held_connection(&s)).collect();
    // All three are accepted and open, so the fourth is refused at once.
    let (status, retry, b) = raw(&s, &post_raw("/v1/chat/completions", b"{}", ""));
    assert_openai("too many connections", status, 503, &retry, &b);
    assert_eq!(b["error"]["code"], "too_many_connections");
    // The held ones were open all along: each still answers.
    for (i, c) in held.iter_mut().enumerate() {
        let answer = health_on(c);
        assert!(
            matches!(answer, Some((200, _))),
            "held connection {i} after the refusal: {answer:?}"
        );
    }
    // Closing them frees the slots once the server has read the closes.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, b) = raw(&s, &post_raw("/v1/chat/completions", b"{}", ""));
        if status == 400 {
            break;
        }
        assert_eq!(status, 503, "{b}");
        assert!(Instant::now() < deadline, "the slots never freed: {b}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.post("/v1/chat/completions", chat()).0, 200);
}

#[test]
fn max_tokens_is_capped_per_profile() {
    let s = start(
        "echo",
        "[proxy]\nmax_tokens = 300\n[profiles.balanced]\nmax_tokens = 64\n",
    );
    // None given: the cap is inserted, the rest is forwarded as sent.
    let (code, body) = s.post("/v1/chat/completions", chat());
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["received"]["max_tokens"], 64, "{body}");
    assert_eq!(body["received"]["messages"][0]["content"], "one two");
    let (code, body) = s.post("/v1/completions", json!({"prompt": "x"}));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["received"]["max_tokens"], 64, "{body}");
    // Within the cap: as sent.
    let mut within = chat();
    within["max_completion_tokens"] = json!(10);
    let (_, body) = s.post("/v1/chat/completions", within);
    assert_eq!(body["received"]["max_completion_tokens"], 10);
    assert!(body["received"].get("max_tokens").is_none(), "{body}");
    // Above it, under any name: 400 naming the cap and the key.
    for field in ["max_tokens", "max_completion_tokens", "n_predict"] {
        let mut above = chat();
        above[field] = json!(65);
        let (code, body) = s.post("/v1/chat/completions", above);
        assert_eq!(code, 400, "{body}");
        let m = body["error"]["message"].as_str().unwrap();
        assert!(
            m.contains("64") && m.contains("profiles.balanced.max_tokens"),
            "{m}"
        );
    }
}

/// The real llama-server: its key is in no process's command line, and the backend's port
/// refuses a request without it.
#[test]
fn real_backend_key_is_on_no_command_line_and_required_by_the_backend() {
    let _cpu = crate::support::exclusive();
    let s = Supervisor::start(Options {
        args: vec!["--profile", "invisible"],
        ..Default::default()
    });
    s.wait_health(200, Duration::from_secs(180));
    let (_, status) = s.get("/status");
    let pid = status["backend"]["pid"].as_i64().unwrap();
    let port = status["backend"]["port"].as_u64().unwrap();
    let environ =
        std::fs::read(format!("/proc/{pid}/environ")).expect("read the backend's environ");
    let key = environ
        .split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"LLAMA_API_KEY="))
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .expect("LLAMA_API_KEY in the backend's environment");
    assert!(key.len() >= 32);

    let mut scanned = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        scanned += 1;
        assert!(
            !cmdline.windows(key.len()).any(|w| w == key.as_bytes()),
            "the key is on the command line of {:?}: {}",
            entry.path(),
            String::from_utf8_lossy(&cmdline).replace('\0', " ")
        );
    }
    assert!(scanned > 3, "scanned only {scanned} command lines");
    assert!(!status.to_string().contains(&key), "the key is in /status");

    let direct = format!("http://127.0.0.1:{port}/v1/models");
    let c = s.client();
    let r = c.get(&direct).send().unwrap();
    assert_eq!(r.status(), 401, "the backend answered without its key");
    let r = c.get(&direct).bearer_auth(&key).send().unwrap();
    assert_eq!(r.status(), 200);
    // Through the proxy it works without knowing the key.
    assert_eq!(s.get("/v1/models").0, 200);
    assert!(
        !s.logs().contains(&key),
        "the key is in the supervisor's log"
    );
}
