//! After a launch ends: a CPU fault climbs the backend ladder (or fails at once for the
//! user's own binary), any other end goes to [`RestartPolicy::on_failure`], which answers
//! with a backoff (`backoff`) or trips the crash-loop breaker (`failed`: retried every
//! `supervisor.failed_retry_interval`, at once on a changed model file or a reload, or the
//! end of the run with `on_crash_loop = "exit"`).

use super::{next_command, Backend, Command, Counts, Current, End, Lifecycle, Reload};
use crate::backend::process::LogTail;
use crate::config::OnCrashLoop;
use crate::supervisor::liveness;
use crate::supervisor::policy::{Decision, RestartPolicy};
use crate::supervisor::state::State;
use std::process::ExitStatus;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How one launch ended.
#[derive(Debug)]
pub(super) enum Outcome {
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

impl Outcome {
    /// How a launch's end is counted in the metrics (`None`: it was stopped on purpose).
    fn restart_reason(&self) -> Option<crate::metrics::RestartReason> {
        use crate::metrics::RestartReason;
        Some(match self {
            Outcome::Exited(status) | Outcome::ExitedBecause(status, _) => {
                RestartReason::exited(*status)
            }
            Outcome::Ended(_) | Outcome::Hung { .. } => RestartReason::Hang,
            Outcome::StartTimeout => RestartReason::StartTimeout,
            Outcome::SpawnFailed(_) => RestartReason::SpawnFailure,
            Outcome::Cancelled | Outcome::Reloaded(_) | Outcome::Replaced => return None,
        })
    }

    pub(super) fn describe(&self) -> String {
        match self {
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
}

/// A launch that ended: how, after how long serving (`None`: it never served), and its log.
#[derive(Debug)]
pub(super) struct Ended {
    pub(super) outcome: Outcome,
    pub(super) healthy_for: Option<Duration>,
    pub(super) logs: Option<LogTail>,
}

impl Ended {
    /// A launch that never served.
    pub(super) fn unserved(outcome: Outcome, logs: Option<LogTail>) -> Ended {
        Ended {
            outcome,
            healthy_for: None,
            logs,
        }
    }
}

/// When the next launch is.
enum Wait {
    /// After a backoff, at this time.
    Backoff(Instant),
    /// The slow retry of a failed backend, at this time (or at once on a changed model file).
    Failed(Instant),
    /// Only a reload (a new binary, say) or the end can bring it.
    Reload,
}

impl<B: Backend> Lifecycle<B> {
    /// Decides what follows a failed launch and waits for it: `None` to launch again, or
    /// how the task ends.
    pub(super) async fn after(
        &self,
        cur: &mut Current,
        ended: Ended,
        counts: Counts,
        commands: &mut mpsc::Receiver<Command>,
    ) -> Option<End> {
        let kept = ended.logs.as_ref().map(LogTail::kept).unwrap_or_default();
        let last_lines = ended.logs.map(|l| l.errors(8)).unwrap_or_default();
        let outcome = ended.outcome;
        let fault = match &outcome {
            Outcome::Exited(status) | Outcome::ExitedBecause(status, _) => {
                crate::backend::smoke::cpu_fault(*status, ended.healthy_for.is_some(), &kept)
            }
            _ => None,
        };
        if let Some(fault) = fault {
            return self
                .climb(cur, fault, last_lines, counts.restarts, commands)
                .await;
        }
        let reason = liveness::with_last_line(outcome.describe(), &last_lines);
        self.status
            .send_modify(|s| s.last_exit = Some(reason.clone()));
        tracing::warn!(%reason, attempt = counts.attempt, healthy_for = ?ended.healthy_for, last_lines = ?last_lines, "backend failed");
        let wait = match cur.policy.on_failure(Instant::now(), ended.healthy_for) {
            Decision::Restart(delay) => {
                if let Some(why) = outcome.restart_reason() {
                    self.metrics.backend_restarted(why);
                }
                let state = State::Backoff {
                    delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    reason,
                };
                self.publish(state, None, counts.restarts);
                tracing::info!(
                    ?delay,
                    restarts = counts.restarts,
                    "restarting the backend after backoff"
                );
                Wait::Backoff(Instant::now() + delay)
            }
            Decision::GiveUp { failures, window } => {
                let reason = format!("crash loop: the backend failed {failures} times within {window:?}; last failure: {reason}");
                match self.trip(cur, reason, last_lines, counts.restarts) {
                    Ok(wait) => wait,
                    Err(end) => return Some(end),
                }
            }
        };
        self.wait_to_retry(cur, wait, commands).await
    }

    /// The crash-loop breaker tripped (`reason` says how): the end of the run with
    /// `on_crash_loop = "exit"` (`Err`), else `failed` until the next slow try.
    fn trip(
        &self,
        cur: &Current,
        reason: String,
        last_lines: Vec<String>,
        restarts: u32,
    ) -> Result<Wait, End> {
        if cur.plan.config.on_crash_loop == OnCrashLoop::Exit {
            let reason = format!(
                "{reason}. Exiting (supervisor.on_crash_loop = \"exit\") so the service manager takes over"
            );
            tracing::error!(%reason, last_lines = ?last_lines, "giving up on the backend");
            self.publish(failed(reason.clone(), last_lines, None), None, restarts);
            return Err(End::CrashLoop { reason });
        }
        let interval = cur.plan.config.failed_retry_interval;
        let reason = format!(
            "{reason}. Fix the cause (see last_lines and the log): the supervisor tries again every {} (supervisor.failed_retry_interval), and at once when the model file or the config file changes",
            humantime::format_duration(interval)
        );
        tracing::error!(%reason, last_lines = ?last_lines, next_retry_in = ?interval, "giving up on the backend until the next try");
        self.publish(failed(reason, last_lines, Some(interval)), None, restarts);
        Ok(Wait::Failed(Instant::now() + interval))
    }

    /// Waits for the next try: a reload, or (when failed) a changed model file, starts it at
    /// once. `Some` when cancelled meanwhile.
    async fn wait_to_retry(
        &self,
        cur: &mut Current,
        wait: Wait,
        commands: &mut mpsc::Receiver<Command>,
    ) -> Option<End> {
        let (deadline, failed) = match wait {
            Wait::Backoff(at) => (Some(at), false),
            Wait::Failed(at) => (Some(at), true),
            Wait::Reload => (None, false),
        };
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    if failed {
                        tracing::info!("trying the failed backend again (supervisor.failed_retry_interval)");
                    }
                    return None;
                }
                () = self.cancel.cancelled() => return Some(End::Stopped),
                command = next_command(commands) => match command {
                    Command::Reload(reload) => {
                        self.adopt(cur, reload, super::Applied::NextLaunch);
                        return None;
                    }
                    Command::Retry { why } if failed => {
                        tracing::info!(%why, "trying the failed backend again at once");
                        cur.policy = RestartPolicy::new(&cur.plan.config);
                        return None;
                    }
                    Command::Retry { .. } => {}
                },
            }
        }
    }

