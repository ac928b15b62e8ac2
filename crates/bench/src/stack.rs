//! The supervisor stack under test: a `sentinel-supervisor run` child started for one profile
//! (or an already running one given with `--url`), its readiness, its `/status`, and its stop.
//! Also [`GroupChild`], how the bench drivers hold any child they start (through
//! [`sentinel_supervisor::os::process`]).

use nix::sys::signal::Signal;
use sentinel_supervisor::os::process::{signal_group, spawn_in_group_async};
use sentinel_supervisor::status::{HealthReport, StatusReport, LISTENING_PREFIX};
use sentinel_supervisor::supervisor::state::StateName;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
/// How long a stopping supervisor may take before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("cannot start `{exe} run --profile {profile}`: {error}")]
    Spawn {
        exe: PathBuf,
        profile: String,
        error: std::io::Error,
    },
    #[error("the supervisor for profile `{profile}` exited before listening ({status}); its log is in {log}")]
    EarlyExit {
        profile: String,
        status: String,
        log: PathBuf,
    },
    #[error("the supervisor for profile `{profile}` did not print its listening line within {secs} s; its log is in {log}")]
    NoListenLine {
        profile: String,
        secs: u64,
        log: PathBuf,
    },
    #[error("{url} did not become ready within {secs} s (last state: {state}); check the supervisor log{hint} or raise [bench] ready_timeout")]
    NotReady {
        url: String,
        secs: u64,
        state: String,
        hint: String,
    },
    #[error("GET {url} failed: {message} (is the supervisor running and the API key right?)")]
    Status { url: String, message: String },
}

/// How to start a supervisor for one profile.
#[derive(Debug, Clone)]
pub struct Launch {
    pub exe: PathBuf,
    pub profile: String,
    pub model: Option<PathBuf>,
    pub backend_bin: Option<PathBuf>,
    pub config: Option<PathBuf>,
    /// Where the child's stderr (its logs) goes.
    pub log: PathBuf,
    pub listen_timeout: Duration,
}

/// A supervisor the bench talks to, started by it or not.
pub struct Stack {
    pub base_url: String,
    child: Option<tokio::process::Child>,
    log: Option<PathBuf>,
    api_key: Option<String>,
}

impl Stack {
    /// Uses an already running supervisor; it is left running afterwards.
    pub fn attach(url: &str, api_key: Option<String>) -> Stack {
        Stack {
            base_url: url.trim_end_matches('/').to_string(),
            child: None,
            log: None,
            api_key,
        }
    }

    /// Starts `exe run --profile P --listen 127.0.0.1:0 ...` and waits for its listening line.
    pub async fn start(launch: &Launch, api_key: Option<String>) -> Result<Stack, StackError> {
        let spawn_err = |error| StackError::Spawn {
            exe: launch.exe.clone(),
            profile: launch.profile.clone(),
            error,
        };
        let log = std::fs::File::create(&launch.log).map_err(spawn_err)?;
        let mut cmd = tokio::process::Command::new(&launch.exe);
        cmd.args([
            "run",
            "--profile",
            &launch.profile,
            "--listen",
            "127.0.0.1:0",
        ]);
        for (flag, value) in [
            ("--model", &launch.model),
            ("--backend-bin", &launch.backend_bin),
            ("--config", &launch.config),
        ] {
            if let Some(v) = value {
                cmd.arg(flag).arg(v);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        // SIGTERM as the death signal: a supervisor whose bench died shuts down gracefully and
        // stops its own backend (which has its own SIGKILL death signal).
        let mut child = spawn_in_group_async(cmd, Signal::SIGTERM)
            .await
            .map_err(spawn_err)?;
        tracing::info!(profile = %launch.profile, pid = child.id(), "started supervisor");
        let Some(stdout) = child.stdout.take() else {
            return Err(spawn_err(std::io::Error::other("no stdout pipe")));
        };
        let mut lines = BufReader::new(stdout).lines();
        let found = tokio::time::timeout(launch.listen_timeout, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.trim().strip_prefix(LISTENING_PREFIX) {
                    return Some(url.trim_end_matches('/').to_string());
                }
            }
            None
        })
        .await;
        let url = match found {
            Ok(Some(url)) => url,
            Ok(None) => {
                let status = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await
                {
                    Ok(Ok(s)) => s.to_string(),
                    _ => "stdout closed".to_string(),
                };
                return Err(StackError::EarlyExit {
                    profile: launch.profile.clone(),
                    status,
                    log: launch.log.clone(),
                });
            }
            Err(_) => {
                return Err(StackError::NoListenLine {
                    profile: launch.profile.clone(),
                    secs: launch.listen_timeout.as_secs(),
                    log: launch.log.clone(),
                })
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Stack {
            base_url: url,
            child: Some(child),
            log: Some(launch.log.clone()),
            api_key,
        })
    }

    /// A request builder carrying the API key, when there is one.
    pub fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let rb = client.request(method, format!("{}{}", self.base_url, path));
        match &self.api_key {
            Some(key) => rb.bearer_auth(key),
            None => rb,
        }
    }

