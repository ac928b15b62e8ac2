//! `bench -- CMD ARGS`: how visible one command is (an install, a build). It runs the command in
//! an accounting cgroup of its own, so everything it starts is counted, exactly, and reads the
//! machine's CPU ([`sentinel_supervisor::meter::system_times`], as every bench figure) and the group's CPU
//! every `[bench] sample_interval` until it exits. The report: system CPU and the command's own
//! CPU per window (in % of the machine: mean, p50, p95, p99, max), its wall time and exit status,
//! printed and written to `<out>/command.json`, every window to `<out>/command-windows.csv`.
//!
//! The accounting group is `sentinel-bench-<pid>` under the cgroup v1 `cpuacct` root
//! (`cpuacct.usage`, ns) or under the cgroup v2 root (`cpu.stat` `usage_usec`); the command
//! joins it before its first instruction. Without a writable one (not root) only the system CPU
//! is reported.

use super::stats::Summary;
use sentinel_supervisor::meter::SystemTimes;
use serde::Serialize;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What one command did to the machine.
#[derive(Debug, Clone, Serialize)]
pub struct CommandReport {
    pub command: Vec<String>,
    pub exit_code: Option<i32>,
    pub wall_s: f64,
    pub window_ms: u64,
    /// The machine's CPU, in % of every CPU, per window.
    pub system_cpu: Summary,
    /// The command's own CPU (all it started) in % of the machine, per window; `None` without a
    /// writable accounting cgroup.
    pub command_cpu: Option<Summary>,
    /// The command's total CPU time, in CPU-seconds.
    pub command_cpu_s: Option<f64>,
    /// Where the command was counted.
    pub accounting: Option<PathBuf>,
    pub online_cpus: usize,
}

/// Why the command could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum CommandBenchError {
    #[error("could not start `{command}`: {source} (check the command name and PATH)")]
    Spawn { command: String, source: io::Error },
    #[error("could not read the machine's CPU counters: {0}")]
    Meter(io::Error),
    #[error("could not write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// An accounting cgroup: where the command's CPU is counted.
struct Accounting {
    dir: PathBuf,
    usage: Usage,
}

#[derive(Clone, Copy)]
enum Usage {
    /// v1 `cpuacct.usage`, ns.
    CpuacctNs,
    /// v2 `cpu.stat` `usage_usec`.
    CpuStatUs,
}

impl Accounting {
    fn create(pid: u32) -> Option<Accounting> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let v1 = sentinel_supervisor::meter::parse_cpuacct_mount(&mountinfo)
            .map(|root| (root, Usage::CpuacctNs));
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers")
            .exists()
            .then(|| (PathBuf::from("/sys/fs/cgroup"), Usage::CpuStatUs));
        v1.into_iter().chain(v2).find_map(|(root, usage)| {
            let dir = root.join(format!("sentinel-bench-{pid}"));
            std::fs::create_dir(&dir).ok()?;
            Some(Accounting { dir, usage })
        })
    }

    fn cpu(&self) -> Option<Duration> {
        match self.usage {
            Usage::CpuacctNs => std::fs::read_to_string(self.dir.join("cpuacct.usage"))
                .ok()?
                .trim()
                .parse()
                .ok()
                .map(Duration::from_nanos),
            Usage::CpuStatUs => {
                let stat = std::fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
                sentinel_supervisor::meter::parse_flat_key(&stat, "usage_usec")
                    .map(Duration::from_micros)
            }
        }
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        // Empty once the command and all it started have exited.
        if let Err(err) = std::fs::remove_dir(&self.dir) {
            tracing::warn!(path = %self.dir.display(), error = %err, "could not remove the accounting cgroup; rmdir it");
        }
    }
}

/// One reading.
struct Reading {
    at: Instant,
    system: SystemTimes,
    command: Option<Duration>,
}

