//! The CPU samplers, each on its own thread: [`Sampler`] reads system CPU every interval, tagged
//! with the current phase, plus the backend process tree's resident memory high-water mark;
//! [`CounterSampler`] keeps the raw counters (machine, precise and from `/proc/stat`, and one
//! process's CPU clock) so that windows of any multiple of the interval can be cut afterwards.

use super::report::{CpuPoint, Phase};
use sentinel_supervisor::meter::{SystemSource, SystemTimes};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running sampler; [`Sampler::finish`] stops it and returns what it saw.
pub struct Sampler {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub started: Instant,
}

struct Shared {
    stop: AtomicBool,
    active: AtomicBool,
    points: Mutex<Vec<CpuPoint>>,
    max_tree_rss: AtomicU64,
}

impl Sampler {
    /// Starts sampling every `interval` (phase `Idle` until [`Sampler::set_phase`]); the
    /// machine has `online_cpus` ([`sentinel_supervisor::host::Host::online_cpus`]).
    pub fn start(
        interval: Duration,
        backend_pid: Option<i32>,
        online_cpus: usize,
    ) -> std::io::Result<Sampler> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            active: AtomicBool::new(false),
            points: Mutex::new(Vec::new()),
            max_tree_rss: AtomicU64::new(0),
        });
        let started = Instant::now();
        let mut previous = sentinel_supervisor::meter::system_times(online_cpus)?;
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("bench-sampler".into())
            .spawn(move || {
                let mut next = started + interval;
                while !worker.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    next += interval;
                    let Ok(now) = sentinel_supervisor::meter::system_times(online_cpus) else {
                        continue;
                    };
                    let percent = now.busy_fraction_since(&previous) * 100.0;
                    previous = now;
                    let phase = if worker.active.load(Ordering::Relaxed) {
                        Phase::Active
                    } else {
                        Phase::Idle
                    };
                    let point = CpuPoint {
                        t_s: started.elapsed().as_secs_f64(),
                        percent,
                        phase,
                    };
                    worker
                        .points
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(point);
                    if let Some(usage) = backend_pid.and_then(crate::tree::tree_usage) {
                        worker
                            .max_tree_rss
                            .fetch_max(usage.rss_bytes, Ordering::Relaxed);
                    }
                }
            })?;
        Ok(Sampler {
            shared,
            thread: Some(thread),
            started,
        })
    }

    pub fn set_phase(&self, phase: Phase) {
        self.shared
            .active
            .store(phase == Phase::Active, Ordering::Relaxed);
    }

    /// Seconds since the sampler started.
    pub fn now_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The latest system CPU reading, percent.
    pub fn current_percent(&self) -> Option<f64> {
        let points = self.shared.points.lock().unwrap_or_else(|e| e.into_inner());
        points.last().map(|p| p.percent)
    }

    /// Stops the thread; returns the timeline and the largest tree RSS seen (0 if none).
    pub fn finish(mut self) -> (Vec<CpuPoint>, u64) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let points =
            std::mem::take(&mut *self.shared.points.lock().unwrap_or_else(|e| e.into_inner()));
        (points, self.shared.max_tree_rss.load(Ordering::Relaxed))
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// The CPU readings of `timeline` taken between `from_s` and `to_s` (inclusive), in percent.
pub fn window(timeline: &[CpuPoint], from_s: f64, to_s: f64) -> Vec<f64> {
    timeline
        .iter()
        .filter(|p| p.t_s >= from_s && p.t_s <= to_s)
        .map(|p| p.percent)
        .collect()
}

/// One reading of [`CounterSampler`], stamped halfway through the reads (so a preempted sampler
/// does not skew windows).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CounterReading {
    pub at: Instant,
    /// The machine's counters from the precise source ([`sentinel_supervisor::meter::system_times`]).
    pub system: SystemTimes,
    /// The machine's counters from `/proc/stat` (10 ms ticks), to compare with.
    pub system_ticks: SystemTimes,
    /// The watched process's CPU time (its exact CPU clock).
    pub process_cpu: Duration,
}

