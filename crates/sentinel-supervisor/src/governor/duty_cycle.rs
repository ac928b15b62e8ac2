//! The duty-cycle limiter: SIGSTOP/SIGCONT on a fixed period, the run time per period from the
//! [`DutyController`].
//!
//! One dedicated thread does the work. Deadlines are absolute (`start + k * period`), so sleep
//! overshoot never accumulates; after a long stall (a suspended laptop) the schedule re-anchors
//! instead of catching up. CPU is read once per feedback window, so the thread wakes only twice
//! per period and costs a fraction of a percent of one core.
//!
//! It throttles only while [`Activity::in_flight`] is above zero. Otherwise it rests: the child is
//! continued and the thread blocks on the activity channel (no wakeups at all). Whatever ends the
//! thread - [`SignalLimiter::stop`], drop, an error, a panic - the child is continued last.
//!
//! Nothing it learns is lost to a rest: the feedback window counts throttled time only and a
//! partial one is carried over to the next request (a window closes after a second of
//! throttling however the requests split it), and the adaptive budget reads the machine over a
//! [`LoadWindow`] of wall time that keeps running across rests. With requests shorter than the
//! window both still move.

use super::adaptive::{AdaptiveBudget, AdaptiveParams, LoadReading, LoadWindow};
use super::controller::{DutyController, Feedback, Machine};
use super::pinned::{is_gone, PinnedPid};
use super::threads::{thread_cap, FollowThreads, THREAD_CHECK_PERIODS};
use super::Activity;
use crate::host::Host;
use crate::meter::SystemTimes;
use readings::store;
pub(crate) use readings::{LimiterReadings, LimiterSnapshot, StoppedTime};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What the limiter needs to know.
#[derive(Clone, Debug)]
pub(crate) struct LimiterParams {
    /// Budget in cores.
    pub cpus: f64,
    /// CPUs the child can keep busy: `min(threads, allowed cpus)`; `None` follows the child's
    /// thread count, re-read every feedback window (for `limit` on an unknown program).
    pub usable: Option<usize>,
    /// The duty-cycle period (10-20 ms).
    pub period: Duration,
    pub feedback: Feedback,
    /// Shrink the budget while other processes load the machine.
    pub adaptive: Option<AdaptiveParams>,
    /// What this process may use (thread caps, the adaptive budget's arithmetic) and the
    /// machine's online CPUs (its CPU counters).
    pub host: Host,
    /// Where the limiter adds the time it holds the child stopped.
    pub stopped: StoppedTime,
}

/// A running duty-cycle limiter; stopping or dropping it continues the child.
#[derive(Debug)]
pub(crate) struct SignalLimiter {
    stop_tx: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    target: Arc<PinnedPid>,
    readings: Arc<LimiterReadings>,
}

impl SignalLimiter {
    /// Starts the limiter thread on `target`.
    pub(crate) fn start(
        target: PinnedPid,
        params: LimiterParams,
        activity: &Activity,
    ) -> io::Result<SignalLimiter> {
        let target = Arc::new(target);
        let readings = Arc::new(LimiterReadings::default());
        store(&readings.budget, params.cpus);
        let (stop_tx, stop_rx) = watch::channel(false);
        let activity_rx = activity.subscribe();
        let thread = {
            let target = Arc::clone(&target);
            let readings = Arc::clone(&readings);
            std::thread::Builder::new()
                .name("governor-signals".into())
                .spawn(move || {
                    let _resume = ResumeOnDrop(&target);
                    // Its stop deadlines fall while the child keeps every CPU busy; at
                    // normal priority the scheduler may wake it milliseconds late, and the
                    // child runs on for that long, so the budget overshoots.
                    super::priority::raise_current_thread();
                    let mut lp = Loop {
                        target: &target,
                        ctl: DutyController::new(
                            params.cpus,
                            params
                                .usable
                                .unwrap_or_else(|| thread_cap(target.pid(), &params.host)),
                            params.period,
                            params.feedback,
                        ),
                        adaptive: params.adaptive.map(|a| {
                            (
                                AdaptiveBudget::new(a),
                                LoadWindow::new(params.feedback.window),
                            )
                        }),
                        follow_threads: params.usable.is_none(),
                        host: params.host,
                        stopped: params.stopped,
                        window: params.feedback.window,
                        activity: activity_rx,
                        stop: stop_rx,
                        readings: &readings,
                    };
                    match lp.run() {
                        Ok(()) => tracing::debug!(pid = target.pid(), "duty-cycle limiter ended"),
                        Err(err) if is_gone(&err) => {
                            tracing::info!(pid = target.pid(), "limited process is gone");
                        }
                        Err(err) => tracing::warn!(
                            pid = target.pid(),
                            error = %err,
                            "duty-cycle limiter failed; the process runs unthrottled"
                        ),
                    }
                    readings.throttling.store(false, Ordering::Relaxed);
                    readings.finished.store(true, Ordering::Relaxed);
                })?
        };
        Ok(SignalLimiter {
            stop_tx,
            thread: Some(thread),
            target,
            readings,
        })
    }

