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
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What the limiter needs to know.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LimiterParams {
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
    /// What this process may use (thread caps, the adaptive budget's arithmetic).
    pub host: Host,
}

/// Live readings published by the limiter thread (for the governor's snapshot, see
/// [`super::snapshot`]).
#[derive(Debug, Default)]
pub struct LimiterReadings {
    budget: AtomicU64,
    fraction: AtomicU64,
    throttling: AtomicBool,
    finished: AtomicBool,
}

/// A copy of the readings at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LimiterSnapshot {
    /// The budget in force (lower than the profile's in adaptive mode), in cores.
    pub budget: f64,
    /// Share of each period the child runs.
    pub fraction: f64,
    /// True while requests are in flight and the child is being duty-cycled.
    pub throttling: bool,
    /// True once the thread has ended (child gone, stopped, or an error).
    pub finished: bool,
}

fn store(a: &AtomicU64, v: f64) {
    a.store(v.to_bits(), Ordering::Relaxed);
}

fn load(a: &AtomicU64) -> f64 {
    f64::from_bits(a.load(Ordering::Relaxed))
}

impl LimiterReadings {
    /// A copy of the readings now.
    pub fn snapshot(&self) -> LimiterSnapshot {
        LimiterSnapshot {
            budget: load(&self.budget),
            fraction: load(&self.fraction),
            throttling: self.throttling.load(Ordering::Relaxed),
            finished: self.finished.load(Ordering::Relaxed),
        }
    }
}

/// Nanoseconds every limiter of this process has held its child stopped, SIGSTOP to SIGCONT.
static STOPPED_NS: AtomicU64 = AtomicU64::new(0);

/// How long the duty cycle has held children stopped, summed over this process's limiters.
pub fn total_stopped() -> Duration {
    Duration::from_nanos(STOPPED_NS.load(Ordering::Relaxed))
}

/// A running duty-cycle limiter; stopping or dropping it continues the child.
#[derive(Debug)]
pub struct SignalLimiter {
    stop_tx: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    target: Arc<PinnedPid>,
    readings: Arc<LimiterReadings>,
}

