//! How setup runs the programs it needs (pip, Python's `venv`, cmake, and the ninja and
//! compilers cmake starts): the way the product runs its model, so an install on an endpoint is
//! as quiet as the endpoint itself.
//!
//! Every program goes through the one spawn path, [`crate::os::process::spawn_in_group`] (its
//! own process group, a death signal), at idle priority from its first instruction
//! ([`crate::governor::priority`]: `SCHED_IDLE` and nice 19 on Linux, nice 19 alone where
//! `SCHED_IDLE` is refused, Darwin background on macOS), and is handed to the governor `limit`
//! uses ([`crate::governor::Governor`]), which gives it a cgroup of its own carrying that priority
//! (`cpu.idle`, or the lowest weight) where one is writable and, when `[setup] cpus` (or
//! `--cpus`) sets a cap, holds it to the cap: a kernel cap on that cgroup, or the duty cycle on
//! its process group. What the program starts inherits all of it: the scheduling class (by
//! fork), the process group, the cgroup. Without a cap a person at a terminal gets a fast
//! build, only yielding to everything else.
//!
//! A setup enters its [`Runner`] for as long as it runs ([`Runner::enter`], on the thread that
//! runs it); the code that starts programs asks for the [`current`] one, so the build, tools and
//! fetch functions keep their signatures. Where none was entered the default applies: idle
//! priority, no cap.

use crate::governor::{
    Activity, ActivityGuard, Governor, GovernorConfig, GovernorHandle, GovernorSettings, Method,
    Prepared, Priority,
};
use crate::host::Host;
use crate::units::Cores;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::io;
use std::num::NonZeroUsize;
use std::process::{Child, Command, ExitStatus, Output, Stdio};

/// The `[setup]` section: how hard a build may use the machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildLimits {
    /// The CPU cap of the build, in cores; `None` = no cap (idle priority only).
    #[serde(default)]
    pub cpus: Option<Cores>,
    /// Parallel compile jobs; `None` = one per core of the cap, else one per allowed CPU.
    #[serde(default)]
    pub jobs: Option<NonZeroUsize>,
}

/// Why a program could not be run under the setup's limits.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunnerError {
    #[error(
        "could not hold `{program}` to the build's CPU cap of {cpus} cores: {source} (remove \
         `cpus` from [setup] in config.toml or the --cpus flag to build without a cap)"
    )]
    Governor {
        program: String,
        cpus: f64,
        source: crate::governor::GovernorError,
    },
}

/// Runs setup's programs at idle priority, in their own group, under the build's limits.
#[derive(Debug, Clone)]
pub struct Runner {
    limits: BuildLimits,
    host: Host,
}

thread_local! {
    static CURRENT: RefCell<Option<Runner>> = const { RefCell::new(None) };
}

/// The runner entered on this thread ([`Runner::enter`]), else the default one (idle priority,
/// no cap).
pub(crate) fn current() -> Runner {
    CURRENT
        .with(|c| c.borrow().clone())
        .unwrap_or_else(|| Runner::new(BuildLimits::default(), Host::detect()))
}

/// Restores the previously entered runner on drop.
#[must_use = "the runner is current only while this guard lives"]
pub struct Entered {
    previous: Option<Runner>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        // The setup has returned: an interruption ([`stop_all`]) ends with it.
        STOPPED.store(false, std::sync::atomic::Ordering::SeqCst);
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

impl Runner {
    pub fn new(limits: BuildLimits, host: Host) -> Runner {
        Runner { limits, host }
    }

    /// Makes this runner [`current`] on this thread until the guard drops.
    pub fn enter(self) -> Entered {
        let previous = CURRENT.with(|c| c.borrow_mut().replace(self));
        Entered {
            previous,
            _not_send: std::marker::PhantomData,
        }
    }

    #[cfg(test)]
    pub(crate) fn limits(&self) -> BuildLimits {
        self.limits
    }

