//! `ready` and `unhealthy`: the serving backend is probed on `/health` every
//! `supervisor.probe_interval` and watched by the request watchdog
//! ([`liveness::watchdog`]); it ends when it exits, fails `liveness_failures` probes in a
//! row, stalls, is replaced by a reload, or the task is cancelled (then the requests in
//! flight drain first). Reloads and changes of the budget in force are applied on the way.

use super::restart::{Ended, Outcome};
use super::{
    next_command, Backend, BackendChild, Command, Counts, Current, Lifecycle, Probe, Running,
};
use crate::config::SupervisorConfig;
use crate::supervisor::liveness::{self, Stall};
use crate::supervisor::state::{BackendInfo, State};
use std::future::Future;
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, Interval};

/// The serving backend and what watches it.
pub(super) struct Serving<C> {
    pub(super) running: Running<C>,
    /// When it became ready (for the restart policy's reset).
    pub(super) ready_at: Instant,
    /// Liveness probes failed in a row.
    failed: u32,
    pub(super) ticker: Interval,
    dog: Pin<Box<dyn Future<Output = Stall> + Send>>,
    /// Its memory cgroup's OOM-kill counter, as last read (at each probe), to explain a
    /// SIGKILL nobody here sent.
    oom: Option<crate::meter::OomCounter>,
}

impl<B: Backend> Lifecycle<B> {
    /// Serves with `running` until it exits, hangs, is replaced, or we are cancelled; applies
    /// reloads on the way. On cancel it drains the requests in flight first.
    pub(super) async fn serve(
        &self,
        cur: &mut Current,
        running: Running<B::Child>,
        counts: &mut Counts,
        commands: &mut mpsc::Receiver<Command>,
        drains: &mut JoinSet<()>,
    ) -> Ended {
        self.publish(State::Ready, Some(running.info.clone()), counts.restarts);
        let mut s = self.serving(running, &cur.plan.config).await;
        let mut budget = self.budget.clone();
        let outcome = loop {
            tokio::select! {
                status = s.running.child.wait() => break Outcome::Exited(status),
                () = self.cancel.cancelled() => break Outcome::Cancelled,
                stall = &mut s.dog => break Outcome::Ended(stall.to_string()),
                _ = s.ticker.tick() => {}
                () = budget.changed() => {
                    self.retune(&mut s.running, &cur.plan);
                    continue;
                }
                command = next_command(commands) => {
                    if let Command::Reload(reload) = command {
                        if let Some(outcome) = self.apply(cur, &mut s, counts, reload, drains).await {
                            break outcome;
                        }
                    }
                    continue;
                }
            }
            self.heartbeat.beat();
            if let Some(outcome) = self.probe_once(cur, &mut s, counts.restarts).await {
                break outcome;
            }
        };
        self.finish(cur, s, outcome, counts.restarts).await
    }

    /// The watchers of a backend that has just become ready.
    pub(super) async fn serving(
        &self,
        running: Running<B::Child>,
        config: &SupervisorConfig,
    ) -> Serving<B::Child> {
        Serving {
            dog: Box::pin(liveness::watchdog(
                self.inflight.clone(),
                self.stopped.clone(),
                running.info.pid,
                running.info.generation,
                config.first_token_timeout,
                config.liveness_failures,
            )),
            oom: crate::meter::oom_counter(running.info.pid),
            running,
            ready_at: Instant::now(),
            failed: 0,
            ticker: liveness_ticker(config).await,
        }
    }

    /// One liveness probe; `Some` when the backend ended meanwhile or has failed too many.
    async fn probe_once(
        &self,
        cur: &Current,
        s: &mut Serving<B::Child>,
        restarts: u32,
    ) -> Option<Outcome> {
        let info = &s.running.info;
        s.oom = crate::meter::oom_counter(info.pid).or(s.oom.take());
        let (probed_at, held_before) =
            (Instant::now(), liveness::held_back(info.pid, &self.stopped));
        let result = tokio::select! {
            status = s.running.child.wait() => return Some(Outcome::Exited(status)),
            () = self.cancel.cancelled() => return Some(Outcome::Cancelled),
            stall = &mut s.dog => return Some(Outcome::Ended(stall.to_string())),
            p = self.backend.health(&cur.probe, info) => p,
        };
        let why = match result {
            // A busy backend may answer 503 ("no slot available") while it works; that is
            // alive. Only a probe that gets no answer at all counts as a failure.
            Probe::Ready | Probe::Loading => {
                if s.failed > 0 {
                    s.failed = 0;
                    self.publish(State::Ready, Some(info.clone()), restarts);
                }
                return None;
            }
            Probe::Down(why) => why,
        };
        let held = liveness::held_back(info.pid, &self.stopped).saturating_sub(held_before);
        if liveness::starved(held, probed_at.elapsed()) {
            tracing::info!(pid = info.pid, %why, ?held, "liveness probe unanswered while the backend waited for a CPU (starved by other work, not hung): not counted");
            return None;
        }
        s.failed += 1;
        tracing::warn!(pid = info.pid, failed = s.failed, %why, "liveness probe failed");
        if s.failed >= cur.plan.config.liveness_failures {
            return Some(Outcome::Hung {
                failed_probes: s.failed,
            });
        }
        let state = State::Unhealthy {
            failed_probes: s.failed,
        };
        self.publish(state, Some(info.clone()), restarts);
        None
    }

    /// After the serving backend ended: the proxy hears of a crash (poison requests), the
    /// OOM counter explains an exit, a cancel drains; then the backend is stopped.
    async fn finish(
        &self,
        cur: &mut Current,
        s: Serving<B::Child>,
        outcome: Outcome,
        restarts: u32,
    ) -> Ended {
        let Serving {
            running,
            ready_at,
            oom,
            ..
        } = s;
        let info: &BackendInfo = &running.info;
        // A crash with requests in flight is kept out of the crash-loop breaker.
        let crashed = matches!(&outcome, Outcome::Exited(status) if liveness::crashed(*status));
        let serving = self.inflight.exited(info.generation, crashed);
        if crashed && serving > 0 {
            tracing::warn!(serving, generation = info.generation, "the backend crashed while serving requests: not counted toward the crash-loop breaker");
            cur.policy.crashed_serving(serving);
        }
        // An exit by SIGKILL nobody here sent is read against the memory cgroup's OOM counter.
        self.inflight.forget(info.generation);
        let outcome = match outcome {
            Outcome::Exited(status) => {
                Outcome::ExitedBecause(status, liveness::describe_exit(status, oom.as_ref()))
            }
            other => other,
        };
        let healthy_for = Some(ready_at.elapsed());
        if matches!(outcome, Outcome::Cancelled) {
            // New requests get 503 from now on; those in flight may finish.
            self.publish(State::Stopping, Some(info.clone()), restarts);
            self.drain(None, cur.plan.config.drain_timeout).await;
        }
        let logs = self.retire(running, cur.plan.config.stop_grace).await;
        Ended {
            outcome,
            healthy_for,
            logs: Some(logs),
        }
    }
}

/// A liveness ticker whose first tick has passed.
pub(super) async fn liveness_ticker(config: &SupervisorConfig) -> Interval {
    let mut ticker = tokio::time::interval(config.probe_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    ticker
}
