//! The foreground-impact probe (`bench --foreground`): what the person at the machine feels
//! while the model answers.
//!
//! Two probes, each its own normal-priority process (`sentinel-bench probe work|wake`,
//! a hidden subcommand of this binary):
//! - `work`, an interactive loop: a fixed unit of computation (calibrated alone to take about
//!   5 ms) then 5 ms of sleep, recording each unit's wall time;
//! - `wake`, a wake-up-lateness probe: sleeps 1 ms again and again, recording how late it wakes.
//!
//! They run together once alone (before any supervisor starts), then during each profile's
//! active phase; [`compare`] turns a run beside the model into ratios (work unit p50 and p99)
//! and a difference (wake-up lateness p99) against alone, judged by `[bench.targets]` (`bench.toml`).
//! A probe runs until its stdin closes (or for `--for DURATION`), then prints one JSON line,
//! [`ProbeOutput`], on stdout.

use super::stats::Summary;
use super::target::{Check, Targets};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The wall time a work unit is calibrated to, alone.
pub const WORK_UNIT: Duration = Duration::from_millis(5);
/// The sleep between work units.
pub const WORK_SLEEP: Duration = Duration::from_millis(5);
/// The wake-up probe's sleep.
pub const WAKE_SLEEP: Duration = Duration::from_millis(1);
/// How long stopped probes may take to print their samples.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Work,
    Wake,
}

impl Probe {
    fn name(self) -> &'static str {
        match self {
            Probe::Work => "work",
            Probe::Wake => "wake",
        }
    }
}

/// What a probe prints when it stops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeOutput {
    /// `work` or `wake`.
    pub probe: String,
    /// Work probe: the spin iterations of one unit.
    pub iterations: Option<u64>,
    /// Work unit wall times, or wake-up lateness, in milliseconds.
    pub samples_ms: Vec<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ForegroundError {
    #[error("cannot start the `{probe}` probe ({exe} probe {probe}): {error}")]
    Spawn {
        probe: &'static str,
        exe: String,
        error: std::io::Error,
    },
    #[error("the `{probe}` probe did not stop within {secs} s of being told to (it was killed)")]
    Stuck { probe: &'static str, secs: u64 },
    #[error("the `{probe}` probe failed ({status}): {stderr}")]
    Failed {
        probe: &'static str,
        status: String,
        stderr: String,
    },
    #[error("the `{probe}` probe printed no samples: {problem}")]
    Output {
        probe: &'static str,
        problem: String,
    },
}

/// One unit of computation: `iterations` rounds of xorshift, kept from being optimised away.
fn spin(iterations: u64) -> u64 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = std::hint::black_box(x);
    }
    x
}

/// Iterations of [`spin`] that take about [`WORK_UNIT`] here, now: the fastest of several
/// trials (the least disturbed), refined twice.
fn calibrate() -> u64 {
    let mut iterations: u64 = 20_000;
    for _ in 0..3 {
        let fastest = (0..7)
            .map(|_| {
                let t = Instant::now();
                spin(iterations);
                t.elapsed()
            })
            .min()
            .unwrap_or(WORK_UNIT)
            .max(Duration::from_micros(1));
        let scale = WORK_UNIT.as_secs_f64() / fastest.as_secs_f64();
        iterations = ((iterations as f64 * scale) as u64).max(1);
    }
    iterations
}

