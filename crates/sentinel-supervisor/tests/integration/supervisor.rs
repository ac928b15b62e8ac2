//! Lifecycle against the fake backend: readiness, restarts, hangs, crash loops, graceful stop,
//! and no orphan after the supervisor dies.

use crate::support::{alive, wait_gone, Options, Supervisor};
use sentinel_supervisor::governor::{GovernorState, Method};
use sentinel_supervisor::status::{Health, HealthReport, StatusReport};
use sentinel_supervisor::supervisor::state::{State, StateName};
use serde_json::json;
use std::time::{Duration, Instant};

const FAST_RESTARTS: &str = r#"
[supervisor]
ready_poll_interval = "20ms"
probe_interval = "100ms"
probe_timeout = "300ms"
liveness_failures = 2
backoff_initial = "100ms"
backoff_max = "400ms"
stop_grace = "1s"
"#;

fn fake(mode: &str, config: &'static str) -> Supervisor {
    Supervisor::start(Options {
        fake: true,
        config,
        env: vec![("FAKE_BACKEND_MODE", mode.to_string())],
        ..Default::default()
    })
}

fn chat(s: &Supervisor, text: &str) -> (u16, serde_json::Value) {
    s.post(
        "/v1/chat/completions",
        json!({"model": "x", "messages": [{"role": "user", "content": text}]}),
    )
}

#[test]
fn serves_through_the_proxy_with_the_secret_key() {
    let s = fake("", FAST_RESTARTS);
    let health = s.wait_health(200, Duration::from_secs(20));
    assert_eq!(health["status"], "ok");
    assert_eq!(health["state"], "ready");
    // The fake backend demands the per-launch key, which only the supervisor knows.
    let (code, body) = chat(&s, "hello there");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "fake: hello there"
    );
    let status = s.status();
    assert_eq!(status.profile, "balanced");
    assert_eq!(status.state, State::Ready);
    let backend = status.backend.expect("a backend while ready");
    assert!(backend.pid > 0);
    // Sized for balanced's idle budget (2 cores), at most the CPUs this host allows.
    assert_eq!(backend.threads, status.resolved_profile.threads);
    assert!((1..=2).contains(&backend.threads), "{}", backend.threads);
}

#[test]
fn status_and_health_are_exactly_the_typed_reports() {
    let s = fake("", FAST_RESTARTS);
    s.wait_health(200, Duration::from_secs(20));
    let (code, health) = s.get("/health");
    assert_eq!(code, 200);
    let typed: HealthReport = serde_json::from_value(health.clone()).unwrap();
    assert_eq!((typed.status, typed.state), (Health::Ok, StateName::Ready));
    assert_eq!(serde_json::to_value(&typed).unwrap(), health);

    // The governor publishes what it measured once its first window (1 s) has passed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (json, status) = loop {
        let (_, json) = s.get("/status");
        let status: StatusReport = serde_json::from_value(json.clone())
            .unwrap_or_else(|e| panic!("/status is not a StatusReport ({e}): {json}"));
        if status
            .governor
            .as_ref()
            .is_some_and(|g| g.measured_cpus.is_some())
        {
            break (json, status);
        }
        assert!(Instant::now() < deadline, "no measured CPU in {json}");
        std::thread::sleep(Duration::from_millis(200));
    };
    // Nothing the server sends is lost or added by the type.
    assert_eq!(serde_json::to_value(&status).unwrap(), json);
    assert_eq!(status.state, State::Ready);
    assert_eq!(status.resolved_profile.name, "balanced");
    assert_eq!(status.backend.unwrap().generation, 1);
    assert_eq!(status.last_exit, None);
    let governor = status.governor.unwrap();
    assert_ne!(governor.method, Method::Auto);
    assert!(
        matches!(
            governor.state,
            GovernorState::Resting | GovernorState::Capped
        ),
        "idle backend: {governor:?}"
    );
    assert_eq!(status.in_flight, 0);
}

#[test]
fn slow_start_is_503_then_ready_and_requests_wait() {
    let s = fake("load=1500ms", FAST_RESTARTS);
    let body = s.wait_health(503, Duration::from_secs(5));
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["state"], "starting");
    // Sent while loading: waits in the queue instead of failing.
    let (code, body) = chat(&s, "early bird");
    assert_eq!(code, 200, "{body}");
    s.wait_health(200, Duration::from_secs(5));
}

