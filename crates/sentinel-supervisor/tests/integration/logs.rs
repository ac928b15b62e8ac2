//! Logs for a journal: no escape codes when stderr is not a terminal, one JSON object per line
//! with `--log-format json`, and a child flooding its output rate-limited to a bounded number of
//! lines plus "suppressed N lines", while its newest lines still reach the error report.

use crate::support::{Options, Supervisor};
use std::time::{Duration, Instant};

const QUICK: &str = r#"
[supervisor]
ready_poll_interval = "20ms"
backoff_initial = "50ms"
backoff_max = "100ms"
stop_grace = "1s"
"#;

fn fake(mode: &str, args: Vec<&'static str>, config: &'static str) -> Supervisor {
    Supervisor::start(Options {
        fake: true,
        config,
        args,
        env: vec![
            ("FAKE_BACKEND_MODE", mode.to_string()),
            // Empty means "not set" (no-color.org): only the pipe may turn colour off here.
            ("NO_COLOR", String::new()),
        ],
        ..Default::default()
    })
}

#[test]
fn logs_written_to_a_pipe_contain_no_escape_byte() {
    let mut s = fake("", vec![], QUICK);
    s.wait_health(200, Duration::from_secs(20));
    let (code, _) = s.get("/status");
    assert_eq!(code, 200);
    s.signal(libc::SIGTERM);
    s.wait_exit(Duration::from_secs(10));
    let logs = s.logs();
    // Warn and info lines, the backend's own lines and the shutdown are all there...
    for want in [
        "listening",
        "backend ready",
        "shutting down",
        "fake-backend",
    ] {
        assert!(logs.contains(want), "no {want:?} in\n{logs}");
    }
    // ...without a single ESC (0x1b), the start of every colour code.
    assert!(
        !logs.contains('\x1b'),
        "escape codes in a piped log:\n{logs:?}"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut s = fake("", vec!["--log-format", "json"], QUICK);
    s.wait_health(200, Duration::from_secs(20));
    s.signal(libc::SIGTERM);
    s.wait_exit(Duration::from_secs(10));
    let logs = s.logs();
    let mut targets = std::collections::BTreeSet::new();
    for line in logs.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{logs}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        targets.insert(v["target"].as_str().unwrap_or_default().to_string());
    }
    assert!(targets.contains("backend"), "{targets:?}\n{logs}");
    assert!(!logs.contains('\x1b'), "{logs:?}");
}

/// The `suppressed=N` counts of the rate limiter's lines, summed.
fn suppressed(logs: &str) -> u64 {
    logs.lines()
        .filter(|l| l.contains("backend output rate-limited"))
        .filter_map(|l| l.split("suppressed=").nth(1))
        .filter_map(|n| n.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_flooding_backend_is_rate_limited_with_a_suppressed_count() {
    const LINES: u64 = 100_000;
    let started = Instant::now();
    let s = fake(&format!("flood={LINES}"), vec![], QUICK);
    s.wait_health(200, Duration::from_secs(30));
    // Every flood line is either forwarded or counted once the flood is read (the last count
    // is written at most a second after the last drop; the count also covers the fake's own
    // few other lines, like its "listening" line, dropped in the flood).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (forwarded, dropped) = loop {
        let logs = s.logs();
        let backend_lines = || {
            logs.lines()
                .filter(|l| l.contains(" backend: ") && !l.contains("rate-limited"))
        };
        let flood = backend_lines()
            .filter(|l| l.contains("fake-backend flood line"))
            .count() as u64;
        let forwarded = backend_lines().count() as u64;
        let dropped = suppressed(&logs);
        if flood + dropped >= LINES {
            assert!(
                forwarded + dropped <= LINES + 10,
                "{forwarded} forwarded + {dropped} suppressed: more lines than were printed"
            );
            break (forwarded, dropped);
        }
        assert!(
            Instant::now() < deadline,
            "{flood} flood lines forwarded + {dropped} suppressed < {LINES}\n{}",
            logs.lines().rev().take(40).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // The default bucket: a burst of 50, then 20 lines a second.
    let bound = 50 + (20.0 * started.elapsed().as_secs_f64()).ceil() as u64;
    assert!(
        (50..=bound).contains(&forwarded),
        "{forwarded} lines forwarded, at most {bound} allowed ({dropped} suppressed)"
    );
    let logs = s.logs();
    assert!(
        logs.contains("suppressed ") && logs.contains("lines"),
        "no suppressed line\n{logs}"
    );
}

#[test]
fn a_crash_loop_report_has_the_newest_lines_even_when_the_log_dropped_them() {
    const CONFIG: &str = r#"
[supervisor]
ready_poll_interval = "20ms"
backoff_initial = "50ms"
backoff_max = "100ms"
crash_loop_restarts = 1
crash_loop_window = "1m"
backend_log_burst = 5
backend_log_lines_per_sec = 1.0
"#;
    let s = fake("flood=20000,exit-at-start=3", vec![], CONFIG);
    s.wait_state("failed", Duration::from_secs(30));
    let (_, status) = s.get("/status");
    let lines = status["last_lines"].to_string();
    // Printed after 20 000 flood lines, far beyond the bucket, yet in the report.
    assert!(lines.contains("fake failure at start"), "{status}");
    let logs = s.logs();
    assert!(suppressed(&logs) > 0, "{logs}");
}
