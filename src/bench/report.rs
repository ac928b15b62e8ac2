//! The bench report: its stable JSON shape (`report.json`) and the Markdown rendering
//! (`report.md`).
//!
//! `report.json` (`format_version` 1):
//! ```text
//! { format_version, generated_at, host: {cpus}, tasks: {source, count}, targets: {...},
//!   verdict: "pass" | "fail",
//!   profiles: [ { profile, model, backend: {pid, threads, threads_batch}, limit_cpus,
//!                 governor, idle: {duration_s, system_cpu: Summary, backend_cpu_percent},
//!                 cpu_timeline: [ {t_s, percent, phase: "idle"|"active"} ],
//!                 runs: [ { schema_mode, tasks, errors, correctness,
//!                           categories: {NAME: {tasks, correctness}},
//!                           latency_s: Summary, latency_p99_over_p50, ttft_s: Summary,
//!                           completion_tokens, tokens_per_s, duration_s,
//!                           system_cpu: Summary, backend_cpu_percent, peak_rss_bytes,
//!                           checks: [ {name, criterion, value, shown, pass} ], pass,
//!                           results: [ {id, category, score, latency_s, ttft_s,
//!                                       completion_tokens, answer, error} ] } ] } ] }
//! ```
//! where `Summary` is `{count, mean, p50, p95, p99, max}`, CPU figures are percent of the whole
//! machine, and an unknown figure is `null`.

