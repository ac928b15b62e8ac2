//! `sentinel-supervisor status` against the real binary with the fake backend: ready is exit 0
//! with the state and profile in the summary, a crash-looping backend is non-zero with the
//! reason and its last lines, a key is asked for when needed, and nothing listening is a clear
//! error.

use crate::support::{Options, Supervisor, BIN};
use std::process::Command;
use std::time::Duration;

/// Runs `status ARGS`: (exit code, stdout, stderr).
fn status(args: &[&str], key: Option<&str>) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("status")
        .args(args)
        .env_remove("SENTINEL_API_KEY")
        .env_remove("SENTINEL_CONFIG");
    if let Some(key) = key {
        cmd.env("SENTINEL_API_KEY", key);
    }
    let out = cmd.output().expect("run sentinel-supervisor status");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_ready_supervisor_is_exit_0_with_its_state_and_profile() {
    let s = Supervisor::start(Options {
        fake: true,
        args: vec!["--profile", "invisible"],
        ..Default::default()
    });
    s.wait_health(200, Duration::from_secs(20));
    let (code, out, err) = status(&["--url", &s.url], None);
    assert_eq!(code, Some(0), "{out}{err}");
    for want in [
        "state:    ready, up ",
        "profile:  invisible: threads 1, threads_batch 1, cpus 0.50 cores, priority idle",
        "governor: ",
        "restarts: 0",
        "requests: 0 in flight, 0 queued",
        "model:    fake (",
    ] {
        assert!(out.contains(want), "{want:?} missing from\n{out}");
    }
    let (code, json, err) = status(&["--url", &s.url, "--json"], None);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["state"], "ready");
    assert_eq!(v["profile"], "invisible");
    assert_eq!(
        v["backend"]["pid"].as_i64(),
        Some(i64::from(s.backend_pid()))
    );
}

#[test]
fn the_url_defaults_to_the_configured_listen_address_and_keys_are_sent() {
    let s = Supervisor::start(Options {
        fake: true,
        config: "api_keys = [\"sk-status-test\"]\n",
        ..Default::default()
    });
    s.wait_health(200, Duration::from_secs(20));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let addr = s.url.trim_start_matches("http://");
    std::fs::write(&config, format!("listen = \"{addr}\"\n")).unwrap();
    let config = config.display().to_string();

    let (code, _, err) = status(&["--config", &config], None);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("wants an API key") && err.contains("SENTINEL_API_KEY"),
        "{err}"
    );
    let (code, _, err) = status(&["--config", &config], Some("sk-wrong"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("refused the API key"), "{err}");
    let (code, out, err) = status(&["--config", &config], Some("sk-status-test"));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("state:    ready"), "{out}");
}

#[test]
fn a_crash_looping_backend_is_non_zero_with_the_reason_and_last_lines() {
    const CONFIG: &str = r#"
[supervisor]
ready_poll_interval = "20ms"
backoff_initial = "50ms"
backoff_max = "100ms"
crash_loop_restarts = 2
crash_loop_window = "1m"
"#;
    let s = Supervisor::start(Options {
        fake: true,
        config: CONFIG,
        env: vec![("FAKE_BACKEND_MODE", "exit-at-start=3".to_string())],
        ..Default::default()
    });
    s.wait_state("failed", Duration::from_secs(20));
    let (code, out, err) = status(&["--url", &s.url], None);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.starts_with("state:    failed"), "{out}");
    assert!(out.contains("reason:   crash loop"), "{out}");
    assert!(
        out.contains("restarts: 2 (last: llama-server exited"),
        "{out}"
    );
    assert!(out.contains("last lines of the backend:"), "{out}");
    assert!(out.contains("fake failure at start"), "{out}");
}

#[test]
fn nothing_listening_is_a_clear_error() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let (code, out, err) = status(&["--url", &url], None);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains(&format!(
            "no supervisor at {url} (is it running? pass --url)"
        )),
        "{err}"
    );
}