/// `probe work|wake`: runs the probe until stdin closes (or for `run_for`), then prints
/// its [`ProbeOutput`] on stdout.
pub fn probe_main(
    probe: Probe,
    iterations: Option<u64>,
    run_for: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = run_for.map(|d| Instant::now() + d);
    if run_for.is_none() {
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            flag.store(true, Ordering::Relaxed);
        });
    }
    let running = || !stop.load(Ordering::Relaxed) && deadline.map_or(true, |d| Instant::now() < d);
    let mut samples_ms = Vec::new();
    let iterations = match probe {
        Probe::Work => {
            let n = iterations.unwrap_or_else(calibrate);
            // At least one sample, however short the window.
            loop {
                let t = Instant::now();
                spin(n);
                samples_ms.push(t.elapsed().as_secs_f64() * 1e3);
                std::thread::sleep(WORK_SLEEP);
                if !running() {
                    break;
                }
            }
            Some(n)
        }
        Probe::Wake => {
            loop {
                let t = Instant::now();
                std::thread::sleep(WAKE_SLEEP);
                let late = t.elapsed().saturating_sub(WAKE_SLEEP);
                samples_ms.push(late.as_secs_f64() * 1e3);
                if !running() {
                    break;
                }
            }
            None
        }
    };
    let out = ProbeOutput {
        probe: probe.name().to_string(),
        iterations,
        samples_ms,
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", serde_json::to_string(&out)?)?;
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The two probes' figures over one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForegroundSample {
    pub duration_s: f64,
    /// Spin iterations of one work unit (the same alone and beside every profile).
    pub iterations: u64,
    /// Work unit wall time, milliseconds.
    pub work_ms: Summary,
    /// Wake-up lateness of a 1 ms sleep, milliseconds.
    pub wake_late_ms: Summary,
    /// CPU time both probes used, percent of the whole machine (it is in the system CPU
    /// figures of the window).
    pub probe_cpu_percent: Option<f64>,
}

impl ForegroundSample {
    /// Summarises the two probes' outputs.
    pub fn of(
        work: &ProbeOutput,
        wake: &ProbeOutput,
        duration_s: f64,
        probe_cpu_percent: Option<f64>,
    ) -> ForegroundSample {
        ForegroundSample {
            duration_s,
            iterations: work.iterations.unwrap_or(0),
            work_ms: Summary::of(&work.samples_ms),
            wake_late_ms: Summary::of(&wake.samples_ms),
            probe_cpu_percent,
        }
    }
}

/// A profile's foreground figures against alone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForegroundReport {
    pub beside: ForegroundSample,
    /// Work unit p50 beside the model / alone.
    pub work_p50_ratio: Option<f64>,
    /// Work unit p99 beside the model / alone.
    pub work_p99_ratio: Option<f64>,
    /// Wake-up lateness p99 beside the model minus alone, milliseconds.
    pub wake_p99_over_alone_ms: Option<f64>,
    pub checks: Vec<Check>,
    pub pass: bool,
}

fn ratio(beside: f64, alone: f64) -> Option<f64> {
    (alone > 0.0).then(|| beside / alone)
}

/// Judges `beside` against `alone`. A probe with no samples on either side leaves its figures
/// unknown, which fails their targets.
pub fn compare(
    alone: &ForegroundSample,
    beside: ForegroundSample,
    targets: &Targets,
) -> ForegroundReport {
    let both = |f: fn(&ForegroundSample) -> &Summary| {
        (f(alone).count > 0 && f(&beside).count > 0).then_some((f(alone), f(&beside)))
    };
    let work = both(|s| &s.work_ms);
    let wake = both(|s| &s.wake_late_ms);
    let work_p50_ratio = work.and_then(|(a, b)| ratio(b.p50, a.p50));
    let work_p99_ratio = work.and_then(|(a, b)| ratio(b.p99, a.p99));
    let wake_p99_over_alone_ms = wake.map(|(a, b)| b.p99 - a.p99);
    let checks =
        targets.evaluate_foreground(work_p50_ratio, work_p99_ratio, wake_p99_over_alone_ms);
    ForegroundReport {
        beside,
        work_p50_ratio,
        work_p99_ratio,
        wake_p99_over_alone_ms,
        pass: checks.iter().all(|c| c.pass),
        checks,
    }
}

