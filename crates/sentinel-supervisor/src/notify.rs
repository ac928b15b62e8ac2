//! The service manager's protocol (systemd's `sd_notify(3)`, through the `sd-notify` crate):
//! `READY=1` once the backend first serves, `STATUS=` lines a person can read, `RELOADING=1`
//! and `READY=1` around a reload, `STOPPING=1` on shutdown, and `WATCHDOG=1` from the
//! supervisor's own liveness loop ([`Service`]): it pings only while the lifecycle task shows
//! progress (its [`Heartbeat`], or a state that ends on its own in time) and the endpoint answers
//! its own `/health`, so a stuck supervisor stops pinging and systemd restarts it.
//!
//! Every function is a no-op when `NOTIFY_SOCKET` is unset (not started by systemd). The
//! variables are read at each call and never changed here (changing the environment of a
//! threaded process is unsound); the backend is spawned without them ([`CHILD_HIDDEN_ENV`]), so
//! llama-server cannot speak for the service.

use crate::config::SupervisorConfig;
use crate::status::StatusReport;
use crate::supervisor::state::State;
use sd_notify::NotifyState;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The service manager's variables, removed from the backend's environment.
pub(crate) const CHILD_HIDDEN_ENV: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// How often the `STATUS=` line is refreshed (and the watchdog pinged, at least).
const REFRESH: Duration = Duration::from_secs(1);

/// The longest a `STATUS=` line gets (a crash-loop reason can be long).
const STATUS_MAX: usize = 240;

/// Whether a service manager listens (`NOTIFY_SOCKET` is set).
pub(crate) fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty())
}

