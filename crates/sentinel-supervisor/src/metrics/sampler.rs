//! The invisibility SLO, live: a background task reads the machine's CPU counters every 100 ms
//! (the meter's exact `cpuacct` source when mounted, see [`crate::meter::system_source`]) and
//! counts each window by the share of the machine it was busy, in a histogram whose buckets
//! are the SLO thresholds (`[slo]`: idle, active mean, active p99), and counts the
//! windows in which the backend used more CPU than the governor's budget (its exact CPU clock
//! over the same window). An alert on either says the model became visible, at once, not at the
//! next benchmark.

use super::registered;
use super::slo::Slo;
use crate::governor::{GovernorSnapshot, Method};
use crate::meter::{SystemSource, SystemTimes};
use crate::supervisor::state::Status;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The length of one window.
pub(crate) const WINDOW: Duration = Duration::from_millis(100);

/// The SLO's counters.
#[derive(Debug)]
pub(super) struct Windows {
    system: Histogram,
    budgeted: Counter,
    over_budget: Counter,
}

/// The band limits, as shares of the machine: the `[slo]` thresholds on system CPU, sorted, once.
pub(crate) fn bands(slo: &Slo) -> Vec<f64> {
    let mut bands: Vec<f64> = slo
        .thresholds()
        .into_iter()
        .map(|(_, percent)| percent)
        .filter(|p| p.is_finite() && *p > 0.0)
        .map(|p| p / 100.0)
        .collect();
    bands.sort_by(f64::total_cmp);
    bands.dedup();
    bands
}

impl Windows {
    pub(super) fn register(registry: &mut Registry, slo: &Slo) -> Windows {
        Windows {
            system: registered(
                registry,
                "sentinel_slo_system_cpu_window_ratio",
                "Busy share of the whole machine in each 100 ms window; the buckets are the [slo] thresholds (idle, active mean, active p99)",
                Histogram::new(bands(slo)),
            ),
            budgeted: registered(
                registry,
                "sentinel_slo_budget_windows",
                "100 ms windows during which a governor held the backend to a budget",
                Counter::default(),
            ),
            over_budget: registered(
                registry,
                "sentinel_slo_over_budget_windows",
                "100 ms windows in which the backend used more CPU than the governor's budget",
                Counter::default(),
            ),
        }
    }

    /// Counts one window: the machine's busy share, and the backend's cores against the budget
    /// in force (`None` when no backend ran through the window or no budget was enforced).
    fn observe(&self, system_share: f64, backend: Option<(f64, f64)>) {
        self.system.observe(system_share);
        if let Some((cores, budget)) = backend {
            self.budgeted.inc();
            if cores > budget {
                self.over_budget.inc();
            }
        }
    }
}

/// One reading at a window's edge.
#[derive(Clone, Copy, Debug)]
struct Edge {
    at: Instant,
    system: SystemTimes,
    /// The backend's pid and CPU clock.
    backend: Option<(i32, Duration)>,
}

fn read_edge(source: SystemSource, online_cpus: usize, pid: Option<i32>) -> Option<Edge> {
    let at = Instant::now();
    let system = crate::meter::system_times_from(source, online_cpus).ok()?;
    let backend = pid.and_then(|pid| crate::meter::process_cpu(pid).map(|cpu| (pid, cpu)));
    Some(Edge {
        at,
        system,
        backend,
    })
}

/// The backend's cores between two edges, if the same backend was read at both.
fn backend_cores(before: &Edge, after: &Edge) -> Option<f64> {
    let ((pid0, cpu0), (pid1, cpu1)) = (before.backend?, after.backend?);
    let wall = after.at.saturating_duration_since(before.at).as_secs_f64();
    (pid0 == pid1 && wall > 0.0).then(|| cpu1.saturating_sub(cpu0).as_secs_f64() / wall)
}

/// The budget a governor enforces now, in cores.
fn enforced_budget(snapshot: Option<&GovernorSnapshot>) -> Option<f64> {
    snapshot.filter(|s| s.method != Method::Off)?.budget_cpus
}

