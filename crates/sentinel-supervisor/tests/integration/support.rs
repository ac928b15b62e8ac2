//! The harness: runs the real `sentinel-supervisor` binary on port 0 in a temp dir, waits for
//! readiness with deadlines, prints the child's output when a test fails, kills in `Drop`.

use sentinel_supervisor::status::{StatusReport, LISTENING_PREFIX};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_sentinel-supervisor");

#[path = "sibling.rs"]
mod sibling;

/// The fake llama-server (fault injection), a binary of the bench crate.
pub(crate) fn fake() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| sibling::sibling_bin(BIN, "sentinel-bench", "fake-backend"))
}

/// A process that keeps N threads busy, a binary of the bench crate.
pub(crate) fn burner() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| sibling::sibling_bin(BIN, "sentinel-bench", "cpu-burner"))
}

/// A running supervisor.
pub(crate) struct Supervisor {
    pub child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
    logs: Arc<Mutex<Vec<String>>>,
}

/// How to start one.
#[derive(Default, Clone)]
pub(crate) struct Options<'a> {
    pub args: Vec<&'a str>,
    pub env: Vec<(&'a str, String)>,
    /// Extra TOML written to a config file passed with --config.
    pub config: &'a str,
    /// Use the fake backend (true) or the real llama-server and default model (false).
    pub fake: bool,
    /// A variable set to the supervisor's own pid (as systemd sets `WATCHDOG_PID`): it is
    /// started through `sh -c 'export VAR=$$; exec ...'`, which keeps the pid.
    pub own_pid_var: Option<&'a str>,
    /// With the real llama-server: this model file instead of the default one.
    pub model: Option<PathBuf>,
    /// With the fake backend: no `--backend-bin` and no `--model`, so the backend ladder
    /// picks the build from the cache the test prepared (`[backend] cache_dir` in `config`).
    pub from_cache: bool,
    /// With the fake model: no `--backend-bin`, so setup finds llama-server in the configured
    /// cache (a bundle installed there).
    pub backend_from_cache: bool,
}