    /// Parallel compile jobs: `[setup] jobs` (or `--jobs`), else one per started core of the
    /// cap (0.5 -> 1; more jobs than the cap only queue behind it, each holding its memory),
    /// else one per CPU this process may use.
    pub fn jobs(&self) -> usize {
        match self.limits.jobs {
            Some(jobs) => jobs.get(),
            None => crate::governor::threads_for_budget(
                self.limits.cpus.map(Cores::get),
                self.host.allowed_cpus(),
            ),
        }
    }

    /// Starts `cmd` at idle priority in its own process group and hands it to the governor;
    /// the returned [`Running`] program is stopped (its whole group) if dropped before it is
    /// waited for.
    pub fn spawn(&self, mut cmd: Command) -> io::Result<Running> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut groups = live_groups();
        if STOPPED.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                format!("setup was interrupted; `{program}` not started"),
            ));
        }
        let confined = self.confine(&mut cmd)?;
        let child = crate::os::process::spawn_in_group(cmd, Signal::SIGKILL)?;
        let pid = child.id() as i32;
        groups.insert(pid);
        drop(groups);
        let mut running = Running {
            child: Some(child),
            pid,
            governed: None,
        };
        let governed = confined.govern(pid, || running.exited());
        running.governed = Some(governed?);
        Ok(running)
    }

    /// Puts the program `cmd` will start under the setup's limits from its first instruction:
    /// idle priority, and the governor's cgroup made before it exists, so that it is born
    /// inside and so is all it starts (moved after the spawn, cmake had already started ninja
    /// outside the cap). [`Confined::govern`] then hands the started program to the governor.
    /// For programs that are not [`Runner::spawn`]'s, such as the smoke test's llama-server.
    pub(crate) fn confine(&self, cmd: &mut Command) -> io::Result<Confined> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        at_idle_priority(cmd);
        let governor = Governor::prepare(&governor_config(), self.governor_settings())
            .map_err(|source| self.governor_error(&program, source))?;
        governor
            .enter_on_exec(cmd)
            .map_err(|source| self.governor_error(&program, source))?;
        Ok(Confined {
            runner: self.clone(),
            program,
            governor,
        })
    }

    /// Runs `cmd` to its end (stdin closed) and returns its status.
    pub fn status(&self, mut cmd: Command) -> io::Result<ExitStatus> {
        cmd.stdin(Stdio::null());
        self.spawn(cmd)?.wait()
    }

    /// Runs `cmd` to its end (stdin closed) and returns its status and output.
    pub(crate) fn output(&self, mut cmd: Command) -> io::Result<Output> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.spawn(cmd)?.wait_with_output()
    }

    /// Whether `cmd` runs and succeeds, output discarded: for `--version` checks, which last
    /// milliseconds, so only the spawn path and the priority apply (no governor).
    pub(crate) fn probe(&self, mut cmd: Command) -> bool {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        at_idle_priority(&mut cmd);
        crate::os::process::spawn_in_group(cmd, Signal::SIGKILL)
            .and_then(|mut child| child.wait())
            .is_ok_and(|s| s.success())
    }

    fn governor_error(&self, program: &str, source: crate::governor::GovernorError) -> io::Error {
        io::Error::other(RunnerError::Governor {
            program: program.to_owned(),
            cpus: self.limits.cpus.map_or(0.0, Cores::get),
            source,
        })
    }

    fn governor_settings(&self) -> GovernorSettings {
        GovernorSettings {
            cpus: self.limits.cpus,
            // A build's process count changes all the time: follow it.
            threads: None,
            priority: Priority::Idle,
            adaptive: None,
            host: self.host,
            method: Method::Auto,
            period: governor_config().period,
        }
    }
}