    /// The current readings.
    pub(crate) fn snapshot(&self) -> LimiterSnapshot {
        self.readings.snapshot()
    }

    /// The live readings, shared with the thread that updates them.
    pub(crate) fn readings(&self) -> Arc<LimiterReadings> {
        Arc::clone(&self.readings)
    }

    /// Ends the thread and continues the child. Idempotent.
    pub(crate) fn stop(&mut self) {
        self.stop_tx.send_replace(true);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(
                    pid = self.target.pid(),
                    "duty-cycle limiter thread panicked"
                );
            }
        }
        // The thread resumed on its way out; once more in case it never ran.
        if let Err(err) = self.target.resume() {
            if !is_gone(&err) {
                tracing::warn!(pid = self.target.pid(), error = %err, "could not continue the process");
            }
        }
    }
}

impl Drop for SignalLimiter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Continues the child when the thread ends, by return or by panic.
struct ResumeOnDrop<'a>(&'a PinnedPid);

impl Drop for ResumeOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.resume();
    }
}

struct Loop<'a> {
    target: &'a PinnedPid,
    ctl: DutyController,
    adaptive: Option<(AdaptiveBudget, LoadWindow)>,
    follow_threads: bool,
    host: Host,
    stopped: StoppedTime,
    window: Duration,
    activity: watch::Receiver<usize>,
    stop: watch::Receiver<bool>,
    readings: &'a LimiterReadings,
}

