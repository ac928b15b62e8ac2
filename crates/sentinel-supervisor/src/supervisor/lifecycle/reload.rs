//! A reload applied: live (the governor retuned on the same child), blue-green (the new
//! backend started beside the serving one, which drains once the new one serves) or
//! stop-start (the old one drains and stops, then the new one starts). What a reload changes
//! is decided by [`crate::supervisor::reload::classify`] before it gets here.

use super::restart::{Ended, Outcome};
use super::serve::Serving;
use super::{Backend, Counts, Current, Lifecycle, Plan, Running};
use crate::config::ReloadStrategy;
use crate::supervisor::reload::Active;
use crate::supervisor::state::State;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

/// What a reload changes, decided by [`crate::supervisor::reload::classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Governor, priority and supervisor settings: applied to the running backend.
    Live,
    /// Model, threads, context, slots, embeddings or arguments: needs a new backend.
    Backend,
}

/// How an accepted reload took effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Applied to the running backend.
    Live,
    /// A new backend (this generation) serves; the old one drains.
    Switched { generation: u64 },
    /// Taken for the next launch (no backend was serving, or `stop-start`).
    NextLaunch,
}

/// Why the lifecycle refused a reload; the old configuration and backend stay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error("the new backend did not start ({why}); the old configuration stays. Last lines: {last_lines:?}")]
    BackendFailed {
        why: String,
        last_lines: Vec<String>,
    },
    #[error("the supervisor is shutting down; nothing was reloaded")]
    ShuttingDown,
}

/// A new configuration for the lifecycle.
pub(crate) struct Reload {
    /// What each launch is made of from now on.
    pub plan: Plan,
    /// The configuration it comes from, put in force (published) when it takes effect.
    pub active: Active,
    pub change: Change,
    /// The answer: how it took effect, or why the old configuration stays.
    pub done: oneshot::Sender<Result<Applied, Refused>>,
}

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reload")
            .field("change", &self.change)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Lifecycle<B> {
    /// Applies `reload` to the serving backend `s`; `Some` when the serving ends (a
    /// stop-start, or cancelled while a blue-green backend started).
    pub(super) async fn apply(
        &self,
        cur: &mut Current,
        s: &mut Serving<B::Child>,
        counts: &mut Counts,
        reload: Box<Reload>,
        drains: &mut JoinSet<()>,
    ) -> Option<Outcome> {
        match (reload.change, reload.plan.config.reload_strategy) {
            (Change::Live, _) => {
                self.adopt(cur, reload, Applied::Live);
                self.retune(&mut s.running, &cur.plan);
                s.ticker = super::serve::liveness_ticker(&cur.plan.config).await;
                None
            }
            (Change::Backend, ReloadStrategy::BlueGreen) => {
                let next = counts.attempt + 1;
                let started = self
                    .blue_green(cur, &mut s.running, next, counts.restarts, reload)
                    .await;
                let new = match started {
                    Ok(new) => new,
                    Err(outcome) => return outcome,
                };
                counts.attempt = next;
                let old = std::mem::replace(s, self.serving(new, &cur.plan.config).await);
                self.retire_later(old.running, cur, drains);
                None
            }
            (Change::Backend, ReloadStrategy::StopStart) => {
                // New requests wait in the queue while the old backend drains and the new
                // one loads.
                let generation = s.running.info.generation;
                tracing::info!(
                    generation,
                    "reload: draining the backend before starting the new one (stop-start)"
                );
                let starting = State::Starting {
                    attempt: counts.attempt + 1,
                };
                self.publish(starting, None, counts.restarts);
                let drain = reload.plan.config.drain_timeout;
                self.drain(Some(generation), drain).await;
                self.adopt(cur, reload, Applied::NextLaunch);
                Some(Outcome::Replaced)
            }
        }
    }

    /// Starts the reload's backend beside `old`, and once it is ready makes it the serving
    /// one (its governor reports on `/status` from then on) and returns it. If it fails, the
    /// old plan and backend stay (`Err(None)`); `Err(Some)` when cancelled meanwhile.
    async fn blue_green(
        &self,
        cur: &mut Current,
        old: &mut Running<B::Child>,
        attempt: u32,
        restarts: u32,
        reload: Box<Reload>,
    ) -> Result<Running<B::Child>, Option<Outcome>> {
        tracing::info!(
            old_generation = old.info.generation,
            generation = attempt,
            "reload: starting the new backend beside the serving one (blue-green)"
        );
        let probe = super::probe_client(reload.plan.config.probe_timeout);
        let aside = watch::Sender::new(None);
        // Only the end interrupts it (commands wait meanwhile).
        let (plan, uninterrupted) = (&reload.plan, std::future::pending());
        let started = self
            .start(&probe, plan, attempt, aside.clone(), None, uninterrupted)
            .await;
        let mut new = match started {
            Ok(new) => new,
            Err(ended) => return Err(refuse(reload, ended, old.info.generation)),
        };
        // The old backend keeps its governor while it drains, reporting aside.
        report_to(old.governor.as_mut(), aside);
        report_to(new.governor.as_mut(), self.governor.clone());
        let generation = new.info.generation;
        self.adopt(cur, reload, Applied::Switched { generation });
        self.publish(State::Ready, Some(new.info.clone()), restarts);
        tracing::info!(
            old_generation = old.info.generation,
            generation,
            in_flight_on_old = self.inflight.count(old.info.generation),
            "reload: new backend serving; draining the old one"
        );
        Ok(new)
    }
}

/// Answers a blue-green reload whose backend did not start (the backend of generation
/// `serving` goes on); `Some` when it was the task being cancelled.
fn refuse(reload: Box<Reload>, ended: Ended, serving: u64) -> Option<Outcome> {
    if matches!(ended.outcome, Outcome::Cancelled) {
        let _ = reload.done.send(Err(Refused::ShuttingDown));
        return Some(Outcome::Cancelled);
    }
    let why = ended.outcome.describe();
    let last_lines = ended.logs.map(|l| l.errors(8)).unwrap_or_default();
    tracing::error!(%why, last_lines = ?last_lines, generation = serving, "reload refused: the new backend did not start; the old one keeps serving with the old configuration");
    let _ = reload
        .done
        .send(Err(Refused::BackendFailed { why, last_lines }));
    None
}

/// Moves a governor's reports (when one runs); a governor that cannot report is left running
/// unreported.
fn report_to(
    governor: Option<&mut crate::governor::GovernorHandle>,
    report: crate::governor::SnapshotSender,
) {
    let Some(governor) = governor else {
        return;
    };
    if let Err(e) = governor.report_to(report) {
        tracing::warn!(pid = governor.pid(), error = %e, "cannot move the CPU governor's reports; it keeps governing unreported");
    }
}