/// Starts the sampler; it ends with `cancel`.
pub(crate) fn spawn(
    metrics: Arc<super::Metrics>,
    status: watch::Receiver<Status>,
    governor: watch::Receiver<Option<GovernorSnapshot>>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let source = crate::meter::system_source();
        tracing::debug!(source = source.describe(), window = ?WINDOW, "SLO sampler started");
        let pid = || status.borrow().backend.as_ref().map(|b| b.pid);
        let mut ticker = tokio::time::interval(WINDOW);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<Edge> = None;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = cancel.cancelled() => return,
            }
            let Some(edge) = read_edge(source, metrics.online_cpus, pid()) else {
                last = None;
                continue;
            };
            if let Some(before) = last {
                let share = edge.system.busy_fraction_since(&before.system);
                let budget = enforced_budget(governor.borrow().as_ref());
                let backend = backend_cores(&before, &edge).zip(budget);
                metrics.slo.observe(share, backend);
            }
            last = Some(edge);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample;
    use super::*;

    fn slo() -> Slo {
        crate::config::Config::builtin().unwrap().slo
    }

    #[test]
    fn bands_are_the_slo_thresholds_as_shares() {
        assert_eq!(bands(&slo()), vec![0.02, 0.35, 0.5]);
        let mut t = slo();
        t.active_cpu_mean_max_percent = 50.0;
        assert_eq!(bands(&t), vec![0.02, 0.5]);
    }

    #[tokio::test]
    async fn windows_are_counted_by_band_and_against_the_budget() {
        let m = super::super::Metrics::new(&slo(), 2, Default::default());
        for share in [0.01, 0.01, 0.2, 0.4, 0.9] {
            m.slo.observe(share, None);
        }
        m.slo.observe(0.3, Some((0.45, 0.5)));
        m.slo.observe(0.3, Some((0.6, 0.5)));
        let report = super::super::tests::report(crate::supervisor::state::State::Ready);
        let text = m.render(&report, None).await;
        let bucket = |le: &str| {
            sample(
                &text,
                &format!("sentinel_slo_system_cpu_window_ratio_bucket{{le=\"{le}\"}}"),
            )
        };
        // Cumulative buckets: <=2 %, <=35 %, <=50 %, all.
        assert_eq!(bucket("0.02"), Some(2.0), "{text}");
        assert_eq!(bucket("0.35"), Some(5.0));
        assert_eq!(bucket("0.5"), Some(6.0));
        assert_eq!(bucket("+Inf"), Some(7.0));
        assert_eq!(
            sample(&text, "sentinel_slo_budget_windows_total"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "sentinel_slo_over_budget_windows_total"),
            Some(1.0)
        );
    }

    #[test]
    fn backend_cores_need_the_same_backend_at_both_edges() {
        let t0 = Instant::now();
        let edge = |at: Instant, backend| Edge {
            at,
            system: SystemTimes::default(),
            backend,
        };
        let before = edge(t0, Some((7, Duration::from_millis(100))));
        let after = edge(
            t0 + Duration::from_millis(100),
            Some((7, Duration::from_millis(150))),
        );
        let cores = backend_cores(&before, &after).unwrap();
        assert!((cores - 0.5).abs() < 1e-9, "{cores}");
        let restarted = edge(
            t0 + Duration::from_millis(100),
            Some((8, Duration::from_millis(1))),
        );
        assert_eq!(backend_cores(&before, &restarted), None);
        assert_eq!(
            backend_cores(&before, &edge(t0 + Duration::from_millis(100), None)),
            None
        );
    }

    #[test]
    fn only_an_enforcing_governor_has_a_budget() {
        let snap = |method, budget| GovernorSnapshot {
            method,
            cgroup: None,
            budget_cpus: budget,
            duty: None,
            state: crate::governor::GovernorState::Throttling,
            measured_cpus: None,
            priority: crate::governor::Priority::Background,
        };
        assert_eq!(
            enforced_budget(Some(&snap(Method::Signals, Some(0.5)))),
            Some(0.5)
        );
        assert_eq!(enforced_budget(Some(&snap(Method::Off, Some(0.5)))), None);
        assert_eq!(enforced_budget(Some(&snap(Method::Cgroup, None))), None);
        assert_eq!(enforced_budget(None), None);
    }

    #[tokio::test]
    async fn the_task_counts_real_windows_and_stops_when_cancelled() {
        let online = crate::host::Host::detect().online_cpus;
        let m = Arc::new(super::super::Metrics::new(
            &slo(),
            online,
            Default::default(),
        ));
        let (_status_tx, status) = watch::channel(Status::initial());
        let (_gov_tx, governor) = watch::channel(None);
        let cancel = CancellationToken::new();
        let task = spawn(Arc::clone(&m), status, governor, cancel.clone());
        tokio::time::sleep(WINDOW * 5 + WINDOW / 2).await;
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the sampler ends when cancelled")
            .unwrap();
        let report = super::super::tests::report(crate::supervisor::state::State::Ready);
        let text = m.render(&report, None).await;
        let windows = sample(&text, "sentinel_slo_system_cpu_window_ratio_count").unwrap();
        assert!(
            (2.0..=5.0).contains(&windows),
            "{windows} windows in 550 ms"
        );
        assert_eq!(
            sample(&text, "sentinel_slo_budget_windows_total"),
            Some(0.0),
            "no backend, no budget windows"
        );
    }
}
