//! The lifecycle task: the one owner of the backend process and its state. It launches,
//! waits for readiness, probes liveness, restarts with backoff, trips the crash-loop breaker,
//! and stops gracefully; every change is published on a `watch` channel. It owns each launch's
//! governor too, whose snapshots reach `/status` on a `watch` of their own.

use super::liveness::{self, Liveness};
use super::policy::{Decision, RestartPolicy};
use super::state::{BackendInfo, State, Status};
use crate::backend::launch::LaunchSpec;
use crate::backend::process::BackendProcess;
use crate::config::SupervisorConfig;
use crate::governor::{
    Activity, Governor, GovernorConfig, GovernorHandle, GovernorSettings, SnapshotSender,
};
use std::process::ExitStatus;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Builds the launch spec for each attempt (fresh port and key every time).
pub type SpecFactory = Box<dyn Fn() -> std::io::Result<LaunchSpec> + Send + Sync>;

pub struct Lifecycle {
    pub config: SupervisorConfig,
    pub make_spec: SpecFactory,
    pub activity: Activity,
    pub governor_config: GovernorConfig,
    pub governor_settings: GovernorSettings,
    /// Where the running launch's governor publishes its snapshots (`None` between launches).
    pub governor: SnapshotSender,
    pub status: watch::Sender<Status>,
    pub cancel: CancellationToken,
    /// What the proxy sees of forwarded requests, for the per-launch watchdog.
    pub liveness: std::sync::Arc<Liveness>,
}

/// How one launch ended.
#[derive(Debug)]
enum Outcome {
    Exited(ExitStatus),
    StartTimeout,
    Hung {
        failed_probes: u32,
    },
    /// Described already: the watchdog's stall, or an exit read against the OOM counter.
    Ended(String),
    SpawnFailed(String),
    Cancelled,
}

enum Probe {
    Ready,
    Loading,
    Down(String),
}

