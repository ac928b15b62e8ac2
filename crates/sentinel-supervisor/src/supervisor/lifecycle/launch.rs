//! `starting`: a backend is spawned with its governor and polled on `/health` until it
//! answers 200 (then warmed, when the plan has warm prefixes), or until it exits, the start
//! times out, the task is cancelled or a reload interrupts it.

use super::restart::{Ended, Outcome};
use super::{Backend, BackendChild, Lifecycle, Plan, Probe, Running};
use crate::config::SupervisorConfig;
use crate::governor::{Governor, GovernorHandle, SnapshotSender};
use crate::supervisor::state::{BackendInfo, State};
use std::future::Future;
use tokio::time::Instant;

impl<B: Backend> Lifecycle<B> {
    /// Spawns one backend of `plan` with its governor reporting on `report`, and waits until
    /// it is ready, it fails, we are cancelled, or `interrupt` resolves first. With
    /// `publish` (the restart count), it is published as `starting`.
    pub(super) async fn start(
        &self,
        probe: &reqwest::Client,
        plan: &Plan,
        attempt: u32,
        report: SnapshotSender,
        publish: Option<u32>,
        interrupt: impl Future<Output = Outcome>,
    ) -> Result<Running<B::Child>, Ended> {
        let spec = (plan.make_spec)()
            .map_err(|e| Ended::unserved(Outcome::SpawnFailed(e.to_string()), None))?;
        let child = self.backend.spawn(&spec).await.map_err(|e| {
            let msg = format!("cannot start {}: {e}", spec.program.display());
            Ended::unserved(Outcome::SpawnFailed(msg), None)
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
        let mut running = Running {
            child,
            info,
            governor,
        };
        // Loading the model counts as activity, so the governor throttles it too.
        let loading = self.activity.begin();
        let started = Instant::now();
        let failed = self
            .wait_ready(probe, &plan.config, &mut running, interrupt)
            .await;
        drop(loading);
        if let Some(outcome) = failed {
            let logs = self.retire(running, plan.config.stop_grace).await;
            return Err(Ended::unserved(outcome, Some(logs)));
        }
        if let Some(warmup) = &plan.warmup {
            let beat = plan.config.ready_poll_interval;
            let activity = &self.activity;
            (warmup.run(&running.info, activity, &self.heartbeat, beat, &self.cancel)).await;
        }
        tracing::info!(pid = running.info.pid, port = running.info.port, generation = running.info.generation, load_time = ?started.elapsed(), "backend ready");
        Ok(running)
    }

    /// Polls `/health` until 200. `None` = ready; otherwise how it failed.
    async fn wait_ready(
        &self,
        client: &reqwest::Client,
        config: &SupervisorConfig,
        running: &mut Running<B::Child>,
        interrupt: impl Future<Output = Outcome>,
    ) -> Option<Outcome> {
        let deadline = Instant::now() + config.startup_timeout;
        let (child, info) = (&mut running.child, &running.info);
        tokio::pin!(interrupt);
        loop {
            self.heartbeat.beat();
            // A probe, then the pause before the next one unless it found the backend ready.
            let poll = async {
                let ready = self.backend.health(client, info).await == Probe::Ready;
                if !ready {
                    tokio::time::sleep(config.ready_poll_interval).await;
                }
                ready
            };
            tokio::select! {
                status = child.wait() => return Some(Outcome::Exited(status)),
                () = self.cancel.cancelled() => return Some(Outcome::Cancelled),
                outcome = &mut interrupt => return Some(outcome),
                () = tokio::time::sleep_until(deadline) => return Some(Outcome::StartTimeout),
                ready = poll => if ready {
                    return None;
                },
            }
        }
    }

    /// Starts governing `pid` with `plan`'s settings under the budget in force; `None` (the
    /// backend then runs unthrottled, and `report` says no governor runs) if it cannot.
    pub(super) fn start_governor(
        &self,
        plan: &Plan,
        pid: i32,
        report: SnapshotSender,
    ) -> Option<GovernorHandle> {
        let settings = self.budget.settings(plan.governor_settings);
        match Governor::start(
            pid,
            &plan.governor_config,
            settings,
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

    /// Tells the serving backend's governor `plan`'s settings under the budget in force
    /// (after a live reload or a change of the machine's situation), starting one if none
    /// runs.
    pub(super) fn retune(&self, running: &mut Running<B::Child>, plan: &Plan) {
        let pid = running.child.pid();
        let Some(governor) = running.governor.as_mut() else {
            running.governor = self.start_governor(plan, pid, self.governor.clone());
            return;
        };
        let settings = self.budget.settings(plan.governor_settings);
        if let Err(e) = governor.retune(&plan.governor_config, settings) {
            tracing::error!(pid, error = %e, "cannot put the new CPU governor settings in force; the backend runs unthrottled");
            running.governor = None;
            self.governor.send_replace(None);
        }
    }
}
