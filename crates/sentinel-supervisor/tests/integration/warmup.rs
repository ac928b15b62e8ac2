//! Warm prefixes against the fake backend: the warm-up request (the prefix as the system
//! message) reaches every new backend before it is reported ready, at the first start and
//! after a SIGKILL restart, while it counts as activity (`busy` in `/status`) and not as a request (`in_flight`); and the
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
                status["busy"].as_u64() >= Some(1),
                "the warm-up must count as activity: {status}"
            );
            assert_eq!(
                status["in_flight"], 0,
                "the warm-up is not a request: {status}"
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
    let after = s.status();
    assert_eq!(
        (after.busy, after.in_flight),
        (0, 0),
        "the warm-up's activity ended"
    );

    // A restart warms the new backend before it is published as ready.
    crate::support::kill(first, nix::sys::signal::Signal::SIGKILL);
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
        .and_then(reqwest::blocking::Response::text)
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

/// A ~1 100-token instruction prefix (for the default model's tokenizer): a policy of 20 rules.
fn long_prefix() -> String {
    let topics = [
        "process execution",
        "network connections",
        "file writes in system directories",
        "registry or launch agent persistence",
        "credential access",
        "script interpreters started by office documents",
        "unsigned binaries in temporary folders",
        "DNS lookups of newly registered domains",
        "privilege escalation attempts",
        "tampering with security tools",
    ];
    let mut lines = vec![
        "You are a security triage assistant running on an endpoint. Follow the policy below exactly.".to_string(),
        String::new(),
    ];
    for i in 1..=20 {
        let t = topics[(i - 1) % topics.len()];
        lines.push(format!("Rule {i}: when an event concerns {t}, decide whether it is benign, suspicious or malicious; cite the field that decided it, and never guess a field that is absent. Severity {} applies unless the parent process is a known updater.", 1 + i % 5));
    }
    lines.push(String::new());
    lines.push("Answer with one word: benign, suspicious or malicious.".into());
    lines.join("\n")
}

/// One task behind `prefix`, one token to generate (its whole answer is its first token):
/// the wall time and llama-server's `cache_n`.
fn task(s: &Supervisor, prefix: &str, event: &str) -> (Duration, u64) {
    let t = Instant::now();
    let (code, body) = s.post(
        "/v1/chat/completions",
        json!({"model": "m", "max_tokens": 1, "temperature": 0, "messages": [
            {"role": "system", "content": prefix},
            {"role": "user", "content": event},
        ]}),
    );
    let took = t.elapsed();
    assert_eq!(code, 200, "{body}");
    (took, body["timings"]["cache_n"].as_u64().unwrap_or(0))
}

/// The first task after a SIGKILL restart against a warm one, with and without the prefix
/// configured as a warm prefix (real llama-server, default model, `--profile invisible`).
/// `scripts/bench-warm` runs it; it prints the figures and asserts the target (first <= 1.5 x
/// warm with warm prefixes).
#[test]
#[ignore = "a benchmark with the real model: scripts/bench-warm"]
fn bench_first_task_after_restart() {
    let _one = crate::support::exclusive();
    let files = tempfile::tempdir().unwrap();
    let prefix = long_prefix();
    let prefix_file = files.path().join("prefix.txt");
    std::fs::write(&prefix_file, &prefix).unwrap();
    let mut rows = Vec::new();
    for warm in [false, true] {
        let config = format!(
            "[backend]\ncache_dir = \"{}\"\nwarm_prefixes = [{}]\n[supervisor]\nstartup_timeout = \"600s\"\n[proxy]\nqueue_timeout = \"600s\"\n",
            files.path().join("cache").display(),
            if warm { format!("\"{}\"", prefix_file.display()) } else { String::new() },
        );
        let s = Supervisor::start(Options {
            config: &config,
            args: vec!["--profile", "invisible"],
            ..Default::default()
        });
        s.wait_state("ready", Duration::from_secs(600));
        let started = Instant::now();
        let old = s.backend_pid();
        crate::support::kill(old, nix::sys::signal::Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let status = s.status();
            if status.state.serving() && status.backend.as_ref().is_some_and(|b| b.pid != old) {
                break;
            }
            assert!(Instant::now() < deadline, "no new backend\n{}", s.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
        let restart = started.elapsed();
        let (first, first_cached) = task(
            &s,
            &prefix,
            "Event: powershell.exe started by winword.exe with an encoded command.",
        );
        let (second, second_cached) = task(
            &s,
            &prefix,
            "Event: curl.exe wrote an unsigned binary to /tmp.",
        );
        let ratio = first.as_secs_f64() / second.as_secs_f64();
        println!(
            "warm_prefixes={warm}: restart-to-ready {:.2} s, first task TTFT {:.3} s (cache_n {first_cached}), warm task TTFT {:.3} s (cache_n {second_cached}), ratio {ratio:.2}",
            restart.as_secs_f64(),
            first.as_secs_f64(),
            second.as_secs_f64()
        );
        rows.push((warm, ratio, s.status().tokens));
    }
    for (warm, ratio, tokens) in &rows {
        println!(
            "warm_prefixes={warm}: first/warm TTFT ratio {ratio:.2}; /status tokens {tokens:?}"
        );
    }
    let with = rows.iter().find(|r| r.0).map(|r| r.1).unwrap();
    assert!(
        with <= 1.5,
        "with warm prefixes the first task took {with:.2} x a warm one (target <= 1.5)"
    );
}
