//! `GET /metrics` on the real binary: the key rules of `/status`, a request moving its counters
//! and histograms, a `kill -9` of the backend moving the restarts counter under `signal`,
//! llama-server's own counters re-exported (fake and real backend), and every scrape passing
//! `promtool check metrics` (mandatory when `SENTINEL_REQUIRE_PROMTOOL=1`, as `scripts/test`
//! sets it; skipped with a message otherwise).

use crate::support::{alive, Options, Supervisor};
use serde_json::json;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "metrics-test-key";

/// `GET path` with `key` (or none): status and body text.
fn get(s: &Supervisor, path: &str, key: Option<&str>) -> (u16, String) {
    let mut req = s.client().get(format!("{}{path}", s.url));
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let resp = req
        .send()
        .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", s.logs()));
    let code = resp.status().as_u16();
    (code, resp.text().unwrap_or_default())
}

fn scrape(s: &Supervisor, key: Option<&str>) -> String {
    let (code, text) = get(s, "/metrics", key);
    assert_eq!(code, 200, "GET /metrics: {text}\n{}", s.logs());
    text
}

/// The value of the sample written as `series` (name and labels), 0 when absent (a labelled
/// counter appears with its first event).
fn value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{series}: {v}: {e}"))
        })
        .unwrap_or(0.0)
}

fn chat(s: &Supervisor, key: Option<&str>, stream: bool) -> String {
    let mut req = s
        .client()
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&json!({
            "messages": [{"role": "user", "content": "Name one primary colour."}],
            "max_tokens": 8,
            "temperature": 0,
            "stream": stream,
            "stream_options": {"include_usage": stream},
        }));
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let resp = req
        .send()
        .unwrap_or_else(|e| panic!("chat: {e}\n{}", s.logs()));
    let code = resp.status().as_u16();
    let body = resp.text().unwrap_or_default();
    assert_eq!(code, 200, "chat (stream: {stream}): {body}\n{}", s.logs());
    body
}

/// `promtool check metrics` on a scrape: clean, or the test fails.
fn promtool_check(scrape: &str) {
    let required = std::env::var("SENTINEL_REQUIRE_PROMTOOL").is_ok_and(|v| v == "1");
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                !required,
                "promtool is not on PATH but SENTINEL_REQUIRE_PROMTOOL=1: scripts/install-deps installs it (Debian package `prometheus`)"
            );
            eprintln!("metrics: promtool not on PATH, `promtool check metrics` skipped (install the `prometheus` package)");
            return;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics ({}): {report}\n---- scrape ----\n{scrape}",
        out.status
    );
}