impl Supervisor {
    pub(crate) fn start(opts: Options) -> Supervisor {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, opts.config).expect("write config");
        let mut cmd = match opts.own_pid_var {
            Some(var) => {
                let mut sh = Command::new("/bin/sh");
                sh.arg("-c")
                    .arg(format!("export {var}=$$; exec \"$0\" \"$@\""))
                    .arg(BIN);
                sh
            }
            None => Command::new(BIN),
        };
        cmd.arg("run")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--config")
            .arg(&config)
            .args(&opts.args)
            .current_dir(dir.path())
            .env("RUST_LOG", "info,backend=debug")
            .env_remove("SENTINEL_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if opts.fake && opts.from_cache {
            // The cache's builds and default model, chosen by the ladder.
        } else if opts.fake {
            let model = dir.path().join("fake.gguf");
            std::fs::write(&model, b"GGUF fake model for tests").expect("write model");
            if !opts.backend_from_cache {
                cmd.arg("--backend-bin").arg(fake());
            }
            cmd.arg("--model").arg(model);
        } else {
            // No --backend-bin: the supervisor's own setup takes the rung `setup` chose (its
            // recorded verdict), with the rung's flags, from the same cache.
            let real = real_backend();
            cmd.arg("--model")
                .arg(opts.model.as_ref().unwrap_or(&real.model));
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn sentinel-supervisor");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix(LISTENING_PREFIX) {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let mut s = Supervisor {
            child,
            url: String::new(),
            _dir: dir,
            logs,
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => s.url = url,
            Err(_) => panic!("no `listening on` line within 60 s\n{}", s.logs()),
        }
        s
    }

    /// The temp dir holding `config.toml` (passed with --config) and, with the fake
    /// backend, the model `fake.gguf`.
    pub(crate) fn dir(&self) -> &Path {
        self._dir.path()
    }

    pub(crate) fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub(crate) fn client(&self) -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap()
    }

    pub(crate) fn get(&self, path: &str) -> (u16, serde_json::Value) {
        match self.client().get(format!("{}{path}", self.url)).send() {
            Ok(r) => {
                let code = r.status().as_u16();
                (code, r.json().unwrap_or(serde_json::Value::Null))
            }
            Err(_) => (0, serde_json::Value::Null),
        }
    }

    pub(crate) fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .client()
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.logs()));
        let code = r.status().as_u16();
        (code, r.json().unwrap_or(serde_json::Value::Null))
    }

    /// Waits until `/health` answers `code`, returning its body.
    pub(crate) fn wait_health(&self, code: u16, within: Duration) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let (c, body) = self.get("/health");
            if c == code {
                return body;
            }
            if Instant::now() > deadline {
                panic!(
                    "/health never answered {code} (last {c} {body})\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `/health` reports `state`.
    pub(crate) fn wait_state(&self, state: &str, within: Duration) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let (_, body) = self.get("/health");
            if body["state"] == state {
                return body;
            }
            if Instant::now() > deadline {
                panic!(
                    "/health never reached {state} (last {body})\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `/status`, read as the typed report (panics with the log when it is not one).
    pub(crate) fn status(&self) -> StatusReport {
        let (code, body) = self.get("/status");
        assert_eq!(code, 200, "GET /status: {body}\n{}", self.logs());
        serde_json::from_value(body.clone())
            .unwrap_or_else(|e| panic!("/status is not a StatusReport ({e}): {body}"))
    }

    /// The backend's pid from `/status`.
    pub(crate) fn backend_pid(&self) -> i32 {
        let status = self.status();
        match status.backend {
            Some(backend) => backend.pid,
            None => panic!("no backend in /status: {:?}\n{}", status.state, self.logs()),
        }
    }

    pub(crate) fn signal(&self, sig: i32) {
        let sig =
            nix::sys::signal::Signal::try_from(sig).expect("tests pass libc's signal constants");
        kill(self.pid(), sig);
    }

    /// Waits for the supervisor to exit.
    pub(crate) fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                panic!("supervisor did not exit within {within:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- supervisor log ----\n{}\n---- end ----", self.logs());
        }
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends `sig` to `pid` (a child or grandchild of the test); a process already gone is not an
/// error here: what the test checks next tells.
pub(crate) fn kill(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// Whether a process exists (and is not a zombie).
pub(crate) fn alive(pid: i32) -> bool {
    matches!(
        sentinel_supervisor::meter::process_state(pid),
        Some(state) if state != 'Z' && state != 'X'
    )
}

/// Waits until `pid` is gone; returns how long it took.
pub(crate) fn wait_gone(pid: i32, within: Duration) -> Duration {
    let start = Instant::now();
    while alive(pid) {
        if start.elapsed() > within {
            panic!("process {pid} still alive after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// The real llama-server and default model, from `sentinel-supervisor setup` (which builds
/// and fetches them into the cache the first time, and reuses them after).
pub(crate) struct Real {
    /// The backend ladder's rung in use on this host (`native`, `native --no-repack`, ...).
    pub rung: String,
    pub model: PathBuf,
}

pub(crate) fn real_backend() -> &'static Real {
    static REAL: OnceLock<Real> = OnceLock::new();
    REAL.get_or_init(|| {
        let out = Command::new(BIN)
            .arg("setup")
            .stderr(Stdio::inherit())
            .output()
            .expect("run sentinel-supervisor setup");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "setup failed: {stdout}");
        let find = |key: &str| -> PathBuf {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|p| Path::new(p.trim()).to_path_buf())
                .unwrap_or_else(|| panic!("setup printed no `{key}` line: {stdout}"))
        };
        let rung = find("backend:").display().to_string();
        eprintln!(
            "real backend: rung {rung}, {}",
            find("llama-server:").display()
        );
        Real {
            rung,
            model: find("model:"),
        }
    })
}

/// Serialises tests that measure CPU or run the real model, so they do not disturb each other
/// on a 2-core machine.
pub(crate) fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
