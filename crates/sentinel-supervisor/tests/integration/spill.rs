//! Local first, the central tier second: the real binary with the fake backend as its local
//! model and another fake backend behind a TLS terminator (`central`) as the central tier.

use crate::central::Central;
use crate::support::{Options, Supervisor, BIN};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Quick probes and restarts; requests wait at most 1 s for a backend.
const FAST: &str = r#"
[supervisor]
ready_poll_interval = "20ms"
probe_interval = "500ms"
probe_timeout = "3s"
backoff_initial = "2s"
backoff_max = "2s"
stop_grace = "1s"
crash_loop_restarts = 50

[proxy]
queue_timeout = "1s"
"#;

fn start(mode: &str, config: String) -> Supervisor {
    Supervisor::start(Options {
        fake: true,
        config: Box::leak(config.into_boxed_str()),
        env: vec![("FAKE_BACKEND_MODE", mode.to_string())],
        ..Default::default()
    })
}

/// Who served a chat request, its status and its body.
struct Answer {
    status: u16,
    served_by: String,
    body: String,
}

fn chat(s: &Supervisor, stream: bool, headers: &[(&str, &str)]) -> Answer {
    let mut request = s
        .client()
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&json!({"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": stream, "max_tokens": 8}));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let r = request.send().expect("the supervisor answers");
    let served_by = r
        .headers()
        .get("x-sentinel-served-by")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    Answer {
        status: r.status().as_u16(),
        served_by,
        body: r.text().unwrap_or_default(),
    }
}

