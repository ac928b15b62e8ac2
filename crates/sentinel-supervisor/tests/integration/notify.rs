//! systemd's notify protocol against a fake `NOTIFY_SOCKET` (a datagram socket the test binds):
//! `READY=1` only once `/health` is 200, `WATCHDOG=1` while alive, readable `STATUS=` lines,
//! `STOPPING=1` after SIGTERM, and none of the service manager's variables in the backend.

use crate::support::{Options, Supervisor};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every datagram the "service manager" received, with when.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(Instant, String)>>>);

impl Received {
    fn listen(socket: UnixDatagram) -> Received {
        let received = Received::default();
        let sink = received.clone();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        sink.0.lock().unwrap().push((Instant::now(), text));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => return,
                }
            }
        });
        received
    }

    /// When the first datagram carrying `line` (one of its lines) arrived.
    fn first(&self, line: &str) -> Option<Instant> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|(_, m)| m.lines().any(|l| l == line))
            .map(|(t, _)| *t)
    }

    fn count(&self, line: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, m)| m.lines().any(|l| l == line))
            .count()
    }

    fn dump(&self) -> String {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.replace('\n', " | "))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

const CONFIG: &str = r#"
[supervisor]
ready_poll_interval = "20ms"
probe_interval = "100ms"
stop_grace = "1s"
"#;

#[test]
fn a_fake_notify_socket_sees_ready_after_health_then_watchdog_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let received = Received::listen(UnixDatagram::bind(&path).unwrap());
    let mut s = Supervisor::start(Options {
        fake: true,
        config: CONFIG,
        env: vec![
            ("FAKE_BACKEND_MODE", "load=1500ms".to_string()),
            ("NOTIFY_SOCKET", path.display().to_string()),
            // WatchdogSec=400ms: a ping at least every 200 ms.
            ("WATCHDOG_USEC", "400000".to_string()),
        ],
        own_pid_var: Some("WATCHDOG_PID"),
        ..Default::default()
    });

    // While the backend loads: 503, and no READY=1 yet. A 503 was decided after its request
    // left, so READY=1 must arrive after the last 503's request was sent.
    s.wait_health(503, Duration::from_secs(10));
    let mut last_503 = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sent = Instant::now();
        let (code, _) = s.get("/health");
        match code {
            200 => break,
            _ => last_503 = sent,
        }
        assert!(Instant::now() < deadline, "never ready\n{}", s.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let ready = loop {
        if let Some(t) = received.first("READY=1") {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "no READY=1 within 5 s of /health 200:\n{}\n{}",
            received.dump(),
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        ready > last_503,
        "READY=1 arrived while /health still answered 503:\n{}",
        received.dump()
    );
    assert_eq!(received.count("READY=1"), 1, "{}", received.dump());
    let dump = received.dump();
    assert!(
        dump.contains("STATUS=starting - balanced"),
        "no starting status:\n{dump}"
    );
    assert!(
        dump.contains("READY=1 | STATUS=ready - balanced, "),
        "no ready status:\n{dump}"
    );
    assert!(dump.contains(", restarts 0"), "{dump}");

    // The watchdog is pinged while the supervisor is alive: about 5 per second here.
    let before = received.count("WATCHDOG=1");
    std::thread::sleep(Duration::from_millis(1500));
    let pings = received.count("WATCHDOG=1") - before;
    assert!(
        pings >= 4,
        "{pings} WATCHDOG=1 in 1.5 s:\n{}",
        received.dump()
    );

    // The backend does not inherit the service manager's variables.
    let backend = s.backend_pid();
    let environ = std::fs::read(format!("/proc/{backend}/environ")).unwrap();
    let vars: Vec<String> = environ
        .split(|&b| b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert!(
        vars.iter().any(|v| v == "OMP_WAIT_POLICY=passive"),
        "the backend's environment was not read: {vars:?}"
    );
    for hidden in ["NOTIFY_SOCKET=", "WATCHDOG_USEC=", "WATCHDOG_PID="] {
        assert!(
            !vars.iter().any(|v| v.starts_with(hidden)),
            "the backend inherited {hidden}: {vars:?}"
        );
    }

    assert_eq!(received.first("STOPPING=1"), None);
    s.signal(libc::SIGTERM);
    let status = s.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    let stopping = received
        .first("STOPPING=1")
        .unwrap_or_else(|| panic!("no STOPPING=1:\n{}", received.dump()));
    assert!(stopping > ready);
}

#[test]
fn without_a_notify_socket_nothing_is_sent_and_the_supervisor_runs_as_before() {
    // NOTIFY_SOCKET pointing at nothing: the supervisor warns once and serves anyway.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nobody-listens.sock");
    let s = Supervisor::start(Options {
        fake: true,
        config: CONFIG,
        env: vec![("NOTIFY_SOCKET", missing.display().to_string())],
        ..Default::default()
    });
    s.wait_health(200, Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s.logs().contains("cannot notify the service manager") {
        assert!(Instant::now() < deadline, "no warning\n{}", s.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        s.logs()
            .matches("cannot notify the service manager")
            .count(),
        1,
        "{}",
        s.logs()
    );
}
