//! The state machine alone, on paused time, with a test double for the backend (as
//! watchexec tests its job state machine): each test drives a few launches through their
//! states in virtual seconds and checks what the lifecycle published and when it stopped
//! each backend.

use super::testchild::{plan, ticket, Event, Fake, Script, FIRST_PID, PROBE_TIMEOUT};
use super::*;
use crate::config::{Config, OnCrashLoop, ReloadStrategy};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn supervisor_config() -> SupervisorConfig {
    let mut c = Config::builtin().unwrap().supervisor;
    c.startup_timeout = secs(30);
    c.ready_poll_interval = Duration::from_millis(100);
    c.probe_interval = secs(1);
    c.probe_timeout = PROBE_TIMEOUT;
    c.liveness_failures = 3;
    c.backoff_initial = secs(1);
    c.backoff_max = secs(4);
    c.backoff_reset_after = secs(60);
    c.crash_loop_restarts = 100;
    c.crash_loop_window = secs(600);
    c.on_crash_loop = OnCrashLoop::Retry;
    c.failed_retry_interval = secs(300);
    c.drain_timeout = secs(10);
    c.stop_grace = secs(1);
    c.reload_strategy = ReloadStrategy::BlueGreen;
    c.first_token_timeout = secs(5);
    c
}

/// A running lifecycle task over a [`Fake`] backend, and what the tests see of it.
struct Harness {
    status: watch::Receiver<Status>,
    in_force: watch::Receiver<Arc<InForce>>,
    commands: mpsc::Sender<Command>,
    cancel: CancellationToken,
    inflight: Requests,
    task: tokio::task::JoinHandle<End>,
}

impl Harness {
    fn start(fake: &Fake, config: SupervisorConfig) -> Harness {
        let active = crate::supervisor::reload::tests::active("");
        let (status_tx, status) = watch::channel(Status::initial());
        let (in_force_tx, in_force) = watch::channel(Arc::new(InForce::new(active, 1)));
        let (commands, commands_rx) = mpsc::channel(4);
        let inflight = Requests::default();
        let cancel = CancellationToken::new();
        let lifecycle = Lifecycle {
            backend: fake.clone(),
            activity: Activity::new(),
            governor: watch::Sender::new(None),
            status: status_tx,
            in_force: in_force_tx,
            inflight: inflight.clone(),
            heartbeat: crate::notify::Heartbeat::default(),
            cancel: cancel.clone(),
            metrics: Arc::new(crate::metrics::Metrics::new(
                &Config::builtin().unwrap().slo,
                2,
                Default::default(),
            )),
            stopped: Default::default(),
            budget: crate::situation::Follow::off(),
        };
        Harness {
            status,
            in_force,
            commands,
            cancel,
            inflight,
            task: tokio::spawn(lifecycle.run(plan(config), commands_rx)),
        }
    }

    /// Waits (in virtual time, up to an hour) until the published status satisfies `what`.
    async fn until(&mut self, why: &str, what: impl FnMut(&Status) -> bool) -> Status {
        let waited = tokio::time::timeout(secs(3600), self.status.wait_for(what)).await;
        match waited {
            Ok(Ok(status)) => status.clone(),
            Ok(Err(_)) => panic!("{why}: the lifecycle ended"),
            Err(_) => panic!("{why}: not reached within an hour (virtual time)"),
        }
    }

    /// Until backend `generation` serves; its pid.
    async fn serving(&mut self, generation: u64) -> i32 {
        let status = self
            .until(&format!("generation {generation} ready"), |s| {
                s.state == State::Ready
                    && s.backend
                        .as_ref()
                        .is_some_and(|b| b.generation == generation)
            })
            .await;
        status.backend.map(|b| b.pid).unwrap_or_default()
    }

    /// Until the `n`th backoff (0-based: the restart count when it is published).
    async fn backoff(&mut self, n: u32) -> (u64, String) {
        let status = self
            .until(&format!("backoff {n}"), |s| {
                matches!(s.state, State::Backoff { .. }) && s.restarts == n
            })
            .await;
        match status.state {
            State::Backoff { delay_ms, reason } => (delay_ms, reason),
            _ => unreachable!(),
        }
    }

