//! Where the user's wake-up lateness comes from (the `bench_wake` driver, run by
//! `scripts/bench-wake`): the foreground probes of `bench --foreground`
//! (`sentinel-supervisor bench-probe work|wake`: 5 ms of work + 5 ms of sleep, and a 1 ms
//! sleeper; see [`crate::foreground`]) beside a CPU-bound stand-in for the model
//! (`sh -c 'while :; do :; done'` on the last allowed CPU), with the probes free or pinned, and
//! the stand-in unlimited or held by `sentinel-supervisor limit` (cgroup cap, or the signal duty
//! cycle at several periods). No model is needed: the stand-in occupies a CPU the way
//! llama-server's one compute thread does.
//!
//! One row per scenario: work unit p50/p99 (ms), wake-up lateness p50/p99 (ms), the share of
//! wake-ups later than 1 ms, and the system CPU (% of the machine, [`meter::system_times`]) over
//! the window. Every child is a [`GroupChild`]. The cgroup row needs root; it is skipped (and the
//! output says so) otherwise.

use crate::foreground::{self, Probe};
use crate::stack::GroupChild;
use crate::stats::{self, Percentile};
use anyhow::Context;
use nix::sys::signal::Signal;
use sentinel_supervisor::meter;
use sentinel_supervisor::os::process::signal_group;
use std::ffi::OsString;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The stand-in for the model's compute thread.
const BURN: [&str; 3] = ["sh", "-c", "while :; do :; done"];
/// How long the stand-in runs before the probes start.
const SETTLE: Duration = Duration::from_secs(1);
/// How long the work unit is calibrated for, alone, before any scenario.
const CALIBRATION: Duration = Duration::from_secs(2);
/// How long a stand-in (or its limiter) may take to stop on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long probes may run past their window before they are killed.
const PROBE_GRACE: Duration = Duration::from_secs(30);
/// How often a running probe is checked for its exit.
const POLL: Duration = Duration::from_millis(100);
/// A wake-up later than this counts as late.
const LATE_MS: f64 = 1.0;

/// What `bench_wake` is told.
#[derive(Debug, Clone)]
pub struct WakeOptions {
    /// Each row's measurement window.
    pub window: Duration,
    /// Passes through the scenarios.
    pub rounds: u32,
    /// The `sentinel-supervisor` binary (its `bench-probe` and `limit`).
    pub supervisor: PathBuf,
}

/// How the stand-in is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StandIn {
    /// `chrt -i 0`: SCHED_IDLE.
    Idle,
    /// Normal priority.
    Normal,
    /// Under `sentinel-supervisor limit -q --cpus 0.5 --priority idle` with these flags.
    Limit(Vec<String>),
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    pub name: String,
    /// `None`: the probes alone.
    pub stand_in: Option<StandIn>,
    /// The CPU the work probe is pinned to.
    pub pin_work: Option<usize>,
    /// The CPU the wake probe is pinned to.
    pub pin_wake: Option<usize>,
}

/// The signal duty cycle's periods measured.
const SIGNAL_PERIODS: [&str; 3] = ["20ms", "5ms", "2ms"];

