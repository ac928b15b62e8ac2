//! `sentinel-supervisor limit`: hold any process to a CPU budget, like cpulimit but smooth.
//!
//! `limit --cpus 0.5 --pid PID` limits a running process (its group when it leads one) until it
//! exits or the limiter gets SIGINT/SIGTERM, which continue it and exit 0.
//! `limit --cpus 0.5 -- CMD ARGS...` starts CMD in its own process group (with a death signal,
//! so it dies with the limiter), limits it, and exits with its exit code. SIGINT/SIGTERM continue
//! it and pass the signal on to its group, then wait for it (SIGKILL after 5 s).
//! The budget holds from the first period. Without a proxy to say when the target works, its own
//! CPU use does ([`crate::governor::usage`]): once it has been idle for a second the limiter
//! rests (no stops, which would wake every thread of an idle program), and it throttles again
//! within one period (at most 20 ms) of new work. (With `--method cgroup` the kernel caps the
//! target and nothing rests.)
//! `--priority background|idle` sets the target's scheduling class (a spawned command from its
//! first instruction, a running process on every thread) and, under the cgroup method, its
//! group's weight, so a user's process on the same CPU wins it.
//!
//! [`LimitOptions::from_args`] checks the arguments once; [`limit`] runs on the options and the
//! governor ([`crate::governor::Governor`]) does the limiting.

use crate::cli::LimitArgs;
use crate::config::Config;
use crate::governor::{
    priority, usage, Activity, Governor, GovernorConfig, GovernorSettings, Prepared, Priority,
    StoppedTime,
};
use crate::host::Host;
use crate::os::process::{signal_group, spawn_in_group_async};
use crate::units::Cores;
use nix::sys::signal::Signal;
use std::io;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::task::AbortOnDropHandle;

/// Why `limit` could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LimitError {
    #[error(
        "--cpus {cpus} is out of range: use a number of cores at most {available} \
         (the CPUs this process may use)"
    )]
    Budget { cpus: Cores, available: usize },
    #[error(
        "nothing to limit: pass --pid PID or a command after `--` \
         (e.g. `sentinel-supervisor limit --cpus 0.5 -- make -j2`)"
    )]
    NoTarget,
    #[error("could not start `{command}`: {source} (check the command name and PATH)")]
    Spawn { command: String, source: io::Error },
    #[error(
        "could not set priority {priority} on process {pid}: {source} (raising a priority \
         needs root or CAP_SYS_NICE)"
    )]
    Priority {
        pid: i32,
        priority: Priority,
        source: io::Error,
    },
    #[error("could not watch for SIGINT/SIGTERM: {0}")]
    Signals(io::Error),
}

/// How long the command gets to exit after a forwarded SIGINT/SIGTERM.
const GRACE: Duration = Duration::from_secs(5);

/// What to limit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LimitTarget {
    /// A running process (its whole group when it leads one).
    Pid(i32),
    /// A command to start in its own group: the program, then its arguments.
    Command(Vec<String>),
}

/// `limit`'s arguments, checked and completed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LimitOptions {
    pub cpus: Cores,
    pub target: LimitTarget,
    /// What the governor is told: the budget, the duty-cycle period, the threads the target
    /// keeps busy (`None` follows its thread count), the method, the adaptive share, the
    /// target's scheduling class (and its cgroup's weight) and the host (detected once).
    pub settings: GovernorSettings,
}

impl LimitOptions {
    /// Checks the budget against the CPUs this process may use (`available`) and that there is
    /// something to limit.
    pub(crate) fn from_args(args: LimitArgs, host: Host) -> Result<LimitOptions, LimitError> {
        let available = host.allowed_cpus();
        if args.cpus.get() > available as f64 {
            return Err(LimitError::Budget {
                cpus: args.cpus,
                available,
            });
        }
        let target = match args.pid {
            Some(pid) => LimitTarget::Pid(pid),
            None if args.command.is_empty() => return Err(LimitError::NoTarget),
            None => LimitTarget::Command(args.command),
        };
        Ok(LimitOptions {
            cpus: args.cpus,
            target,
            settings: GovernorSettings {
                cpus: Some(args.cpus),
                threads: args.threads,
                priority: args.priority.into(),
                adaptive: args.adaptive,
                host,
                method: args.method.into(),
                period: args.period,
            },
        })
    }

    /// The shipped `[governor]` section with the feedback window kept at least five of this
    /// period long (the method and period themselves go in [`Self::settings`]).
    fn governor_config(&self, shipped: GovernorConfig) -> GovernorConfig {
        GovernorConfig {
            feedback_window: shipped.feedback_window.max(self.settings.period * 5),
            ..shipped
        }
    }
}

/// `sentinel-supervisor limit`.
pub(crate) async fn run(args: LimitArgs) -> anyhow::Result<ExitCode> {
    let options = LimitOptions::from_args(args, Host::detect())?;
    limit(&options).await
}

/// Limits the target until it exits (or, for a running process, until SIGINT/SIGTERM).
pub(crate) async fn limit(options: &LimitOptions) -> anyhow::Result<ExitCode> {
    let config = options.governor_config(Config::builtin()?.governor);
    let interrupts = Interrupts::new()?;
    match &options.target {
        LimitTarget::Pid(pid) => limit_pid(*pid, options, &config, interrupts).await,
        LimitTarget::Command(command) => limit_command(command, options, &config, interrupts).await,
    }
}