/// `READY=1` with a `STATUS=` line: the service is up (first start, or a reload done).
pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` (with the `MONOTONIC_USEC=` that `Type=notify-reload` asks for): a reload
/// starts; call [`ready`] once it is done.
pub(crate) fn reloading() {
    let now = NotifyState::monotonic_usec_now().ok();
    let states = [NotifyState::Reloading, NotifyState::Status("reloading")];
    send(&states.into_iter().chain(now).collect::<Vec<_>>());
}

/// `STOPPING=1`: shutdown has begun.
pub(crate) fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// A `STATUS=` line alone.
pub(crate) fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

fn send(states: &[NotifyState]) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !enabled() {
        return;
    }
    match sd_notify::notify(false, states) {
        Ok(()) => tracing::trace!(?states, "notified the service manager"),
        // Said once: a service manager that went away will not come back.
        Err(e) if !WARNED.swap(true, Ordering::Relaxed) => tracing::warn!(
            error = %e,
            socket = ?std::env::var_os("NOTIFY_SOCKET"),
            "cannot notify the service manager (NOTIFY_SOCKET); systemd will not see readiness or watchdog pings"
        ),
        Err(e) => tracing::debug!(error = %e, "cannot notify the service manager"),
    }
}

/// How often to ping the watchdog: half of `WatchdogSec=` (`WATCHDOG_USEC`, when
/// `WATCHDOG_PID` is this process), or `None` when no watchdog is set.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0)
        .then(|| Duration::from_micros(usec / 2))
}

/// Awaits `work` (set-up: fetching and building llama-server can take minutes before the
/// endpoint exists), pinging the watchdog meanwhile so a first start is not killed for it;
/// `TimeoutStartSec=` still bounds it.
pub(crate) async fn while_setting_up<F: std::future::Future>(work: F) -> F::Output {
    let Some(every) = watchdog_interval() else {
        return work.await;
    };
    tokio::pin!(work);
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = ticker.tick() => watchdog(),
        }
    }
}

/// One line for `systemctl status`: `ready - balanced, 1.00 cores (cgroup), restarts 0`.
pub(crate) fn status_line(r: &StatusReport) -> String {
    let cores = |c: Option<f64>| c.map_or_else(|| "unlimited".into(), |c| format!("{c:.2} cores"));
    let budget = match &r.governor {
        Some(g) => format!("{} ({})", cores(g.budget_cpus), g.method),
        None => cores(r.resolved_profile.cpus.map(crate::units::Cores::get)),
    };
    let about = format!("{}, {budget}, restarts {}", r.profile, r.restarts);
    let line = match &r.state {
        State::Starting { attempt } if *attempt > 1 => {
            format!("starting (attempt {attempt}) - {about}")
        }
        State::Unhealthy { failed_probes } => {
            format!("unhealthy ({failed_probes} failed probes) - {about}")
        }
        State::Backoff { delay_ms, reason } => {
            format!("backoff {delay_ms} ms after: {reason} - {about}")
        }
        State::Failed { reason, .. } => format!("failed - {about}: {reason}"),
        State::Starting { .. } | State::Ready | State::Stopping | State::Stopped => {
            format!("{} - {about}", r.state.name())
        }
    };
    match line.char_indices().nth(STATUS_MAX) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line,
    }
}

/// When the lifecycle task last showed it runs: it beats at every readiness or liveness probe.
#[derive(Debug, Clone)]
pub(crate) struct Heartbeat(Arc<watch::Sender<Instant>>);

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat(Arc::new(watch::Sender::new(Instant::now())))
    }
}

impl Heartbeat {
    pub(crate) fn beat(&self) {
        self.0.send_replace(Instant::now());
    }

    fn last(&self) -> Instant {
        *self.0.borrow()
    }
}

/// Why the lifecycle looks stuck, if it does: in a probing state (starting, ready, unhealthy)
/// it beats at least every probe interval plus the probe's timeout, and stopping a failed
/// backend adds up to `stop_grace`; a backoff ends after its delay; failed, stopping and stopped
/// wait for someone else. `quiet_for` is the time since the last beat or state change,
/// `in_state_for` the time since the last state change.
pub(crate) fn stalled(
    state: &State,
    quiet_for: Duration,
    in_state_for: Duration,
    config: &SupervisorConfig,
) -> Option<String> {
    let probe_every = config.ready_poll_interval.max(config.probe_interval) + config.probe_timeout;
    let slack = 2 * probe_every + config.stop_grace + Duration::from_secs(1);
    match state {
        State::Starting { .. } | State::Ready | State::Unhealthy { .. } if quiet_for > slack => {
            Some(format!(
                "the lifecycle task has not probed the backend for {quiet_for:?} in state {} \
                 (expected at least every {probe_every:?})",
                state.name()
            ))
        }
        State::Backoff { delay_ms, .. }
            if in_state_for > Duration::from_millis(*delay_ms) + slack =>
        {
            Some(format!(
                "the lifecycle task has been in backoff for {in_state_for:?}, longer than its \
                 {delay_ms} ms delay"
            ))
        }
        _ => None,
    }
}

/// The supervisor's liveness loop: refreshes `STATUS=`, sends `READY=1` the first time the
/// backend serves, and pings the watchdog while the supervisor is responsive. Runs until
/// `cancel`.
pub(crate) struct Service {
    /// The endpoint's state: the `/status` report and the lifecycle's status.
    pub shared: Arc<crate::proxy::Shared>,
    pub heartbeat: Heartbeat,
    /// The endpoint's own `/health`, asked before each ping.
    pub health_url: String,
    pub config: SupervisorConfig,
    pub cancel: CancellationToken,
}

impl Service {
    pub(crate) async fn run(self) {
        let ping_every = watchdog_interval();
        let period = ping_every.map_or(REFRESH, |w| w.min(REFRESH));
        tracing::debug!(
            notify = enabled(),
            ?ping_every,
            "service manager notifications"
        );
        let client = crate::supervisor::lifecycle::probe_client(period.min(Duration::from_secs(5)));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut state_since = Instant::now();
        let mut last_line = String::new();
        let mut ready_sent = false;
        let mut stuck = false;
        let mut lifecycle_gone = false;
        let mut lifecycle = self.shared.status.clone();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                changed = lifecycle.changed(), if !lifecycle_gone => match changed {
                    Ok(()) => state_since = Instant::now(),
                    Err(_) => lifecycle_gone = true,
                },
                _ = ticker.tick() => {}
            }
            let report = self.shared.report();
            let line = status_line(&report);
            if !ready_sent && report.state == State::Ready {
                ready(&line);
                ready_sent = true;
                tracing::info!(notify = enabled(), "ready");
            } else if line != last_line {
                status(&line);
            }
            last_line = line;

            if ping_every.is_none() {
                continue;
            }
            match self.check(&client, state_since).await {
                Ok(()) => {
                    if stuck {
                        tracing::info!("the supervisor is responsive again; pinging the watchdog");
                        stuck = false;
                    }
                    watchdog();
                }
                Err(why) if !stuck => {
                    tracing::error!(%why, "the supervisor looks stuck; not pinging the watchdog (systemd restarts the service when WatchdogSec= passes)");
                    stuck = true;
                }
                Err(why) => tracing::debug!(%why, "still stuck"),
            }
        }
    }

    /// Whether the lifecycle task and the endpoint both respond.
    async fn check(&self, client: &reqwest::Client, state_since: Instant) -> Result<(), String> {
        if self.shared.status.has_changed().is_err() {
            return Err("the lifecycle task has ended".into());
        }
        let now = Instant::now();
        let quiet_since = self.heartbeat.last().max(state_since);
        let state = self.shared.status.borrow().state.clone();
        if let Some(why) = stalled(
            &state,
            now.saturating_duration_since(quiet_since),
            now.saturating_duration_since(state_since),
            &self.config,
        ) {
            return Err(why);
        }
        // Any answer will do (503 while starting): the accept loop and the router run.
        match client.get(&self.health_url).send().await {
            Ok(_) => Ok(()),
            Err(e) => Err(format!(
                "the endpoint did not answer {}: {e}",
                self.health_url
            )),
        }
    }
}

/// The URL of the endpoint's own `/health` for a listener bound to `addr` (a wildcard address
/// is reached on loopback).
pub(crate) fn health_url(addr: std::net::SocketAddr) -> String {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!(
        "http://{}/health",
        std::net::SocketAddr::new(ip, addr.port())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governor::Method;

    #[test]
    fn status_lines_read_like_a_sentence() {
        let mut r = crate::status::example();
        r.state = State::Ready;
        r.restarts = 0;
        let g = r.governor.as_mut().unwrap();
        g.method = Method::Cgroup;
        g.budget_cpus = Some(1.0);
        assert_eq!(
            status_line(&r),
            "ready - balanced, 1.00 cores (cgroup), restarts 0"
        );
        r.governor = None;
        r.state = State::Starting { attempt: 3 };
        r.restarts = 2;
        assert_eq!(
            status_line(&r),
            "starting (attempt 3) - balanced, 0.50 cores, restarts 2"
        );
        r.state = State::Backoff {
            delay_ms: 500,
            reason: "llama-server exited (exit status: 1)".into(),
        };
        assert_eq!(
            status_line(&r),
            "backoff 500 ms after: llama-server exited (exit status: 1) - balanced, 0.50 cores, restarts 2"
        );
        r.state = State::Failed {
            reason: "crash loop: ".to_string() + &"x".repeat(1000),
            last_lines: vec![],
            next_retry_at: None,
            next_retry_in_s: Some(300),
        };
        let line = status_line(&r);
        assert!(line.starts_with("failed - balanced, 0.50 cores, restarts 2: crash loop"));
        assert!(line.chars().count() <= STATUS_MAX + 3, "{}", line.len());
        r.resolved_profile.cpus = None;
        r.state = State::Ready;
        assert_eq!(status_line(&r), "ready - balanced, unlimited, restarts 2");
    }

    fn config() -> SupervisorConfig {
        crate::config::Config::builtin().unwrap().supervisor
    }

    #[test]
    fn a_lifecycle_that_stops_probing_or_overstays_a_backoff_is_stalled() {
        let c = config();
        // Defaults: probes every 2 s with a 3 s timeout, 5 s stop grace -> 16 s of slack.
        let s = Duration::from_secs;
        assert_eq!(stalled(&State::Ready, s(15), s(100), &c), None);
        assert!(stalled(&State::Ready, s(17), s(100), &c)
            .unwrap()
            .contains("has not probed"));
        assert!(stalled(&State::Starting { attempt: 1 }, s(17), s(17), &c).is_some());
        let backoff = State::Backoff {
            delay_ms: 30_000,
            reason: "x".into(),
        };
        assert_eq!(stalled(&backoff, s(45), s(45), &c), None);
        assert!(stalled(&backoff, s(47), s(47), &c)
            .unwrap()
            .contains("backoff"));
        // Waiting for someone else is not being stuck.
        let failed = State::Failed {
            reason: "x".into(),
            last_lines: vec![],
            next_retry_at: None,
            next_retry_in_s: Some(300),
        };
        assert_eq!(stalled(&failed, s(3600), s(3600), &c), None);
        assert_eq!(stalled(&State::Stopping, s(3600), s(3600), &c), None);
    }

    #[test]
    fn a_wildcard_listener_is_asked_on_loopback() {
        assert_eq!(
            health_url("0.0.0.0:8080".parse().unwrap()),
            "http://127.0.0.1:8080/health"
        );
        assert_eq!(
            health_url("[::]:9".parse().unwrap()),
            "http://[::1]:9/health"
        );
        assert_eq!(
            health_url("192.168.1.5:80".parse().unwrap()),
            "http://192.168.1.5:80/health"
        );
    }
}