/// Set by [`stop_all`]: the process is being interrupted.
static STOPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The process groups of the programs running now (their leaders' pids).
fn live_groups() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<i32>> {
    static GROUPS: std::sync::Mutex<std::collections::BTreeSet<i32>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    GROUPS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends SIGTERM to the group of every program a runner is running (continued first) and
/// refuses to start any more, for a setup that is interrupted: the programs are in groups of their own, out of reach of a
/// terminal's Ctrl-C, and the death signal reaches only the program itself (cmake), not what it
/// started; ninja, in cmake's group, stops its compile jobs on SIGTERM.
pub fn stop_all() {
    let groups = live_groups();
    // No program starts after this, until the setup returns (it fails at its next step).
    STOPPED.store(true, std::sync::atomic::Ordering::SeqCst);
    for pid in groups.iter().copied() {
        if let Err(err) = crate::os::process::signal_group(pid, Signal::SIGTERM) {
            tracing::debug!(pid, error = %err, "could not stop a setup program's group");
        }
    }
}

/// Without a writable cgroup the cap is the duty cycle on the program's process group, and
/// ninja starts each compile job in a process group of its own: those jobs escape the cap
/// (not the idle priority). Said once per process.
fn warn_cap_without_cgroup() {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        tracing::warn!(
            "no writable cgroup: the build's CPU cap holds over cmake and ninja but not over the \
             compile jobs ninja starts in process groups of their own (they run at idle \
             priority, [setup] jobs at a time); run setup as root or under the systemd unit \
             (Delegate=cpu) for the kernel to cap them all"
        );
    });
}

/// The shipped `[governor]` section (how `limit` limits a command).
fn governor_config() -> GovernorConfig {
    crate::config::Config::builtin()
        .map(|c| c.governor)
        .expect("the built-in config.toml is valid (checked by its tests)")
}

/// Idle priority from the program's first instruction. Refusals are not fatal: `SCHED_IDLE`
/// may be refused where nice 19 (set first) is not, and a build at normal priority is better
/// than none.
fn at_idle_priority(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: apply_to_current_process is async-signal-safe (plain system calls).
    unsafe {
        cmd.pre_exec(|| {
            let _ = crate::governor::apply_to_current_process(Priority::Idle);
            Ok(())
        });
    }
}

/// A program under the setup's limits, before it starts ([`Runner::confine`]).
pub(crate) struct Confined {
    runner: Runner,
    program: String,
    governor: Prepared,
}

impl Confined {
    /// Hands the started program `pid` to the governor. A program that finished at once
    /// (`exited`) is gone before it could be governed: that is its exit, not an error.
    pub(crate) fn govern(self, pid: i32, exited: impl FnOnce() -> bool) -> io::Result<Governed> {
        let Confined {
            runner,
            program,
            governor,
        } = self;
        let activity = Activity::new();
        // A setup program works from start to end: the duty cycle (where it is the method)
        // throttles all along.
        let busy = activity.begin();
        // Nothing reads a setup program's stopped time or snapshots.
        let handle = match governor.start(
            pid,
            activity,
            Default::default(),
            tokio::sync::watch::Sender::new(None),
        ) {
            Ok(handle) => Some(handle),
            Err(_) if exited() => None,
            Err(source) => return Err(runner.governor_error(&program, source)),
        };
        if runner.limits.cpus.is_some() && handle.as_ref().is_some_and(|h| h.cgroup().is_none()) {
            warn_cap_without_cgroup();
        }
        tracing::debug!(
            pid,
            %program,
            cpus = ?runner.limits.cpus.map(Cores::get),
            "setup program started at idle priority"
        );
        Ok(Governed {
            handle,
            _busy: busy,
        })
    }
}

/// A started program held by the governor until [`Governed::stop`] or drop.
pub(crate) struct Governed {
    handle: Option<GovernorHandle>,
    _busy: ActivityGuard,
}

impl Governed {
    fn cgroup(&self) -> Option<std::path::PathBuf> {
        self.handle.as_ref().and_then(GovernorHandle::cgroup)
    }

