//! What the governor tells `/status`, measured on the governor's own clock: a small thread
//! owned by each [`super::GovernorHandle`] reads the child's exact CPU clock once per window,
//! combines it with the mechanism's live readings and publishes a [`GovernorSnapshot`] on a
//! `watch` channel. Readers only borrow the latest value, so "measured CPU" always means "over
//! the governor's last window", never "since whoever asked last". Between windows it looks at
//! the mechanism's readings [`TICKS_PER_WINDOW`] times and publishes when they changed, so a
//! budget the adaptive mode lowered, or a switch between throttling and resting, shows in
//! `/status` within a quarter of a window rather than a whole one.

use super::cgroup::CgroupVersion;
use super::duty_cycle::LimiterReadings;
use super::priority::Priority;
use super::settings::{GovernorSettings, Method};
use serde::{Deserialize, Serialize};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Where the governor publishes: `None` while no governor runs (between launches, or when it
/// could not start).
pub(crate) type SnapshotSender = watch::Sender<Option<GovernorSnapshot>>;

/// What the governor is doing with the child.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GovernorState {
    /// Requests are in flight and the duty cycle holds the child to its budget.
    Throttling,
    /// Nothing in flight: the duty cycle lets the child run (it is idle anyway).
    Resting,
    /// A kernel cgroup cap holds the budget.
    Capped,
    /// No budget, or the method is `off`: nothing is limited.
    Off,
    /// The governor has ended (stopped, or the child is gone).
    Stopped,
}

/// The governor's state at one moment, for `/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GovernorSnapshot {
    /// `signals`, `cgroup` or `off` (never `auto`: the method chosen for this launch).
    pub method: Method,
    /// The cgroup interface when `method` is `cgroup`.
    pub cgroup: Option<CgroupVersion>,
    /// The budget in force, in cores (`null` = unlimited); lower than the profile's while the
    /// adaptive mode yields to other processes.
    pub budget_cpus: Option<f64>,
    /// Share of each period the child may run (duty cycle; `null` under a kernel cap or off).
    pub duty: Option<f64>,
    pub state: GovernorState,
    /// The child's CPU in cores over the governor's last window (`null` before the first
    /// window ends).
    pub measured_cpus: Option<f64>,
    pub priority: Priority,
}

/// The live part of a snapshot that depends on how the budget is enforced.
#[derive(Clone, Debug)]
pub(super) enum Source {
    Signals(Arc<LimiterReadings>),
    Cgroup(CgroupVersion),
    Off,
}

impl Source {
    /// A snapshot of the mechanism now, with `measured` as the measured CPU.
    pub(super) fn snapshot(
        &self,
        settings: &GovernorSettings,
        measured: Option<f64>,
    ) -> GovernorSnapshot {
        let mut snap = GovernorSnapshot {
            method: Method::Off,
            cgroup: None,
            budget_cpus: settings.cpus.map(crate::units::Cores::get),
            duty: None,
            state: GovernorState::Off,
            measured_cpus: measured,
            priority: settings.priority,
        };
        match self {
            Source::Off => {}
            Source::Signals(readings) => {
                let r = readings.snapshot();
                snap.method = Method::Signals;
                snap.budget_cpus = Some(r.budget);
                snap.duty = Some(r.fraction);
                snap.state = match (r.finished, r.throttling) {
                    (true, _) => GovernorState::Stopped,
                    (false, true) => GovernorState::Throttling,
                    (false, false) => GovernorState::Resting,
                };
            }
            Source::Cgroup(version) => {
                snap.method = Method::Cgroup;
                snap.cgroup = Some(*version);
                snap.state = GovernorState::Capped;
            }
        }
        snap
    }
}

/// How often per window the thread looks for changed readings.
pub(crate) const TICKS_PER_WINDOW: u32 = 4;

/// The publishing thread of one governor; [`Publisher::stop`] (or drop) ends it and publishes
/// a last snapshot in state `stopped`.
#[derive(Debug)]
pub(super) struct Publisher {
    stop_tx: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Where and what it publishes (the last snapshot too, after the thread ended).
    tx: SnapshotSender,
    source: Source,
    settings: GovernorSettings,
}

impl Publisher {
    /// Publishes a first snapshot at once, then one per `window` (and whenever the readings
    /// change in between) from a thread named `governor-status`.
    pub(super) fn start(
        pid: i32,
        window: Duration,
        source: Source,
        settings: GovernorSettings,
        tx: SnapshotSender,
    ) -> std::io::Result<Publisher> {
        tx.send_replace(Some(source.snapshot(&settings, None)));
        let (stop_tx, stop_rx) = mpsc::channel();
        let (thread_tx, thread_source) = (tx.clone(), source.clone());
        let thread = std::thread::Builder::new()
            .name("governor-status".into())
            .spawn(move || {
                let mut meter = WindowMeter::new(pid);
                let tick = window / TICKS_PER_WINDOW;
                let mut window_start = Instant::now();
                let mut measured = None;
                loop {
                    // A stop, or the handle gone.
                    if stop_rx.recv_timeout(tick) != Err(RecvTimeoutError::Timeout) {
                        return;
                    }
                    let now = Instant::now();
                    let closed = now.duration_since(window_start) + tick / 2 >= window;
                    if closed {
                        measured = meter.next(now);
                        window_start = now;
                    }
                    let snap = thread_source.snapshot(&settings, measured);
                    let ended = snap.state == GovernorState::Stopped;
                    thread_tx.send_if_modified(|current| {
                        let changed = closed || current.as_ref() != Some(&snap);
                        if changed {
                            *current = Some(snap);
                        }
                        changed
                    });
                    if ended {
                        return;
                    }
                }
            })?;
        Ok(Publisher {
            stop_tx: Some(stop_tx),
            thread: Some(thread),
            tx,
            source,
            settings,
        })
    }