/// Parses what a probe printed.
pub fn parse_output(probe: Probe, stdout: &[u8]) -> Result<ProbeOutput, ForegroundError> {
    let err = |problem: String| ForegroundError::Output {
        probe: probe.name(),
        problem,
    };
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| err("its output is empty".into()))?;
    let out: ProbeOutput = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
    if out.probe != probe.name() {
        return Err(err(format!("it says it is the `{}` probe", out.probe)));
    }
    Ok(out)
}

struct Running {
    probe: Probe,
    child: tokio::process::Child,
}

impl Running {
    /// One probe, through the product's one spawn path (its own process group, a death
    /// signal), so that it never outlives the bench.
    async fn start(
        exe: &Path,
        probe: Probe,
        iterations: Option<u64>,
    ) -> Result<Running, ForegroundError> {
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args(["probe", probe.name()]);
        if let (Probe::Work, Some(n)) = (probe, iterations) {
            cmd.arg("--iterations").arg(n.to_string());
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = sentinel_supervisor::os::process::spawn_in_group_async(
            cmd,
            nix::sys::signal::Signal::SIGKILL,
        )
        .await
        .map_err(|error| ForegroundError::Spawn {
            probe: probe.name(),
            exe: exe.display().to_string(),
            error,
        })?;
        tracing::debug!(
            probe = probe.name(),
            pid = child.id(),
            "foreground probe started"
        );
        Ok(Running { probe, child })
    }
}

/// Both probes, running.
pub struct Probes {
    started: Instant,
    work: Running,
    wake: Running,
}

impl Probes {
    /// Starts both; `iterations` fixes the work unit (`None`: the work probe calibrates it).
    pub async fn start(exe: &Path, iterations: Option<u64>) -> Result<Probes, ForegroundError> {
        Ok(Probes {
            started: Instant::now(),
            work: Running::start(exe, Probe::Work, iterations).await?,
            wake: Running::start(exe, Probe::Wake, iterations).await?,
        })
    }

    /// The probes' pids (to read their CPU time).
    pub fn pids(&self) -> Vec<i32> {
        [&self.work, &self.wake]
            .iter()
            .filter_map(|r| r.child.id().and_then(|p| i32::try_from(p).ok()))
            .collect()
    }

