//! The lifecycle task: the one owner of the backend process and its state. It launches,
//! waits for readiness, probes liveness, restarts with backoff, trips the crash-loop breaker
//! (then retries slowly, or at once on a file change, or ends the run), applies reloads (live,
//! or with a new backend started beside the old one, blue/green), drains requests in flight
//! before it stops a backend, and stops gracefully; every change is published on a `watch`
//! channel. It owns each launch's governor too, whose snapshots reach `/status` on a `watch`
//! of their own. Other tasks talk to it with [`Command`]s over an `mpsc` channel.

use super::inflight::InFlight;
use super::liveness::{self, Liveness};
use super::policy::{Decision, RestartPolicy};
use super::state::{BackendInfo, State, Status};
use crate::backend::launch::LaunchSpec;
use crate::backend::process::{BackendProcess, LogTail};
use crate::config::{OnCrashLoop, ReloadStrategy, SupervisorConfig};
use crate::governor::{
    Activity, Governor, GovernorConfig, GovernorHandle, GovernorSettings, SnapshotSender,
};
use std::future::Future;
use std::process::ExitStatus;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Builds the launch spec for each attempt (fresh port and key every time).
pub type SpecFactory = Box<dyn Fn() -> std::io::Result<LaunchSpec> + Send + Sync>;

/// After a CPU fault of the backend (`backend::smoke::cpu_fault`): records its rung as failed
/// and climbs the backend ladder to the next rung that passes the smoke test, returning its
/// launches and how `/status` names it. Blocking (it may build and test).
pub type LadderStep = std::sync::Arc<
    dyn Fn(
            &crate::backend::smoke::Failure,
        ) -> Result<(SpecFactory, crate::status::BackendRung), String>
        + Send
        + Sync,
>;

/// What each launch is made of; a reload replaces it.
pub struct Plan {
    pub config: SupervisorConfig,
    pub make_spec: SpecFactory,
    pub governor_config: GovernorConfig,
    pub governor_settings: GovernorSettings,
    /// Prefixes put in each new backend's cache before it is reported ready.
    pub warmup: Option<std::sync::Arc<super::warmup::Warmup>>,
    /// The next rung after a CPU fault; `None` for the user's own `backend.bin`, which is never
    /// replaced (a CPU fault fails it at once: restarting cannot help).
    pub ladder: Option<LadderStep>,
}

/// What a reload changes, decided by [`super::reload::classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Governor, priority and supervisor settings: applied to the running backend.
    Live,
    /// Model, threads, context, slots, embeddings or arguments: needs a new backend.
    Backend,
}

/// How an accepted reload took effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Applied to the running backend.
    Live,
    /// A new backend (this generation) serves; the old one drains.
    Switched { generation: u64 },
    /// Taken for the next launch (no backend was serving, or `stop-start`).
    NextLaunch,
}

/// A new configuration for the lifecycle.
pub struct Reload {
    pub plan: Plan,
    pub change: Change,
    /// Makes the rest of the new configuration visible (proxy limits, `/status`); called
    /// once it takes effect, before a new backend is published.
    pub apply: Box<dyn FnOnce() + Send>,
    /// The answer: how it took effect, or why the old configuration stays.
    pub done: oneshot::Sender<Result<Applied, String>>,
}

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reload")
            .field("change", &self.change)
            .finish_non_exhaustive()
    }
}

/// Messages to the lifecycle task.
#[derive(Debug)]
pub enum Command {
    Reload(Box<Reload>),
    /// Try a failed backend again now (the model file changed).
    Retry {
        why: String,
    },
}

/// How the lifecycle task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Cancelled; no backend left.
    Stopped,
    /// The crash-loop breaker tripped with `supervisor.on_crash_loop = "exit"`.
    CrashLoop { reason: String },
}

pub struct Lifecycle {
    pub activity: Activity,
    /// Where the governors add the time they hold the backend stopped (the watchdog reads it).
    pub stopped: crate::governor::StoppedTime,
    /// Where the serving launch's governor publishes its snapshots (`None` between launches).
    pub governor: SnapshotSender,
    pub status: watch::Sender<Status>,
    /// Requests in flight per backend generation (the proxy counts them).
    pub inflight: InFlight,
    /// Beaten at every probe: the watchdog's evidence that this task runs.
    pub heartbeat: crate::notify::Heartbeat,
    pub cancel: CancellationToken,
    /// Counts restarts by reason (`sentinel_backend_restarts_total`).
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// What the proxy sees of forwarded requests, for the per-launch watchdog.
    pub liveness: std::sync::Arc<Liveness>,
    /// The budget in force for the machine's situation (battery, presence, heat); a change
    /// restarts the governor on the same child, as a live reload does.
    pub budget: crate::situation::Follow,
}