/// Raw counters every `interval` on a dedicated thread until dropped.
pub struct CounterSampler {
    interval: Duration,
    readings: Arc<Mutex<Vec<CounterReading>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CounterSampler {
    /// Starts reading the machine's counters (of `online_cpus`) and `pid`'s CPU clock every
    /// `interval`.
    pub fn start(
        pid: i32,
        interval: Duration,
        online_cpus: usize,
    ) -> std::io::Result<CounterSampler> {
        let readings = Arc::new(Mutex::new(Vec::with_capacity(10_000)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (readings, stop) = (Arc::clone(&readings), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("bench-counters".into())
                .spawn(move || {
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(reading) = read_counters(pid, online_cpus) {
                            readings
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(reading);
                        }
                        next += interval;
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        } else {
                            next = now;
                        }
                    }
                })?
        };
        Ok(CounterSampler {
            interval,
            readings,
            stop,
            thread: Some(thread),
        })
    }

    /// The readings taken between `from` and `to` (inclusive).
    pub fn between(&self, from: Instant, to: Instant) -> Readings {
        let all = self.readings.lock().unwrap_or_else(|e| e.into_inner());
        Readings {
            interval: self.interval,
            readings: all
                .iter()
                .filter(|r| r.at >= from && r.at <= to)
                .copied()
                .collect(),
        }
    }
}

impl Drop for CounterSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Both machine counters and the process clock back to back; `None` if the machine's could not
/// be read (a process that is gone reads zero).
fn read_counters(pid: i32, online_cpus: usize) -> Option<CounterReading> {
    let before = Instant::now();
    let process_cpu = sentinel_supervisor::meter::process_cpu(pid).unwrap_or_default();
    let system = sentinel_supervisor::meter::system_times(online_cpus).ok()?;
    let system_ticks =
        sentinel_supervisor::meter::system_times_from(SystemSource::ProcStat, online_cpus).ok()?;
    let after = Instant::now();
    Some(CounterReading {
        at: before + (after - before) / 2,
        system,
        system_ticks,
        process_cpu,
    })
}

/// A span of [`CounterSampler`] readings, cut into consecutive windows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Readings {
    interval: Duration,
    readings: Vec<CounterReading>,
}

impl Readings {
    /// System CPU (precise source) in % of the machine, per consecutive `window`.
    pub fn system_percent(&self, window: Duration) -> Vec<f64> {
        self.windows(window, |a, b| {
            b.system.busy_fraction_since(&a.system) * 100.0
        })
    }

    /// System CPU from `/proc/stat`'s ticks in % of the machine, per consecutive `window`.
    pub fn system_ticks_percent(&self, window: Duration) -> Vec<f64> {
        self.windows(window, |a, b| {
            b.system_ticks.busy_fraction_since(&a.system_ticks) * 100.0
        })
    }

    /// The process's CPU in % of a machine of `cpus` CPUs, per consecutive `window`.
    pub fn process_percent(&self, window: Duration, cpus: usize) -> Vec<f64> {
        let cpus = cpus.max(1) as f64;
        self.windows(window, |a, b| {
            let wall = (b.at - a.at).as_secs_f64().max(1e-6);
            b.process_cpu.saturating_sub(a.process_cpu).as_secs_f64() / wall / cpus * 100.0
        })
    }

    /// The machine's busy and total time (precise source) from the first reading to the last.
    pub fn system_elapsed(&self) -> SystemTimes {
        match (self.readings.first(), self.readings.last()) {
            (Some(a), Some(b)) => SystemTimes {
                busy: b.system.busy.saturating_sub(a.system.busy),
                total: b.system.total.saturating_sub(a.system.total),
            },
            _ => SystemTimes::default(),
        }
    }

    /// `f(first, last)` of each run of consecutive readings spanning `window` (a whole number of
    /// intervals, at least one), windows not overlapping.
    fn windows(
        &self,
        window: Duration,
        f: impl Fn(&CounterReading, &CounterReading) -> f64,
    ) -> Vec<f64> {
        let k = samples_per_window(window, self.interval);
        self.readings
            .windows(k + 1)
            .step_by(k)
            .map(|w| f(&w[0], &w[k]))
            .collect()
    }
}