    /// Tells both to stop (closes their stdin) and summarises what they print.
    pub async fn stop(
        self,
        probe_cpu_percent: Option<f64>,
    ) -> Result<ForegroundSample, ForegroundError> {
        let duration_s = self.started.elapsed().as_secs_f64();
        let (work, wake) = tokio::join!(finish(self.work), finish(self.wake));
        Ok(ForegroundSample::of(
            &work?,
            &wake?,
            duration_s,
            probe_cpu_percent,
        ))
    }
}

async fn finish(mut r: Running) -> Result<ProbeOutput, ForegroundError> {
    drop(r.child.stdin.take());
    let probe = r.probe.name();
    let output = tokio::time::timeout(STOP_DEADLINE, r.child.wait_with_output())
        .await
        .map_err(|_| ForegroundError::Stuck {
            probe,
            secs: STOP_DEADLINE.as_secs(),
        })?
        .map_err(|e| ForegroundError::Output {
            probe,
            problem: e.to_string(),
        })?;
    if !output.status.success() {
        return Err(ForegroundError::Failed {
            probe,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr)
                .chars()
                .take(300)
                .collect(),
        });
    }
    parse_output(r.probe, &output.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(work: &[f64], wake: &[f64]) -> ForegroundSample {
        let out = |probe: &str, samples: &[f64]| ProbeOutput {
            probe: probe.into(),
            iterations: Some(1000),
            samples_ms: samples.to_vec(),
        };
        ForegroundSample::of(&out("work", work), &out("wake", wake), 1.0, None)
    }

    fn targets() -> Targets {
        Targets::shipped()
    }

    /// 100 units at `base` ms with the slowest `slow` of them at `tail` ms.
    fn units(base: f64, slow: usize, tail: f64) -> Vec<f64> {
        (0..100)
            .map(|i| if i < slow { tail } else { base })
            .collect()
    }

    #[test]
    fn ratios_and_difference_against_alone() {
        let alone = sample(&units(4.0, 2, 5.0), &units(0.05, 2, 0.1));
        // p50 4.0 -> 4.08 (1.02), p99 5.0 -> 5.5 (1.10), wake p99 0.1 -> 1.1 (+1 ms): all at
        // their limits, so all pass.
        let edge = compare(
            &alone,
            sample(&units(4.08, 2, 5.5), &units(0.05, 2, 1.1)),
            &targets(),
        );
        assert!((edge.work_p50_ratio.unwrap() - 1.02).abs() < 1e-9);
        assert!((edge.work_p99_ratio.unwrap() - 1.10).abs() < 1e-9);
        assert!((edge.wake_p99_over_alone_ms.unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(edge.checks.len(), 3);
        assert!(edge.pass, "{:?}", edge.checks);

        // Each figure over its limit fails alone.
        let cases = [
            (
                "foreground_work_p50_ratio",
                units(4.2, 2, 5.0),
                units(0.05, 2, 0.1),
            ),
            (
                "foreground_work_p99_ratio",
                units(4.0, 2, 5.6),
                units(0.05, 2, 0.1),
            ),
            (
                "foreground_wake_p99_over_alone",
                units(4.0, 2, 5.0),
                units(0.05, 2, 4.1),
            ),
        ];
        for (name, work, wake) in cases {
            let r = compare(&alone, sample(&work, &wake), &targets());
            let failed: Vec<&str> = r
                .checks
                .iter()
                .filter(|c| !c.pass)
                .map(|c| c.name)
                .collect();
            assert_eq!(failed, vec![name]);
            assert!(!r.pass);
        }
    }

    #[test]
    fn the_tail_is_the_99th_slowest_unit_not_the_max() {
        // One unit in 100 stalls: p99 ignores it (nearest rank 99 of 100), two do not.
        let one = sample(&units(4.0, 1, 40.0), &[0.1]);
        assert_eq!(one.work_ms.p99, 4.0);
        assert_eq!(one.work_ms.max, 40.0);
        let two = sample(&units(4.0, 2, 40.0), &[0.1]);
        assert_eq!(two.work_ms.p99, 40.0);
    }

    #[test]
    fn missing_samples_fail_instead_of_passing() {
        let alone = sample(&units(4.0, 0, 4.0), &units(0.1, 0, 0.1));
        let r = compare(&alone, sample(&[], &[]), &targets());
        assert_eq!(r.work_p50_ratio, None);
        assert_eq!(r.wake_p99_over_alone_ms, None);
        assert!(
            r.checks.iter().all(|c| !c.pass && c.shown == "n/a"),
            "{:?}",
            r.checks
        );
        let zero_alone = sample(&[0.0], &[0.0]);
        assert_eq!(
            compare(&zero_alone, alone.clone(), &targets()).work_p50_ratio,
            None
        );
    }

    #[test]
    fn probe_output_is_parsed_and_checked() {
        let line = br#"{"probe":"work","iterations":123,"samples_ms":[4.1,4.3]}"#;
        let out =
            parse_output(Probe::Work, &[b"noise\n".as_slice(), line, b"\n"].concat()).unwrap();
        assert_eq!(out.iterations, Some(123));
        assert_eq!(out.samples_ms, vec![4.1, 4.3]);
        let wrong = parse_output(Probe::Wake, line).unwrap_err().to_string();
        assert!(wrong.contains("`work` probe"), "{wrong}");
        assert!(parse_output(Probe::Wake, b"")
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }

    #[test]
    fn calibration_and_spin_are_sane() {
        assert_ne!(spin(10), spin(11));
        let n = calibrate();
        assert!(n > 0);
        // The calibrated unit takes milliseconds, not micro- or whole seconds, even on a busy
        // machine (the fastest of several trials is kept).
        let t = Instant::now();
        spin(n);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        assert!((0.5..500.0).contains(&ms), "{ms} ms");
    }
}