/// The scenarios, in order, for probes whose allowed CPUs run from `first` to `last` (the
/// stand-in takes `last`); the cgroup row only when `cgroup_ok`.
pub fn scenarios(first: usize, last: usize, cgroup_ok: bool) -> Vec<Scenario> {
    let row = |name: String, stand_in, pin_work, pin_wake| Scenario {
        name,
        stand_in,
        pin_work,
        pin_wake,
    };
    let limit = |flags: &[&str]| {
        Some(StandIn::Limit(
            flags.iter().map(|f| f.to_string()).collect(),
        ))
    };
    let mut all = vec![
        row("alone".into(), None, None, None),
        row(
            format!("alone, both probes on cpu {first}"),
            None,
            Some(first),
            Some(first),
        ),
        row(
            format!("SCHED_IDLE stand-in on cpu {last}, probes free"),
            Some(StandIn::Idle),
            None,
            None,
        ),
        row(
            format!("SCHED_IDLE stand-in, wake probe on its cpu {last}"),
            Some(StandIn::Idle),
            None,
            Some(last),
        ),
        row(
            format!("normal stand-in, wake probe on its cpu {last}"),
            Some(StandIn::Normal),
            None,
            Some(last),
        ),
        row(
            format!("SCHED_IDLE stand-in, user's loop on its cpu {last}"),
            Some(StandIn::Idle),
            Some(last),
            Some(first),
        ),
    ];
    if cgroup_ok {
        all.push(row(
            "limit 0.5 cgroup (10 ms period), probes free".into(),
            limit(&["--method", "cgroup"]),
            None,
            None,
        ));
    }
    for period in SIGNAL_PERIODS {
        all.push(row(
            format!("limit 0.5 signals {period}, probes free"),
            limit(&["--method", "signals", "--period", period]),
            None,
            None,
        ));
    }
    all
}

/// `taskset -c CPU` before `argv` when pinned.
fn pinned(pin: Option<usize>, argv: Vec<OsString>) -> Vec<OsString> {
    match pin {
        Some(cpu) => ["taskset".into(), "-c".into(), cpu.to_string().into()]
            .into_iter()
            .chain(argv)
            .collect(),
        None => argv,
    }
}

/// The command line of one probe over `window`; the work probe runs `iterations` per unit.
pub fn probe_argv(
    exe: &Path,
    probe: Probe,
    window: Duration,
    iterations: Option<u64>,
    pin: Option<usize>,
) -> Vec<OsString> {
    let name = match probe {
        Probe::Work => "work",
        Probe::Wake => "wake",
    };
    let mut argv: Vec<OsString> = vec![
        exe.into(),
        "bench-probe".into(),
        name.into(),
        "--for".into(),
        format!("{}ms", window.as_millis()).into(),
    ];
    if let (Probe::Work, Some(n)) = (probe, iterations) {
        argv.extend(["--iterations".into(), n.to_string().into()]);
    }
    pinned(pin, argv)
}

/// The command line of the stand-in on CPU `cpu`.
pub fn stand_in_argv(exe: &Path, cpu: usize, how: &StandIn) -> Vec<OsString> {
    let burn = pinned(Some(cpu), BURN.iter().map(OsString::from).collect());
    let mut argv: Vec<OsString> = match how {
        StandIn::Idle => vec!["chrt".into(), "-i".into(), "0".into()],
        StandIn::Normal => vec![],
        StandIn::Limit(flags) => {
            let mut a: Vec<OsString> = vec![exe.into()];
            a.extend(
                ["limit", "-q", "--cpus", "0.5", "--priority", "idle"]
                    .iter()
                    .map(OsString::from),
            );
            a.extend(flags.iter().map(OsString::from));
            a.push("--".into());
            a
        }
    };
    argv.extend(burn);
    argv
}

/// One scenario's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub work_p50_ms: f64,
    pub work_p99_ms: f64,
    pub wake_p50_ms: f64,
    pub wake_p99_ms: f64,
    /// Share of wake-ups later than 1 ms, percent.
    pub late_percent: f64,
    /// Busy share of the whole machine over the window, percent.
    pub system_percent: f64,
}

impl Row {
    /// The figures of the probes' samples; `None` when either printed none.
    pub fn of(work_ms: &[f64], wake_ms: &[f64], system_percent: f64) -> Option<Row> {
        let p = |s: &[f64], q| stats::percentile(s, q);
        let late = wake_ms.iter().filter(|&&x| x > LATE_MS).count();
        Some(Row {
            work_p50_ms: p(work_ms, Percentile::P50)?,
            work_p99_ms: p(work_ms, Percentile::P99)?,
            wake_p50_ms: p(wake_ms, Percentile::P50)?,
            wake_p99_ms: p(wake_ms, Percentile::P99)?,
            late_percent: 100.0 * late as f64 / wake_ms.len() as f64,
            system_percent,
        })
    }