impl SignalLimiter {
    /// Starts the limiter thread on `target`.
    pub fn start(
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
                    raise_own_priority();
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
                        window: params.feedback.window,
                        activity: activity_rx,
                        stop: stop_rx,
                        readings: &readings,
                    };
                    match lp.run() {
                        Ok(()) => tracing::debug!(pid = target.pid(), "duty-cycle limiter ended"),
                        Err(err) if is_gone(&err) => {
                            tracing::info!(pid = target.pid(), "limited process is gone")
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
    pub fn snapshot(&self) -> LimiterSnapshot {
        self.readings.snapshot()
    }

    /// The live readings, shared with the thread that updates them.
    pub fn readings(&self) -> Arc<LimiterReadings> {
        Arc::clone(&self.readings)
    }

    /// Ends the thread and continues the child. Idempotent.
    pub fn stop(&mut self) {
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
        let gone = || io::Error::from_raw_os_error(libc::ESRCH);
        let mut next = Instant::now();
        let mut window_start = next;
        let mut cpu_start = crate::meter::process_cpu(pid).ok_or_else(gone)?;
        let mut sys_start = crate::meter::system_times().ok();
        // The partial feedback window of the last request carries over; the load window keeps
        // running across the rest (or starts again after a long one).
        if let Some((_, load)) = &mut self.adaptive {
            if let Some(reading) = load_reading(pid, window_start) {
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
            let check: bool;
            if self.ctl.unthrottled() {
                // Unknown programs are checked as often while unthrottled as while throttled: a
                // thread that starts computing must not run free until the window ends.
                let nap = if follow.is_some() {
                    self.window
                        .min(self.ctl.period() * THREAD_CHECK_PERIODS as u32)
                } else {
                    self.window
                };
                // Wake for the adaptive window too: the budget may have to drop below usable.
                let nap = match &self.adaptive {
                    Some((_, load)) => nap.min(load.until_due(Instant::now())),
                    None => nap,
                };
                let (activity, stop) = (&mut self.activity, &mut self.stop);
                rt.block_on(async {
                    tokio::select! {
                        _ = tokio::time::sleep(nap) => {}
                        _ = activity.changed() => {}
                        _ = stop.changed() => {}
                    }
                });
                next = Instant::now();
                check = true;
            } else {
                let period = self.ctl.period();
                sleep_until(next + self.ctl.run_time());
                let stopped = Instant::now();
                self.target.stop()?;
                sleep_until(next + period);
                self.target.resume()?;
                STOPPED_NS.fetch_add(stopped.elapsed().as_nanos() as u64, Ordering::Relaxed);
                next += period;
                let now = Instant::now();
                if now > next + period {
                    next = now;
                }
                periods += 1;
                check = periods % THREAD_CHECK_PERIODS == 0;
            }
            let now = Instant::now();
            // A program we know nothing about may start threads, or set idle ones computing, at
            // any time: follow it every few periods, and start a fresh feedback window when the
            // CPUs it can keep busy change.
            if let (true, Some(f)) = (check, &mut follow) {
                if let Some(usable) = f.check(pid, now, &self.ctl, &self.host) {
                    self.ctl.set_usable(usable);
                    self.ctl.reset_window();
                    window_start = now;
                    cpu_start = crate::meter::process_cpu(pid).ok_or_else(gone)?;
                    sys_start = crate::meter::system_times().ok();
                }
            }
            self.adapt_if_due(pid, now);
            let wall = now.duration_since(window_start);
            if wall < self.window.saturating_sub(self.ctl.window_wall()) {
                continue;
            }
            let cpu = crate::meter::process_cpu(pid).ok_or_else(gone)?;
            let used = cpu.saturating_sub(cpu_start);
            let (machine, sys) = machine_since(sys_start);
            sys_start = sys;
            let measured = self.ctl.observe_on(wall, used, machine);
            if let Some(f) = &mut follow {
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
            store(&self.readings.budget, self.ctl.cpus());
            store(&self.readings.fraction, self.ctl.fraction());
            tracing::trace!(
                pid,
                ?measured,
                budget = self.ctl.cpus(),
                fraction = self.ctl.fraction(),
                correction = self.ctl.correction(),
                "governor window"
            );
            window_start = now;
            cpu_start = cpu;
        }
        // The rest of this request's throttled time joins the next request's window.
        if let Some(cpu) = crate::meter::process_cpu(pid) {
            let (machine, _) = machine_since(sys_start);
            let wall = Instant::now().duration_since(window_start);
            self.ctl
                .observe_on(wall, cpu.saturating_sub(cpu_start), machine);
        }
        Ok(())
    }

    /// Closes the adaptive load window when it has lasted its length and moves the budget.
    fn adapt_if_due(&mut self, pid: i32, now: Instant) {
        let Some((budget, load)) = &mut self.adaptive else {
            return;
        };
        if !load.due(now) {
            return;
        }
        let Some(sample) = load_reading(pid, now).and_then(|r| load.observe(r)) else {
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
        store(&self.readings.budget, cpus);
        store(&self.readings.fraction, self.ctl.fraction());
        tracing::trace!(
            pid,
            machine = sample.machine_busy,
            own = sample.own_cores,
            budget = cpus,
            "adaptive window"
        );
    }
}

/// The child's CPU clock and the machine's, read now (`None` when either cannot be read).
fn load_reading(pid: i32, at: Instant) -> Option<LoadReading> {
    Some(LoadReading {
        at,
        own_cpu: crate::meter::process_cpu(pid)?,
        system: crate::meter::system_times().ok()?,
    })
}

/// How busy the machine was since `before`, and the reading now (for the next window).
fn machine_since(
    before: Option<crate::meter::SystemTimes>,
) -> (Machine, Option<crate::meter::SystemTimes>) {
    let sys = crate::meter::system_times().ok();
    let busy = match (sys, before) {
        (Some(now), Some(before)) => Some(now.busy_fraction_since(&before)),
        _ => None,
    };
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

/// Gives the limiter thread a real-time priority where allowed (else the highest nice it may
/// take). Its stop deadlines fall while the child keeps every CPU busy; at normal priority the
/// scheduler may wake it milliseconds late (wakeup granularity), and the child runs on for that
/// long, so the budget overshoots. The thread sleeps between deadlines, so this costs nothing.
fn raise_own_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread.
    unsafe {
        let param = libc::sched_param { sched_priority: 10 };
        if libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 {
            tracing::debug!("governor thread runs SCHED_FIFO");
            return;
        }
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, -10) != 0 {
            tracing::debug!(
                "governor thread keeps its normal priority (no permission to raise it)"
            );
        }
    }
    #[cfg(target_os = "macos")]
    // SAFETY: plain system call on the calling thread.
    unsafe {
        libc::pthread_set_qos_class_self_np(libc::qos_class_t::QOS_CLASS_USER_INTERACTIVE, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};

    /// Others keep one core busy on an 8-CPU machine whose affinity mask (or quota) leaves this
    /// process 2 cores; the child uses 0.5. Adaptive at 75 % of what this process may use:
    /// room = 0.75 * 2 - 1 = 0.5 cores, whatever the machine's other 6 CPUs do.
    #[test]
    fn adaptive_counts_others_in_cores_on_a_restricted_host() {
        use crate::host::{CpuQuota, QuotaSource};
        let params = AdaptiveParams {
            base: 1.0,
            target: 0.75,
            floor: 0.1,
            recover_per_sec: 0.1,
        };
        let machine_busy = 1.5 / 8.0;
        let pinned = Host {
            online_cpus: 8,
            affinity_cpus: 2,
            last_allowed_cpu: Some(1),
            quota: None,
        };
        let quota = Host {
            online_cpus: 8,
            affinity_cpus: 8,
            last_allowed_cpu: Some(7),
            quota: Some(CpuQuota {
                cores: 2.0,
                source: QuotaSource::CgroupV2,
            }),
        };
        for host in [pinned, quota] {
            let mut budget = AdaptiveBudget::new(params);
            let now = adapt(
                &mut budget,
                &host,
                machine_busy,
                0.5,
                Duration::from_secs(1),
            );
            assert!((now - 0.5).abs() < 1e-9, "{host:?}: budget {now}");
        }
        // An unrestricted machine: the same readings mean the same thing as before.
        let mut budget = AdaptiveBudget::new(params);
        let now = adapt(
            &mut budget,
            &Host::unrestricted(2),
            0.75,
            0.5,
            Duration::from_secs(1),
        );
        assert!((now - 0.5).abs() < 1e-9, "budget {now}");
    }

    fn spawn_sleep() -> (Child, PinnedPid) {
        let child = Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let target = PinnedPid::open(child.id() as i32).unwrap();
        (child, target)
    }

    fn params(cpus: f64) -> LimiterParams {
        LimiterParams {
            cpus,
            usable: Some(1),
            period: Duration::from_millis(20),
            feedback: crate::config::Config::builtin()
                .unwrap()
                .governor
                .feedback(),
            adaptive: None,
            host: Host::detect(),
        }
    }

    /// Continued: sleeping, or momentarily runnable right after SIGCONT woke it.
    fn running(pid: i32) -> bool {
        matches!(crate::meter::process_state(pid), Some('S' | 'R'))
    }

    fn wait_state(pid: i32, pred: impl Fn(Option<char>) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if pred(crate::meter::process_state(pid)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn rests_when_idle_and_throttles_when_active() {
        let (mut child, target) = spawn_sleep();
        let pid = child.id() as i32;
        let activity = Activity::new();
        // A tiny budget: the child is stopped ~98 % of each period while active.
        let mut limiter = SignalLimiter::start(target, params(0.02), &activity).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(!limiter.snapshot().throttling);
        assert!(wait_state(pid, |s| s == Some('S')));
        let guard = activity.begin();
        assert!(wait_state(pid, |s| s == Some('T')), "never stopped");
        assert!(limiter.snapshot().throttling);
        drop(guard);
        std::thread::sleep(Duration::from_millis(100));
        assert!(!limiter.snapshot().throttling);
        for _ in 0..20 {
            assert!(running(pid), "{:?}", crate::meter::process_state(pid));
            std::thread::sleep(Duration::from_millis(5));
        }
        let _busy = activity.begin();
        assert!(wait_state(pid, |s| s == Some('T')));
        limiter.stop();
        limiter.stop();
        assert!(running(pid), "{:?}", crate::meter::process_state(pid));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn drop_continues_the_child() {
        let (mut child, target) = spawn_sleep();
        let pid = child.id() as i32;
        let activity = Activity::new();
        let _busy = activity.begin();
        let limiter = SignalLimiter::start(target, params(0.02), &activity).unwrap();
        assert!(wait_state(pid, |s| s == Some('T')));
        drop(limiter);
        assert!(running(pid), "{:?}", crate::meter::process_state(pid));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn ends_when_the_child_is_gone() {
        let (mut child, target) = spawn_sleep();
        let activity = Activity::new();
        let _busy = activity.begin();
        let limiter = SignalLimiter::start(target, params(0.5), &activity).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        while !limiter.snapshot().finished {
            assert!(Instant::now() < deadline, "limiter kept running");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
