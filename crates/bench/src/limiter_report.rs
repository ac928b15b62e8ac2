//! The limiter comparison's figures (`bench_governor`): what one run of a scenario measured, the
//! row pooled from its runs, and the three Markdown tables it prints (system CPU, the backend's
//! and the limiter's own CPU, speed and latency).

use super::stats::{self, Percentile};
use sentinel_supervisor::meter::SystemTimes;

/// What one run of a scenario measured during its workload (and its idle period before).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunMeasurement {
    /// System CPU (precise source) in % of the machine, per consecutive 100 ms window.
    pub system_100ms: Vec<f64>,
    /// The same per 20 ms window.
    pub system_20ms: Vec<f64>,
    /// System CPU read from `/proc/stat`'s ticks, per 100 ms window.
    pub system_ticks_100ms: Vec<f64>,
    /// The backend's own CPU in % of the machine, per 100 ms window.
    pub backend_100ms: Vec<f64>,
    /// The same per 20 ms window.
    pub backend_20ms: Vec<f64>,
    /// The largest 100 ms windows in the first second after the idle period.
    pub after_idle: AfterIdle,
    /// The machine's busy and total CPU time during the workload.
    pub system_times: SystemTimes,
    pub latencies_s: Vec<f64>,
    pub completion_tokens: u64,
    pub wall_s: f64,
    /// CPU time of the whole backend during the workload.
    pub backend_cpu_s: f64,
    /// CPU time of the backend's threads other than the main (computing) one.
    pub backend_helpers_cpu_s: f64,
    /// CPU time of the limiter process, when there is one.
    pub limiter_cpu_s: Option<f64>,
    /// The backend's CPU during the idle period, in % of a core.
    pub backend_idle_percent_of_core: f64,
}

/// The largest 100 ms window of the first second after the idle period, in % of the machine.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AfterIdle {
    pub system: Option<f64>,
    pub system_ticks: Option<f64>,
    pub backend: Option<f64>,
}

impl RunMeasurement {
    /// One line for progress output.
    pub fn progress_line(&self) -> String {
        format!(
            "p50 {} s, backend {:.1} % of a core, system p99 {} %",
            shown(stats::percentile(&self.latencies_s, Percentile::P50), 2),
            self.backend_cpu_s / self.wall_s.max(1e-9) * 100.0,
            shown(stats::percentile(&self.system_100ms, Percentile::P99), 1),
        )
    }
}

/// System CPU in % of the whole machine.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SystemCpu {
    pub mean: f64,
    pub p99_100ms: Option<f64>,
    pub max_100ms: Option<f64>,
    pub max_20ms: Option<f64>,
    pub after_idle_max_100ms: Option<f64>,
    /// The same figures from `/proc/stat` ticks.
    pub ticks_p99_100ms: Option<f64>,
    pub ticks_max_100ms: Option<f64>,
    pub ticks_after_idle_max_100ms: Option<f64>,
    /// What the backend and the limiter do not explain (other processes).
    pub others: f64,
}

/// The backend's and the limiter's own CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessCpu {
    pub backend_percent_of_core: f64,
    /// The backend's threads other than the computing one (HTTP, logging, ...): mostly what each
    /// stop and continue costs them (every one wakes every thread).
    pub backend_helpers_percent_of_core: f64,
    pub backend_idle_percent_of_core: f64,
    /// The backend in % of the machine, immune to other processes' load.
    pub backend_p99_100ms: Option<f64>,
    pub backend_max_100ms: Option<f64>,
    pub backend_max_20ms: Option<f64>,
    pub backend_after_idle_max_100ms: Option<f64>,
    pub limiter_percent_of_core: Option<f64>,
}

/// Work done and how long requests took.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Speed {
    pub tokens_per_s: f64,
    /// Tokens per CPU second of the backend: how well the CPU it was given turned into work.
    pub tokens_per_backend_core_s: f64,
    pub latency_p50_s: Option<f64>,
    pub latency_p95_s: Option<f64>,
    /// The latency p50 of each run.
    pub latency_p50_s_per_run: Vec<Option<f64>>,
}

/// Every run of a scenario pooled: windows and latencies pooled, after-idle spikes the worst of
/// any run, rates over the summed time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pooled {
    pub runs: usize,
    pub system: SystemCpu,
    pub process: ProcessCpu,
    pub speed: Speed,
}