    /// The Markdown table row for scenario `name`.
    pub fn markdown(&self, name: &str) -> String {
        format!(
            "| {name} | {:.2} | {:.2} | {:.3} | {:.3} | {:.1} % | {:.0} |",
            self.work_p50_ms,
            self.work_p99_ms,
            self.wake_p50_ms,
            self.wake_p99_ms,
            self.late_percent,
            self.system_percent
        )
    }
}

/// The lines above the rows.
pub fn header(window: Duration, iterations: u64, source: &str) -> String {
    format!(
        "{:.0} s per row, work unit {iterations} iterations; wake = lateness of a 1 ms sleep; \
         system CPU from {source}\n\
         | scenario | work p50 ms | work p99 ms | wake p50 ms | wake p99 ms | wakes > 1 ms | system CPU % |\n\
         |---|---|---|---|---|---|---|",
        window.as_secs_f64()
    )
}

/// Runs every scenario `rounds` times, printing each row as it is measured.
pub async fn run(options: &WakeOptions) -> anyhow::Result<()> {
    let cpus = allowed_cpus();
    let (first, last) = match (cpus.first(), cpus.last()) {
        (Some(&f), Some(&l)) if cpus.len() >= 2 => (f, l),
        _ => anyhow::bail!("needs at least two CPUs (the stand-in takes one)"),
    };
    let online_cpus = sentinel_supervisor::host::Host::detect().online_cpus;
    let exe = &options.supervisor;
    // One work unit, calibrated once alone, for every scenario.
    let calibrated = run_probe(&probe_argv(exe, Probe::Work, CALIBRATION, None, None)).await?;
    let work = finish_probe(calibrated, Probe::Work, CALIBRATION).await?;
    let iterations = work
        .iterations
        .context("the work probe did not say its iterations")?;
    let cgroup_ok = nix::unistd::geteuid().is_root();
    if !cgroup_ok {
        println!("(not root: the cgroup row is skipped)");
    }
    println!(
        "{}",
        header(
            options.window,
            iterations,
            meter::system_source().describe()
        )
    );
    let table = scenarios(first, last, cgroup_ok);
    for _ in 0..options.rounds {
        for scenario in &table {
            let stand_in = match &scenario.stand_in {
                Some(how) => Some(start_stand_in(exe, last, how).await?),
                None => None,
            };
            let measured = measure(exe, options.window, iterations, scenario, online_cpus).await;
            if let Some(child) = stand_in {
                stop(child).await;
            }
            let row = measured.with_context(|| format!("scenario `{}`", scenario.name))?;
            println!("{}", row.markdown(&scenario.name));
        }
    }
    Ok(())
}

/// The CPUs this process may run on, ascending (the stand-in and pinned probes go there).
/// Pinning is Linux's (`taskset`); elsewhere every CPU counts.
#[cfg(not(target_os = "linux"))]
fn allowed_cpus() -> Vec<usize> {
    (0..std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)).collect()
}

/// The CPUs this process may run on, ascending (the stand-in and pinned probes go there).
#[cfg(target_os = "linux")]
fn allowed_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&i| set.is_set(i).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Both probes over `window`, and the machine's busy share meanwhile.
async fn measure(
    exe: &Path,
    window: Duration,
    iterations: u64,
    scenario: &Scenario,
    online_cpus: usize,
) -> anyhow::Result<Row> {
    let before = meter::system_times(online_cpus).context("read the machine's CPU counters")?;
    let work = run_probe(&probe_argv(
        exe,
        Probe::Work,
        window,
        Some(iterations),
        scenario.pin_work,
    ))
    .await?;
    let wake = run_probe(&probe_argv(
        exe,
        Probe::Wake,
        window,
        None,
        scenario.pin_wake,
    ))
    .await?;
    let (work, wake) = tokio::join!(
        finish_probe(work, Probe::Work, window),
        finish_probe(wake, Probe::Wake, window)
    );
    let after = meter::system_times(online_cpus).context("read the machine's CPU counters")?;
    let (work, wake) = (work?, wake?);
    let busy = 100.0 * after.busy_fraction_since(&before);
    Row::of(&work.samples_ms, &wake.samples_ms, busy).context("a probe recorded no samples")
}