    fn stop(&mut self) {
        if let Some(mut handle) = self.handle.take() {
            handle.stop();
        }
    }
}

/// `reader`, read no faster than the CPU cap of the runner entered on this thread lets the
/// thread work (no pause where none was entered, or for a cap of a core or more: a thread uses
/// at most one).
pub(crate) fn paced<R: io::Read>(reader: R) -> Paced<R> {
    let cpus = CURRENT.with(|c| c.borrow().as_ref().and_then(|r| r.limits.cpus));
    Paced {
        inner: reader,
        cores: cpus.map(Cores::get).filter(|c| *c < 1.0),
        from: None,
    }
}

/// A reader held to a CPU cap below one core ([`paced`]): before each read, when the
/// calling thread has used more CPU since the last pause than the cap allows for the time
/// passed, it sleeps the difference. A pause, or a long wait in the read itself, starts the
/// count again, so no credit builds up for a burst.
pub(crate) struct Paced<R> {
    inner: R,
    cores: Option<f64>,
    /// The thread's CPU clock and the wall clock when the count started.
    from: Option<(std::time::Duration, std::time::Instant)>,
}

/// How far ahead of the cap the thread may run before it pauses: a tenth of a 100 ms window.
const PACE_SLACK: std::time::Duration = std::time::Duration::from_millis(10);

impl<R> Paced<R> {
    fn pace(&mut self) {
        let Some(cores) = self.cores else { return };
        let Some(cpu) = thread_cpu() else { return };
        let now = std::time::Instant::now();
        let Some((cpu_from, wall_from)) = self.from else {
            self.from = Some((cpu, now));
            return;
        };
        let allowed = (cpu - cpu_from).div_f64(cores);
        let passed = now - wall_from;
        if allowed > passed + PACE_SLACK {
            std::thread::sleep(allowed - passed);
        } else if passed <= allowed + PACE_SLACK {
            return;
        }
        self.from = Some((cpu, std::time::Instant::now()));
    }
}

impl<R: io::Read> io::Read for Paced<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.pace();
        self.inner.read(buf)
    }
}

/// The calling thread's CPU time.
fn thread_cpu() -> Option<std::time::Duration> {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .ok()
        .map(std::time::Duration::from)
}

/// A program started by a [`Runner`], held by the governor until it exits.
pub struct Running {
    child: Option<Child>,
    pid: i32,
    governed: Option<Governed>,
}

impl Running {
    /// The program's pid (the leader of its process group).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The child, e.g. to take its pipes.
    pub fn child(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("the child is there until waited for")
    }

    /// The governor's cgroup, when it gave the program one.
    pub fn cgroup(&self) -> Option<std::path::PathBuf> {
        self.governed.as_ref().and_then(Governed::cgroup)
    }

    fn exited(&mut self) -> bool {
        self.child().try_wait().is_ok_and(|s| s.is_some())
    }

    /// Waits for the program, then releases it from the governor.
    pub fn wait(mut self) -> io::Result<ExitStatus> {
        let status = self.child().wait();
        self.release();
        status
    }

    /// Waits for the program and collects its output (piped by the caller).
    pub(crate) fn wait_with_output(mut self) -> io::Result<Output> {
        let child = self
            .child
            .take()
            .expect("the child is there until waited for");
        let output = child.wait_with_output();
        self.release();
        output
    }

    fn release(&mut self) {
        self.child = None;
        live_groups().remove(&self.pid);
        if let Some(mut governed) = self.governed.take() {
            governed.stop();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Abandoned before its end (an error or a panic of the caller): stop the group.
            if let Err(err) = crate::os::process::signal_group(self.pid, Signal::SIGKILL) {
                tracing::debug!(pid = self.pid, error = %err, "could not kill the setup program's group");
            }
            let _ = child.wait();
        }
        self.release();
    }
}

#[cfg(test)]
mod tests;
