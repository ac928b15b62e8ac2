//! Load and soak against the real llama-server with one slot.
//!
//! - `fifty_clients_ten_requests_each`: 50 clients x 10 requests; every request completes or is
//!   rejected with 429/503 and `Retry-After`, none outlives its timeout, sent = completed +
//!   rejected; RSS before and after. Minutes on a busy 2-core machine, hence `#[ignore]`.
//! - `soak_with_random_backend_kills`: `scripts/soak` runs it (`SOAK_SECS`, `SOAK_KILL_EVERY`):
//!   clients send requests for the whole time while the backend is killed with SIGKILL at random
//!   intervals; no accepted request may be lost.

use crate::support::{Options, Supervisor};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Completed,
    /// 429 or 503 with `Retry-After` and an OpenAI error body.
    Rejected,
    /// Anything else: a 5xx, a reset, a timeout, a 200 without content.
    Lost,
}

const CLIENT_TIMEOUT: Duration = Duration::from_secs(150);

fn send(client: &reqwest::blocking::Client, url: &str, text: &str) -> (End, String) {
    let started = Instant::now();
    let body = json!({
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 4,
        "temperature": 0
    });
    let r = match client
        .post(format!("{url}/v1/chat/completions"))
        .json(&body)
        .send()
    {
        Ok(r) => r,
        Err(e) => {
            return (
                End::Lost,
                format!("transport error after {:?}: {e}", started.elapsed()),
            )
        }
    };
    let code = r.status().as_u16();
    let retry_after = r.headers().contains_key("retry-after");
    let json: serde_json::Value = r.json().unwrap_or_default();
    match code {
        200 if json["choices"][0]["message"]["content"].is_string() => {
            (End::Completed, String::new())
        }
        429 | 503 if retry_after && json["error"]["message"].is_string() => {
            (End::Rejected, format!("{code}"))
        }
        _ => (End::Lost, format!("{code}: {json}")),
    }
}

fn rss_mb(s: &Supervisor) -> f64 {
    s.status()
        .backend
        .and_then(|b| b.rss_bytes)
        .map_or(f64::NAN, |b| b as f64 / 1e6)
}

const ONE_SLOT: &str = r#"
[profiles.balanced]
slots = 1
[proxy]
queue_len = 16
queue_timeout = "60s"
"#;

#[test]
#[ignore = "500 real requests (minutes); run with --ignored"]
fn fifty_clients_ten_requests_each() {
    let _cpu = crate::support::exclusive();
    let s = Supervisor::start(Options {
        config: ONE_SLOT,
        ..Default::default()
    });
    s.wait_health(200, Duration::from_secs(180));
    let before = rss_mb(&s);
    let started = Instant::now();
    let url = s.url.clone();
    let clients: Vec<_> = (0..50)
        .map(|c| {
            let url = url.clone();
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(CLIENT_TIMEOUT)
                    .build()
                    .unwrap();
                (0..10)
                    .map(|i| {
                        let t = Instant::now();
                        let (end, why) = send(
                            &client,
                            &url,
                            &format!("Client {c}, question {i}: name a colour."),
                        );
                        (end, why, t.elapsed())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let elapsed = started.elapsed();
    let after = rss_mb(&s);
    let count = |e: End| results.iter().filter(|r| r.0 == e).count();
    let (completed, rejected, lost) = (
        count(End::Completed),
        count(End::Rejected),
        count(End::Lost),
    );
    let slowest = results.iter().map(|r| r.2).max().unwrap_or_default();
    eprintln!(
        "load: 50 clients x 10: sent {} = completed {completed} + rejected {rejected} (+ lost {lost}) in {elapsed:?}; slowest {slowest:?}; backend RSS {before:.0} MB -> {after:.0} MB",
        results.len()
    );
    let losses: Vec<_> = results
        .iter()
        .filter(|r| r.0 == End::Lost)
        .map(|r| &r.1)
        .collect();
    assert!(losses.is_empty(), "lost: {losses:?}");
    assert_eq!(results.len(), completed + rejected);
    assert!(slowest < CLIENT_TIMEOUT);
    assert!(completed > 0);
    assert_eq!(s.status().restarts, 0, "{:?}", s.status().last_exit);
}

fn env_secs(key: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(key)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

#[test]
#[ignore = "the soak (scripts/soak): SOAK_SECS long, 30 minutes by default"]
fn soak_with_random_backend_kills() {
    let _cpu = crate::support::exclusive();
    let duration = env_secs("SOAK_SECS", 1800);
    let kill_every = env_secs("SOAK_KILL_EVERY", 180);
    let s = Supervisor::start(Options {
        config: ONE_SLOT,
        ..Default::default()
    });
    s.wait_health(200, Duration::from_secs(180));
    let before = rss_mb(&s);
    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (url, stop, results) = (s.url.clone(), stop.clone(), results.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(CLIENT_TIMEOUT)
                    .build()
                    .unwrap();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let r = send(
                        &client,
                        &url,
                        &format!("Soak client {c}, request {i}: say hi."),
                    );
                    results.lock().unwrap().push(r);
                    i += 1;
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut kills = 0;
    // A cheap xorshift: kill intervals uniform in [0.5, 1.5] x kill_every.
    let mut x = 0x2545_F491_4F6C_DD1Du64 ^ u64::from(std::process::id());
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let wait = kill_every.mul_f64(0.5 + (x % 1000) as f64 / 1000.0);
        if started.elapsed() + wait >= duration {
            std::thread::sleep(duration.saturating_sub(started.elapsed()));
            break;
        }
        std::thread::sleep(wait);
        let pid = s.backend_pid();
        crate::support::kill(pid, nix::sys::signal::Signal::SIGKILL);
        kills += 1;
        eprintln!(
            "soak: {:?}: killed backend {pid} (kill {kills})",
            started.elapsed()
        );
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let results = results.lock().unwrap();
    let count = |e: End| results.iter().filter(|r| r.0 == e).count();
    let (completed, rejected, lost) = (
        count(End::Completed),
        count(End::Rejected),
        count(End::Lost),
    );
    let status = s.status();
    eprintln!(
        "soak: {:?}, {kills} backend kills, {} restarts: sent {} = completed {completed} + rejected {rejected} + lost {lost}; backend RSS {before:.0} MB -> {:.0} MB",
        started.elapsed(),
        status.restarts,
        results.len(),
        rss_mb(&s)
    );
    let losses: Vec<_> = results
        .iter()
        .filter(|r| r.0 == End::Lost)
        .map(|r| &r.1)
        .collect();
    assert!(losses.is_empty(), "lost among accepted: {losses:?}");
    assert_eq!(status.restarts, kills);
}
