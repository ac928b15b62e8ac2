//! Warm prefixes against the fake backend: the warm-up request (the prefix as the system
//! message) reaches every new backend before it is reported ready, at the first start and
//! after a SIGKILL restart, while it counts as activity (`in_flight` in `/status`); and the
//! token totals in `/status` move with a request.

use crate::support::{Options, Supervisor};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

const PREFIX: &str = "You are a triage assistant. Policy: answer benign, suspicious or malicious.";

/// The warm-up lines of `log` (`requests-file`) as (pid, body).
fn warm_ups(log: &Path) -> Vec<(i32, serde_json::Value)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(4, ' ');
            let pid = it.next()?.parse().ok()?;
            let (method, path, body) = (it.next()?, it.next()?, it.next()?);
            (method == "POST" && path == "/v1/chat/completions")
                .then(|| (pid, serde_json::from_str(body).unwrap_or_default()))
        })
        .collect()
}

#[test]
fn every_new_backend_is_warmed_before_ready_as_activity() {
    let files = tempfile::tempdir().unwrap();
    let prefix = files.path().join("prefix.txt");
    std::fs::write(&prefix, PREFIX).unwrap();
    let log = files.path().join("requests.log");
    let config = format!(
        r#"
[backend]
cache_dir = "{cache}"
warm_prefixes = ["{prefix}"]
[supervisor]
ready_poll_interval = "20ms"
probe_interval = "200ms"
backoff_initial = "50ms"
backoff_max = "100ms"
stop_grace = "1s"
"#,
        cache = files.path().join("cache").display(),
        prefix = prefix.display(),
    );
    let s = Supervisor::start(Options {
        fake: true,
        config: &config,
        env: vec![(
            "FAKE_BACKEND_MODE",
            format!("requests-file={},response-delay=600ms", log.display()),
        )],
        ..Default::default()
    });
    // While the warm-up request is being answered, the backend is not ready yet and the
    // governor sees activity.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen_warming = false;
    while Instant::now() < deadline {
        let (_, status) = s.get("/status");
        if status["state"] == "ready" {
            break;
        }
        if !warm_ups(&log).is_empty() && status["state"] == "starting" {
            assert!(
                status["in_flight"].as_u64() >= Some(1),
                "the warm-up must count as activity: {status}"
            );
            seen_warming = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        seen_warming,
        "never saw the warm-up in progress\n{}",
        s.logs()
    );
    s.wait_state("ready", Duration::from_secs(20));
    let first = s.backend_pid();
    let sent = warm_ups(&log);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, first);
    let body = &sent[0].1;
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][0]["content"], PREFIX);
    assert_eq!(body["cache_prompt"], true);
    assert_eq!(body["max_tokens"], 1);
    assert_eq!(s.status().in_flight, 0, "the warm-up's activity ended");

    // A restart warms the new backend before it is published as ready.
    unsafe { libc::kill(first, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let second = loop {
        let status = s.status();
        if let (true, Some(b)) = (status.state.serving(), &status.backend) {
            if b.pid != first {
                break b.pid;
            }
        }
        assert!(Instant::now() < deadline, "no new backend\n{}", s.logs());
        std::thread::sleep(Duration::from_millis(20));
    };
    let sent = warm_ups(&log);
    assert!(
        sent.iter().any(|(pid, _)| *pid == second),
        "the new backend {second} was reported ready before its warm-up: {sent:?}"
    );
    assert_eq!(sent.len(), 2, "{sent:?}");
}

#[test]
fn status_token_totals_move_with_a_request() {
    let s = Supervisor::start(Options {
        fake: true,
        config: "[supervisor]\nready_poll_interval = \"20ms\"\n",
        ..Default::default()
    });
    s.wait_state("ready", Duration::from_secs(20));
    let before = s.status().tokens;
    let (code, _) = s.post(
        "/v1/chat/completions",
        json!({"model": "m", "messages": [{"role": "user", "content": "one two three"}]}),
    );
    assert_eq!(code, 200);
    let after = s.status().tokens;
    assert!(after.prompt > before.prompt, "{before:?} -> {after:?}");
    assert!(
        after.generated > before.generated,
        "{before:?} -> {after:?}"
    );
    let metrics = s
        .client()
        .get(format!("{}/metrics", s.url))
        .send()
        .and_then(|r| r.text())
        .expect("GET /metrics");
    let line = metrics
        .lines()
        .find(|l| l.starts_with("sentinel_prompt_tokens_total "))
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        line,
        format!("sentinel_prompt_tokens_total {}", after.prompt),
        "/status and /metrics read the same counter"
    );
}