impl Lifecycle {
    /// Runs until cancelled; always leaves no backend behind.
    pub async fn run(self) {
        let mut policy = RestartPolicy::new(&self.config);
        let client = reqwest::Client::builder()
            .timeout(self.config.probe_timeout)
            .pool_max_idle_per_host(0)
            .build()
            .expect("a reqwest client with only a timeout always builds");
        let mut attempt = 0u32;
        let mut restarts = 0u32;
        loop {
            attempt += 1;
            self.publish(State::Starting { attempt }, None, restarts);
            let (outcome, healthy_for, logs) = self.launch_once(&client, attempt, restarts).await;
            if matches!(outcome, Outcome::Cancelled) {
                self.publish(State::Stopped, None, restarts);
                return;
            }
            let last_lines = logs.map(|l| l.errors(8)).unwrap_or_default();
            let reason = liveness::with_last_line(describe(&outcome), &last_lines);
            self.status
                .send_modify(|s| s.last_exit = Some(reason.clone()));
            tracing::warn!(%reason, attempt, ?healthy_for, last_lines = ?last_lines, "backend failed");
            match policy.on_failure(Instant::now(), healthy_for) {
                Decision::Restart(delay) => {
                    restarts += 1;
                    self.publish(
                        State::Backoff {
                            delay_ms: delay.as_millis() as u64,
                            reason: reason.clone(),
                        },
                        None,
                        restarts,
                    );
                    tracing::info!(?delay, restarts, "restarting the backend after backoff");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.cancel.cancelled() => {
                            self.publish(State::Stopped, None, restarts);
                            return;
                        }
                    }
                }
                Decision::GiveUp { failures, window } => {
                    let reason = format!(
                        "crash loop: the backend failed {failures} times within {window:?}; last failure: {reason}. Fix the cause (see last_lines and the log) and restart the supervisor"
                    );
                    tracing::error!(%reason, last_lines = ?last_lines, "giving up on the backend");
                    self.publish(State::Failed { reason, last_lines }, None, restarts);
                    self.cancel.cancelled().await;
                    self.publish(State::Stopped, None, restarts);
                    return;
                }
            }
        }
    }

    /// One launch from spawn to exit. Returns how it ended, how long it was healthy, and its
    /// log tail.
    async fn launch_once(
        &self,
        client: &reqwest::Client,
        attempt: u32,
        restarts: u32,
    ) -> (
        Outcome,
        Option<Duration>,
        Option<crate::backend::process::LogTail>,
    ) {
        let spec = match (self.make_spec)() {
            Ok(s) => s,
            Err(e) => return (Outcome::SpawnFailed(e.to_string()), None, None),
        };
        let mut child = match BackendProcess::spawn(&spec) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("cannot start {}: {e}", spec.program.display());
                return (Outcome::SpawnFailed(msg), None, None);
            }
        };
        let info = BackendInfo {
            pid: child.pid(),
            port: spec.port,
            base_url: spec.base_url(),
            api_key: spec.api_key.clone(),
            generation: u64::from(attempt),
        };
        let mut governor = self.start_governor(child.pid());
        self.publish(State::Starting { attempt }, Some(info.clone()), restarts);

        // Loading the model counts as activity, so the governor throttles it too.
        let loading = self.activity.begin();
        let started = Instant::now();
        let mut outcome = self.wait_ready(client, &mut child, &info).await;
        drop(loading);
        let mut healthy_for = None;
        if outcome.is_none() {
            tracing::info!(pid = info.pid, port = info.port, load_time = ?started.elapsed(), "backend ready");
            self.publish(State::Ready, Some(info.clone()), restarts);
            let ready_at = Instant::now();
            let o = self.watch_live(client, &mut child, &info, restarts).await;
            healthy_for = Some(ready_at.elapsed());
            outcome = Some(o);
        }
        let outcome = match (
            outcome.unwrap_or(Outcome::Cancelled),
            self.liveness.forget(info.generation),
        ) {
            (Outcome::Exited(status), oom) => {
                Outcome::Ended(liveness::describe_exit(status, oom.as_ref()))
            }
            (other, _) => other,
        };
        // Stopping the governor continues the child before it is signalled to stop.
        if let Some(g) = governor.as_mut() {
            g.stop();
        }
        drop(governor);
        self.governor.send_replace(None);
        if matches!(outcome, Outcome::Cancelled) {
            self.publish(State::Stopping, Some(info.clone()), restarts);
        }
        let logs = child.logs.clone();
        let status = child.stop(self.config.stop_grace).await;
        tracing::info!(pid = info.pid, %status, "backend stopped");
        (outcome, healthy_for, Some(logs))
    }

    /// Polls `/health` until 200. `None` = ready; otherwise how it failed.
    async fn wait_ready(
        &self,
        client: &reqwest::Client,
        child: &mut BackendProcess,
        info: &BackendInfo,
    ) -> Option<Outcome> {
        let deadline = Instant::now() + self.config.startup_timeout;
        loop {
            tokio::select! {
                status = child.wait() => return Some(Outcome::Exited(status)),
                _ = self.cancel.cancelled() => return Some(Outcome::Cancelled),
                _ = tokio::time::sleep_until(deadline) => return Some(Outcome::StartTimeout),
                probe = probe(client, info) => {
                    if let Probe::Ready = probe {
                        return None;
                    }
                }
            }
            tokio::select! {
                status = child.wait() => return Some(Outcome::Exited(status)),
                _ = self.cancel.cancelled() => return Some(Outcome::Cancelled),
                _ = tokio::time::sleep_until(deadline) => return Some(Outcome::StartTimeout),
                _ = tokio::time::sleep(self.config.ready_poll_interval) => {}
            }
        }
    }

    /// Liveness probes while ready, until the child exits, hangs, or we are cancelled.
    async fn watch_live(
        &self,
        client: &reqwest::Client,
        child: &mut BackendProcess,
        info: &BackendInfo,
        restarts: u32,
    ) -> Outcome {
        let mut failed = 0u32;
        let mut ticker = tokio::time::interval(self.config.probe_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let c = &self.config;
        let dog = liveness::watchdog(
            self.liveness.clone(),
            info.pid,
            info.generation,
            c.first_token_timeout,
            c.liveness_failures,
        );
        tokio::pin!(dog);
        loop {
            tokio::select! {
                status = child.wait() => return Outcome::Exited(status),
                _ = self.cancel.cancelled() => return Outcome::Cancelled,
                stall = &mut dog => return Outcome::Ended(stall.to_string()),
                _ = ticker.tick() => {}
            }
            let result = tokio::select! {
                status = child.wait() => return Outcome::Exited(status),
                _ = self.cancel.cancelled() => return Outcome::Cancelled,
                stall = &mut dog => return Outcome::Ended(stall.to_string()),
                p = probe(client, info) => p,
            };
            match result {
                // A busy backend may answer 503 ("no slot available") while it works; that
                // is alive. Only a probe that gets no answer at all counts as a failure.
                Probe::Ready | Probe::Loading => {
                    if failed > 0 {
                        failed = 0;
                        self.publish(State::Ready, Some(info.clone()), restarts);
                    }
                }
                Probe::Down(why) => {
                    failed += 1;
                    tracing::warn!(pid = info.pid, failed, %why, "liveness probe failed");
                    if failed >= self.config.liveness_failures {
                        return Outcome::Hung {
                            failed_probes: failed,
                        };
                    }
                    self.publish(
                        State::Unhealthy {
                            failed_probes: failed,
                        },
                        Some(info.clone()),
                        restarts,
                    );
                }
            }
        }
    }

    fn start_governor(&self, pid: i32) -> Option<GovernorHandle> {
        match Governor::start(
            pid,
            &self.governor_config,
            self.governor_settings,
            self.activity.clone(),
            self.governor.clone(),
        ) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::error!(pid, error = %e, "cannot start the CPU governor; the backend runs unthrottled");
                self.governor.send_replace(None);
                None
            }
        }
    }

    /// Publishes the state, keeping `last_exit`.
    fn publish(&self, state: State, backend: Option<BackendInfo>, restarts: u32) {
        tracing::debug!(state = %state.name(), restarts, "backend state");
        self.status.send_modify(|s| {
            s.state = state;
            s.backend = backend;
            s.restarts = restarts;
        });
    }
}

/// One `/health` probe with `Connection: close`.
async fn probe(client: &reqwest::Client, info: &BackendInfo) -> Probe {
    let url = format!("{}/health", info.base_url);
    match client
        .get(&url)
        .header(reqwest::header::CONNECTION, "close")
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => Probe::Ready,
        Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => Probe::Loading,
        Ok(r) => Probe::Down(format!("/health answered {}", r.status())),
        Err(e) if e.is_timeout() => Probe::Down("/health timed out".into()),
        Err(e) => Probe::Down(format!("/health unreachable: {e}")),
    }
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Exited(status) => format!("llama-server exited ({status})"),
        Outcome::StartTimeout => {
            "llama-server did not become ready within supervisor.startup_timeout".into()
        }
        Outcome::Hung { failed_probes } => {
            format!("llama-server stopped answering ({failed_probes} liveness probes failed)")
        }
        Outcome::SpawnFailed(msg) | Outcome::Ended(msg) => msg.clone(),
        Outcome::Cancelled => "stopped".into(),
    }
}