fn metric(s: &Supervisor, line_start: &str) -> Option<f64> {
    let text = s
        .client()
        .get(format!("{}/metrics", s.url))
        .send()
        .ok()?
        .text()
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn wait_not_serving(s: &Supervisor, within: Duration) {
    let start = Instant::now();
    while s.status().state.serving() {
        assert!(start.elapsed() < within, "still serving\n{}", s.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn local_killed_is_served_by_the_central_tier_then_local_again() {
    let central = Central::start("");
    let config = format!(
        "{FAST}\n[profiles.balanced]\nspill = \"when_unavailable\"\n{}",
        central.entry("central", &central.ca_file)
    );
    let s = start("", config);
    s.wait_state("ready", Duration::from_secs(30));
    let a = chat(&s, false, &[]);
    assert_eq!(
        (a.status, a.served_by.as_str()),
        (200, "local"),
        "{}",
        a.body
    );
    assert_eq!(central.connections(), 0);

    let pid = s.backend_pid();
    crate::support::kill(pid, nix::sys::signal::Signal::SIGKILL);
    wait_not_serving(&s, Duration::from_secs(5));
    let a = chat(&s, false, &[]);
    assert_eq!(
        (a.status, a.served_by.as_str()),
        (200, "central"),
        "{}\n{}",
        a.body,
        s.logs()
    );
    let a = chat(&s, true, &[]);
    assert_eq!(
        (a.status, a.served_by.as_str()),
        (200, "central"),
        "{}",
        a.body
    );
    assert!(a.body.contains("data: [DONE]"), "{}", a.body);
    // The remote model name and the upstream's own key (the fake answers 401 to another key).
    let seen = central.wait_requests(2, Duration::from_secs(2));
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter()
            .all(|l| l.contains("\"model\":\"central-model\"")),
        "{seen:?}"
    );
    assert_eq!(
        metric(
            &s,
            "sentinel_spills_total{reason=\"unavailable\",upstream=\"central\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &s,
            "sentinel_upstream_breaker_state{upstream=\"central\",state=\"closed\"}"
        ),
        Some(1.0)
    );
    assert!(metric(
        &s,
        "sentinel_upstream_request_duration_seconds_count{upstream=\"central\"}"
    )
    .is_some_and(|n| n >= 1.0));
    let status = s.status();
    assert_eq!(status.upstreams.len(), 1);
    assert_eq!(status.upstreams[0].name, "central");

    s.wait_state("ready", Duration::from_secs(30));
    let a = chat(&s, false, &[]);
    assert_eq!(
        (a.status, a.served_by.as_str()),
        (200, "local"),
        "{}",
        a.body
    );
    assert_eq!(central.requests().len(), 2);
    assert!(
        !s.logs().contains(crate::central::KEY),
        "the upstream's key was logged"
    );
}

#[test]
fn spill_never_answers_503_and_the_upstream_sees_nothing() {
    let central = Central::start("");
    // `spill` left at its default (never) on the running profile. The local backend never
    // starts (a killed one would be back within the fast backoff, before the second request).
    let config = format!(
        "{}\n[profiles.fast]\nspill = \"when_unavailable\"\n{}",
        FAST.replace("crash_loop_restarts = 50", "crash_loop_restarts = 1"),
        central.entry("central", &central.ca_file)
    );
    let s = start("exit-at-start=1", config);
    s.wait_state("failed", Duration::from_secs(30));
    let a = chat(&s, false, &[]);
    assert_eq!(
        (a.status, a.served_by.as_str()),
        (503, "local"),
        "{}",
        a.body
    );
    let a = chat(&s, true, &[("x-sentinel-deadline", "0.1")]);
    assert_eq!(a.status, 503, "{}", a.body);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        central.connections(),
        0,
        "a connection reached the central tier"
    );
    assert!(central.requests().is_empty());
}

#[test]
fn a_request_the_queue_would_make_late_spills() {
    let central = Central::start("");
    let config = format!(
        "{FAST}\n[profiles.balanced]\nslots = 1\nspill = \"when_late\"\ndeadline = \"1s\"\n{}",
        central.entry("central", &central.ca_file)
    );
    let s = start("response-delay=1500ms", config);
    s.wait_state("ready", Duration::from_secs(30));
    // Nothing measured yet: served locally (1.5 s), which measures the service time.
    let a = chat(&s, false, &[]);
    assert_eq!(
        (a.status, a.served_by.as_str()),
        (200, "local"),
        "{}",
        a.body
    );
    // Now 1.5 s > the 1 s deadline: spilled.
    let t = Instant::now();
    let a = chat(&s, false, &[]);
    assert_eq!(
        (a.status, a.served_by.as_str()),
        (200, "central"),
        "{}\n{}",
        a.body,
        s.logs()
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // A client's own, longer deadline keeps it local.
    let a = chat(&s, false, &[("x-sentinel-deadline", "10s")]);
    assert_eq!(
        (a.status, a.served_by.as_str()),
        (200, "local"),
        "{}",
        a.body
    );
    let a = chat(&s, false, &[("x-sentinel-deadline", "soon")]);
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(
        metric(
            &s,
            "sentinel_spills_total{reason=\"late\",upstream=\"central\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn a_failing_upstream_opens_its_breaker_which_closes_after_the_cool_down() {
    let central = Central::start("");
    let config = format!(
        "{}\n[profiles.balanced]\nspill = \"when_unavailable\"\n{}",
        FAST.replace("crash_loop_restarts = 50", "crash_loop_restarts = 1"),
        central.entry("central", &central.ca_file)
    );
    // The local backend never starts: every request is for the central tier.
    let s = start("exit-at-start=1", config);
    s.wait_state("failed", Duration::from_secs(30));
    central.failing.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        let a = chat(&s, false, &[]);
        assert_eq!(
            (a.status, a.served_by.as_str()),
            (503, "local"),
            "{}",
            a.body
        );
    }
    let up = &s.status().upstreams[0];
    assert_eq!(up.breaker.as_str(), "open", "{up:?}");
    assert_eq!(up.consecutive_failures, 2);
    // While open, nothing goes there: the local 503 with Retry-After.
    let before = central.connections();
    let r = s
        .client()
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&json!({"messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(central.connections(), before);
    // The upstream recovers; after the cool-down one probe closes the breaker.
    central.failing.store(false, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1100));
    let a = chat(&s, false, &[]);
    assert_eq!(
        (a.status, a.served_by.as_str()),
        (200, "central"),
        "{}\n{}",
        a.body,
        s.logs()
    );
    assert_eq!(s.status().upstreams[0].breaker.as_str(), "closed");
    assert!(
        metric(
            &s,
            "sentinel_upstream_failures_total{upstream=\"central\",reason=\"connect\"}"
        )
        .or(metric(
            &s,
            "sentinel_upstream_failures_total{upstream=\"central\",reason=\"other\"}"
        ))
        .is_some_and(|n| n >= 2.0),
        "failures not counted"
    );
}

#[test]
fn a_stream_that_started_locally_is_never_moved() {
    let central = Central::start("");
    let config = format!(
        "{FAST}\n[profiles.balanced]\nspill = \"when_unavailable\"\n{}",
        central.entry("central", &central.ca_file)
    );
    let s = start("die-mid-stream=2,stream-delay=100ms", config);
    s.wait_state("ready", Duration::from_secs(30));
    let a = chat(&s, true, &[]);
    assert_eq!(
        (a.status, a.served_by.as_str()),
        (200, "local"),
        "{}",
        a.body
    );
    assert!(a.body.contains("failed mid-stream"), "{}", a.body);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(central.connections(), 0);
    assert!(central.requests().is_empty());
}

#[test]
fn tls_with_a_wrong_ca_is_refused_with_a_clear_log_line() {
    let central = Central::start("");
    let config = format!(
        "{}\n[profiles.balanced]\nspill = \"when_unavailable\"\n{}",
        FAST.replace("crash_loop_restarts = 50", "crash_loop_restarts = 1"),
        central.entry("central", &central.wrong_ca_file)
    );
    let s = start("exit-at-start=1", config);
    s.wait_state("failed", Duration::from_secs(30));
    let a = chat(&s, false, &[]);
    assert_eq!(
        (a.status, a.served_by.as_str()),
        (503, "local"),
        "{}",
        a.body
    );
    assert!(central.requests().is_empty());
    assert!(central.handshake_failures.load(Ordering::SeqCst) >= 1);
    let logs = s.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("upstream TLS refused"))
        .unwrap_or_else(|| panic!("no TLS line\n{logs}"));
    assert!(
        line.contains("central") && line.contains("ca_file"),
        "{line}"
    );
}

#[test]
fn drop_ins_merge_in_name_order_and_a_bad_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("config.toml");
    std::fs::write(&main, "[profiles.balanced]\ncpus = 0.5\n").unwrap();
    let conf_d = dir.path().join("xdg/sentinel-supervisor/conf.d");
    std::fs::create_dir_all(&conf_d).unwrap();
    std::fs::write(
        conf_d.join("10-site.toml"),
        "labels = { site = \"par1\" }\n[profiles.balanced]\ncpus = 0.25\n",
    )
    .unwrap();
    std::fs::write(
        conf_d.join("20-group.toml"),
        "labels = { site = \"par1\", group = \"soc\" }\n[profiles.balanced]\ncpus = 0.75\n",
    )
    .unwrap();
    let check = || {
        let out = std::process::Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&main)
            .env("XDG_CONFIG_HOME", dir.path().join("xdg"))
            .env_remove("SENTINEL_API_KEY")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = check();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("group = \"soc\""), "{out}");
    let balanced = out.split("[profiles.balanced]").nth(1).unwrap();
    assert!(balanced.contains("cpus = 0.75"), "{out}");
    std::fs::write(
        conf_d.join("30-bad.toml"),
        "[[upstreams]]\nname = \"c\"\nurl = \"http://192.0.2.1/v1\"\n",
    )
    .unwrap();
    let (code, out, err) = check();
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("30-bad.toml") && err.contains("use https"),
        "{err}"
    );
}

#[test]
fn metrics_are_written_to_the_textfile_with_the_fleet_labels() {
    let dir = tempfile::tempdir().unwrap();
    let prom = dir.path().join("sentinel.prom");
    let config = format!(
        "labels = {{ site = \"par1\", group = \"soc\" }}\n{FAST}\n[metrics]\ntextfile = \"{}\"\ntextfile_interval = \"200ms\"\n",
        prom.display()
    );
    let s = start("", config);
    s.wait_state("ready", Duration::from_secs(30));
    let start = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&prom).unwrap_or_default();
        if text.contains("sentinel_backend_state{state=\"ready\"} 1") {
            break text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{text}\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let info = text
        .lines()
        .find(|l| l.starts_with("sentinel_host_info{"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        info.contains("site=\"par1\"") && info.contains("group=\"soc\""),
        "{info}"
    );
    // Written whole and renamed: no temporary file stays beside it (one may exist for the
    // instant of a write).
    let start = Instant::now();
    while std::fs::read_dir(dir.path()).unwrap().count() != 1 {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "a temporary file stays"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