    async fn reload(
        &self,
        config: SupervisorConfig,
        change: Change,
    ) -> oneshot::Receiver<Result<Applied, Refused>> {
        let (done, answer) = oneshot::channel();
        let reload = Reload {
            plan: plan(config),
            active: crate::supervisor::reload::tests::active(""),
            change,
            done,
        };
        self.commands
            .send(Command::Reload(Box::new(reload)))
            .await
            .unwrap();
        answer
    }

    async fn end(self) -> End {
        self.cancel.cancel();
        self.task.await.unwrap()
    }
}

#[tokio::test(start_paused = true)]
async fn a_crashed_backend_is_restarted_after_its_backoff() {
    let fake = Fake::new([Script::crashing_after(secs(10))]);
    let mut h = Harness::start(&fake, supervisor_config());
    h.serving(1).await;
    let (delay_ms, reason) = h.backoff(0).await;
    assert_eq!(delay_ms, 1000);
    assert!(reason.contains("exit status: 1"), "{reason}");
    let crashed_at = Instant::now();
    h.serving(2).await;
    assert!(
        crashed_at.elapsed() >= secs(1),
        "restarted before its backoff"
    );
    let status = h.status.borrow().clone();
    assert_eq!(status.restarts, 1);
    assert!(status
        .last_exit
        .is_some_and(|e| e.contains("exit status: 1")));
    assert_eq!(h.end().await, End::Stopped);
    assert_eq!(
        fake.events().last().map(|(_, e)| *e),
        Some(Event::Stopped(FIRST_PID + 2))
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_doubles_up_to_its_cap_and_resets_after_a_healthy_run() {
    let quick = Script::crashing_after(secs(1));
    let mut scripts = vec![quick; 5];
    scripts.push(Script::crashing_after(secs(120)));
    scripts.push(quick);
    let fake = Fake::new(scripts);
    let mut h = Harness::start(&fake, supervisor_config());
    let mut delays = Vec::new();
    for n in 0..7 {
        delays.push(h.backoff(n).await.0);
    }
    assert_eq!(delays, [1000, 2000, 4000, 4000, 4000, 1000, 2000]);
    assert_eq!(h.end().await, End::Stopped);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_fails_the_backend_and_a_retry_starts_it_at_once() {
    let mut config = supervisor_config();
    config.crash_loop_restarts = 3;
    let never_ready = Script {
        ready_after: secs(5),
        exit_after: Some(secs(1)),
        ..Script::default()
    };
    let fake = Fake::new([never_ready; 4]);
    let mut h = Harness::start(&fake, config);
    let failed = h
        .until("failed", |s| matches!(s.state, State::Failed { .. }))
        .await;
    let State::Failed {
        reason,
        next_retry_in_s,
        ..
    } = failed.state
    else {
        unreachable!()
    };
    assert!(
        reason.starts_with("crash loop: the backend failed 4 times"),
        "{reason}"
    );
    assert_eq!(next_retry_in_s, Some(300));
    let failed_at = Instant::now();
    let why = "the model file changed".to_string();
    h.commands.send(Command::Retry { why }).await.unwrap();
    h.serving(5).await;
    assert!(
        failed_at.elapsed() < secs(10),
        "the retry waited for the slow interval"
    );
    assert_eq!(h.end().await, End::Stopped);
}

#[tokio::test(start_paused = true)]
async fn without_a_retry_the_failed_backend_is_tried_again_after_the_slow_interval() {
    let mut config = supervisor_config();
    config.crash_loop_restarts = 1;
    let fake = Fake::new([Script::crashing_after(secs(1)); 2]);
    let mut h = Harness::start(&fake, config);
    h.until("failed", |s| matches!(s.state, State::Failed { .. }))
        .await;
    let failed_at = Instant::now();
    h.serving(3).await;
    assert!(failed_at.elapsed() >= secs(300));
    assert_eq!(h.end().await, End::Stopped);
}

#[tokio::test(start_paused = true)]
async fn with_on_crash_loop_exit_the_breaker_ends_the_run() {
    let mut config = supervisor_config();
    config.crash_loop_restarts = 1;
    config.on_crash_loop = OnCrashLoop::Exit;
    let fake = Fake::new([Script::crashing_after(secs(1)); 2]);
    let h = Harness::start(&fake, config);
    let end = tokio::time::timeout(secs(600), h.task)
        .await
        .unwrap()
        .unwrap();
    let End::CrashLoop { reason } = end else {
        panic!("{end:?}")
    };
    assert!(
        reason.contains("supervisor.on_crash_loop = \"exit\""),
        "{reason}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_stops_answering_its_probes_is_restarted() {
    let hangs = Script {
        hang_after: Some(secs(5)),
        ..Script::default()
    };
    let fake = Fake::new([hangs]);
    let mut h = Harness::start(&fake, supervisor_config());
    let pid = h.serving(1).await;
    h.until("unhealthy", |s| {
        s.state == State::Unhealthy { failed_probes: 1 }
    })
    .await;
    let (_, reason) = h.backoff(0).await;
    assert!(reason.contains("3 liveness probes failed"), "{reason}");
    assert!(
        fake.stopped_at(pid).is_some(),
        "the hung backend was left running"
    );
    h.serving(2).await;
    assert_eq!(h.end().await, End::Stopped);
}

#[tokio::test(start_paused = true)]
async fn the_request_watchdogs_verdict_restarts_the_backend() {
    let fake = Fake::new([]);
    let mut h = Harness::start(&fake, supervisor_config());
    h.serving(1).await;
    for _ in 0..3 {
        let request = ticket(&h.inflight, 1);
        request.sent();
        request.answered(500);
    }
    let (_, reason) = h.backoff(0).await;
    assert!(
        reason.contains("3 requests in a row with a server error"),
        "{reason}"
    );
    h.serving(2).await;
    assert_eq!(h.end().await, End::Stopped);
}

#[tokio::test(start_paused = true)]
async fn stopping_waits_for_the_requests_in_flight() {
    let fake = Fake::new([]);
    let mut h = Harness::start(&fake, supervisor_config());
    let pid = h.serving(1).await;
    let request = ticket(&h.inflight, 1);
    let finishes = tokio::spawn(async move {
        tokio::time::sleep(secs(3)).await;
        drop(request);
    });
    let cancelled_at = Instant::now();
    h.cancel.cancel();
    h.until("stopping", |s| s.state == State::Stopping).await;
    assert!(
        fake.stopped_at(pid).is_none(),
        "stopped before its request finished"
    );
    assert_eq!(h.end().await, End::Stopped);
    finishes.await.unwrap();
    let stopped = fake.stopped_at(pid).expect("never stopped") - cancelled_at;
    assert!(stopped >= secs(3) && stopped < secs(4), "{stopped:?}");
}

#[tokio::test(start_paused = true)]
async fn the_drain_gives_up_at_its_deadline() {
    let fake = Fake::new([]);
    let mut h = Harness::start(&fake, supervisor_config());
    let pid = h.serving(1).await;
    let _stuck = ticket(&h.inflight, 1);
    let cancelled_at = Instant::now();
    assert_eq!(h.end().await, End::Stopped);
    let stopped = fake.stopped_at(pid).expect("never stopped") - cancelled_at;
    assert!(stopped >= secs(10) && stopped < secs(11), "{stopped:?}");
}

#[tokio::test(start_paused = true)]
async fn blue_green_serves_the_new_backend_before_the_old_one_drains_and_stops() {
    let loads_slowly = Script {
        ready_after: secs(5),
        ..Script::default()
    };
    let fake = Fake::new([Script::serving(), loads_slowly]);
    let mut h = Harness::start(&fake, supervisor_config());
    let old = h.serving(1).await;
    let request = ticket(&h.inflight, 1);
    let answer = h.reload(supervisor_config(), Change::Backend).await;
    let new = h.serving(2).await;
    let switched_at = Instant::now();
    assert_eq!(
        answer.await.unwrap(),
        Ok(Applied::Switched { generation: 2 })
    );
    assert_eq!(h.in_force.borrow().live.generation, 2);
    assert_ne!(old, new);
    tokio::time::sleep(secs(2)).await;
    assert!(
        fake.stopped_at(old).is_none(),
        "the old backend stopped with a request in flight"
    );
    drop(request);
    tokio::time::sleep(secs(1)).await;
    let stopped = fake
        .stopped_at(old)
        .expect("the old backend was not stopped");
    assert!(stopped >= switched_at + secs(2));
    assert!(fake.stopped_at(new).is_none());
    assert_eq!(h.end().await, End::Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_blue_green_backend_that_fails_to_start_leaves_the_old_one_serving() {
    let fails = Script {
        ready_after: secs(5),
        exit_after: Some(secs(1)),
        ..Script::default()
    };
    let fake = Fake::new([Script::serving(), fails]);
    let mut h = Harness::start(&fake, supervisor_config());
    let old = h.serving(1).await;
    let answer = h.reload(supervisor_config(), Change::Backend).await;
    let refused = answer.await.unwrap().unwrap_err();
    assert!(
        matches!(&refused, Refused::BackendFailed { why, .. } if why.contains("exit status: 1")),
        "{refused}"
    );
    assert_eq!(h.in_force.borrow().live.generation, 1);
    let status = h.status.borrow().clone();
    assert_eq!(status.state, State::Ready);
    assert_eq!(status.backend.map(|b| b.pid), Some(old));
    assert_eq!(h.end().await, End::Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_live_reload_keeps_the_backend_and_publishes_the_new_configuration() {
    let fake = Fake::new([]);
    let mut h = Harness::start(&fake, supervisor_config());
    let pid = h.serving(1).await;
    let answer = h.reload(supervisor_config(), Change::Live).await;
    assert_eq!(answer.await.unwrap(), Ok(Applied::Live));
    assert_eq!(h.in_force.borrow().live.generation, 2);
    tokio::time::sleep(secs(5)).await;
    assert_eq!(h.status.borrow().backend.as_ref().map(|b| b.pid), Some(pid));
    assert_eq!(fake.events().len(), 1, "{:?}", fake.events());
    assert_eq!(h.end().await, End::Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_stop_start_reload_drains_the_old_backend_before_the_new_one_starts() {
    let mut config = supervisor_config();
    config.reload_strategy = ReloadStrategy::StopStart;
    let fake = Fake::new([]);
    let mut h = Harness::start(&fake, config.clone());
    let old = h.serving(1).await;
    let request = ticket(&h.inflight, 1);
    let answer = h.reload(config, Change::Backend).await;
    tokio::time::sleep(secs(2)).await;
    drop(request);
    assert_eq!(answer.await.unwrap(), Ok(Applied::NextLaunch));
    h.serving(2).await;
    let events = fake.events();
    let stopped = fake
        .stopped_at(old)
        .expect("the old backend was not stopped");
    let respawned = events
        .iter()
        .find(|(_, e)| *e == Event::Spawned(FIRST_PID + 2))
        .map(|(at, _)| *at)
        .unwrap();
    assert!(stopped <= respawned, "{events:?}");
    assert_eq!(h.end().await, End::Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_cpu_fault_of_the_users_own_binary_fails_until_a_reload() {
    let faults = Script {
        sigill_after: Some(secs(1)),
        ready_after: secs(5),
        ..Script::default()
    };
    let fake = Fake::new([faults]);
    let mut h = Harness::start(&fake, supervisor_config());
    let failed = h
        .until("failed", |s| matches!(s.state, State::Failed { .. }))
        .await;
    let State::Failed {
        reason,
        next_retry_at,
        ..
    } = failed.state
    else {
        unreachable!()
    };
    assert!(reason.contains("restarting cannot help"), "{reason}");
    assert_eq!(next_retry_at, None);
    tokio::time::sleep(secs(3600)).await;
    assert_eq!(fake.events().len(), 2, "a CPU fault was retried");
    let answer = h.reload(supervisor_config(), Change::Backend).await;
    assert_eq!(answer.await.unwrap(), Ok(Applied::NextLaunch));
    h.serving(2).await;
    assert_eq!(h.end().await, End::Stopped);
}