/// How one launch ended.
#[derive(Debug)]
enum Outcome {
    Exited(ExitStatus),
    StartTimeout,
    Hung {
        failed_probes: u32,
    },
    /// The request watchdog's stall, described (`supervisor::liveness`).
    Ended(String),
    /// An exit while serving, described against the memory cgroup's OOM-kill counter.
    ExitedBecause(ExitStatus, String),
    SpawnFailed(String),
    Cancelled,
    /// A reload arrived while starting: start again with it.
    Reloaded(Box<Reload>),
    /// Stopped for a `stop-start` reload whose plan is already taken.
    Replaced,
}

enum Probe {
    Ready,
    Loading,
    Down(String),
}

/// A launched backend with its governor.
struct Running {
    child: BackendProcess,
    info: BackendInfo,
    governor: Option<GovernorHandle>,
}

/// The plan in force, with what is derived from it.
struct Current {
    plan: Plan,
    probe: reqwest::Client,
    policy: RestartPolicy,
}

impl Current {
    fn new(plan: Plan) -> Current {
        Current {
            probe: probe_client(&plan.config),
            policy: RestartPolicy::new(&plan.config),
            plan,
        }
    }

    /// Takes the reload's plan (a fresh restart policy too: a reload is a human's fix),
    /// makes it visible and answers; the rung setup chose for it is the one in use again.
    fn adopt(&mut self, reload: Box<Reload>, applied: Applied, status: &watch::Sender<Status>) {
        let Reload {
            plan, apply, done, ..
        } = *reload;
        *self = Current::new(plan);
        status.send_modify(|s| s.climbed = None);
        apply();
        tracing::info!(?applied, "configuration reloaded");
        let _ = done.send(Ok(applied));
    }
}

fn probe_client(config: &SupervisorConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(config.probe_timeout)
        .pool_max_idle_per_host(0)
        .build()
        .expect("a reqwest client with only a timeout always builds")
}

/// The next command; never resolves once every sender is gone.
async fn next_command(commands: &mut mpsc::Receiver<Command>) -> Command {
    match commands.recv().await {
        Some(c) => c,
        None => std::future::pending().await,
    }
}