use super::stats::Summary;
use super::target::{Check, Targets};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The version of the JSON shape; bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub format_version: u32,
    pub generated_at: String,
    pub host: Host,
    pub tasks: TaskSource,
    pub targets: Targets,
    pub verdict: Verdict,
    pub profiles: Vec<ProfileReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Host {
    /// Logical CPUs of the machine (CPU percentages are of all of them).
    pub cpus: usize,
    /// Where system CPU was read from (`meter::SystemSource::describe`).
    pub cpu_source: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskSource {
    /// `built-in` or the path given with --tasks.
    pub source: String,
    /// Tasks run per profile and mode (after --limit).
    pub count: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProfileReport {
    pub profile: String,
    pub model: Option<String>,
    pub backend: BackendInfo,
    /// The governor's CPU budget in cores, when the profile has one.
    pub limit_cpus: Option<f64>,
    /// The `governor` object of `/status`, as reported (`null` when none ran).
    pub governor: Option<crate::governor::GovernorSnapshot>,
    pub idle: IdlePhase,
    pub cpu_timeline: Vec<CpuPoint>,
    pub runs: Vec<RunReport>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BackendInfo {
    pub pid: Option<i32>,
    pub threads: Option<u64>,
    pub threads_batch: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdlePhase {
    pub duration_s: f64,
    pub system_cpu: Summary,
    /// The backend process tree's own CPU while idle, percent of the machine.
    pub backend_cpu_percent: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CpuPoint {
    /// Seconds since this profile's measurement started.
    pub t_s: f64,
    /// System CPU over the last sample interval, percent of the machine.
    pub percent: f64,
    pub phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Idle,
    Active,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Whether tasks with a schema were sent `response_format: json_schema`.
    pub schema_mode: bool,
    pub tasks: usize,
    /// Tasks whose request failed (they score 0).
    pub errors: usize,
    pub correctness: f64,
    pub categories: BTreeMap<String, CategoryScore>,
    pub latency_s: Summary,
    pub latency_p99_over_p50: Option<f64>,
    pub ttft_s: Summary,
    pub completion_tokens: u64,
    /// Completion tokens divided by the summed request latency.
    pub tokens_per_s: f64,
    pub duration_s: f64,
    pub system_cpu: Summary,
    /// The backend process tree's CPU over the run, percent of the machine.
    pub backend_cpu_percent: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
    pub checks: Vec<Check>,
    pub pass: bool,
    pub results: Vec<TaskResult>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CategoryScore {
    pub tasks: usize,
    pub correctness: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    pub id: String,
    pub category: String,
    pub score: f64,
    pub latency_s: f64,
    pub ttft_s: Option<f64>,
    pub completion_tokens: Option<u64>,
    pub answer: String,
    pub error: Option<String>,
}

/// Mean score per category, and overall.
pub fn correctness(results: &[TaskResult]) -> (f64, BTreeMap<String, CategoryScore>) {
    let mut per: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for r in results {
        let e = per.entry(r.category.clone()).or_default();
        e.0 += 1;
        e.1 += r.score;
    }
    let overall = if results.is_empty() {
        0.0
    } else {
        results.iter().map(|r| r.score).sum::<f64>() / results.len() as f64
    };
    let categories = per
        .into_iter()
        .map(|(k, (n, sum))| {
            (
                k,
                CategoryScore {
                    tasks: n,
                    correctness: sum / n as f64,
                },
            )
        })
        .collect();
    (overall, categories)
}

impl Report {
    /// `pass` when every run of every profile met every target.
    pub fn verdict_of(profiles: &[ProfileReport]) -> Verdict {
        let all = profiles.iter().flat_map(|p| &p.runs).all(|r| r.pass);
        if all && profiles.iter().any(|p| !p.runs.is_empty()) {
            Verdict::Pass
        } else {
            Verdict::Fail
        }
    }

    /// The Markdown report: the summary table, then details per profile and mode.
    pub fn to_markdown(&self, chart_file: Option<&str>) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# sentinel-supervisor bench\n");
        let _ = writeln!(
            md,
            "Generated {} on a {}-CPU host; {} tasks ({}). CPU figures are system-wide, percent of \
             the whole machine, sampled every 100 ms from {}. Overall verdict: **{}**.\n",
            self.generated_at,
            self.host.cpus,
            self.tasks.count,
            self.tasks.source,
            self.host.cpu_source,
            match self.verdict {
                Verdict::Pass => "PASS",
                Verdict::Fail => "FAIL",
            }
        );
        md.push_str(&self.summary_table());
        if let Some(chart) = chart_file {
            let _ = writeln!(md, "\n![System CPU over time]({chart})");
        }
        for p in &self.profiles {
            for r in &p.runs {
                md.push('\n');
                md.push_str(&run_details(p, r));
            }
        }
        md
    }

    /// One row per profile and mode, with the columns of the experiment table.
    pub fn summary_table(&self) -> String {
        let mut md = String::from(
            "| Profile | Model | Threads | Limit | Correctness | Mean lat | p95 lat | Mean CPU | \
             Peak CPU | p99 CPU | RSS | Idle CPU | Status |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for p in &self.profiles {
            for r in &p.runs {
                let failed: Vec<&str> = r
                    .checks
                    .iter()
                    .filter(|c| !c.pass)
                    .map(|c| c.name)
                    .collect();
                let status = if failed.is_empty() {
                    "PASS".to_string()
                } else {
                    format!("FAIL ({})", failed.join(", "))
                };
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {:.2} | {:.2} s | {:.2} s | {:.1} % | {:.1} % | {:.1} % | {} | {:.1} % | {} |",
                    run_name(p, r),
                    model_name(p.model.as_deref()),
                    threads(&p.backend),
                    p.limit_cpus.map_or("none".to_string(), |c| format!("{c:.2} cpus")),
                    r.correctness,
                    r.latency_s.mean,
                    r.latency_s.p95,
                    r.system_cpu.mean,
                    r.system_cpu.max,
                    r.system_cpu.p99,
                    r.peak_rss_bytes.map_or("n/a".to_string(), gigabytes),
                    p.idle.system_cpu.mean,
                    status
                );
            }
        }
        md
    }
}

fn run_name(p: &ProfileReport, r: &RunReport) -> String {
    if r.schema_mode {
        format!("{} (schema)", p.profile)
    } else {
        p.profile.clone()
    }
}

fn model_name(path: Option<&str>) -> String {
    path.map_or("?".to_string(), |m| {
        std::path::Path::new(m)
            .file_name()
            .map_or(m.to_string(), |f| f.to_string_lossy().into_owned())
    })
}

fn threads(b: &BackendInfo) -> String {
    match (b.threads, b.threads_batch) {
        (Some(t), Some(tb)) if t == tb => t.to_string(),
        (Some(t), Some(tb)) => format!("{t}/{tb}"),
        (Some(t), None) => t.to_string(),
        _ => "?".to_string(),
    }
}

fn gigabytes(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
}

fn run_details(p: &ProfileReport, r: &RunReport) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## {}\n", run_name(p, r));
    let _ = writeln!(
        md,
        "{} tasks, {} request errors, {:.1} s. Latency mean {:.2} s, p50 {:.2} s, p99 {:.2} s; \
         time to first token p50 {:.2} s; {} completion tokens, {:.1} tokens/s. Backend CPU {} \
         (idle: {}; system idle p99 {:.1} %).\n",
        r.tasks,
        r.errors,
        r.duration_s,
        r.latency_s.mean,
        r.latency_s.p50,
        r.latency_s.p99,
        r.ttft_s.p50,
        r.completion_tokens,
        r.tokens_per_s,
        r.backend_cpu_percent
            .map_or("n/a".to_string(), |c| format!("{c:.1} %")),
        p.idle
            .backend_cpu_percent
            .map_or("n/a".to_string(), |c| format!("{c:.2} %")),
        p.idle.system_cpu.p99,
    );
    md.push_str("| Target | Criterion | Measured | Result |\n|---|---|---|---|\n");
    for c in &r.checks {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            c.name,
            c.criterion,
            c.shown,
            if c.pass { "pass" } else { "fail" }
        );
    }
    md.push_str("\n| Category | Tasks | Correctness |\n|---|---|---|\n");
    for (name, c) in &r.categories {
        let _ = writeln!(md, "| {name} | {} | {:.2} |", c.tasks, c.correctness);
    }
    md
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bench::target::Measured;
    use std::time::Duration;

    pub(crate) fn sample_report() -> Report {
        let results = vec![
            TaskResult {
                id: "a".into(),
                category: "cmdline".into(),
                score: 1.0,
                latency_s: 1.0,
                ttft_s: Some(0.2),
                completion_tokens: Some(3),
                answer: "malicious".into(),
                error: None,
            },
            TaskResult {
                id: "b".into(),
                category: "ioc".into(),
                score: 0.5,
                latency_s: 3.0,
                ttft_s: Some(0.4),
                completion_tokens: Some(9),
                answer: "1.2.3.4".into(),
                error: None,
            },
        ];
        let (correctness, categories) = correctness(&results);
        let latency = Summary::of(&[1.0, 3.0]);
        let targets = crate::config::Config::builtin().unwrap().bench.targets;
        let checks = targets.evaluate(&Measured {
            idle_cpu_mean: Some(0.4),
            active_cpu_mean: 30.0,
            active_cpu_p99: 48.0,
            peak_rss_bytes: Some(350_000_000),
            latency_p95: Duration::from_secs_f64(latency.p95),
            latency_p99_over_p50: latency.p99_over_p50(),
            correctness,
        });
        let run = RunReport {
            schema_mode: true,
            tasks: 2,
            errors: 0,
            correctness,
            categories,
            latency_s: latency,
            latency_p99_over_p50: latency.p99_over_p50(),
            ttft_s: Summary::of(&[0.2, 0.4]),
            completion_tokens: 12,
            tokens_per_s: 3.0,
            duration_s: 4.1,
            system_cpu: Summary::of(&[20.0, 30.0, 40.0, 30.0]),
            backend_cpu_percent: Some(25.0),
            peak_rss_bytes: Some(350_000_000),
            pass: checks.iter().all(|c| c.pass),
            checks,
            results,
        };
        let profiles = vec![ProfileReport {
            profile: "balanced".into(),
            model: Some("/tmp/gemma-3-270m-q4_k_m.gguf".into()),
            backend: BackendInfo {
                pid: Some(42),
                threads: Some(1),
                threads_batch: Some(2),
            },
            limit_cpus: Some(1.0),
            governor: None,
            idle: IdlePhase {
                duration_s: 2.0,
                system_cpu: Summary::of(&[0.2, 0.6]),
                backend_cpu_percent: Some(0.1),
            },
            cpu_timeline: vec![
                CpuPoint {
                    t_s: 0.1,
                    percent: 0.2,
                    phase: Phase::Idle,
                },
                CpuPoint {
                    t_s: 2.2,
                    percent: 30.0,
                    phase: Phase::Active,
                },
            ],
            runs: vec![run],
        }];
        Report {
            format_version: FORMAT_VERSION,
            generated_at: "2026-01-01T00:00:00Z".into(),
            host: Host {
                cpus: 2,
                cpu_source: "cpuacct.usage (exact run time)".into(),
            },
            tasks: TaskSource {
                source: "built-in".into(),
                count: 2,
            },
            targets,
            verdict: Report::verdict_of(&profiles),
            profiles,
        }
    }

    #[test]
    fn markdown_table_has_the_experiment_columns() {
        let report = sample_report();
        let table = report.summary_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "| Profile | Model | Threads | Limit | Correctness | Mean lat | p95 lat | Mean CPU | \
             Peak CPU | p99 CPU | RSS | Idle CPU | Status |"
        );
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[2],
            "| balanced (schema) | gemma-3-270m-q4_k_m.gguf | 1/2 | 1.00 cpus | 0.75 | 2.00 s | \
             3.00 s | 30.0 % | 40.0 % | 40.0 % | 0.35 GB | 0.4 % | FAIL (latency_p95, latency_p99_over_p50, correctness) |"
        );
        let md = report.to_markdown(Some("cpu.svg"));
        assert!(md.contains("Overall verdict: **FAIL**"));
        assert!(md.contains("![System CPU over time](cpu.svg)"));
        assert!(md.contains("| latency_p95 | <= 2.50 s | 3.00 s | fail |"));
        assert!(md.contains("| active_cpu_p99 | <= 50.0 % | 48.0 % | pass |"));
        assert!(md.contains("| ioc | 1 | 0.50 |"));
    }

    #[test]
    fn json_shape_is_stable() {
        let v = serde_json::to_value(sample_report()).unwrap();
        let keys = |v: &serde_json::Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(&v),
            [
                "format_version",
                "generated_at",
                "host",
                "profiles",
                "targets",
                "tasks",
                "verdict"
            ]
        );
        assert_eq!(v["format_version"], 1);
        assert_eq!(v["verdict"], "fail");
        assert_eq!(v["targets"]["latency_p95_max"], "2s 500ms");
        let p = &v["profiles"][0];
        assert_eq!(
            keys(p),
            [
                "backend",
                "cpu_timeline",
                "governor",
                "idle",
                "limit_cpus",
                "model",
                "profile",
                "runs"
            ]
        );
        assert_eq!(p["cpu_timeline"][1]["phase"], "active");
        let r = &p["runs"][0];
        assert_eq!(
            keys(r),
            [
                "backend_cpu_percent",
                "categories",
                "checks",
                "completion_tokens",
                "correctness",
                "duration_s",
                "errors",
                "latency_p99_over_p50",
                "latency_s",
                "pass",
                "peak_rss_bytes",
                "results",
                "schema_mode",
                "system_cpu",
                "tasks",
                "tokens_per_s",
                "ttft_s"
            ]
        );
        assert_eq!(
            keys(&r["latency_s"]),
            ["count", "max", "mean", "p50", "p95", "p99"]
        );
        assert_eq!(r["categories"]["cmdline"]["correctness"], 1.0);
        assert_eq!(r["checks"][6]["name"], "correctness");
        assert_eq!(r["results"][1]["ttft_s"], 0.4);
    }

    #[test]
    fn verdict_needs_every_run_to_pass() {
        let mut report = sample_report();
        assert_eq!(Report::verdict_of(&report.profiles), Verdict::Fail);
        for c in &mut report.profiles[0].runs[0].checks {
            c.pass = true;
        }
        report.profiles[0].runs[0].pass = true;
        assert_eq!(Report::verdict_of(&report.profiles), Verdict::Pass);
        assert_eq!(Report::verdict_of(&[]), Verdict::Fail);
    }
}