    /// Ends the thread without a last snapshot: the governor goes on, reporting elsewhere
    /// (see [`super::GovernorHandle::report_to`]). Returns whether a thread was running.
    pub(super) fn detach(&mut self) -> bool {
        drop(self.stop_tx.take());
        let Some(thread) = self.thread.take() else {
            return false;
        };
        if thread.join().is_err() {
            tracing::error!("governor status thread panicked");
        }
        true
    }

    /// Ends the thread and publishes the final snapshot (state `stopped`). Idempotent.
    pub(super) fn stop(&mut self) {
        if self.detach() {
            let mut snap = self.source.snapshot(&self.settings, None);
            snap.measured_cpus = self.tx.borrow().as_ref().and_then(|s| s.measured_cpus);
            snap.state = GovernorState::Stopped;
            self.tx.send_replace(Some(snap));
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The child's CPU in cores between successive readings of its exact CPU clock.
struct WindowMeter {
    pid: i32,
    last: Option<(Instant, Duration)>,
}

impl WindowMeter {
    fn new(pid: i32) -> WindowMeter {
        WindowMeter {
            pid,
            last: crate::meter::process_cpu(pid).map(|cpu| (Instant::now(), cpu)),
        }
    }

    /// Cores used since the previous reading (`None` when the child cannot be read, or on the
    /// first reading after it could not be).
    fn next(&mut self, now: Instant) -> Option<f64> {
        let reading = crate::meter::process_cpu(self.pid).map(|cpu| (now, cpu));
        let previous = std::mem::replace(&mut self.last, reading);
        cores_between(previous?, reading?)
    }
}

/// Cores used between two (wall, CPU) readings.
fn cores_between(before: (Instant, Duration), after: (Instant, Duration)) -> Option<f64> {
    let wall = after.0.saturating_duration_since(before.0).as_secs_f64();
    (wall > 0.0).then(|| after.1.saturating_sub(before.1).as_secs_f64() / wall)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> GovernorSettings {
        GovernorSettings {
            cpus: Some(crate::units::Cores::new(0.5).unwrap()),
            threads: Some(1),
            priority: Priority::Background,
            adaptive: None,
            host: crate::host::Host::unrestricted(2),
            method: Method::Auto,
            period: Duration::from_millis(20),
        }
    }

    #[test]
    fn cores_are_cpu_over_wall() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            cores_between((t0, Duration::ZERO), (t1, Duration::from_secs(1))),
            Some(0.5)
        );
        assert_eq!(
            cores_between((t1, Duration::ZERO), (t1, Duration::ZERO)),
            None
        );
    }

    #[test]
    fn states_serialise_in_snake_case() {
        let snap = Source::Cgroup(CgroupVersion::V2).snapshot(&settings(), Some(0.25));
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json["state"], "capped");
        assert_eq!(json["method"], "cgroup");
        assert_eq!(json["cgroup"], "v2");
        assert_eq!(json["measured_cpus"], 0.25);
        let back: GovernorSnapshot = serde_json::from_value(json).unwrap();
        assert_eq!(back, snap);
    }

    #[test]
    fn measures_a_burning_child_over_its_own_window() {
        /// Killed and reaped on drop, so a failed assertion leaves no busy loop behind.
        struct Burner(std::process::Child);
        impl Drop for Burner {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        // A child that burns one core; the publisher measures it over 100 ms windows.
        let burner = Burner(
            std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .unwrap(),
        );
        let (tx, mut rx) = watch::channel(None);
        let mut publisher = Publisher::start(
            burner.0.id() as i32,
            Duration::from_millis(100),
            Source::Off,
            settings(),
            tx,
        )
        .unwrap();
        assert_eq!(rx.borrow_and_update().as_ref().unwrap().measured_cpus, None);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let measured = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    rx.changed().await.unwrap();
                    if let Some(m) = rx.borrow_and_update().as_ref().unwrap().measured_cpus {
                        return m;
                    }
                }
            })
            .await
            .expect("no measured snapshot within 5 s")
        });
        // One busy process: close to a core, more than a fraction of one even on a loaded host.
        assert!(measured > 0.2, "measured {measured}");
        publisher.stop();
        let last = rx.borrow().clone().unwrap();
        assert_eq!(last.state, GovernorState::Stopped);
    }
}