#[test]
fn restarts_after_the_backend_is_killed() {
    let s = fake("", FAST_RESTARTS);
    s.wait_health(200, Duration::from_secs(20));
    let first = s.backend_pid();
    crate::support::kill(first, nix::sys::signal::Signal::SIGKILL);
    s.wait_health(503, Duration::from_secs(5));
    s.wait_health(200, Duration::from_secs(20));
    let second = s.backend_pid();
    assert_ne!(first, second);
    let status = s.status();
    assert_eq!(status.restarts, 1, "{status:?}");
    let last_exit = status.last_exit.unwrap_or_default();
    assert!(last_exit.contains("killed by SIGKILL"), "{last_exit}");
    assert!(status.backend.unwrap().generation > 1);
    let (code, _) = chat(&s, "after restart");
    assert_eq!(code, 200);
}

#[test]
fn a_hung_backend_is_detected_and_replaced() {
    let s = fake("hang-after=1s", FAST_RESTARTS);
    s.wait_health(200, Duration::from_secs(20));
    let first = s.backend_pid();
    // 2 failed probes (100 ms apart, 300 ms timeout) after the hang: restarted well within 10 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if s.status().restarts >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never restarted\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_gone(first, Duration::from_secs(5));
    assert!(s.logs().contains("liveness probe failed"), "{}", s.logs());
}

#[test]
fn a_crash_loop_ends_in_failed_with_the_last_error_lines() {
    const CONFIG: &str = r#"
[supervisor]
ready_poll_interval = "20ms"
backoff_initial = "50ms"
backoff_max = "100ms"
crash_loop_restarts = 2
crash_loop_window = "1m"
"#;
    let s = fake("exit-at-start=3", CONFIG);
    let body = s.wait_state("failed", Duration::from_secs(20));
    assert_eq!(body["status"], "unavailable");
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("crash loop"), "{reason}");
    let status = s.status();
    let State::Failed { last_lines, .. } = &status.state else {
        panic!("not failed: {status:?}");
    };
    assert!(
        last_lines
            .iter()
            .any(|l| l.contains("fake failure at start")),
        "{last_lines:?}"
    );
    assert!(
        status.backend.is_none() && status.governor.is_none(),
        "{status:?}"
    );
    // Requests get 503 with the reason, in the OpenAI error shape.
    let (code, body) = chat(&s, "anyone?");
    assert_eq!(code, 503);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("crash loop"));
    assert_eq!(body["error"]["type"], "server_error");
}

#[test]
fn sigterm_stops_the_backend_and_exits_cleanly() {
    let mut s = fake("", FAST_RESTARTS);
    s.wait_health(200, Duration::from_secs(20));
    let backend = s.backend_pid();
    s.signal(libc::SIGTERM);
    let status = s.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(!alive(backend), "backend {backend} left behind");
}

#[test]
fn a_backend_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let mut s = fake("ignore-sigterm", FAST_RESTARTS);
    s.wait_health(200, Duration::from_secs(20));
    let backend = s.backend_pid();
    let started = std::time::Instant::now();
    s.signal(libc::SIGTERM);
    s.wait_exit(Duration::from_secs(10));
    assert!(!alive(backend), "backend {backend} left behind");
    // stop_grace is 1 s.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn sigkill_of_the_supervisor_takes_the_backend_down_within_a_second() {
    let mut s = fake("", FAST_RESTARTS);
    s.wait_health(200, Duration::from_secs(20));
    let backend = s.backend_pid();
    s.signal(libc::SIGKILL);
    s.wait_exit(Duration::from_secs(5));
    let took = wait_gone(backend, Duration::from_secs(1));
    eprintln!("backend gone {took:?} after SIGKILL of the supervisor");
}

#[test]
fn bad_input_is_a_clear_error_before_anything_starts() {
    let run = |args: &[&str], config: &str| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, config).unwrap();
        let out = std::process::Command::new(crate::support::BIN)
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = run(&["run", "--profile", "turbo"], "");
    assert!(
        e.contains("unknown profile `turbo`") && e.contains("balanced"),
        "{e}"
    );
    let e = run(&["run", "--listen", "0.0.0.0:0"], "");
    assert!(
        e.contains("without an API key") && e.contains("SENTINEL_API_KEY"),
        "{e}"
    );
    let e = run(&["run", "--model", "/nonexistent/m.gguf"], "");
    assert!(
        e.contains("model file not found: /nonexistent/m.gguf"),
        "{e}"
    );
    let e = run(&["run"], "[profiles.balanced]\nthreds = 2\n");
    assert!(e.contains("c.toml") && e.contains("threds"), "{e}");
    let e = run(&["profiles"], "[profiles.balanced]\ncpus = -1\n");
    assert!(e.contains("profiles.balanced.cpus"), "{e}");
    // The same words as `limit --cpus 0` (see `governor::bad_invocations_say_what_to_do`).
    let e = run(&["run"], "[profiles.balanced]\ncpus = 0\n");
    assert!(
        e.contains("c.toml: key `profiles.balanced.cpus`: CPU budget 0 is out of range"),
        "{e}"
    );
}