/// One scenario's row: its figures, or why it was not measured.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioRow {
    pub name: String,
    pub threads: usize,
    pub outcome: Result<Pooled, String>,
}

/// Pools `runs` on a machine of `machine_cpus` CPUs.
pub fn pool(runs: &[RunMeasurement], machine_cpus: usize) -> Pooled {
    let cpus = machine_cpus.max(1) as f64;
    let all = |f: fn(&RunMeasurement) -> &Vec<f64>| -> Vec<f64> {
        runs.iter().flat_map(|m| f(m).iter().copied()).collect()
    };
    let worst = |f: fn(&AfterIdle) -> Option<f64>| {
        runs.iter()
            .filter_map(|m| f(&m.after_idle))
            .reduce(f64::max)
    };
    let sum = |f: fn(&RunMeasurement) -> f64| runs.iter().map(f).sum::<f64>();
    let p99 = |v: &[f64]| stats::percentile(v, Percentile::P99);

    let (system_100ms, system_20ms) = (all(|m| &m.system_100ms), all(|m| &m.system_20ms));
    let ticks_100ms = all(|m| &m.system_ticks_100ms);
    let (backend_100ms, backend_20ms) = (all(|m| &m.backend_100ms), all(|m| &m.backend_20ms));
    let latencies = all(|m| &m.latencies_s);
    let wall = sum(|m| m.wall_s).max(1e-9);
    let backend_s = sum(|m| m.backend_cpu_s);
    let tokens = runs.iter().map(|m| m.completion_tokens).sum::<u64>() as f64;
    let system_times = runs
        .iter()
        .fold(SystemTimes::default(), |acc, m| SystemTimes {
            busy: acc.busy + m.system_times.busy,
            total: acc.total + m.system_times.total,
        });
    let mean = system_times.busy_fraction_since(&SystemTimes::default()) * 100.0;
    let limiter_s: Option<f64> = runs.iter().map(|m| m.limiter_cpu_s).sum();
    let backend_percent_of_core = backend_s / wall * 100.0;
    let limiter_percent_of_core = limiter_s.map(|s| s / wall * 100.0);
    Pooled {
        runs: runs.len(),
        system: SystemCpu {
            mean,
            p99_100ms: p99(&system_100ms),
            max_100ms: stats::max(&system_100ms),
            max_20ms: stats::max(&system_20ms),
            after_idle_max_100ms: worst(|a| a.system),
            ticks_p99_100ms: p99(&ticks_100ms),
            ticks_max_100ms: stats::max(&ticks_100ms),
            ticks_after_idle_max_100ms: worst(|a| a.system_ticks),
            others: (mean
                - (backend_percent_of_core + limiter_percent_of_core.unwrap_or(0.0)) / cpus)
                .max(0.0),
        },
        process: ProcessCpu {
            backend_percent_of_core,
            backend_helpers_percent_of_core: sum(|m| m.backend_helpers_cpu_s) / wall * 100.0,
            backend_idle_percent_of_core: sum(|m| m.backend_idle_percent_of_core)
                / runs.len().max(1) as f64,
            backend_p99_100ms: p99(&backend_100ms),
            backend_max_100ms: stats::max(&backend_100ms),
            backend_max_20ms: stats::max(&backend_20ms),
            backend_after_idle_max_100ms: worst(|a| a.backend),
            limiter_percent_of_core,
        },
        speed: Speed {
            tokens_per_s: tokens / wall,
            tokens_per_backend_core_s: tokens / backend_s.max(1e-9),
            latency_p50_s: stats::percentile(&latencies, Percentile::P50),
            latency_p95_s: stats::percentile(&latencies, Percentile::P95),
            latency_p50_s_per_run: runs
                .iter()
                .map(|m| stats::percentile(&m.latencies_s, Percentile::P50))
                .collect(),
        },
    }
}