impl Lifecycle {
    /// Runs until cancelled (or, with `on_crash_loop = "exit"`, until the breaker trips);
    /// always leaves no backend behind.
    pub async fn run(self, plan: Plan, mut commands: mpsc::Receiver<Command>) -> End {
        let mut cur = Current::new(plan);
        let mut attempt = 0u32;
        let mut restarts = 0u32;
        let mut drains = JoinSet::new();
        let end = 'outer: loop {
            attempt += 1;
            self.publish(State::Starting { attempt }, None, restarts);
            let interrupt = async {
                loop {
                    if let Command::Reload(r) = next_command(&mut commands).await {
                        return Outcome::Reloaded(r);
                    }
                }
            };
            let started = self
                .start(
                    &cur.probe,
                    &cur.plan,
                    attempt,
                    self.governor.clone(),
                    Some(restarts),
                    interrupt,
                )
                .await;
            let (outcome, healthy_for, logs) = match started {
                Ok(running) => {
                    self.serve(
                        &mut cur,
                        running,
                        &mut attempt,
                        restarts,
                        &mut commands,
                        &mut drains,
                    )
                    .await
                }
                Err((outcome, logs)) => (outcome, None, logs),
            };
            match outcome {
                Outcome::Cancelled => break End::Stopped,
                Outcome::Reloaded(reload) => {
                    cur.adopt(reload, Applied::NextLaunch, &self.status);
                    continue;
                }
                Outcome::Replaced => continue,
                _ => {}
            }
            let kept = logs.as_ref().map(|l| l.kept()).unwrap_or_default();
            let last_lines = logs.map(|l| l.errors(8)).unwrap_or_default();
            let fault = match &outcome {
                Outcome::Exited(status) | Outcome::ExitedBecause(status, _) => {
                    crate::backend::smoke::cpu_fault(*status, healthy_for.is_some(), &kept)
                }
                _ => None,
            };
            if let Some(fault) = fault {
                // Not a crash to retry: this build cannot run here. Not counted toward the
                // crash-loop breaker.
                let named = fault.summary();
                self.status
                    .send_modify(|s| s.last_exit = Some(named.clone()));
                let climbed = match cur.plan.ladder.clone() {
                    Some(step) => {
                        tracing::error!(reason = %named, last_lines = ?last_lines, "the backend cannot run on this CPU; moving to the next rung of the backend ladder");
                        let fault = fault.clone();
                        match tokio::task::spawn_blocking(move || step(&fault)).await {
                            Ok(result) => result,
                            Err(e) => Err(format!("the ladder panicked: {e}")),
                        }
                    }
                    None => Err(format!(
                        "{named} (the llama-server of `backend.bin` is used as given: restarting cannot help; fix or rebuild it for this CPU, or leave `backend.bin` empty to let setup build one that runs here)"
                    )),
                };
                match climbed {
                    Ok((make_spec, rung)) => {
                        tracing::info!(rung = %rung.rung, why = %rung.why, "backend in use");
                        self.status.send_modify(|s| s.climbed = Some(rung));
                        cur.plan.make_spec = make_spec;
                        restarts += 1;
                        continue;
                    }
                    Err(reason) => {
                        tracing::error!(%reason, "giving up on the backend");
                        self.publish(
                            State::Failed {
                                reason,
                                last_lines,
                                next_retry_at: None,
                                next_retry_in_s: None,
                            },
                            None,
                            restarts,
                        );
                        // Only a reload (a new binary, say) or the end can change this.
                        loop {
                            tokio::select! {
                                _ = self.cancel.cancelled() => break 'outer End::Stopped,
                                command = next_command(&mut commands) => {
                                    if let Command::Reload(reload) = command {
                                        cur.adopt(reload, Applied::NextLaunch, &self.status);
                                        break;
                                    }
                                }
                            }
                        }
                        restarts += 1;
                        continue;
                    }
                }
            }
            let reason = liveness::with_last_line(describe(&outcome), &last_lines);
            self.status
                .send_modify(|s| s.last_exit = Some(reason.clone()));
            tracing::warn!(%reason, attempt, ?healthy_for, last_lines = ?last_lines, "backend failed");
            let (deadline, failed) = match cur.policy.on_failure(Instant::now(), healthy_for) {
                Decision::Restart(delay) => {
                    if let Some(why) = restart_reason(&outcome) {
                        self.metrics.backend_restarted(why);
                    }
                    self.publish(
                        State::Backoff {
                            delay_ms: delay.as_millis() as u64,
                            reason: reason.clone(),
                        },
                        None,
                        restarts,
                    );
                    tracing::info!(?delay, restarts, "restarting the backend after backoff");
                    (Instant::now() + delay, false)
                }
                Decision::GiveUp { failures, window } => {
                    if cur.plan.config.on_crash_loop == OnCrashLoop::Exit {
                        let reason = format!(
                            "crash loop: the backend failed {failures} times within {window:?}; last failure: {reason}. Exiting (supervisor.on_crash_loop = \"exit\") so the service manager takes over"
                        );
                        tracing::error!(%reason, last_lines = ?last_lines, "giving up on the backend");
                        self.publish(
                            State::Failed {
                                reason: reason.clone(),
                                last_lines,
                                next_retry_at: None,
                                next_retry_in_s: None,
                            },
                            None,
                            restarts,
                        );
                        break 'outer End::CrashLoop { reason };
                    }
                    let interval = cur.plan.config.failed_retry_interval;
                    let reason = format!(
                        "crash loop: the backend failed {failures} times within {window:?}; last failure: {reason}. Fix the cause (see last_lines and the log): the supervisor tries again every {} (supervisor.failed_retry_interval), and at once when the model file or the config file changes",
                        humantime::format_duration(interval)
                    );
                    tracing::error!(%reason, last_lines = ?last_lines, next_retry_in = ?interval, "giving up on the backend until the next try");
                    let at = humantime::format_rfc3339_seconds(SystemTime::now() + interval);
                    self.publish(
                        State::Failed {
                            reason,
                            last_lines,
                            next_retry_at: Some(at.to_string()),
                            next_retry_in_s: Some(interval.as_secs()),
                        },
                        None,
                        restarts,
                    );
                    (Instant::now() + interval, true)
                }
            };
            // Wait for the next try: a reload, or (when failed) a changed model file, starts
            // it at once.
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {
                        if failed {
                            tracing::info!("trying the failed backend again (supervisor.failed_retry_interval)");
                        }
                        break;
                    }
                    _ = self.cancel.cancelled() => break 'outer End::Stopped,
                    command = next_command(&mut commands) => match command {
                        Command::Reload(reload) => {
                            cur.adopt(reload, Applied::NextLaunch, &self.status);
                            break;
                        }
                        Command::Retry { why } if failed => {
                            tracing::info!(%why, "trying the failed backend again at once");
                            cur.policy = RestartPolicy::new(&cur.plan.config);
                            break;
                        }
                        Command::Retry { .. } => {}
                    },
                }
            }
            restarts += 1;
        };
        while drains.join_next().await.is_some() {}
        if end == End::Stopped {
            self.publish(State::Stopped, None, restarts);
        }
        end
    }

    /// Spawns one backend of `plan` with its governor reporting on `report`, and waits until
    /// it is ready, it fails, we are cancelled, or `interrupt` resolves first. With
    /// `publish` (the restart count), it is published as `starting`.
    async fn start(
        &self,
        probe: &reqwest::Client,
        plan: &Plan,
        attempt: u32,
        report: SnapshotSender,
        publish: Option<u32>,
        interrupt: impl Future<Output = Outcome>,
    ) -> Result<Running, (Outcome, Option<LogTail>)> {
        let spec = (plan.make_spec)().map_err(|e| (Outcome::SpawnFailed(e.to_string()), None))?;
        let mut child = BackendProcess::spawn(&spec).await.map_err(|e| {
            let msg = format!("cannot start {}: {e}", spec.program.display());
            (Outcome::SpawnFailed(msg), None)
        })?;
        let info = BackendInfo {
            pid: child.pid(),
            port: spec.port,
            base_url: spec.base_url(),
            api_key: spec.api_key.clone(),
            generation: u64::from(attempt),
        };
        let governor = self.start_governor(plan, child.pid(), report);
        if let Some(restarts) = publish {
            self.publish(State::Starting { attempt }, Some(info.clone()), restarts);
        }
        // Loading the model counts as activity, so the governor throttles it too.
        let loading = self.activity.begin();
        let started = Instant::now();
        let failed = self
            .wait_ready(probe, &plan.config, &mut child, &info, interrupt)
            .await;
        drop(loading);
        let running = Running {
            child,
            info,
            governor,
        };
        match failed {
            None => {
                if let Some(warmup) = &plan.warmup {
                    let beat = plan.config.ready_poll_interval;
                    (warmup.run(
                        &running.info,
                        &self.activity,
                        &self.heartbeat,
                        beat,
                        &self.cancel,
                    ))
                    .await;
                }
                tracing::info!(pid = running.info.pid, port = running.info.port, generation = running.info.generation, load_time = ?started.elapsed(), "backend ready");
                Ok(running)
            }
            Some(outcome) => {
                let logs = self.retire(running, plan.config.stop_grace).await;
                Err((outcome, Some(logs)))
            }
        }
    }

    /// Polls `/health` until 200. `None` = ready; otherwise how it failed.
    async fn wait_ready(
        &self,
        client: &reqwest::Client,
        config: &SupervisorConfig,
        child: &mut BackendProcess,
        info: &BackendInfo,
        interrupt: impl Future<Output = Outcome>,
    ) -> Option<Outcome> {
        let deadline = Instant::now() + config.startup_timeout;
        tokio::pin!(interrupt);
        loop {
            self.heartbeat.beat();
            tokio::select! {
                status = child.wait() => return Some(Outcome::Exited(status)),
                _ = self.cancel.cancelled() => return Some(Outcome::Cancelled),
                outcome = &mut interrupt => return Some(outcome),
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
                outcome = &mut interrupt => return Some(outcome),
                _ = tokio::time::sleep_until(deadline) => return Some(Outcome::StartTimeout),
                _ = tokio::time::sleep(config.ready_poll_interval) => {}
            }
        }
    }

    /// Serves with `running` until it exits, hangs, is replaced, or we are cancelled; applies
    /// reloads on the way. On cancel it drains the requests in flight first.
    async fn serve(
        &self,
        cur: &mut Current,
        mut running: Running,
        attempt: &mut u32,
        restarts: u32,
        commands: &mut mpsc::Receiver<Command>,
        drains: &mut JoinSet<()>,
    ) -> (Outcome, Option<Duration>, Option<LogTail>) {
        self.publish(State::Ready, Some(running.info.clone()), restarts);
        let mut ready_at = Instant::now();
        let mut failed = 0u32;
        let mut ticker = liveness_ticker(&cur.plan.config).await;
        let watch = |info: &BackendInfo, c: &SupervisorConfig| {
            Box::pin(liveness::watchdog(
                self.liveness.clone(),
                self.stopped.clone(),
                info.pid,
                info.generation,
                c.first_token_timeout,
                c.liveness_failures,
            ))
        };
        let mut dog = watch(&running.info, &cur.plan.config);
        let mut budget = self.budget.clone();
        let outcome = loop {
            tokio::select! {
                status = running.child.wait() => break Outcome::Exited(status),
                _ = self.cancel.cancelled() => break Outcome::Cancelled,
                stall = &mut dog => break Outcome::Ended(stall.to_string()),
                _ = ticker.tick() => {}
                _ = budget.changed() => {
                    if let Some(mut g) = running.governor.take() {
                        g.stop();
                    }
                    running.governor = self.start_governor(&cur.plan, running.child.pid(), self.governor.clone());
                    continue;
                }
                command = next_command(commands) => {
                    let reload = match command {
                        Command::Reload(reload) => reload,
                        Command::Retry { .. } => continue,
                    };
                    match (reload.change, reload.plan.config.reload_strategy) {
                        (Change::Live, _) => {
                            self.reload_live(cur, &mut running, reload);
                            ticker = liveness_ticker(&cur.plan.config).await;
                        }
                        (Change::Backend, ReloadStrategy::BlueGreen) => {
                            let next = *attempt + 1;
                            match self.blue_green(cur, &mut running, next, restarts, reload, drains).await {
                                Ok(()) => {
                                    *attempt = next;
                                    ready_at = Instant::now();
                                    failed = 0;
                                    ticker = liveness_ticker(&cur.plan.config).await;
                                    dog = watch(&running.info, &cur.plan.config);
                                }
                                Err(outcome) => break outcome,
                            }
                        }
                        (Change::Backend, ReloadStrategy::StopStart) => {
                            // New requests wait in the queue while the old backend drains and
                            // the new one loads.
                            tracing::info!(generation = running.info.generation, "reload: draining the backend before starting the new one (stop-start)");
                            self.publish(State::Starting { attempt: *attempt + 1 }, None, restarts);
                            let drain = reload.plan.config.drain_timeout;
                            self.drain(running.info.generation, drain).await;
                            cur.adopt(reload, Applied::NextLaunch, &self.status);
                            break Outcome::Replaced;
                        }
                    }
                    continue;
                }
            }
            self.heartbeat.beat();
            let held_before = liveness::held_back(running.info.pid, &self.stopped);
            let probed_at = Instant::now();
            let result = tokio::select! {
                status = running.child.wait() => break Outcome::Exited(status),
                _ = self.cancel.cancelled() => break Outcome::Cancelled,
                stall = &mut dog => break Outcome::Ended(stall.to_string()),
                p = probe(&cur.probe, &running.info) => p,
            };
            match result {
                // A busy backend may answer 503 ("no slot available") while it works; that
                // is alive. Only a probe that gets no answer at all counts as a failure.
                Probe::Ready | Probe::Loading => {
                    if failed > 0 {
                        failed = 0;
                        self.publish(State::Ready, Some(running.info.clone()), restarts);
                    }
                }
                Probe::Down(why) => {
                    let held = liveness::held_back(running.info.pid, &self.stopped)
                        .saturating_sub(held_before);
                    if liveness::starved(held, probed_at.elapsed()) {
                        tracing::info!(pid = running.info.pid, %why, ?held, "liveness probe unanswered while the backend waited for a CPU (starved by other work, not hung): not counted");
                        continue;
                    }
                    failed += 1;
                    tracing::warn!(pid = running.info.pid, failed, %why, "liveness probe failed");
                    if failed >= cur.plan.config.liveness_failures {
                        break Outcome::Hung {
                            failed_probes: failed,
                        };
                    }
                    self.publish(
                        State::Unhealthy {
                            failed_probes: failed,
                        },
                        Some(running.info.clone()),
                        restarts,
                    );
                }
            }
        };
        // A crash with requests in flight: the proxy hears of it (poison requests), and it is
        // kept out of the crash-loop breaker.
        let crashed = matches!(&outcome, Outcome::Exited(status) if liveness::crashed(*status));
        let serving = self.inflight.exited(running.info.generation, crashed);
        if crashed && serving > 0 {
            tracing::warn!(serving, generation = running.info.generation, "the backend crashed while serving requests: not counted toward the crash-loop breaker");
            cur.policy.crashed_serving(serving);
        }
        // An exit by SIGKILL nobody here sent is read against the memory cgroup's OOM counter.
        let outcome = match (outcome, self.liveness.forget(running.info.generation)) {
            (Outcome::Exited(status), oom) => {
                Outcome::ExitedBecause(status, liveness::describe_exit(status, oom.as_ref()))
            }
            (other, _) => other,
        };
        let healthy_for = Some(ready_at.elapsed());
        if matches!(outcome, Outcome::Cancelled) {
            // New requests get 503 from now on; those in flight may finish.
            self.publish(State::Stopping, Some(running.info.clone()), restarts);
            let left = self
                .inflight
                .drained(None, Instant::now() + cur.plan.config.drain_timeout)
                .await;
            if left > 0 {
                tracing::warn!(
                    left,
                    drain_timeout = ?cur.plan.config.drain_timeout,
                    "requests still in flight after supervisor.drain_timeout; cutting them"
                );
            }
        }
        let logs = self.retire(running, cur.plan.config.stop_grace).await;
        (outcome, healthy_for, Some(logs))
    }

    /// Applies a reload that needs no new backend: the governor restarts on the same child
    /// with the new settings, the priority is set on its threads.
    fn reload_live(&self, cur: &mut Current, running: &mut Running, reload: Box<Reload>) {
        let pid = running.child.pid();
        let old_priority = cur.plan.governor_settings.priority;
        if let Some(mut g) = running.governor.take() {
            g.stop();
        }
        cur.adopt(reload, Applied::Live, &self.status);
        running.governor = self.start_governor(&cur.plan, pid, self.governor.clone());
        let priority = cur.plan.governor_settings.priority;
        if priority != old_priority {
            match crate::governor::priority::apply_to_process_threads(pid, priority) {
                Ok(()) => tracing::info!(pid, %priority, "backend priority changed"),
                Err(e) => {
                    tracing::warn!(pid, %priority, error = %e, "cannot change the running backend's priority (raising it needs privileges); the next backend starts with it")
                }
            }
        }
    }

    /// Starts the reload's backend beside `running`, and once it is ready makes it the
    /// serving one; the old one drains in `drains`. If the new one fails, the old plan and
    /// backend stay (`Ok` too); `Err` only when cancelled meanwhile.
    async fn blue_green(
        &self,
        cur: &mut Current,
        running: &mut Running,
        attempt: u32,
        restarts: u32,
        reload: Box<Reload>,
        drains: &mut JoinSet<()>,
    ) -> Result<(), Outcome> {
        tracing::info!(
            old_generation = running.info.generation,
            generation = attempt,
            "reload: starting the new backend beside the serving one (blue-green)"
        );
        let probe = probe_client(&reload.plan.config);
        let started = self
            .start(
                &probe,
                &reload.plan,
                attempt,
                watch::Sender::new(None),
                None,
                std::future::pending(),
            )
            .await;
        let mut new = match started {
            Ok(new) => new,
            Err((outcome, logs)) => {
                let why = describe(&outcome);
                let last_lines = logs.map(|l| l.errors(8)).unwrap_or_default();
                if matches!(outcome, Outcome::Cancelled) {
                    let _ = reload
                        .done
                        .send(Err("the supervisor is shutting down".into()));
                    return Err(Outcome::Cancelled);
                }
                tracing::error!(%why, last_lines = ?last_lines, generation = running.info.generation, "reload refused: the new backend did not start; the old one keeps serving with the old configuration");
                let _ = reload.done.send(Err(format!(
                    "the new backend did not start ({why}); the old configuration stays. Last lines: {last_lines:?}"
                )));
                return Ok(());
            }
        };
        // The new backend's governor reports on /status from now on; the old one keeps a
        // governor of its own while it drains.
        if let Some(mut g) = running.governor.take() {
            g.stop();
        }
        running.governor =
            self.start_governor(&cur.plan, running.child.pid(), watch::Sender::new(None));
        if let Some(mut g) = new.governor.take() {
            g.stop();
        }
        new.governor = self.start_governor(&reload.plan, new.child.pid(), self.governor.clone());
        let generation = new.info.generation;
        cur.adopt(reload, Applied::Switched { generation }, &self.status);
        self.publish(State::Ready, Some(new.info.clone()), restarts);
        let old = std::mem::replace(running, new);
        tracing::info!(
            old_generation = old.info.generation,
            generation,
            in_flight_on_old = self.inflight.count(old.info.generation),
            "reload: new backend serving; draining the old one"
        );
        let inflight = self.inflight.clone();
        let drain = cur.plan.config.drain_timeout;
        let grace = cur.plan.config.stop_grace;
        drains.spawn(drain_and_stop(old, inflight, drain, grace));
        Ok(())
    }

    /// Waits for `generation`'s requests to finish, up to `timeout`.
    async fn drain(&self, generation: u64, timeout: Duration) {
        let left = self
            .inflight
            .drained(Some(generation), Instant::now() + timeout)
            .await;
        if left > 0 {
            tracing::warn!(generation, left, drain_timeout = ?timeout, "requests still in flight after supervisor.drain_timeout; cutting them");
        }
    }

    /// Stops a backend: governor first (it continues the child), then SIGTERM, grace,
    /// SIGKILL. Returns its log tail.
    async fn retire(&self, mut running: Running, grace: Duration) -> LogTail {
        let reported = running.governor.is_some();
        if let Some(g) = running.governor.as_mut() {
            g.stop();
        }
        drop(running.governor.take());
        if reported {
            self.governor.send_replace(None);
        }
        let logs = running.child.logs.clone();
        let status = running.child.stop(grace).await;
        tracing::info!(pid = running.info.pid, generation = running.info.generation, %status, "backend stopped");
        logs
    }

    fn start_governor(
        &self,
        plan: &Plan,
        pid: i32,
        report: SnapshotSender,
    ) -> Option<GovernorHandle> {
        match Governor::start(
            pid,
            &plan.governor_config,
            self.budget.settings(plan.governor_settings),
            self.activity.clone(),
            self.stopped.clone(),
            report.clone(),
        ) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::error!(pid, error = %e, "cannot start the CPU governor; the backend runs unthrottled");
                report.send_replace(None);
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

/// A liveness ticker whose first tick has passed.
async fn liveness_ticker(config: &SupervisorConfig) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(config.probe_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    ticker
}

/// The old backend after a blue-green switch: waits for its requests (up to `drain`), then
/// stops it.
async fn drain_and_stop(mut old: Running, inflight: InFlight, drain: Duration, grace: Duration) {
    let generation = old.info.generation;
    let left = tokio::select! {
        n = inflight.drained(Some(generation), Instant::now() + drain) => n,
        status = old.child.wait() => {
            tracing::warn!(generation, %status, "the old backend exited while draining");
            0
        }
    };
    if left > 0 {
        tracing::warn!(generation, left, drain_timeout = ?drain, "requests still in flight on the old backend after supervisor.drain_timeout; cutting them");
    }
    if let Some(mut g) = old.governor.take() {
        g.stop();
    }
    let status = old.child.stop(grace).await;
    tracing::info!(pid = old.info.pid, generation, %status, "old backend drained and stopped");
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

/// How a launch's end is counted in the metrics (`None`: it was stopped on purpose).
fn restart_reason(outcome: &Outcome) -> Option<crate::metrics::RestartReason> {
    use crate::metrics::RestartReason;
    Some(match outcome {
        Outcome::Exited(status) | Outcome::ExitedBecause(status, _) => {
            RestartReason::exited(*status)
        }
        Outcome::Ended(_) => RestartReason::Hang,
        Outcome::StartTimeout => RestartReason::StartTimeout,
        Outcome::Hung { .. } => RestartReason::Hang,
        Outcome::SpawnFailed(_) => RestartReason::SpawnFailure,
        Outcome::Cancelled | Outcome::Reloaded(_) | Outcome::Replaced => return None,
    })
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
        Outcome::SpawnFailed(msg) | Outcome::Ended(msg) | Outcome::ExitedBecause(_, msg) => {
            msg.clone()
        }
        Outcome::Cancelled => "stopped".into(),
        Outcome::Reloaded(_) => "restarted for a reload".into(),
        Outcome::Replaced => "replaced by a reload".into(),
    }
}
