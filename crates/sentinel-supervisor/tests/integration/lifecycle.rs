//! Reloads, recovery and draining against the fake backend: SIGHUP (and `POST /admin/reload`)
//! with and without a new backend while clients loop, an invalid config kept out, recovery
//! from a crash loop once the model file is repaired, `on_crash_loop = "exit"`, SIGTERM with
//! streams in flight (drained, then cut at the deadline), and SIGKILL of the supervisor while
//! the backend is stopped.

use crate::support::{alive, wait_gone, Options, Supervisor};
use sentinel_supervisor::supervisor::state::State;
use serde_json::json;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const TIMINGS: &str = r#"
[supervisor]
ready_poll_interval = "20ms"
probe_interval = "200ms"
probe_timeout = "500ms"
backoff_initial = "50ms"
backoff_max = "100ms"
stop_grace = "1s"
drain_timeout = "10s"
file_poll_interval = "200ms"
"#;

fn start(mode: &str, config: &str) -> Supervisor {
    Supervisor::start(Options {
        fake: true,
        config,
        env: vec![("FAKE_BACKEND_MODE", mode.to_string())],
        ..Default::default()
    })
}

fn write_config(s: &Supervisor, text: &str) {
    std::fs::write(s.dir().join("config.toml"), text).expect("rewrite config.toml");
}

/// One chat request (streamed or not), read to the end: its status and body.
fn chat(
    client: &reqwest::blocking::Client,
    url: &str,
    key: Option<&str>,
    stream: bool,
) -> (u16, String) {
    let mut req = client.post(format!("{url}/v1/chat/completions")).json(
        &json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "one two"}]}),
    );
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    match req.send() {
        Ok(mut r) => {
            let code = r.status().as_u16();
            let mut body = String::new();
            if let Err(e) = r.read_to_string(&mut body) {
                body.push_str(&format!("<read error: {e}>"));
            }
            (code, body)
        }
        Err(e) => (0, format!("<request error: {e}>")),
    }
}

/// `n` clients sending requests back to back (streamed and not, alternately) until stopped.
struct Clients {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<(u16, String)>>>,
}

impl Clients {
    fn start(url: &str, n: usize) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|i| {
                let (url, stop) = (url.to_string(), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let client = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(60))
                        .build()
                        .unwrap();
                    let mut results = Vec::new();
                    let mut stream = i % 2 == 0;
                    while !stop.load(Ordering::SeqCst) {
                        results.push(chat(&client, &url, None, stream));
                        stream = !stream;
                    }
                    results
                })
            })
            .collect();
        Clients { stop, threads }
    }

    /// Stops them and checks that every request succeeded completely.
    fn finish(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let results: Vec<(u16, String)> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        for (code, body) in &results {
            assert_eq!(*code, 200, "a request failed: {body}");
            let complete = if body.starts_with("data:") {
                body.contains("data: [DONE]") && !body.contains("\"error\"")
            } else {
                body.contains("\"choices\"")
            };
            assert!(complete, "an incomplete answer: {body}");
        }
        results.len()
    }
}