impl Loop<'_> {
    fn run(&mut self) -> io::Result<()> {
        // A runtime without I/O, only to block on the watch channels while resting.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        store(&self.readings.fraction, self.ctl.fraction());
        loop {
            if *self.stop.borrow() {
                return Ok(());
            }
            if *self.activity.borrow_and_update() == 0 {
                self.target.resume()?;
                self.readings.throttling.store(false, Ordering::Relaxed);
                tracing::trace!(pid = self.target.pid(), "governor resting");
                let (activity, stop) = (&mut self.activity, &mut self.stop);
                let closed = rt.block_on(async {
                    tokio::select! {
                        r = activity.wait_for(|n| *n > 0) => r.is_err(),
                        _ = stop.wait_for(|s| *s) => false,
                    }
                });
                if closed {
                    // Every Activity handle dropped: nothing will ever be in flight again.
                    let _ = rt.block_on(stop.wait_for(|s| *s));
                    return Ok(());
                }
                continue;
            }
            self.readings.throttling.store(true, Ordering::Relaxed);
            tracing::trace!(pid = self.target.pid(), "governor throttling");
            self.throttle(&rt)?;
        }
    }

    /// Duty-cycles the child until nothing is in flight or the limiter is stopped.
    fn throttle(&mut self, rt: &tokio::runtime::Runtime) -> io::Result<()> {
        let pid = self.target.pid();
        let mut next = Instant::now();
        let mut window = self.window_at(pid, next)?;
        // The partial feedback window of the last request carries over; the load window keeps
        // running across the rest (or starts again after a long one).
        if let Some((_, load)) = &mut self.adaptive {
            if let Some(reading) = load_reading(pid, window.start, self.host.online_cpus) {
                load.begin(reading);
            }
        }
        let mut periods: u64 = 0;
        // A program we know nothing about: size the run time for all its threads at first (it
        // cannot exceed the budget), then for those that turn out to compute.
        let mut follow = self
            .follow_threads
            .then(|| FollowThreads::start(pid, &self.host));
        if let Some(f) = &follow {
            self.ctl.set_usable(f.cap);
        }
        while !*self.stop.borrow() && *self.activity.borrow() > 0 {
            let check = if self.ctl.unthrottled() {
                self.wait_unthrottled(rt, follow.is_some());
                next = Instant::now();
                true
            } else {
                self.one_period(&mut next)?;
                periods += 1;
                periods % THREAD_CHECK_PERIODS == 0
            };
            let now = Instant::now();
            // A program we know nothing about may start threads, or set idle ones computing, at
            // any time: follow it every few periods, and start a fresh feedback window when the
            // CPUs it can keep busy change.
            if let (true, Some(f)) = (check, &mut follow) {
                if let Some(usable) = f.check(pid, now, &self.ctl, &self.host) {
                    self.ctl.set_usable(usable);
                    self.ctl.reset_window();
                    window = self.window_at(pid, now)?;
                }
            }
            self.adapt_if_due(pid, now);
            let wall = now.duration_since(window.start);
            if wall >= self.window.saturating_sub(self.ctl.window_wall()) {
                window = self.close_window(pid, now, &window, follow.as_mut())?;
            }
        }
        // The rest of this request's throttled time joins the next request's window.
        if let Some(cpu) = crate::meter::process_cpu(pid) {
            let (machine, _) = machine_since(window.system, self.host.online_cpus);
            let wall = Instant::now().duration_since(window.start);
            self.ctl
                .observe_on(wall, cpu.saturating_sub(window.cpu), machine);
        }
        Ok(())
    }

    /// A feedback window starting at `start`, with the child's and the machine's clocks now.
    fn window_at(&self, pid: i32, start: Instant) -> io::Result<Window> {
        Ok(Window {
            start,
            cpu: crate::meter::process_cpu(pid).ok_or_else(gone)?,
            system: crate::meter::system_times(self.host.online_cpus).ok(),
        })
    }

    /// Waits while the budget leaves the child unthrottled, until activity or the limiter
    /// changes, the window ends, or (for an unknown program) its threads are due a check.
    fn wait_unthrottled(&mut self, rt: &tokio::runtime::Runtime, following: bool) {
        // Unknown programs are checked as often while unthrottled as while throttled: a
        // thread that starts computing must not run free until the window ends.
        let nap = if following {
            self.window
                .min(self.ctl.period() * THREAD_CHECK_PERIODS as u32)
        } else {
            self.window
        };
        // Wake for the adaptive window too: the budget may have to drop below usable.
        let nap = self
            .adaptive
            .as_ref()
            .map_or(nap, |(_, load)| nap.min(load.until_due(Instant::now())));
        let (activity, stop) = (&mut self.activity, &mut self.stop);
        rt.block_on(async {
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                _ = activity.changed() => {}
                _ = stop.changed() => {}
            }
        });
    }

    /// One period from the deadline `next`: run, stop, continue at the next deadline (counted
    /// in [`StoppedTime`]); after a stall the schedule re-anchors instead of catching up.
    fn one_period(&mut self, next: &mut Instant) -> io::Result<()> {
        let period = self.ctl.period();
        sleep_until(*next + self.ctl.run_time());
        let stopped = Instant::now();
        self.target.stop()?;
        sleep_until(*next + period);
        self.target.resume()?;
        self.stopped.add(stopped.elapsed());
        *next += period;
        let now = Instant::now();
        if now > *next + period {
            *next = now;
        }
        Ok(())
    }

    /// Closes the feedback window `window` at `now`: the controller observes the child's CPU
    /// against the wall time (and, for an unknown program, how many of its threads computed);
    /// the readings are published. Returns the next window.
    fn close_window(
        &mut self,
        pid: i32,
        now: Instant,
        window: &Window,
        follow: Option<&mut FollowThreads>,
    ) -> io::Result<Window> {
        let wall = now.duration_since(window.start);
        let cpu = crate::meter::process_cpu(pid).ok_or_else(gone)?;
        let used = cpu.saturating_sub(window.cpu);
        let (machine, system) = machine_since(window.system, self.host.online_cpus);
        let measured = self.ctl.observe_on(wall, used, machine);
        if let Some(f) = follow {
            let allowed = wall.mul_f64(self.ctl.fraction());
            if let Some(n) = f.computing.count(pid, allowed) {
                // On a saturated machine computing threads fall short of their time for
                // other processes' sake, not because they stopped: count up, never down.
                let n = n.clamp(1, f.cap.max(1));
                if machine == Machine::HasRoom || n as f64 > self.ctl.usable() {
                    self.ctl.set_usable(n);
                }
            }
        }
        self.publish();
        tracing::trace!(
            pid,
            ?measured,
            budget = self.ctl.cpus(),
            fraction = self.ctl.fraction(),
            correction = self.ctl.correction(),
            "governor window"
        );
        Ok(Window {
            start: now,
            cpu,
            system,
        })
    }

    /// Publishes the budget and run fraction in force.
    fn publish(&self) {
        store(&self.readings.budget, self.ctl.cpus());
        store(&self.readings.fraction, self.ctl.fraction());
    }

    /// Closes the adaptive load window when it has lasted its length and moves the budget.
    fn adapt_if_due(&mut self, pid: i32, now: Instant) {
        let Some((budget, load)) = &mut self.adaptive else {
            return;
        };
        if !load.due(now) {
            return;
        }
        let online = self.host.online_cpus;
        let Some(sample) = load_reading(pid, now, online).and_then(|r| load.observe(r)) else {
            return;
        };
        let cpus = adapt(
            budget,
            &self.host,
            sample.machine_busy,
            sample.own_cores,
            sample.wall,
        );
        self.ctl.set_cpus(cpus);
        self.publish();
        tracing::trace!(
            pid,
            machine = sample.machine_busy,
            own = sample.own_cores,
            budget = cpus,
            "adaptive window"
        );
    }
}