/// Runs `command` (program, then arguments) to its end, sampling every `window`, and writes
/// the report to `out/command.json`.
pub fn run(
    command: &[String],
    window: Duration,
    out: &Path,
) -> Result<CommandReport, CommandBenchError> {
    use std::os::unix::process::CommandExt;
    let shown = command.join(" ");
    let online = sentinel_supervisor::host::Host::detect().online_cpus.max(1);
    let accounting = Accounting::create(std::process::id());
    let procs = accounting.as_ref().and_then(|a| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(a.dir.join("cgroup.procs"))
            .ok()
    });
    let mut cmd = std::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    if let Some(procs) = procs {
        use std::os::fd::IntoRawFd;
        let fd = procs.into_raw_fd();
        // SAFETY: write(2) on an fd opened before the fork is async-signal-safe; "0" moves the
        // writing process, the child, before its first instruction.
        unsafe {
            cmd.pre_exec(move || {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                Ok(())
            });
        }
    }
    let spawn_err = |source| CommandBenchError::Spawn {
        command: shown.clone(),
        source,
    };
    let started = Instant::now();
    let mut child =
        sentinel_supervisor::os::process::spawn_in_group(cmd, nix::sys::signal::Signal::SIGKILL)
            .map_err(spawn_err)?;
    let read = |at: Instant| -> Result<Reading, CommandBenchError> {
        Ok(Reading {
            at,
            system: sentinel_supervisor::meter::system_times(online)
                .map_err(CommandBenchError::Meter)?,
            command: accounting.as_ref().and_then(Accounting::cpu),
        })
    };
    let mut readings = vec![read(started)?];
    let mut next = started + window;
    let status = loop {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += window;
        readings.push(read(Instant::now())?);
        if let Some(status) = child.try_wait().map_err(spawn_err)? {
            break status;
        }
    };
    let wall = started.elapsed();
    let system: Vec<f64> = readings
        .windows(2)
        .map(|w| w[1].system.busy_fraction_since(&w[0].system) * 100.0)
        .collect();
    let own: Option<Vec<f64>> = readings
        .windows(2)
        .map(|w| {
            let cpu = w[1].command?.saturating_sub(w[0].command?);
            let wall = (w[1].at - w[0].at).as_secs_f64().max(1e-6);
            Some(cpu.as_secs_f64() / wall / online as f64 * 100.0)
        })
        .collect();
    let total = readings.last().and_then(|r| r.command);
    let report = CommandReport {
        command: command.to_vec(),
        exit_code: status.code(),
        wall_s: wall.as_secs_f64(),
        window_ms: window.as_millis() as u64,
        system_cpu: Summary::of(&system),
        command_cpu: own.as_ref().map(|v| Summary::of(v)),
        command_cpu_s: total.map(|d| d.as_secs_f64()),
        accounting: accounting.as_ref().map(|a| a.dir.clone()),
        online_cpus: online,
    };
    std::fs::create_dir_all(out).map_err(|source| CommandBenchError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let path = out.join("command.json");
    let json = serde_json::to_string_pretty(&report).expect("the report serializes");
    std::fs::write(&path, json).map_err(|source| CommandBenchError::Write { path, source })?;
    let path = out.join("command-windows.csv");
    let csv = windows_csv(&readings, started, &system, own.as_deref());
    std::fs::write(&path, csv).map_err(|source| CommandBenchError::Write { path, source })?;
    Ok(report)
}

/// Every window (its end, in seconds from the start; system and command CPU, %), to find
/// where the high ones fall.
fn windows_csv(
    readings: &[Reading],
    started: Instant,
    system: &[f64],
    own: Option<&[f64]>,
) -> String {
    let mut csv = String::from("t_s,system_pct,command_pct\n");
    for (i, (w, system)) in readings.windows(2).zip(system).enumerate() {
        let command = own.map(|v| format!("{:.2}", v[i])).unwrap_or_default();
        let t = (w[1].at - started).as_secs_f64();
        csv.push_str(&format!("{t:.2},{system:.2},{command}\n"));
    }
    csv
}

impl CommandReport {
    /// A few lines for the terminal.
    pub fn describe(&self) -> String {
        let line = |name: &str, s: &Summary| {
            format!(
                "{name}: mean {:.1} %, p50 {:.1} %, p95 {:.1} %, p99 {:.1} %, max {:.1} % of {} CPUs ({} windows of {} ms)",
                s.mean, s.p50, s.p95, s.p99, s.max, self.online_cpus, s.count, self.window_ms
            )
        };
        let mut out = vec![
            format!(
                "`{}` exited {:?} after {:.1} s",
                self.command.join(" "),
                self.exit_code,
                self.wall_s
            ),
            line("system CPU", &self.system_cpu),
        ];
        match (&self.command_cpu, self.command_cpu_s) {
            (Some(s), Some(total)) => {
                out.push(line("command CPU", s));
                out.push(format!("command CPU time: {total:.1} CPU-s"));
            }
            _ => out.push(
                "command CPU: not measured (no writable accounting cgroup; run as root)".into(),
            ),
        }
        out.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_command_is_measured_to_its_exit() {
        let out = tempfile::tempdir().unwrap();
        // A fixed amount of work (however loaded the machine), part of it in the processes the
        // shell starts (counted with it).
        let script = "i=0; while [ $i -lt 100000 ]; do i=$((i + 1)); done; \
                      for n in 1 2 3 4 5; do date > /dev/null; done; sleep 0.3; exit 4";
        let command: Vec<String> = ["sh", "-c", script].map(String::from).to_vec();
        let report = run(&command, Duration::from_millis(100), out.path()).unwrap();
        assert_eq!(report.exit_code, Some(4));
        assert!(report.wall_s >= 0.3, "{}", report.wall_s);
        assert!(report.system_cpu.count >= 3, "{report:?}");
        if report.command_cpu.is_some() {
            let total = report.command_cpu_s.unwrap();
            assert!(
                total > 0.02 && total < report.wall_s * 2.0 + 0.1,
                "{report:?}"
            );
            assert!(!report.accounting.as_ref().unwrap().exists());
        }
        let written: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.path().join("command.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(written["exit_code"], 4);
        let windows = std::fs::read_to_string(out.path().join("command-windows.csv")).unwrap();
        assert_eq!(
            windows.lines().count(),
            report.system_cpu.count + 1,
            "{windows}"
        );
        assert!(report.describe().contains("system CPU: mean"));
    }
}