    /// Polls `/health` until it answers 200, showing progress on stderr every few seconds.
    pub async fn wait_ready(
        &self,
        client: &reqwest::Client,
        timeout: Duration,
    ) -> Result<(), StackError> {
        let started = Instant::now();
        let mut last_state = "no answer".to_string();
        let mut last_shown = Instant::now();
        while started.elapsed() < timeout {
            let resp = self
                .request(client, reqwest::Method::GET, "/health")
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            match resp {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => {
                    let code = r.status();
                    match r.json::<HealthReport>().await {
                        Ok(health) if health.state == StateName::Failed => {
                            last_state = format!(
                                "failed: {}",
                                health.reason.as_deref().unwrap_or("no reason given")
                            );
                            break;
                        }
                        Ok(health) => last_state = health.state.to_string(),
                        Err(_) => last_state = format!("HTTP {code}"),
                    }
                }
                Err(e) => last_state = format!("no answer ({e})"),
            }
            if last_shown.elapsed() >= Duration::from_secs(3) {
                eprintln!(
                    "bench: waiting for {} to be ready ({}, {:.0} s)",
                    self.base_url,
                    last_state,
                    started.elapsed().as_secs_f64()
                );
                last_shown = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(StackError::NotReady {
            url: self.base_url.clone(),
            secs: timeout.as_secs(),
            state: last_state,
            hint: self
                .log
                .as_ref()
                .map_or(String::new(), |l| format!(" ({})", l.display())),
        })
    }

    /// Reads `/status`.
    pub async fn status(&self, client: &reqwest::Client) -> Result<StatusReport, StackError> {
        let url = format!("{}/status", self.base_url);
        let err = |message: String| StackError::Status {
            url: url.clone(),
            message,
        };
        let resp = self
            .request(client, reqwest::Method::GET, "/status")
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| err(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(err(format!("HTTP {}", resp.status())));
        }
        resp.json::<StatusReport>()
            .await
            .map_err(|e| err(format!("not the /status of this version: {e}")))
    }

    /// Stops a supervisor this bench started: SIGTERM, wait, then SIGKILL it and the backend.
    /// An attached supervisor is left alone.
    pub async fn stop(mut self, backend_pid: Option<i32>) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            signal(pid, Signal::SIGTERM);
        }
        match tokio::time::timeout(STOP_DEADLINE, child.wait()).await {
            Ok(Ok(status)) if status.success() => tracing::info!(%status, "supervisor stopped"),
            Ok(Ok(status)) => {
                tracing::warn!(%status, "supervisor exited with an error status on SIGTERM")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "could not wait for the supervisor"),
            Err(_) => {
                tracing::warn!("supervisor did not stop within 30 s of SIGTERM; killing it");
                let _ = child.kill().await;
            }
        }
        // The backend must not outlive its supervisor.
        if let Some(pid) = backend_pid {
            if sentinel_supervisor::meter::process_state(pid).is_some_and(|s| s != 'Z') {
                tracing::warn!(pid, "backend outlived its supervisor; killing it");
                signal(pid, Signal::SIGKILL);
            }
        }
    }
}

/// A child in its own process group (from [`spawn_in_group_async`], death signal SIGKILL) that
/// takes its whole group with it: [`GroupChild::kill`] kills and reaps it, dropping it kills it.
pub struct GroupChild {
    child: tokio::process::Child,
    pid: i32,
}

