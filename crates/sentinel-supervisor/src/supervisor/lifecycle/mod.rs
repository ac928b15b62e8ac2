//! The lifecycle task: the one owner of the backend process, its state and the
//! configuration in force. Other tasks talk to it with [`Command`]s over an `mpsc` channel;
//! it publishes the backend's [`Status`] and the configuration in force ([`InForce`]) on a
//! `watch` each. Its parts read as the states do:
//! - [`launch`]: start a backend, its governor, and wait until it is ready (`starting`);
//! - [`serve`]: probe it, watch it for hangs and apply reloads while it serves (`ready`,
//!   `unhealthy`), then drain and stop it;
//! - [`restart`]: after a launch ends, climb the backend ladder, back off or trip the
//!   crash-loop breaker (`backoff`, `failed`); the decision itself is
//!   [`super::policy::RestartPolicy`]'s;
//! - [`reload`]: a reload applied live, blue-green or stop-start;
//! - [`drain`]: wait for the requests in flight before a backend stops.
//!
//! The backend is reached through [`Backend`] ([`child`]), so the state machine runs in its
//! unit tests with a test double on paused time.

mod child;
mod drain;
mod launch;
mod reload;
mod restart;
mod serve;
#[cfg(test)]
mod testchild;
#[cfg(test)]
mod tests;

pub(crate) use child::{Backend, BackendChild, Llama, Probe};
pub(crate) use reload::{Applied, Change, Refused, Reload};

use super::policy::RestartPolicy;
use super::reload::Active;
use super::state::{BackendInfo, State, Status};
use crate::backend::launch::LaunchSpec;
use crate::config::SupervisorConfig;
use crate::governor::{Activity, GovernorConfig, GovernorHandle, GovernorSettings, SnapshotSender};
use crate::requests::Requests;
use restart::{Ended, Outcome};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Builds the launch spec for each attempt (fresh port and key every time).
pub(crate) type SpecFactory = Box<dyn Fn() -> std::io::Result<LaunchSpec> + Send + Sync>;

/// After a CPU fault of the backend (`backend::smoke::cpu_fault`): records its rung as failed
/// and climbs the backend ladder to the next rung that passes the smoke test, returning its
/// launches and how `/status` names it. Blocking (it may build and test).
pub(crate) type LadderStep = Arc<
    dyn Fn(
            &crate::backend::smoke::Failure,
        ) -> Result<(SpecFactory, crate::status::BackendRung), String>
        + Send
        + Sync,
>;

/// What each launch is made of; a reload replaces it.
pub(crate) struct Plan {
    pub config: SupervisorConfig,
    pub make_spec: SpecFactory,
    pub governor_config: GovernorConfig,
    pub governor_settings: GovernorSettings,
    /// Prefixes put in each new backend's cache before it is reported ready.
    pub warmup: Option<Arc<super::warmup::Warmup>>,
    /// The next rung after a CPU fault; `None` for the user's own `backend.bin`, which is never
    /// replaced (a CPU fault fails it at once: restarting cannot help).
    pub ladder: Option<LadderStep>,
}

/// The configuration in force: what the command resolved and setup installed, and the
/// proxy's part of it. Published once, by the lifecycle, when a reload takes effect; the
/// proxy, the reload and the file watcher read it.
#[derive(Debug)]
pub(crate) struct InForce {
    pub active: Active,
    pub live: Arc<crate::proxy::Live>,
}

impl InForce {
    /// `active` as configuration `generation` (1 at start, +1 per reload applied).
    pub(crate) fn new(active: Active, generation: u64) -> InForce {
        InForce {
            live: Arc::new(super::reload::live(&active, generation)),
            active,
        }
    }
}

/// Messages to the lifecycle task.
#[derive(Debug)]
pub(crate) enum Command {
    Reload(Box<Reload>),
    /// Try a failed backend again now (the model file changed).
    Retry {
        why: String,
    },
}

/// How the lifecycle task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// Cancelled; no backend left.
    Stopped,
    /// The crash-loop breaker tripped with `supervisor.on_crash_loop = "exit"`.
    CrashLoop { reason: String },
}

