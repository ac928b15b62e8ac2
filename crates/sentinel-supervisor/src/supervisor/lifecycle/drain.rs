//! Before a backend stops, the requests in flight on it may finish, up to
//! `supervisor.drain_timeout` (counted per backend generation by
//! [`crate::requests::Requests`]); then it is stopped: governor first (which
//! continues the child), then SIGTERM, grace, SIGKILL.

use super::{Backend, BackendChild, Current, Lifecycle, Running};
use crate::backend::process::LogTail;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

impl<B: Backend> Lifecycle<B> {
    /// Waits for `generation`'s requests (all of them with `None`) to finish, up to
    /// `timeout`.
    pub(super) async fn drain(&self, generation: Option<u64>, timeout: Duration) {
        let left = self
            .inflight
            .drained(generation, Instant::now() + timeout)
            .await;
        if left > 0 {
            tracing::warn!(?generation, left, drain_timeout = ?timeout, "requests still in flight after supervisor.drain_timeout; cutting them");
        }
    }

    /// Stops a backend: governor first (it continues the child), then SIGTERM, grace,
    /// SIGKILL. Returns its log tail. `/status` shows no governor from then on if this one
    /// reported there (a blue-green backend that failed to start did not).
    pub(super) async fn retire(&self, mut running: Running<B::Child>, grace: Duration) -> LogTail {
        if let Some(mut g) = running.governor.take() {
            g.stop();
            if g.reports_to(&self.governor) {
                self.governor.send_replace(None);
            }
        }
        let logs = running.child.logs();
        let status = running.child.stop(grace).await;
        tracing::info!(pid = running.info.pid, generation = running.info.generation, %status, "backend stopped");
        logs
    }

    /// The old backend after a blue-green switch drains (up to `drain_timeout`) and stops in
    /// `drains`, beside the serving one.
    pub(super) fn retire_later(
        &self,
        mut old: Running<B::Child>,
        cur: &Current,
        drains: &mut JoinSet<()>,
    ) {
        let config = &cur.plan.config;
        let (drain, grace) = (config.drain_timeout, config.stop_grace);
        let inflight = self.inflight.clone();
        drains.spawn(async move {
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
        });
    }
}
