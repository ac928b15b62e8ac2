//! The CPU sampler: system CPU every interval on its own thread, tagged with the current phase,
//! plus the backend process tree's resident memory high-water mark.

use super::report::{CpuPoint, Phase};
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
    /// Starts sampling every `interval` (phase `Idle` until [`Sampler::set_phase`]).
    pub fn start(interval: Duration, backend_pid: Option<i32>) -> std::io::Result<Sampler> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            active: AtomicBool::new(false),
            points: Mutex::new(Vec::new()),
            max_tree_rss: AtomicU64::new(0),
        });
        let started = Instant::now();
        let mut previous = crate::meter::system_times()?;
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("bench-sampler".into())
            .spawn(move || {
                let mut next = started + interval;
                while !worker.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    next += interval;
                    let Ok(now) = crate::meter::system_times() else {
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
                    if let Some(usage) = backend_pid.and_then(crate::meter::tree_usage) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn samples_at_the_interval_with_phases() {
        let me = std::process::id() as i32;
        let s = Sampler::start(Duration::from_millis(20), Some(me)).unwrap();
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
}