    /// A CPU fault: not a crash to retry (this build cannot run here) and not counted toward
    /// the breaker. The next rung of the ladder, or `failed` until a reload.
    async fn climb(
        &self,
        cur: &mut Current,
        fault: crate::backend::smoke::Failure,
        last_lines: Vec<String>,
        restarts: u32,
        commands: &mut mpsc::Receiver<Command>,
    ) -> Option<End> {
        let named = fault.summary();
        self.status
            .send_modify(|s| s.last_exit = Some(named.clone()));
        let climbed = match cur.plan.ladder.clone() {
            Some(step) => {
                tracing::error!(reason = %named, last_lines = ?last_lines, "the backend cannot run on this CPU; moving to the next rung of the backend ladder");
                tokio::task::spawn_blocking(move || step(&fault))
                    .await
                    .unwrap_or_else(|e| Err(format!("the ladder panicked: {e}")))
            }
            None => Err(format!(
                "{named} (the llama-server of `backend.bin` is used as given: restarting cannot help; fix or rebuild it for this CPU, or leave `backend.bin` empty to let setup build one that runs here)"
            )),
        };
        let reason = match climbed {
            Ok((make_spec, rung)) => {
                tracing::info!(rung = %rung.rung, why = %rung.why, "backend in use");
                self.status.send_modify(|s| s.climbed = Some(rung));
                cur.plan.make_spec = make_spec;
                return None;
            }
            Err(reason) => reason,
        };
        tracing::error!(%reason, "giving up on the backend");
        self.publish(failed(reason, last_lines, None), None, restarts);
        self.wait_to_retry(cur, Wait::Reload, commands).await
    }
}

/// The `failed` state, with its next try `retry_in` from now when one is planned.
fn failed(reason: String, last_lines: Vec<String>, retry_in: Option<Duration>) -> State {
    State::Failed {
        reason,
        last_lines,
        next_retry_at: retry_in.map(|interval| {
            humantime::format_rfc3339_seconds(SystemTime::now() + interval).to_string()
        }),
        next_retry_in_s: retry_in.map(|interval| interval.as_secs()),
    }
}