impl GroupChild {
    /// Starts `cmd` (stdio as the caller set it up).
    pub async fn spawn(cmd: tokio::process::Command) -> std::io::Result<GroupChild> {
        let child = spawn_in_group_async(cmd, Signal::SIGKILL).await?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| std::io::Error::other("the child exited before its pid was read"))?;
        Ok(GroupChild { child, pid })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Has the leader exited? (Reaps it if so.)
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills the group (continued first: a stopped process ignores signals until then) and waits
    /// for the leader, so the next measurement does not overlap its exit.
    pub async fn kill(mut self) {
        kill_group(self.pid);
        if let Err(e) = self.child.wait().await {
            tracing::debug!(pid = self.pid, error = %e, "could not reap the child");
        }
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        kill_group(self.pid);
    }
}

fn kill_group(pid: i32) {
    if let Err(e) = signal_group(pid, Signal::SIGKILL) {
        tracing::debug!(pid, error = %e, "SIGKILL to the group not delivered");
    }
}

/// Signals the group `pid` leads (the supervisor and the backend each lead their own).
fn signal(pid: i32, sig: Signal) {
    if let Err(e) = signal_group(pid, sig) {
        tracing::debug!(pid, ?sig, error = %e, "signal not delivered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `report` as `/status` (behind `key`) and `health` as `/health` on a free port.
    async fn serve(report: StatusReport, key: &'static str) -> String {
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        let health = report.health();
        let app = axum::Router::new()
            .route(
                "/status",
                axum::routing::get(move |headers: HeaderMap| async move {
                    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
                    if auth == Some(&format!("Bearer {key}")) {
                        axum::Json(report).into_response()
                    } else {
                        StatusCode::UNAUTHORIZED.into_response()
                    }
                }),
            )
            .route(
                "/health",
                axum::routing::get(move || async move {
                    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(health))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    /// A `/status` as a running supervisor sends it (the product's own example, serialized).
    fn example() -> StatusReport {
        serde_json::from_str(include_str!("testdata/status.json")).unwrap()
    }

    #[tokio::test]
    async fn reads_the_status_the_server_sends() {
        let report = example();
        let url = serve(report.clone(), "k").await;
        let client = reqwest::Client::new();
        let read = Stack::attach(&url, Some("k".into()))
            .status(&client)
            .await
            .unwrap();
        assert_eq!(read, report);
        let err = Stack::attach(&url, Some("wrong".into()))
            .status(&client)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("401"), "{err}");
    }

    #[tokio::test]
    async fn a_failed_backend_ends_the_wait_with_its_reason() {
        let failed = StatusReport {
            state: sentinel_supervisor::supervisor::state::State::Failed {
                reason: "crash loop: bad model".into(),
                last_lines: vec![],
                next_retry_at: None,
                next_retry_in_s: None,
            },
            ..example()
        };
        let url = serve(failed, "k").await;
        let started = Instant::now();
        let err = Stack::attach(&url, None)
            .wait_ready(&reqwest::Client::new(), Duration::from_secs(30))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("crash loop: bad model"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10), "kept waiting");
    }

    #[tokio::test]
    async fn a_child_that_exits_early_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let launch = Launch {
            exe: PathBuf::from("/bin/false"),
            profile: "p".into(),
            model: None,
            backend_bin: None,
            config: None,
            log: dir.path().join("p.log"),
            listen_timeout: Duration::from_secs(10),
        };
        let err = Stack::start(&launch, None)
            .await
            .err()
            .expect("must fail")
            .to_string();
        assert!(
            err.contains("exited before listening") && err.contains("p.log"),
            "{err}"
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_group_child_takes_its_group_with_it() {
        // A shell leader with a grandchild in its group.
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(Stdio::piped());
        let mut child = GroupChild::spawn(cmd).await.unwrap();
        let stdout = child.child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let grandchild: i32 = lines.next_line().await.unwrap().unwrap().parse().unwrap();
        assert_eq!(
            nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(grandchild)))
                .unwrap()
                .as_raw(),
            child.pid()
        );
        assert!(child.exited().is_none());
        child.kill().await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while sentinel_supervisor::meter::process_state(grandchild).is_some_and(|s| s != 'Z') {
            assert!(
                Instant::now() < deadline,
                "the grandchild outlived the group kill"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
