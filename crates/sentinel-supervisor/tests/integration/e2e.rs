//! End to end with the real llama-server and the default model (built and fetched by
//! `sentinel-supervisor setup`): ready, a real chat completion, recovery from `kill -9` of the
//! backend, and no llama-server left after SIGTERM or SIGKILL of the supervisor.

use crate::support::{alive, wait_gone, Options, Supervisor};
use serde_json::json;
use std::time::{Duration, Instant};

fn chat(s: &Supervisor) -> (u16, serde_json::Value) {
    s.post(
        "/v1/chat/completions",
        json!({
            "messages": [{"role": "user", "content": "Name one primary colour."}],
            "max_tokens": 16,
            "temperature": 0
        }),
    )
}

#[test]
fn real_backend_serves_recovers_and_leaves_nothing_behind() {
    let _cpu = crate::support::exclusive();
    let mut s = Supervisor::start(Options {
        args: vec!["--profile", "balanced"],
        ..Default::default()
    });
    let started = Instant::now();
    s.wait_health(200, Duration::from_secs(180));
    eprintln!("e2e: ready {:?} after listening", started.elapsed());
    // The rung `setup` chose (smoke-tested on this CPU) is the one serving.
    let rung = s.status().backend_rung.expect("/status names the backend");
    assert_eq!(rung.rung, crate::support::real_backend().rung, "{rung:?}");

    let (code, body) = chat(&s);
    assert_eq!(code, 200, "{body}");
    let content = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("");
    assert!(!content.trim().is_empty(), "empty completion: {body}");
    assert!(
        body["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0,
        "{body}"
    );

    // kill -9 the llama-server: 503 while it restarts, then 200, and the next request works.
    let first = s.backend_pid();
    let killed = Instant::now();
    crate::support::kill(first, nix::sys::signal::Signal::SIGKILL);
    s.wait_health(503, Duration::from_secs(5));
    s.wait_health(200, Duration::from_secs(120));
    eprintln!("e2e: ready again {:?} after kill -9", killed.elapsed());
    let second = s.backend_pid();
    assert_ne!(first, second);
    assert!(!alive(first));
    let (code, body) = chat(&s);
    assert_eq!(code, 200, "{body}");

    // SIGTERM: the supervisor exits and no llama-server is left.
    s.signal(libc::SIGTERM);
    let status = s.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status}");
    assert!(
        !alive(second),
        "llama-server {second} left behind after SIGTERM"
    );

    // SIGKILL: the kernel's death signal takes llama-server down within 1 s.
    let mut s = Supervisor::start(Options {
        args: vec!["--profile", "invisible"],
        ..Default::default()
    });
    s.wait_health(200, Duration::from_secs(180));
    let backend = s.backend_pid();
    s.signal(libc::SIGKILL);
    s.wait_exit(Duration::from_secs(5));
    let took = wait_gone(backend, Duration::from_secs(1));
    eprintln!("e2e: llama-server gone {took:?} after SIGKILL of the supervisor");
}