#[test]
fn requests_and_a_kill_move_their_counters_and_the_scrape_is_promtool_clean() {
    let s = Supervisor::start(Options {
        fake: true,
        config: &format!("api_keys = [\"{KEY}\"]\n"),
        ..Default::default()
    });
    s.wait_health(200, Duration::from_secs(30));

    // The key rules of /status.
    let before = scrape(&s, Some(KEY));
    let (code, body) = get(&s, "/metrics", None);
    assert_eq!(code, 401, "{body}");
    assert_eq!(get(&s, "/metrics", Some("wrong")).0, 401);

    let whole = chat(&s, Some(KEY), false);
    let stream = chat(&s, Some(KEY), true);
    assert!(stream.contains("data: [DONE]"), "{stream}");
    let after = scrape(&s, Some(KEY));
    let moved = |series: &str| value(&after, series) - value(&before, series);
    let chat_route = "route=\"/v1/chat/completions\"";
    assert_eq!(
        moved(&format!(
            "sentinel_requests_total{{{chat_route},status=\"200\"}}"
        )),
        2.0,
        "{after}"
    );
    assert_eq!(
        moved(&format!(
            "sentinel_request_duration_seconds_count{{{chat_route}}}"
        )),
        2.0
    );
    assert_eq!(
        moved(&format!(
            "sentinel_time_to_first_token_seconds_count{{{chat_route}}}"
        )),
        1.0,
        "only the streamed answer has a first token"
    );
    assert_eq!(
        moved("sentinel_requests_total{route=\"/metrics\",status=\"401\"}"),
        2.0
    );
    assert_eq!(
        moved("sentinel_rejections_total{reason=\"invalid_api_key\"}"),
        2.0
    );
    // The fake counts words: the whole answer's usage, then the stream's usage event.
    let whole: serde_json::Value = serde_json::from_str(&whole).unwrap();
    let whole_generated = whole["usage"]["completion_tokens"].as_f64().unwrap();
    let stream_generated = stream
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .find_map(|v| v["usage"]["completion_tokens"].as_f64())
        .expect("a usage event in the stream");
    assert_eq!(
        moved("sentinel_generated_tokens_total"),
        whole_generated + stream_generated
    );
    assert!(moved("sentinel_prompt_tokens_total") > 0.0);
    assert_eq!(
        value(&after, "sentinel_backend_state{state=\"ready\"}"),
        1.0
    );
    assert_eq!(value(&after, "sentinel_llamacpp_scrape_success"), 1.0);
    assert!(
        after.contains("# TYPE sentinel_backend_llamacpp_requests_processing gauge"),
        "{after}"
    );
    assert!(value(&after, "sentinel_backend_resident_memory_bytes") > 0.0);

    // kill -9 of the backend: one restart, for `signal`, and a fresh backend serving.
    let (_, status) = get(&s, "/status", Some(KEY));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let first = status["backend"]["pid"].as_i64().unwrap() as i32;
    crate::support::kill(first, nix::sys::signal::Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(30);
    let restarted = loop {
        let text = scrape(&s, Some(KEY));
        if value(&text, "sentinel_backend_restarts_total{reason=\"signal\"}") >= 1.0
            && value(&text, "sentinel_backend_state{state=\"ready\"}") == 1.0
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no restart counted within 30 s:\n{text}\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!alive(first));
    assert_eq!(
        value(
            &restarted,
            "sentinel_backend_restarts_total{reason=\"signal\"}"
        ),
        1.0
    );
    for other in ["exit_code", "hang", "start_timeout", "spawn_failure"] {
        let series = format!("sentinel_backend_restarts_total{{reason=\"{other}\"}}");
        assert!(restarted.contains(&series), "{series} missing");
        assert_eq!(value(&restarted, &series), 0.0, "{series}");
    }
    // And a request after the restart still counts.
    chat(&s, Some(KEY), false);
    let last = scrape(&s, Some(KEY));
    assert_eq!(
        value(
            &last,
            &format!("sentinel_requests_total{{{chat_route},status=\"200\"}}")
        ) - value(
            &before,
            &format!("sentinel_requests_total{{{chat_route},status=\"200\"}}")
        ),
        3.0
    );
    // The SLO sampler has been counting 100 ms windows all along.
    assert!(value(&last, "sentinel_slo_system_cpu_window_ratio_count") > 0.0);
    promtool_check(&last);
}

#[test]
fn real_llama_server_metrics_are_reexported_and_tokens_counted() {
    let _cpu = crate::support::exclusive();
    let s = Supervisor::start(Options {
        args: vec!["--profile", "balanced"],
        ..Default::default()
    });
    s.wait_health(200, Duration::from_secs(180));
    let whole = chat(&s, None, false);
    let stream = chat(&s, None, true);
    assert!(stream.contains("data: [DONE]"), "{stream}");
    let text = scrape(&s, None);
    assert_eq!(
        value(&text, "sentinel_llamacpp_scrape_success"),
        1.0,
        "{text}"
    );
    // llama-server counted both requests' prompts; the re-export carries them, renamed.
    assert!(
        value(&text, "sentinel_backend_llamacpp_prompt_tokens_total") > 0.0,
        "{text}"
    );
    assert!(value(&text, "sentinel_backend_llamacpp_tokens_predicted_total") > 0.0);
    assert!(
        !text.contains("llamacpp:"),
        "a name kept its colon:\n{text}"
    );
    // Our own token counters read llama-server's `timings` (whole and last stream event).
    let whole: serde_json::Value = serde_json::from_str(&whole).unwrap();
    let whole_generated = whole["timings"]["predicted_n"]
        .as_f64()
        .unwrap_or_else(|| panic!("no timings in {whole}"));
    assert!(value(&text, "sentinel_generated_tokens_total") > whole_generated);
    assert!(value(&text, "sentinel_prompt_tokens_total") > 0.0);
    assert_eq!(
        value(
            &text,
            "sentinel_time_to_first_token_seconds_count{route=\"/v1/chat/completions\"}"
        ),
        1.0
    );
    promtool_check(&text);
}

#[test]
fn the_duty_cycle_stopped_time_is_counted() {
    let _cpu = crate::support::exclusive();
    let s = Supervisor::start(Options {
        fake: true,
        args: vec!["--profile", "invisible"],
        config: "[governor]\nmethod = \"signals\"\n",
        env: vec![("FAKE_BACKEND_MODE", "burn,response-delay=1500ms".into())],
        ..Default::default()
    });
    s.wait_health(200, Duration::from_secs(30));
    let before = scrape(&s, None);
    // The fake spins a core for 1.5 s while it answers; half a core of budget stops it for
    // about half of that.
    chat(&s, None, false);
    let after = scrape(&s, None);
    let throttled = value(&after, "sentinel_governor_throttled_seconds_total")
        - value(&before, "sentinel_governor_throttled_seconds_total");
    eprintln!("metrics: the duty cycle stopped the backend {throttled:.3} s of a 1.5 s burn");
    assert!(
        (0.2..=1.5).contains(&throttled),
        "stopped {throttled} s of a 1.5 s burn at 0.5 cores\n{after}"
    );
    assert_eq!(value(&after, "sentinel_governor_budget_cores"), 0.5);
    assert!(after.contains("sentinel_governor_duty_ratio "), "{after}");
    promtool_check(&after);
}