/// How many sampling intervals make up `window` (rounded, at least one).
fn samples_per_window(window: Duration, interval: Duration) -> usize {
    if interval.is_zero() {
        return 1;
    }
    ((window.as_secs_f64() / interval.as_secs_f64()).round() as usize).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn samples_at_the_interval_with_phases() {
        let me = std::process::id() as i32;
        let online = sentinel_supervisor::host::Host::detect().online_cpus;
        let s = Sampler::start(Duration::from_millis(20), Some(me), online).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        s.set_phase(Phase::Active);
        std::thread::sleep(Duration::from_millis(150));
        let (points, rss) = s.finish();
        assert!(points.len() >= 8 && points.len() <= 20, "{}", points.len());
        assert!(points.iter().all(|p| (0.0..=100.0).contains(&p.percent)));
        assert!(points.windows(2).all(|w| w[0].t_s < w[1].t_s));
        assert_eq!(points.first().map(|p| p.phase), Some(Phase::Idle));
        assert_eq!(points.last().map(|p| p.phase), Some(Phase::Active));
        assert!(rss > 0);
    }

    #[test]
    fn windows_select_by_time() {
        let p = |t_s, percent| CpuPoint {
            t_s,
            percent,
            phase: Phase::Idle,
        };
        let tl = [p(0.1, 1.0), p(0.2, 2.0), p(0.3, 3.0), p(0.4, 4.0)];
        assert_eq!(window(&tl, 0.2, 0.3), vec![2.0, 3.0]);
        assert!(window(&tl, 1.0, 2.0).is_empty());
    }

    #[test]
    fn counter_windows_are_consecutive_and_named_by_duration() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Every 20 ms the machine (2 CPUs, 40 ms of CPU time per 20 ms) is busy 10 ms, 30 ms,
        // ...; the process runs 10 ms of each 20 ms; /proc/stat reads whole 10 ms ticks.
        let busy = [0u64, 10, 40, 50, 80, 90];
        let readings: Vec<CounterReading> = busy
            .iter()
            .enumerate()
            .map(|(i, &b)| CounterReading {
                at: t0 + ms(20 * i as u64),
                system: SystemTimes {
                    busy: b * 1_000_000,
                    total: 40_000_000 * i as u64,
                },
                system_ticks: SystemTimes {
                    busy: (b / 20) * 20_000_000,
                    total: 40_000_000 * i as u64,
                },
                process_cpu: ms(10 * i as u64),
            })
            .collect();
        let r = Readings {
            interval: ms(20),
            readings,
        };
        assert_eq!(r.system_percent(ms(20)), vec![25.0, 75.0, 25.0, 75.0, 25.0]);
        // 40 ms windows: readings 0-2 and 2-4 (the last reading starts no whole window).
        assert_eq!(r.system_percent(ms(40)), vec![50.0, 50.0]);
        assert_eq!(r.system_ticks_percent(ms(40)), vec![50.0, 50.0]);
        let process = r.process_percent(ms(100), 2);
        assert_eq!(process.len(), 1);
        assert!((process[0] - 25.0).abs() < 1e-9, "{process:?}");
        assert_eq!(
            r.system_elapsed(),
            SystemTimes {
                busy: 90_000_000,
                total: 200_000_000
            }
        );
        assert!(Readings::default().system_percent(ms(100)).is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn counter_sampler_reads_its_own_process() {
        let me = std::process::id() as i32;
        let cpus = sentinel_supervisor::host::Host::detect().online_cpus;
        let s = CounterSampler::start(me, Duration::from_millis(10), cpus).unwrap();
        let from = Instant::now();
        let spin_until = from + Duration::from_millis(200);
        while Instant::now() < spin_until {
            std::hint::black_box(0u64);
        }
        let r = s.between(from, Instant::now());
        drop(s);
        // About one reading per 10 ms (the sampler paces itself from its first reading).
        assert!(
            (10..=25).contains(&r.readings.len()),
            "{}",
            r.readings.len()
        );
        let me_percent = r.process_percent(Duration::from_millis(100), cpus);
        assert!(!me_percent.is_empty());
        // This process spun the whole time: it ran, and never more than the machine has.
        assert!(me_percent.iter().sum::<f64>() > 0.0, "{me_percent:?}");
        assert!(
            me_percent.iter().all(|p| (0.0..=101.0).contains(p)),
            "{me_percent:?}"
        );
        let system = r.system_percent(Duration::from_millis(100));
        assert!(
            system.iter().all(|p| (0.0..=100.0).contains(p)),
            "{system:?}"
        );
    }
}
