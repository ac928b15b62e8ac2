//! The supervisor stack under test: a `sentinel-supervisor run` child started for one profile
//! (or an already running one given with `--url`), its readiness, its `/status`, and its stop.
//! Also the one way the bench drivers start any child ([`spawn_in_own_group`], [`GroupChild`]).

use nix::sys::signal::Signal;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The line the supervisor prints on stdout once it listens.
const LISTENING_PREFIX: &str = "sentinel-supervisor listening on ";
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

/// What `/status` says about the stack.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusInfo {
    pub state: String,
    pub profile: Option<String>,
    pub model: Option<String>,
    pub backend_pid: Option<i32>,
    pub threads: Option<u64>,
    pub threads_batch: Option<u64>,
    pub governor: Value,
    pub limit_cpus: Option<f64>,
}

impl StatusInfo {
    /// Reads the `/status` JSON of the contract; unknown or missing fields stay `None`.
    pub fn from_json(v: &Value) -> StatusInfo {
        let backend = &v["backend"];
        let governor = v.get("governor").cloned().unwrap_or(Value::Null);
        let limit_cpus = ["budget_cpus", "cpus", "budget", "limit_cpus"]
            .iter()
            .find_map(|k| governor.get(k).and_then(Value::as_f64));
        StatusInfo {
            state: v["state"].as_str().unwrap_or("unknown").to_string(),
            profile: v["profile"].as_str().map(str::to_string),
            model: v["model"].as_str().map(str::to_string),
            backend_pid: backend["pid"].as_i64().and_then(|p| i32::try_from(p).ok()),
            threads: backend["threads"].as_u64(),
            threads_batch: backend["threads_batch"].as_u64(),
            governor,
            limit_cpus,
        }
    }
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
        // SIGTERM: a supervisor left behind stops its backend gracefully.
        let mut child = spawn_in_own_group(&mut cmd, Signal::SIGTERM).map_err(spawn_err)?;
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
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    last_state = body["state"]
                        .as_str()
                        .map_or(format!("HTTP {code}"), str::to_string);
                    if last_state == "failed" {
                        break;
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
    pub async fn status(&self, client: &reqwest::Client) -> Result<StatusInfo, StackError> {
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
        let v: Value = resp.json().await.map_err(|e| err(e.to_string()))?;
        Ok(StatusInfo::from_json(&v))
    }

    /// Stops a supervisor this bench started: SIGTERM, wait, then SIGKILL it and the backend.
    /// An attached supervisor is left alone.
    pub async fn stop(mut self, backend_pid: Option<i32>) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            signal(pid, nix::sys::signal::Signal::SIGTERM);
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
            if crate::meter::process_state(pid).is_some_and(|s| s != 'Z') {
                tracing::warn!(pid, "backend outlived its supervisor; killing it");
                signal(pid, nix::sys::signal::Signal::SIGCONT);
                signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// Spawns `cmd` in its own process group; on Linux the child gets `death_signal` when the
/// spawning thread ends (the bench drivers spawn from their main thread, which lives as long as
/// they do). Every child the bench starts goes through here.
pub fn spawn_in_own_group(
    cmd: &mut tokio::process::Command,
    death_signal: Signal,
) -> std::io::Result<tokio::process::Child> {
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal as libc::c_int) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// A child in its own process group (from [`spawn_in_own_group`], death signal SIGKILL) that
/// takes its whole group with it: [`GroupChild::kill`] kills and reaps it, dropping it kills it.
pub struct GroupChild {
    child: tokio::process::Child,
    pid: i32,
}

impl GroupChild {
    /// Starts `cmd` (stdio as the caller set it up).
    pub fn spawn(cmd: &mut tokio::process::Command) -> std::io::Result<GroupChild> {
        let child = spawn_in_own_group(cmd, Signal::SIGKILL)?;
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
    let group = nix::unistd::Pid::from_raw(pid);
    for sig in [Signal::SIGCONT, Signal::SIGKILL] {
        if let Err(e) = nix::sys::signal::killpg(group, sig) {
            tracing::debug!(pid, ?sig, error = %e, "signal to the group not delivered");
        }
    }
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
        tracing::debug!(pid, ?sig, error = %e, "signal not delivered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_status_contract() {
        let v = serde_json::json!({
            "state": "ready", "profile": "balanced", "model": "/m.gguf",
            "backend": {"pid": 1234, "port": 5, "threads": 1, "threads_batch": 2, "restarts": 0},
            "governor": {"budget_cpus": 0.5, "mode": "duty"}, "in_flight": 0
        });
        let s = StatusInfo::from_json(&v);
        assert_eq!(s.state, "ready");
        assert_eq!(s.profile.as_deref(), Some("balanced"));
        assert_eq!(s.backend_pid, Some(1234));
        assert_eq!((s.threads, s.threads_batch), (Some(1), Some(2)));
        assert_eq!(s.limit_cpus, Some(0.5));
        let starting = StatusInfo::from_json(
            &serde_json::json!({"state": "starting", "backend": {"pid": null}}),
        );
        assert_eq!(starting.backend_pid, None);
        assert_eq!(starting.limit_cpus, None);
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
        let mut child = GroupChild::spawn(&mut cmd).unwrap();
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
        while crate::meter::process_state(grandchild).is_some_and(|s| s != 'Z') {
            assert!(
                Instant::now() < deadline,
                "the grandchild outlived the group kill"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