/// A figure with `decimals` decimals, `-` when there is none.
fn shown(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

fn one(v: f64) -> String {
    format!("{v:.1}")
}

/// A Markdown table; a row that was not measured shows its note after the name.
fn markdown(
    header: &[&str],
    rows: &[ScenarioRow],
    cells: impl Fn(&Pooled) -> Vec<String>,
) -> String {
    let mut out = format!(
        "| {} |\n|{}\n",
        header.join(" | "),
        "---|".repeat(header.len())
    );
    for row in rows {
        let mut line = vec![row.name.clone(), row.threads.to_string()];
        match &row.outcome {
            Ok(pooled) => line.extend(cells(pooled)),
            Err(note) => {
                line.push(note.clone());
                line.extend(vec![String::new(); header.len() - 3]);
            }
        }
        out.push_str(&format!("| {} |\n", line.join(" | ")));
    }
    out
}

/// System CPU in % of the whole machine, from the precise source and from `/proc/stat`.
pub fn system_table(rows: &[ScenarioRow]) -> String {
    const HEADER: [&str; 12] = [
        "scenario",
        "threads",
        "runs",
        "mean %",
        "p99 % (100ms)",
        "max % (100ms)",
        "max % (20ms)",
        "after-idle max %",
        "others %",
        "/proc/stat p99 %",
        "/proc/stat max %",
        "/proc/stat after-idle max %",
    ];
    markdown(&HEADER, rows, |p| {
        let s = &p.system;
        vec![
            p.runs.to_string(),
            one(s.mean),
            shown(s.p99_100ms, 1),
            shown(s.max_100ms, 1),
            shown(s.max_20ms, 1),
            shown(s.after_idle_max_100ms, 1),
            one(s.others),
            shown(s.ticks_p99_100ms, 1),
            shown(s.ticks_max_100ms, 1),
            shown(s.ticks_after_idle_max_100ms, 1),
        ]
    })
}

/// The limiter's and the backend's own CPU: in % of a core over the workload (and idle), and the
/// backend in % of the machine per window (immune to other processes' load).
pub fn process_table(rows: &[ScenarioRow]) -> String {
    const HEADER: [&str; 10] = [
        "scenario",
        "threads",
        "limiter % of a core",
        "backend % of a core",
        "other threads % of a core",
        "idle % of a core",
        "p99 % (100ms)",
        "max % (100ms)",
        "max % (20ms)",
        "after-idle max %",
    ];
    markdown(&HEADER, rows, |p| {
        let b = &p.process;
        vec![
            shown(b.limiter_percent_of_core, 2),
            one(b.backend_percent_of_core),
            format!("{:.2}", b.backend_helpers_percent_of_core),
            format!("{:.2}", b.backend_idle_percent_of_core),
            shown(b.backend_p99_100ms, 1),
            shown(b.backend_max_100ms, 1),
            shown(b.backend_max_20ms, 1),
            shown(b.backend_after_idle_max_100ms, 1),
        ]
    })
}

/// Throughput and request latency.
pub fn speed_table(rows: &[ScenarioRow]) -> String {
    const HEADER: [&str; 7] = [
        "scenario",
        "threads",
        "tokens/s",
        "tokens per backend core-s",
        "p50 s",
        "p95 s",
        "p50 s per run",
    ];
    markdown(&HEADER, rows, |p| {
        let s = &p.speed;
        let per_run: Vec<String> = s
            .latency_p50_s_per_run
            .iter()
            .map(|v| shown(*v, 2))
            .collect();
        vec![
            one(s.tokens_per_s),
            one(s.tokens_per_backend_core_s),
            shown(s.latency_p50_s, 2),
            shown(s.latency_p95_s, 2),
            per_run.join(" / "),
        ]
    })
}

/// The three tables, each under a short heading.
pub fn tables(rows: &[ScenarioRow]) -> String {
    format!(
        "System CPU, % of the whole machine:\n\n{}\n\
         The limiter's and the backend's own CPU (% of a core; per window, % of the machine):\n\n{}\n\
         Speed and latency:\n\n{}",
        system_table(rows),
        process_table(rows),
        speed_table(rows)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(latency: f64, spike: f64, limiter: Option<f64>) -> RunMeasurement {
        RunMeasurement {
            system_100ms: vec![25.0, 26.0, spike],
            system_20ms: vec![20.0, 60.0],
            system_ticks_100ms: vec![30.0, 40.0],
            backend_100ms: vec![24.0, 25.0],
            backend_20ms: vec![50.0],
            after_idle: AfterIdle {
                system: Some(spike),
                system_ticks: Some(35.0),
                backend: Some(spike - 1.0),
            },
            system_times: SystemTimes {
                busy: 27,
                total: 100,
            },
            latencies_s: vec![latency, latency + 1.0],
            completion_tokens: 64,
            wall_s: 10.0,
            backend_cpu_s: 5.0,
            backend_helpers_cpu_s: 0.1,
            limiter_cpu_s: limiter,
            backend_idle_percent_of_core: 0.5,
        }
    }

    #[test]
    fn runs_pool_into_one_row() {
        let p = pool(&[run(4.0, 30.0, Some(0.1)), run(6.0, 40.0, Some(0.3))], 2);
        assert_eq!(p.runs, 2);
        assert!((p.system.mean - 27.0).abs() < 1e-9);
        // 0.5 cores of backend and 0.02 of limiter over 2 CPUs explain 26 of 27 %.
        assert!((p.system.others - 1.0).abs() < 1e-9, "{}", p.system.others);
        assert_eq!(p.system.p99_100ms, Some(40.0));
        assert_eq!(p.system.max_20ms, Some(60.0));
        assert_eq!(p.system.after_idle_max_100ms, Some(40.0));
        assert_eq!(p.system.ticks_max_100ms, Some(40.0));
        assert_eq!(p.process.backend_after_idle_max_100ms, Some(39.0));
        assert!((p.process.backend_percent_of_core - 50.0).abs() < 1e-9);
        assert!((p.process.limiter_percent_of_core.unwrap() - 2.0).abs() < 1e-9);
        assert!((p.speed.tokens_per_s - 6.4).abs() < 1e-9);
        assert!((p.speed.tokens_per_backend_core_s - 12.8).abs() < 1e-9);
        // Latencies pooled: 4, 5, 6, 7.
        assert_eq!(p.speed.latency_p50_s, Some(5.0));
        assert_eq!(p.speed.latency_p95_s, Some(7.0));
        assert_eq!(p.speed.latency_p50_s_per_run, vec![Some(4.0), Some(6.0)]);
        // One run without a limiter process: no limiter figure at all.
        assert_eq!(
            pool(&[run(4.0, 30.0, Some(0.1)), run(4.0, 30.0, None)], 2)
                .process
                .limiter_percent_of_core,
            None
        );
    }

    #[test]
    fn tables_show_named_columns_and_failures() {
        let rows = [
            ScenarioRow {
                name: "governor-0.5".into(),
                threads: 1,
                outcome: Ok(pool(&[run(4.0, 30.0, Some(0.1))], 2)),
            },
            ScenarioRow {
                name: "cgroup-0.5".into(),
                threads: 1,
                outcome: Err("not measured: no writable cgroup".into()),
            },
        ];
        let system = system_table(&rows);
        let lines: Vec<&str> = system.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].contains("| p99 % (100ms) |") && lines[0].contains("/proc/stat p99 %"));
        assert_eq!(
            lines[2],
            "| governor-0.5 | 1 | 1 | 27.0 | 30.0 | 30.0 | 60.0 | 30.0 | 1.5 | 40.0 | 40.0 | 35.0 |"
        );
        // Every line of a table has as many cells as the header.
        let cells = |l: &str| l.matches('|').count();
        assert!(
            lines.iter().all(|l| cells(l) == cells(lines[0])),
            "{system}"
        );
        assert!(lines[3].starts_with("| cgroup-0.5 | 1 | not measured: no writable cgroup |"));
        let speed = speed_table(&rows);
        assert!(
            speed.contains("| governor-0.5 | 1 | 6.4 | 12.8 | 4.00 | 5.00 | 4.00 |"),
            "{speed}"
        );
        let process = process_table(&rows);
        assert!(
            process.contains(
                "| governor-0.5 | 1 | 1.00 | 50.0 | 1.00 | 0.50 | 25.0 | 25.0 | 50.0 | 29.0 |"
            ),
            "{process}"
        );
        let all = tables(&rows);
        assert_eq!(all.matches("| scenario | threads |").count(), 3);
    }

    #[test]
    fn empty_series_show_a_dash_not_a_zero() {
        let p = pool(&[RunMeasurement::default()], 2);
        assert_eq!(p.system.p99_100ms, None);
        assert_eq!(p.speed.latency_p50_s, None);
        let rows = [ScenarioRow {
            name: "x".into(),
            threads: 1,
            outcome: Ok(p),
        }];
        assert!(speed_table(&rows).contains("| x | 1 | 0.0 | 0.0 | - | - | - |"));
        assert!(RunMeasurement::default()
            .progress_line()
            .starts_with("p50 - s"));
    }
}