/// The feedback window in progress: when it started, and the child's CPU clock and the
/// machine's counters then.
struct Window {
    start: Instant,
    cpu: Duration,
    system: Option<SystemTimes>,
}

/// The error of a child that is gone.
fn gone() -> io::Error {
    io::Error::from_raw_os_error(libc::ESRCH)
}

/// The child's CPU clock and the machine's, read now (`None` when either cannot be read).
fn load_reading(pid: i32, at: Instant, online_cpus: usize) -> Option<LoadReading> {
    Some(LoadReading {
        at,
        own_cpu: crate::meter::process_cpu(pid)?,
        system: crate::meter::system_times(online_cpus).ok()?,
    })
}

/// How busy the machine was since `before`, and the reading now (for the next window).
fn machine_since(
    before: Option<SystemTimes>,
    online_cpus: usize,
) -> (Machine, Option<SystemTimes>) {
    let sys = crate::meter::system_times(online_cpus).ok();
    let busy = sys
        .zip(before)
        .map(|(now, before)| now.busy_fraction_since(&before));
    let machine = if busy.is_some_and(|b| b >= SATURATED) {
        Machine::Saturated
    } else {
        Machine::HasRoom
    };
    (machine, sys)
}

/// Moves the adaptive budget from one window's readings: `machine_busy`, the busy share of the
/// whole machine (every online CPU), and `own_cores`, the child's CPU in cores. The share is
/// turned into cores with the online CPUs (its denominator) and the room is reckoned in the
/// cores this process may use (affinity mask, quota): mixing the two, as a share of the online
/// CPUs times the allowed ones, loses what others run on a restricted host.
fn adapt(
    adaptive: &mut AdaptiveBudget,
    host: &Host,
    machine_busy: f64,
    own_cores: f64,
    wall: Duration,
) -> f64 {
    adaptive.update(
        host.machine_share_to_cores(machine_busy),
        own_cores,
        host.allowed_cores(),
        wall,
    )
}

/// System busy share at which the machine counts as saturated (see
/// [`DutyController::observe_on`]).
const SATURATED: f64 = 0.95;

/// Sleeps until an absolute instant (no-op when it has passed).
fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

mod readings;
#[cfg(test)]
mod tests;