/// The lifecycle task's inputs and outputs; [`Lifecycle::run`] is the task.
pub(crate) struct Lifecycle<B: Backend = Llama> {
    /// How backends are started and probed.
    pub backend: B,
    pub activity: Activity,
    /// Where the serving launch's governor publishes its snapshots (`None` between launches).
    pub governor: SnapshotSender,
    pub status: watch::Sender<Status>,
    /// The configuration in force; only this task sends on it.
    pub in_force: watch::Sender<Arc<InForce>>,
    /// Requests in flight per backend generation (the proxy counts them), and what they heard
    /// back, for the per-launch watchdog.
    pub inflight: Requests,
    /// Beaten at every probe: the watchdog's evidence that this task runs.
    pub heartbeat: crate::notify::Heartbeat,
    pub cancel: CancellationToken,
    /// Counts restarts by reason (`sentinel_backend_restarts_total`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Where the governors add the time they hold the backend stopped (the watchdog reads it).
    pub stopped: crate::governor::StoppedTime,
    /// The budget in force for the machine's situation (battery, presence, heat); a change
    /// retunes the governor on the same child, as a live reload does.
    pub budget: crate::situation::Follow,
}

/// A launched backend with its governor.
struct Running<C> {
    child: C,
    info: BackendInfo,
    governor: Option<GovernorHandle>,
}

/// The plan in force, with what is derived from it.
struct Current {
    plan: Plan,
    probe: reqwest::Client,
    policy: RestartPolicy,
}

/// Launches so far (`attempt`, also the next backend's generation) and restarts.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    attempt: u32,
    restarts: u32,
}

impl Current {
    fn new(plan: Plan) -> Current {
        Current {
            probe: probe_client(plan.config.probe_timeout),
            policy: RestartPolicy::new(&plan.config),
            plan,
        }
    }
}

/// A client for `/health` probes: `timeout` each, and no kept-alive connection (one would make
/// the server it probes wait for it at exit).
pub(crate) fn probe_client(timeout: std::time::Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
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

impl<B: Backend> Lifecycle<B> {
    /// Runs until cancelled (or, with `on_crash_loop = "exit"`, until the breaker trips);
    /// always leaves no backend behind.
    pub(crate) async fn run(self, plan: Plan, mut commands: mpsc::Receiver<Command>) -> End {
        let mut cur = Current::new(plan);
        let mut counts = Counts::default();
        let mut drains = JoinSet::new();
        let end = loop {
            counts.attempt += 1;
            let ended = self
                .launch_and_serve(&mut cur, &mut counts, &mut commands, &mut drains)
                .await;
            match ended.outcome {
                Outcome::Cancelled => break End::Stopped,
                Outcome::Reloaded(reload) => self.adopt(&mut cur, reload, Applied::NextLaunch),
                Outcome::Replaced => {}
                _ => {
                    if let Some(end) = self.after(&mut cur, ended, counts, &mut commands).await {
                        break end;
                    }
                    counts.restarts += 1;
                }
            }
        };
        while drains.join_next().await.is_some() {}
        if end == End::Stopped {
            self.publish(State::Stopped, None, counts.restarts);
        }
        end
    }

    /// One launch: started (a reload meanwhile starts it again with the new plan), then
    /// served until it ends.
    async fn launch_and_serve(
        &self,
        cur: &mut Current,
        counts: &mut Counts,
        commands: &mut mpsc::Receiver<Command>,
        drains: &mut JoinSet<()>,
    ) -> Ended {
        let attempt = counts.attempt;
        self.publish(State::Starting { attempt }, None, counts.restarts);
        let interrupt = async {
            loop {
                if let Command::Reload(r) = next_command(commands).await {
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
                Some(counts.restarts),
                interrupt,
            )
            .await;
        match started {
            Ok(running) => self.serve(cur, running, counts, commands, drains).await,
            Err(ended) => ended,
        }
    }

    /// Takes the reload's plan (a fresh restart policy too: a reload is a human's fix), puts
    /// its configuration in force and answers; the rung setup chose for it is the one in use
    /// again.
    fn adopt(&self, cur: &mut Current, reload: Box<Reload>, applied: Applied) {
        let Reload {
            plan, active, done, ..
        } = *reload;
        *cur = Current::new(plan);
        self.status.send_modify(|s| s.climbed = None);
        let generation = self.in_force.borrow().live.generation + 1;
        self.in_force
            .send_replace(Arc::new(InForce::new(active, generation)));
        tracing::info!(?applied, generation, "configuration reloaded");
        let _ = done.send(Ok(applied));
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