/// Waits until `/status` satisfies `ok`, returning how long it took.
fn wait_status(
    s: &Supervisor,
    within: Duration,
    ok: impl Fn(&sentinel_supervisor::status::StatusReport) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let status = s.status();
        if ok(&status) {
            return started.elapsed();
        }
        if started.elapsed() > within {
            panic!(
                "/status never got there within {within:?}: {status:?}\n{}",
                s.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn reload_with_a_new_backend(strategy: &str) {
    let config =
        format!("{TIMINGS}reload_strategy = \"{strategy}\"\n[profiles.balanced]\nslots = 1\n");
    // Each answer takes ~400 ms; a new backend takes 500 ms to load.
    let s = start(
        "load=500ms,stream-chunks=4,stream-delay=100ms,response-delay=100ms",
        &config,
    );
    s.wait_health(200, Duration::from_secs(20));
    let before = s.status();
    assert_eq!(before.config_generation, 1);
    let old = before.backend.clone().expect("a backend");
    let clients = Clients::start(&s.url, 4);
    std::thread::sleep(Duration::from_millis(800));

    write_config(&s, &config.replace("slots = 1", "slots = 2"));
    let hup = Instant::now();
    s.signal(libc::SIGHUP);
    let took = wait_status(&s, Duration::from_secs(20), |st| {
        st.config_generation == 2
            && st.state == State::Ready
            && st
                .backend
                .as_ref()
                .is_some_and(|b| b.generation > old.generation)
    });
    let after = s.status();
    let new = after.backend.clone().unwrap();
    eprintln!(
        "{strategy}: new backend generation {} serving {took:?} after SIGHUP",
        new.generation
    );
    assert_ne!(new.pid, old.pid);
    assert_eq!(after.resolved_profile.slots, 2);
    // Keep the clients going on the new backend for a while, then check every answer.
    std::thread::sleep(Duration::from_millis(1000));
    let n = clients.finish();
    eprintln!(
        "{strategy}: {n} requests, all complete, reload took {:?}",
        hup.elapsed()
    );
    assert!(n >= 8, "too few requests to mean anything: {n}");
    wait_gone(old.pid, Duration::from_secs(15));
    assert!(s.logs().contains("configuration changes"), "{}", s.logs());
}

#[test]
fn sighup_with_a_new_backend_switches_blue_green_without_dropping_a_request() {
    reload_with_a_new_backend("blue-green");
}

#[test]
fn sighup_with_a_new_backend_stop_start_drops_no_request_either() {
    reload_with_a_new_backend("stop-start");
}

#[test]
fn sighup_with_a_governor_change_applies_live_to_the_same_backend() {
    let config = format!("{TIMINGS}[profiles.balanced]\ncpus = 1.0\n[proxy]\nqueue_len = 64\n");
    let s = start("stream-chunks=4,stream-delay=50ms", &config);
    s.wait_health(200, Duration::from_secs(20));
    let old = s.status().backend.unwrap();
    let clients = Clients::start(&s.url, 4);
    std::thread::sleep(Duration::from_millis(500));
    write_config(
        &s,
        &config
            // The idle budget kept: the threads (sized for it) stay, so the change is live.
            .replace("cpus = 1.0", "cpus = 0.5\ncpus_when_idle = 2.0")
            .replace("queue_len = 64", "queue_len = 32"),
    );
    s.signal(libc::SIGHUP);
    let took = wait_status(&s, Duration::from_secs(10), |st| {
        st.config_generation == 2
            && st
                .governor
                .as_ref()
                .is_some_and(|g| g.budget_cpus == Some(0.5))
    });
    eprintln!("live reload visible in /status {took:?} after SIGHUP");
    std::thread::sleep(Duration::from_millis(500));
    let n = clients.finish();
    let status = s.status();
    let backend = status.backend.unwrap();
    assert_eq!((backend.pid, backend.generation), (old.pid, old.generation));
    assert_eq!(
        status
            .resolved_profile
            .cpus
            .map(sentinel_supervisor::units::Cores::get),
        Some(0.5)
    );
    assert!(n >= 8, "{n}");
}

#[test]
fn an_invalid_config_is_refused_and_the_old_one_stays() {
    let s = start("", TIMINGS);
    s.wait_health(200, Duration::from_secs(20));
    let before = s.status();
    write_config(&s, &format!("{TIMINGS}[profiles.balanced]\nthreds = 2\n"));
    s.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.logs().contains("reload refused") {
        assert!(Instant::now() < deadline, "no refusal logged\n{}", s.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    let logs = s.logs();
    assert!(
        logs.contains("threds"),
        "the error names the bad key: {logs}"
    );
    let after = s.status();
    assert_eq!(after.config_generation, 1);
    assert_eq!(after.backend, before.backend);
    assert_eq!(after.resolved_profile, before.resolved_profile);
    assert_eq!(after.state, State::Ready);
}

#[test]
fn admin_reload_needs_a_key_and_answers_400_for_an_invalid_config() {
    let keyed = format!("api_keys = [\"sekrit\"]\n{TIMINGS}");
    let s = start("", &keyed);
    s.wait_health(200, Duration::from_secs(20));
    let client = s.client();
    let post = |key: Option<&str>| {
        let mut req = client.post(format!("{}/admin/reload", s.url));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        let r = req.send().unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().unwrap())
    };
    assert_eq!(post(None).0, 401);
    write_config(&s, &format!("{keyed}[proxy]\nqueue_len = \"many\"\n"));
    let (code, body) = post(Some("sekrit"));
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("proxy.queue_len"),
        "{body}"
    );
    let generation = || {
        let r = client
            .get(format!("{}/status", s.url))
            .bearer_auth("sekrit")
            .send()
            .unwrap();
        r.json::<serde_json::Value>().unwrap()["config_generation"].clone()
    };
    assert_eq!(generation(), 1);
    write_config(&s, &format!("{keyed}[proxy]\nqueue_len = 5\n"));
    let (code, body) = post(Some("sekrit"));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["applied"], "live");
    assert_eq!(body["config_generation"], 2);
    assert_eq!(generation(), 2);

    // Without API keys there is no reload route (SIGHUP only): any local user could use it.
    let open = start("", TIMINGS);
    open.wait_health(200, Duration::from_secs(20));
    let (code, body) = open.post("/admin/reload", json!({}));
    assert_eq!(code, 404, "{body}");
}

const CRASH_LOOP: &str = r#"
[supervisor]
ready_poll_interval = "20ms"
backoff_initial = "50ms"
backoff_max = "100ms"
crash_loop_restarts = 1
failed_retry_interval = "5m"
file_poll_interval = "200ms"
"#;

#[test]
fn a_crash_loop_recovers_by_itself_once_the_model_file_is_repaired() {
    let s = start("bad-model-unless=REPAIRED", CRASH_LOOP);
    s.wait_state("failed", Duration::from_secs(20));
    let status = s.status();
    let State::Failed {
        next_retry_at,
        next_retry_in_s,
        reason,
        ..
    } = &status.state
    else {
        panic!("{status:?}");
    };
    assert!(next_retry_at.is_some(), "{status:?}");
    assert!(matches!(next_retry_in_s, Some(290..=300)), "{status:?}");
    assert!(reason.contains("failed_retry_interval"), "{reason}");
    // The 503 says when to come back.
    let r = s
        .client()
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((60..=300).contains(&retry_after), "{retry_after}");

    let model = s.dir().join("fake.gguf");
    let mut text = std::fs::read(&model).unwrap();
    text.extend_from_slice(b" REPAIRED");
    std::fs::write(&model, text).unwrap();
    let repaired = Instant::now();
    s.wait_health(200, Duration::from_secs(5));
    eprintln!(
        "ready again {:?} after the model file was repaired",
        repaired.elapsed()
    );
    let (code, _) = s.post(
        "/v1/chat/completions",
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(code, 200);
    assert!(s.logs().contains("changed"), "{}", s.logs());
}

#[test]
fn on_crash_loop_exit_ends_the_supervisor_non_zero() {
    let config = format!("{CRASH_LOOP}on_crash_loop = \"exit\"\n");
    let mut s = start("exit-at-start=1", &config);
    let status = s.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(3), "{status}\n{}", s.logs());
    assert!(s.logs().contains("crash loop"), "{}", s.logs());
}

/// Starts one streamed request in a thread; returns when its first bytes arrived.
fn stream_in_background(s: &Supervisor) -> JoinHandle<(u16, String)> {
    let url = s.url.clone();
    let handle = std::thread::spawn(move || {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        chat(&client, &url, None, true)
    });
    wait_status(s, Duration::from_secs(10), |st| st.in_flight == 1);
    handle
}

#[test]
fn sigterm_drains_streams_in_flight_and_refuses_new_requests() {
    let mut s = start("stream-chunks=8,stream-delay=250ms", TIMINGS);
    s.wait_health(200, Duration::from_secs(20));
    let backend = s.backend_pid();
    let stream = stream_in_background(&s);
    let term = Instant::now();
    s.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    let r = s
        .client()
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .expect("the listener stays open while draining");
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let (code, body) = stream.join().unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("data: [DONE]") && !body.contains("\"error\""),
        "{body}"
    );
    let exit = s.wait_exit(Duration::from_secs(15));
    eprintln!(
        "stream finished and supervisor exited {:?} after SIGTERM",
        term.elapsed()
    );
    assert!(exit.success(), "{exit}");
    assert!(!alive(backend));
}

#[test]
fn sigterm_cuts_streams_at_the_drain_deadline_with_an_error_event() {
    let config = TIMINGS.replace("drain_timeout = \"10s\"", "drain_timeout = \"500ms\"");
    let mut s = start("stream-chunks=40,stream-delay=250ms", &config);
    s.wait_health(200, Duration::from_secs(20));
    let stream = stream_in_background(&s);
    let term = Instant::now();
    s.signal(libc::SIGTERM);
    let (code, body) = stream.join().unwrap();
    let cut = term.elapsed();
    assert_eq!(code, 200);
    assert!(
        body.contains("\"error\"") && body.contains("server_error"),
        "{body}"
    );
    assert!(!body.contains("[DONE]"), "{body}");
    let exit = s.wait_exit(Duration::from_secs(10));
    eprintln!(
        "stream cut {cut:?} after SIGTERM (drain_timeout 500ms), exit after {:?}",
        term.elapsed()
    );
    assert!(exit.success(), "{exit}");
    assert!(cut >= Duration::from_millis(450), "{cut:?}");
    assert!(cut < Duration::from_secs(4), "{cut:?}");
}

#[test]
fn sigkill_of_the_supervisor_takes_a_stopped_backend_down_within_a_second() {
    // No governor, so nothing continues the backend behind the test's back.
    let config = format!("{TIMINGS}[governor]\nmethod = \"off\"\n");
    let mut s = start("", &config);
    s.wait_health(200, Duration::from_secs(20));
    let backend = s.backend_pid();
    crate::support::kill(backend, nix::sys::signal::Signal::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(2);
    while sentinel_supervisor::meter::process_state(backend) != Some('T') {
        assert!(Instant::now() < deadline, "backend {backend} did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    s.signal(libc::SIGKILL);
    s.wait_exit(Duration::from_secs(5));
    let took = wait_gone(backend, Duration::from_secs(1));
    eprintln!("stopped backend gone {took:?} after SIGKILL of the supervisor");
}