/// A running probe and the file its output goes to.
struct RunningProbe {
    child: GroupChild,
    stdout: std::fs::File,
}

async fn run_probe(argv: &[OsString]) -> anyhow::Result<RunningProbe> {
    let stdout = tempfile::tempfile().context("create a file for the probe's output")?;
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(stdout.try_clone()?);
    let child = GroupChild::spawn(cmd)
        .await
        .with_context(|| format!("start {}", show(argv)))?;
    Ok(RunningProbe { child, stdout })
}

/// Waits for a probe that runs for `window` to exit, and parses what it printed.
async fn finish_probe(
    mut running: RunningProbe,
    probe: Probe,
    window: Duration,
) -> anyhow::Result<foreground::ProbeOutput> {
    let deadline = Instant::now() + window + PROBE_GRACE;
    let status = loop {
        if let Some(status) = running.child.exited() {
            break status;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "a probe ran {} s past its window (killed)",
            PROBE_GRACE.as_secs()
        );
        tokio::time::sleep(POLL).await;
    };
    anyhow::ensure!(status.success(), "a probe failed ({status})");
    let mut text = Vec::new();
    running.stdout.rewind()?;
    running.stdout.read_to_end(&mut text)?;
    Ok(foreground::parse_output(probe, &text)?)
}

/// Starts the stand-in on CPU `cpu` and lets it settle. Its own process group (to stop it
/// whole) in this session: a new session would be its own autogroup, where `chrt -i` counts for
/// nothing against the probes.
async fn start_stand_in(exe: &Path, cpu: usize, how: &StandIn) -> anyhow::Result<GroupChild> {
    let argv = stand_in_argv(exe, cpu, how);
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::null());
    let mut child = GroupChild::spawn(cmd)
        .await
        .with_context(|| format!("start the stand-in {}", show(&argv)))?;
    tokio::time::sleep(SETTLE).await;
    if let Some(status) = child.exited() {
        anyhow::bail!("the stand-in {} exited at once ({status})", show(&argv));
    }
    Ok(child)
}