/// SIGINT and SIGTERM, the two ways a user ends `limit`: watched from the start, so neither
/// kills the limiter while the target is stopped.
struct Interrupts {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn new() -> Result<Interrupts, LimitError> {
        Ok(Interrupts {
            interrupt: signal(SignalKind::interrupt()).map_err(LimitError::Signals)?,
            terminate: signal(SignalKind::terminate()).map_err(LimitError::Signals)?,
        })
    }

    /// The next of the two to arrive.
    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::SIGINT,
            _ = self.terminate.recv() => Signal::SIGTERM,
        }
    }
}

/// `--pid`: limits a running process (on every thread at `--priority`) until it exits or
/// SIGINT/SIGTERM arrives, then continues it.
async fn limit_pid(
    pid: i32,
    options: &LimitOptions,
    config: &GovernorConfig,
    mut interrupts: Interrupts,
) -> anyhow::Result<ExitCode> {
    if options.settings.priority != Priority::Normal {
        priority::apply_to_process_threads(pid, options.settings.priority).map_err(|source| {
            LimitError::Priority {
                pid,
                priority: options.settings.priority,
                source,
            }
        })?;
    }
    let activity = Activity::new();
    let _usage = follow_usage(pid, options, &activity);
    // `limit` serves no `/status` or `/metrics`: nothing reads the stopped time.
    let mut handle = Governor::start(
        pid,
        config,
        options.settings,
        activity.clone(),
        StoppedTime::default(),
        unread(),
    )?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = interrupts.recv() => break,
            _ = tick.tick() => {
                let gone = matches!(crate::meter::process_state(pid), None | Some('Z'));
                if gone || handle.is_finished() {
                    tracing::info!(pid, "limited process exited");
                    break;
                }
            }
        }
    }
    handle.stop();
    Ok(ExitCode::SUCCESS)
}

/// `-- CMD`: starts the command inside the governor's cgroup, limits it and exits with its
/// exit code; SIGINT/SIGTERM go on to its group, SIGKILL after [`GRACE`].
async fn limit_command(
    command: &[String],
    options: &LimitOptions,
    config: &GovernorConfig,
    mut interrupts: Interrupts,
) -> anyhow::Result<ExitCode> {
    let activity = Activity::new();
    // The cgroup exists before the command, so the command and all it starts are born inside.
    let governor = Governor::prepare(config, options.settings)?;
    let (pid, mut child) = spawn_command(command, options.settings.priority, &governor).await?;
    let _usage = follow_usage(pid, options, &activity);
    let mut handle = match governor.start(pid, activity.clone(), StoppedTime::default(), unread()) {
        Ok(handle) => handle,
        Err(err) => {
            // A command that finished at once is gone before it could be governed: that is
            // its exit, not an error.
            if let Ok(status) = tokio::time::timeout(Duration::from_millis(200), child.wait()).await
            {
                return Ok(exit_code(status));
            }
            kill_group(pid, Signal::SIGKILL);
            return Err(err.into());
        }
    };
    let forwarded = tokio::select! {
        status = child.wait() => {
            handle.stop();
            return Ok(exit_code(status));
        }
        signal = interrupts.recv() => signal,
    };
    handle.stop();
    tracing::info!(
        pid,
        signal = %forwarded,
        "passing the signal on to the command"
    );
    kill_group(pid, forwarded);
    let status = if let Ok(status) = tokio::time::timeout(GRACE, child.wait()).await {
        status
    } else {
        tracing::warn!(
            pid,
            "command did not exit within 5s of the signal; killing it"
        );
        kill_group(pid, Signal::SIGKILL);
        child.wait().await
    };
    Ok(exit_code(status))
}

/// `limit` serves no `/status`: the governor's snapshots go nowhere.
fn unread() -> crate::governor::SnapshotSender {
    tokio::sync::watch::Sender::new(None)
}

/// Starts following the target's CPU use (the activity signal of `limit`); the task ends with
/// the target or when the returned guard drops.
fn follow_usage(pid: i32, options: &LimitOptions, activity: &Activity) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(usage::follow(
        pid,
        options.cpus.get(),
        options.settings.period,
        activity.clone(),
        activity.begin(),
    )))
}

fn kill_group(pid: i32, signal: Signal) {
    if let Err(err) = signal_group(pid, signal) {
        tracing::debug!(pid, %signal, error = %err, "signal to the command's group failed");
    }
}

/// Starts the command in its own process group, with a SIGKILL when the limiter dies
/// ([`crate::os::process`]), in the scheduling class `priority` from its first instruction.
async fn spawn_command(
    command: &[String],
    priority: Priority,
    governor: &Prepared,
) -> Result<(i32, tokio::process::Child), LimitError> {
    use std::os::unix::process::CommandExt;
    let failed = |source| LimitError::Spawn {
        command: command.join(" "),
        source,
    };
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    // SAFETY: apply_to_current_process is async-signal-safe (plain system calls).
    unsafe {
        cmd.as_std_mut()
            .pre_exec(move || priority::apply_to_current_process(priority));
    }
    governor
        .enter_on_exec(cmd.as_std_mut())
        .map_err(|err| failed(io::Error::other(err)))?;
    let child = spawn_in_group_async(cmd, Signal::SIGKILL)
        .await
        .map_err(failed)?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| io::Error::other("the command exited before its pid was known"))
        .map_err(failed)?;
    Ok((pid, child))
}

fn exit_code(status: io::Result<ExitStatus>) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => ExitCode::from(code.clamp(0, 255) as u8),
            (None, Some(sig)) => ExitCode::from((128 + sig).clamp(0, 255) as u8),
            (None, None) => ExitCode::FAILURE,
        },
        Err(err) => {
            tracing::error!(error = %err, "could not wait for the command");
            ExitCode::FAILURE
        }
    }
}
