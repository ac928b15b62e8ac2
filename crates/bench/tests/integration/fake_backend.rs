//! Sanity tests of the `fake-backend` binary that the supervisor tests use for fault injection:
//! it must look like llama-server (routes, auth, loading state, SSE) and misbehave on demand.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running fake backend, killed on drop.
struct Fake {
    child: Child,
    url: String,
}

impl Fake {
    fn start(mode: &str, args: &[&str]) -> Fake {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fake-backend"))
            .args(["--host", "127.0.0.1", "--port", "0", "--threads", "1"])
            .args(args)
            .env("FAKE_BACKEND_MODE", mode)
            .stderr(Stdio::piped())
            .spawn()
            .expect("fake-backend should spawn");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let url = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(url);
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("fake-backend should print its listening line within 10 s");
        Fake { child, url }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(url: &str, key: Option<&str>) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("request should be answered");
    let status = response.status().as_u16();
    (status, response.json().await.expect("body should be JSON"))
}

#[tokio::test]
async fn health_is_public_and_other_routes_need_the_key() {
    let fake = Fake::start("", &["--api-key", "s3cret", "-m", "/models/m.gguf"]);
    assert_eq!(get(&format!("{}/health", fake.url), None).await.0, 200);
    let (status, body) = get(&format!("{}/v1/models", fake.url), Some("wrong")).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["type"], "authentication_error");
    let (status, body) = get(&format!("{}/v1/models", fake.url), Some("s3cret")).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"][0]["id"], "/models/m.gguf");
}

#[tokio::test]
async fn health_reports_loading_until_the_load_time_has_passed() {
    let fake = Fake::start("load=800ms", &[]);
    let started = Instant::now();
    let (status, body) = get(&format!("{}/health", fake.url), None).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["message"], "Loading model");
    loop {
        let (status, body) = get(&format!("{}/health", fake.url), None).await;
        if status == 200 {
            assert_eq!(body["status"], "ok");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still loading after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(700));
}

#[test]
fn exit_at_start_exits_with_the_code_and_says_why() {
    let output = Command::new(env!("CARGO_BIN_EXE_fake-backend"))
        .env("FAKE_BACKEND_MODE", "exit-at-start=3")
        .output()
        .expect("fake-backend should run");
    assert_eq!(output.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&output.stderr).contains("fake failure at start"));
}

#[test]
fn a_bad_mode_is_refused_with_status_2() {
    let output = Command::new(env!("CARGO_BIN_EXE_fake-backend"))
        .env("FAKE_BACKEND_MODE", "load=soon")
        .output()
        .expect("fake-backend should run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("load=soon"));
}

#[tokio::test]
async fn streaming_sends_the_chunks_then_usage_then_done() {
    let fake = Fake::start("stream-chunks=3", &[]);
    let body = serde_json::json!({
        "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "ping"}],
    });
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", fake.url))
        .json(&body)
        .send()
        .await
        .expect("stream should start");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.expect("stream should complete");
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(
        events.len(),
        5,
        "3 content chunks, a final chunk and [DONE]: {text}"
    );
    assert_eq!(events[4], "[DONE]");
    let first: serde_json::Value = serde_json::from_str(events[0]).expect("chunk is JSON");
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["content"], "fake:");
    let last: serde_json::Value = serde_json::from_str(events[3]).expect("chunk is JSON");
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["usage"]["completion_tokens"], 3);
}