/// SIGTERM to the stand-in's group (a limiter then undoes its cap), a grace period, then the
/// group is killed and reaped.
async fn stop(mut child: GroupChild) {
    if signal_group(child.pid(), Signal::SIGTERM).is_ok() {
        let deadline = Instant::now() + STOP_GRACE;
        while child.exited().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    child.kill().await;
}

fn show(argv: &[OsString]) -> String {
    argv.iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(argv: &[OsString]) -> Vec<String> {
        argv.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn the_scenario_table() {
        let names = |t: &[Scenario]| t.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        let root = scenarios(0, 3, true);
        assert_eq!(
            names(&root),
            [
                "alone",
                "alone, both probes on cpu 0",
                "SCHED_IDLE stand-in on cpu 3, probes free",
                "SCHED_IDLE stand-in, wake probe on its cpu 3",
                "normal stand-in, wake probe on its cpu 3",
                "SCHED_IDLE stand-in, user's loop on its cpu 3",
                "limit 0.5 cgroup (10 ms period), probes free",
                "limit 0.5 signals 20ms, probes free",
                "limit 0.5 signals 5ms, probes free",
                "limit 0.5 signals 2ms, probes free",
            ]
        );
        assert_eq!((root[1].pin_work, root[1].pin_wake), (Some(0), Some(0)));
        assert_eq!((root[3].pin_work, root[3].pin_wake), (None, Some(3)));
        assert_eq!((root[5].pin_work, root[5].pin_wake), (Some(3), Some(0)));
        assert_eq!(root[4].stand_in, Some(StandIn::Normal));
        assert_eq!(
            root[9].stand_in,
            Some(StandIn::Limit(
                ["--method", "signals", "--period", "2ms"]
                    .map(String::from)
                    .to_vec()
            ))
        );
        // Without root the cgroup row alone is left out.
        let user = scenarios(0, 3, false);
        assert_eq!(user.len(), root.len() - 1);
        assert!(!names(&user).iter().any(|n| n.contains("cgroup")));
    }

    #[test]
    fn probe_and_stand_in_command_lines() {
        let exe = Path::new("/x/sentinel-supervisor");
        let window = Duration::from_millis(15_000);
        assert_eq!(
            strings(&probe_argv(exe, Probe::Work, window, Some(42), Some(1))),
            [
                "taskset",
                "-c",
                "1",
                "/x/sentinel-supervisor",
                "bench-probe",
                "work",
                "--for",
                "15000ms",
                "--iterations",
                "42"
            ]
        );
        // The wake probe takes no work unit.
        assert_eq!(
            strings(&probe_argv(exe, Probe::Wake, window, Some(42), None)),
            [
                "/x/sentinel-supervisor",
                "bench-probe",
                "wake",
                "--for",
                "15000ms"
            ]
        );
        let burn = ["taskset", "-c", "3", "sh", "-c", "while :; do :; done"];
        assert_eq!(strings(&stand_in_argv(exe, 3, &StandIn::Normal)), burn);
        assert_eq!(
            strings(&stand_in_argv(exe, 3, &StandIn::Idle))[..4],
            ["chrt", "-i", "0", "taskset"]
        );
        let limited = strings(&stand_in_argv(
            exe,
            3,
            &StandIn::Limit(vec!["--method".into(), "cgroup".into()]),
        ));
        assert_eq!(
            limited[..10],
            [
                "/x/sentinel-supervisor",
                "limit",
                "-q",
                "--cpus",
                "0.5",
                "--priority",
                "idle",
                "--method",
                "cgroup",
                "--"
            ]
        );
        assert_eq!(limited[10..], burn);
    }

    #[test]
    fn a_row_from_probe_output() {
        let work = foreground::parse_output(
            Probe::Work,
            b"{\"probe\":\"work\",\"iterations\":900,\"samples_ms\":[5.0,5.1,5.2,9.0]}\n",
        )
        .unwrap();
        assert_eq!(work.iterations, Some(900));
        let wake = foreground::parse_output(
            Probe::Wake,
            b"{\"probe\":\"wake\",\"iterations\":null,\"samples_ms\":[0.05,0.1,4.0,0.07]}",
        )
        .unwrap();
        // Output of the other probe is refused.
        assert!(foreground::parse_output(
            Probe::Wake,
            b"{\"probe\":\"work\",\"iterations\":1,\"samples_ms\":[1.0]}"
        )
        .is_err());
        let row = Row::of(&work.samples_ms, &wake.samples_ms, 51.4).unwrap();
        // Nearest rank: p50 of four samples is the second, p99 the fourth.
        assert_eq!((row.work_p50_ms, row.work_p99_ms), (5.1, 9.0));
        assert_eq!((row.wake_p50_ms, row.wake_p99_ms), (0.07, 4.0));
        assert_eq!(row.late_percent, 25.0);
        assert_eq!(
            row.markdown("alone"),
            "| alone | 5.10 | 9.00 | 0.070 | 4.000 | 25.0 % | 51 |"
        );
        assert_eq!(Row::of(&work.samples_ms, &[], 1.0), None);
    }

    #[test]
    fn the_header_has_the_seven_columns() {
        let h = header(Duration::from_secs(15), 900, "/proc/stat");
        let lines: Vec<&str> = h.lines().collect();
        assert!(
            lines[0].starts_with("15 s per row, work unit 900 iterations"),
            "{h}"
        );
        assert_eq!(lines[1].matches('|').count(), 8);
        assert_eq!(lines[2], "|---|---|---|---|---|---|---|");
    }
}
