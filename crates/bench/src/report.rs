//! The bench report: its stable JSON shape (`report.json`) and the Markdown rendering
//! (`report.md`).
//!
//! `report.json` (`format_version` 1):
//! ```text
//! { format_version, generated_at, host: {online_cpus, affinity_cpus, quota, cpu_source}, tasks: {source, count}, targets: {...},
//!   verdict: "pass" | "fail",
//!   examples: null | {shots, source, prefix, held_out: [ID]},
//!   foreground_alone: null | ForegroundSample,
//!   profiles: [ { profile, model, backend: {pid, threads, threads_batch}, limit_cpus,
//!                 governor, idle: {duration_s, system_cpu: Summary, backend_cpu_percent},
//!                 cpu_timeline: [ {t_s, percent, phase: "idle"|"active"} ],
//!                 foreground: null | { beside: ForegroundSample, work_p50_ratio,
//!                                      work_p99_ratio, wake_p99_over_alone_ms, checks, pass },
//!                 runs: [ { schema_mode, variant: {shots, prefix, cache_prompt},
//!                           tasks, errors, correctness,
//!                           categories: {NAME: {tasks, correctness}},
//!                           latency_s: Summary, latency_p99_over_p50, ttft_s: Summary,
//!                           completion_tokens, tokens_per_s, duration_s,
//!                           system_cpu: Summary, backend_cpu_percent, peak_rss_bytes,
//!                           prompt: PromptFigures,
//!                           checks: [ {name, criterion, value, shown, pass} ], pass,
//!                           results: [ {id, category, score, latency_s, ttft_s,
//!                                       completion_tokens, prompt_usage, answer, error} ] } ] } ] }
//! ```
//! where `Summary` is `{count, mean, p50, p95, p99, max}`, `ForegroundSample` is
//! `{duration_s, iterations, work_ms: Summary, wake_late_ms: Summary, probe_cpu_percent}`,
//! `PromptFigures` is `{reported, prompt_tokens_per_task, cached_tokens_per_task, cached_share,
//! prefill_s: Summary, backend_cpu_s_per_task, ttft_cold_s: Summary, ttft_warm_s: Summary}` and
//! `prompt_usage` is `null | {prompt_tokens, cached_tokens, prefilled_tokens, prefill_ms,
//! predicted_tokens}`. CPU figures are percent of the whole machine, an unknown figure is `null`.
//! With several `--model`s, `profiles` holds one entry per (model, profile), models outermost.

use super::foreground::{ForegroundReport, ForegroundSample};
use super::stats::Summary;
use super::target::{Check, Targets};
use sentinel_supervisor::metrics::tokens::PromptUsage;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The version of the JSON shape; bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub format_version: u32,
    pub generated_at: String,
    pub host: Machine,
    pub tasks: TaskSource,
    pub targets: Targets,
    pub verdict: Verdict,
    /// With `--shots` or `--prefix`: how the shared prefixes were built.
    pub examples: Option<ExamplesInfo>,
    /// With `--foreground`: the probes run alone, before any supervisor started.
    pub foreground_alone: Option<ForegroundSample>,
    pub profiles: Vec<ProfileReport>,
}

/// How the shared prefixes were built.
#[derive(Debug, Clone, Serialize)]
pub struct ExamplesInfo {
    /// Solved examples per category.
    pub shots: usize,
    /// `held-out tasks`, or the --examples file; `null` without shots.
    pub source: Option<String>,
    /// `built-in`, or the --prefix file.
    pub prefix: String,
    /// Tasks used as examples, scored in no run.
    pub held_out: Vec<String>,
}

/// The machine a report was taken on: the [`sentinel_supervisor::host::Host`] the run detected and where
/// system CPU was read from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    #[serde(flatten)]
    pub host: sentinel_supervisor::host::Host,
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
    /// The backend `/status` reported (`None` when it reported none).
    pub backend: Option<sentinel_supervisor::status::BackendReport>,
    /// The governor's CPU budget in cores, when the profile has one.
    pub limit_cpus: Option<f64>,
    /// The `governor` object of `/status`, as reported (`null` when none ran).
    pub governor: Option<sentinel_supervisor::governor::GovernorSnapshot>,
    pub idle: IdlePhase,
    pub cpu_timeline: Vec<CpuPoint>,
    /// With `--foreground`: the probes during the active phase, against alone.
    pub foreground: Option<ForegroundReport>,
    pub runs: Vec<RunReport>,
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
    pub variant: Variant,
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
    pub prompt: PromptFigures,
    pub checks: Vec<Check>,
    pub pass: bool,
    /// With spill: the share and latency of each tier (empty: every answer was local).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<TierFigures>,
    pub results: Vec<TaskResult>,
}

/// How a run framed its tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Variant {
    /// Solved examples in each category's prefix.
    pub shots: usize,
    /// The shared prefix (`built-in` or the --prefix file); `null`: tasks as written.
    pub prefix: Option<String>,
    /// `false`: sent with `cache_prompt: false`.
    pub cache_prompt: bool,
}

impl Variant {
    /// Tasks as written, with the backend's prompt cache.
    pub fn plain() -> Variant {
        Variant {
            shots: 0,
            prefix: None,
            cache_prompt: true,
        }
    }

    /// `""`, `", 3-shot"`, `", prefix, cache off"`, ...
    pub fn suffix(&self) -> String {
        let mut s = String::new();
        if self.prefix.is_some() {
            if self.shots > 0 {
                s.push_str(&format!(", {}-shot", self.shots));
            } else {
                s.push_str(", prefix");
            }
        }
        if !self.cache_prompt {
            s.push_str(", cache off");
        }
        s
    }
}

/// What a run's prompts cost, from the backend's usage reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PromptFigures {
    /// Requests whose answer reported prompt usage.
    pub reported: usize,
    pub prompt_tokens_per_task: Option<f64>,
    pub cached_tokens_per_task: Option<f64>,
    /// Cached prompt tokens over all prompt tokens, 0..=1.
    pub cached_share: Option<f64>,
    /// The backend's prefill time per task, seconds.
    pub prefill_s: Summary,
    /// The backend process tree's CPU time over the run divided by the requests sent.
    pub backend_cpu_s_per_task: Option<f64>,
    /// Time to first token of each category's first task in the run (its prefix not yet cached
    /// by this run; llama-server's host-RAM cache may still hold it from an earlier run, which
    /// `cached_tokens` of those tasks shows).
    pub ttft_cold_s: Summary,
    /// Time to first token of the other tasks.
    pub ttft_warm_s: Summary,
}

impl PromptFigures {
    /// Sums the usage of `results` (in the order they ran).
    pub fn of(results: &[TaskResult], backend_cpu_s: Option<f64>) -> PromptFigures {
        let usages: Vec<PromptUsage> = results.iter().filter_map(|r| r.prompt_usage).collect();
        let mean = |f: fn(&PromptUsage) -> Option<u64>| {
            let v: Vec<u64> = usages.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| v.iter().sum::<u64>() as f64 / v.len() as f64)
        };
        let both: Vec<(u64, u64)> = usages
            .iter()
            .filter_map(|u| u.prompt_tokens.zip(u.cached_tokens))
            .collect();
        let prompt_sum: u64 = both.iter().map(|b| b.0).sum();
        let cached_sum: u64 = both.iter().map(|b| b.1).sum();
        let mut seen = std::collections::HashSet::new();
        let (mut cold, mut warm) = (Vec::new(), Vec::new());
        for r in results {
            let first = seen.insert(r.category.as_str());
            if let Some(t) = r.ttft_s.filter(|_| r.error.is_none()) {
                if first {
                    cold.push(t)
                } else {
                    warm.push(t)
                }
            }
        }
        PromptFigures {
            reported: usages.len(),
            prompt_tokens_per_task: mean(|u| u.prompt_tokens),
            cached_tokens_per_task: mean(|u| u.cached_tokens),
            cached_share: (prompt_sum > 0).then(|| cached_sum as f64 / prompt_sum as f64),
            prefill_s: Summary::of(
                &usages
                    .iter()
                    .filter_map(|u| u.prefill_ms.map(|ms| ms / 1e3))
                    .collect::<Vec<_>>(),
            ),
            backend_cpu_s_per_task: backend_cpu_s
                .filter(|_| !results.is_empty())
                .map(|s| s / results.len() as f64),
            ttft_cold_s: Summary::of(&cold),
            ttft_warm_s: Summary::of(&warm),
        }
    }
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
    /// What the backend said the prompt cost (llama-server's `usage` and `timings`).
    pub prompt_usage: Option<PromptUsage>,
    pub answer: String,
    pub error: Option<String>,
    /// Who answered (`X-Sentinel-Served-By`: `local` or an upstream's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
}

/// One tier's share of a run with spill enabled, and its latency.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TierFigures {
    /// `local` or an upstream's name.
    pub tier: String,
    pub tasks: usize,
    /// Of the run's answered tasks.
    pub share: f64,
    pub latency_s: Summary,
}

/// The answered tasks per tier, local first; empty when every answer was local or none said
/// who served it (no spill happened).
pub fn tiers(results: &[TaskResult]) -> Vec<TierFigures> {
    let ok: Vec<&TaskResult> = results.iter().filter(|r| r.error.is_none()).collect();
    if ok
        .iter()
        .all(|r| r.served_by.as_deref().unwrap_or("local") == "local")
    {
        return Vec::new();
    }
    let mut names: Vec<String> = ok
        .iter()
        .map(|r| r.served_by.clone().unwrap_or_else(|| "local".into()))
        .collect();
    names.sort_by_key(|n| (n != "local", n.clone()));
    names.dedup();
    names
        .into_iter()
        .map(|tier| {
            let latencies: Vec<f64> = ok
                .iter()
                .filter(|r| r.served_by.as_deref().unwrap_or("local") == tier)
                .map(|r| r.latency_s)
                .collect();
            TierFigures {
                tasks: latencies.len(),
                share: latencies.len() as f64 / ok.len() as f64,
                latency_s: Summary::of(&latencies),
                tier,
            }
        })
        .collect()
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
    /// `pass` when every run of every profile met every target, and so did the foreground
    /// figures where they were measured.
    pub fn verdict_of(profiles: &[ProfileReport]) -> Verdict {
        let all = profiles.iter().flat_map(|p| &p.runs).all(|r| r.pass)
            && profiles
                .iter()
                .filter_map(|p| p.foreground.as_ref())
                .all(|f| f.pass);
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
            self.host.host.online_cpus,
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
        md.push_str("\n## Prompts and the prompt cache\n\n");
        if let Some(e) = &self.examples {
            let examples = match (&e.source, e.held_out.is_empty()) {
                (Some(s), true) => format!("{} solved examples per category from {s}", e.shots),
                (Some(_), false) => format!(
                    "{} solved examples per category, held out of the scored tasks (scored in \
                     no run): {}",
                    e.shots,
                    e.held_out.join(", ")
                ),
                (None, _) => "no solved examples".to_string(),
            };
            let _ = writeln!(
                md,
                "Shared prefix per category: {} system text, {examples}.\n",
                e.prefix
            );
        }
        md.push_str(&self.prompt_table());
        if let Some(alone) = &self.foreground_alone {
            md.push_str("\n## Foreground impact\n\n");
            md.push_str(&foreground_table(alone, &self.profiles));
        }
        for p in &self.profiles {
            for r in &p.runs {
                md.push('\n');
                md.push_str(&run_details(p, r));
            }
            if p.runs.iter().any(|r| r.variant != Variant::plain()) {
                md.push('\n');
                md.push_str(&category_comparison(p));
            }
        }
        md
    }

    /// One row per run: prompt and cached tokens, prefill, backend CPU per task, cold and warm
    /// time to first token, correctness.
    pub fn prompt_table(&self) -> String {
        let mut md = String::from(
            "| Run | Model | Correctness | Prompt tok/task | Cached tok/task | Cached | \
             Prefill/task | Backend CPU-s/task | TTFT cold | TTFT warm |\n\
             |---|---|---|---|---|---|---|---|---|---|\n",
        );
        let num = |v: Option<f64>, digits: usize| {
            v.map_or("n/a".to_string(), |v| format!("{v:.digits$}"))
        };
        let secs = |s: &Summary| {
            if s.count == 0 {
                "n/a".to_string()
            } else {
                format!("{:.3} s", s.mean)
            }
        };
        for p in &self.profiles {
            for r in &p.runs {
                let f = &r.prompt;
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {} |",
                    run_name(p, r),
                    model_name(p.model.as_deref()),
                    r.correctness,
                    num(f.prompt_tokens_per_task, 1),
                    num(f.cached_tokens_per_task, 1),
                    f.cached_share
                        .map_or("n/a".to_string(), |c| format!("{:.0} %", c * 100.0)),
                    secs(&f.prefill_s),
                    f.backend_cpu_s_per_task
                        .map_or("n/a".to_string(), |c| format!("{c:.3} s")),
                    secs(&f.ttft_cold_s),
                    secs(&f.ttft_warm_s),
                );
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
                let status = verdict_cell(&r.checks);
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
    let schema = if r.schema_mode { " (schema)" } else { "" };
    format!("{}{schema}{}", p.profile, r.variant.suffix())
}

/// The foreground probes alone, then per (model, profile) beside the model, with the targets.
pub fn foreground_table(alone: &ForegroundSample, profiles: &[ProfileReport]) -> String {
    let mut md = format!(
        "A normal-priority loop of a fixed work unit ({} spin iterations, calibrated to about 5 ms at its fastest alone) and \
         5 ms of sleep, and a separate process sleeping 1 ms and recording how late it wakes; alone \
         for {:.0} s before any supervisor started, then during each profile's active phase. The \
         probes' own CPU (alone: {}) is part of the system CPU figures above.\n\n\
         | Beside | Model | Work p50 | Work p99 | Wake late p99 | p50 ratio | p99 ratio | Wake vs alone | Status |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        alone.iterations,
        alone.duration_s,
        alone
            .probe_cpu_percent
            .map_or("n/a".to_string(), |c| format!("{c:.1} % of the machine")),
    );
    let _ = writeln!(
        md,
        "| nothing | - | {:.2} ms | {:.2} ms | {:.2} ms | 1.00 | 1.00 | +0.00 ms | - |",
        alone.work_ms.p50, alone.work_ms.p99, alone.wake_late_ms.p99
    );
    for p in profiles {
        let Some(f) = &p.foreground else { continue };
        let status = verdict_cell(&f.checks);
        let opt = |v: Option<f64>, fmt: &dyn Fn(f64) -> String| v.map_or("n/a".to_string(), fmt);
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {} | {} | {} | {} |",
            p.profile,
            model_name(p.model.as_deref()),
            f.beside.work_ms.p50,
            f.beside.work_ms.p99,
            f.beside.wake_late_ms.p99,
            opt(f.work_p50_ratio, &|r| format!("{r:.2}")),
            opt(f.work_p99_ratio, &|r| format!("{r:.2}")),
            opt(f.wake_p99_over_alone_ms, &|d| format!("{d:+.2} ms")),
            status
        );
    }
    md
}

/// Correctness per category, one column per run of the profile (with and without shots).
fn category_comparison(p: &ProfileReport) -> String {
    let mut md = format!(
        "### {}: correctness per category\n\n| Category |",
        p.profile
    );
    for r in &p.runs {
        let _ = write!(md, " {} |", run_name(p, r));
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(p.runs.len()));
    md.push('\n');
    let categories: std::collections::BTreeSet<&String> =
        p.runs.iter().flat_map(|r| r.categories.keys()).collect();
    for c in categories {
        let _ = write!(md, "| {c} |");
        for r in &p.runs {
            match r.categories.get(c) {
                Some(s) => {
                    let _ = write!(md, " {:.2} |", s.correctness);
                }
                None => md.push_str(" - |"),
            }
        }
        md.push('\n');
    }
    md
}

fn model_name(path: Option<&str>) -> String {
    path.map_or("?".to_string(), |m| {
        std::path::Path::new(m)
            .file_name()
            .map_or(m.to_string(), |f| f.to_string_lossy().into_owned())
    })
}

fn threads(b: &Option<sentinel_supervisor::status::BackendReport>) -> String {
    match b {
        Some(b) if b.threads == b.threads_batch => b.threads.to_string(),
        Some(b) => format!("{}/{}", b.threads, b.threads_batch),
        None => "?".to_string(),
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
    if !r.tiers.is_empty() {
        md.push_str("| Served by | Tasks | Share | Latency p50 | p95 |\n|---|---|---|---|---|\n");
        for t in &r.tiers {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} % | {:.2} s | {:.2} s |",
                t.tier,
                t.tasks,
                t.share * 100.0,
                t.latency_s.p50,
                t.latency_s.p95
            );
        }
        md.push('\n');
    }
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

/// `PASS`, or `FAIL (names of the checks that failed)`, for a report table.
fn verdict_cell(checks: &[Check]) -> String {
    let failed: Vec<&str> = checks.iter().filter(|c| !c.pass).map(|c| c.name).collect();
    if failed.is_empty() {
        "PASS".to_string()
    } else {
        format!("FAIL ({})", failed.join(", "))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::target::Measured;
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
                prompt_usage: Some(PromptUsage {
                    prompt_tokens: Some(100),
                    cached_tokens: Some(0),
                    prefilled_tokens: Some(100),
                    prefill_ms: Some(800.0),
                    predicted_tokens: Some(3),
                }),
                answer: "malicious".into(),
                error: None,
                served_by: None,
            },
            TaskResult {
                id: "b".into(),
                category: "ioc".into(),
                score: 0.5,
                latency_s: 3.0,
                ttft_s: Some(0.4),
                completion_tokens: Some(9),
                prompt_usage: None,
                answer: "1.2.3.4".into(),
                error: None,
                served_by: None,
            },
        ];
        let (correctness, categories) = correctness(&results);
        let latency = Summary::of(&[1.0, 3.0]);
        let targets = Targets::shipped();
        let checks = targets.evaluate(&Measured {
            idle_cpu_mean: Some(0.4),
            active_cpu_mean: 30.0,
            active_cpu_p99: 48.0,
            peak_rss_bytes: Some(350_000_000),
            latency_p95: Duration::from_secs_f64(latency.p95),
            latency_p99_over_p50: latency.p99_over_p50(),
            correctness,
        });
        let prompt = PromptFigures::of(&results, Some(1.0));
        let run = RunReport {
            schema_mode: true,
            variant: Variant::plain(),
            prompt,
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
            tiers: Vec::new(),
            results,
        };
        let profiles = vec![ProfileReport {
            profile: "balanced".into(),
            model: Some("/tmp/gemma-3-270m-q4_k_m.gguf".into()),
            backend: Some(sentinel_supervisor::status::BackendReport {
                pid: 42,
                port: 40123,
                generation: 1,
                threads: 1,
                threads_batch: 2,
                restarts: 0,
                rss_bytes: Some(400_000_000),
            }),
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
            foreground: None,
            runs: vec![run],
        }];
        Report {
            format_version: FORMAT_VERSION,
            generated_at: "2026-01-01T00:00:00Z".into(),
            host: Machine {
                host: sentinel_supervisor::host::Host::unrestricted(2),
                cpu_source: "cpuacct.usage (exact run time)".into(),
            },
            tasks: TaskSource {
                source: "built-in".into(),
                count: 2,
            },
            targets,
            verdict: Report::verdict_of(&profiles),
            examples: None,
            foreground_alone: None,
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
                "examples",
                "foreground_alone",
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
                "foreground",
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
                "prompt",
                "results",
                "schema_mode",
                "system_cpu",
                "tasks",
                "tokens_per_s",
                "ttft_s",
                "variant"
            ]
        );
        assert_eq!(r["variant"]["cache_prompt"], true);
        assert_eq!(r["prompt"]["cached_share"], 0.0);
        assert_eq!(r["results"][0]["prompt_usage"]["prefilled_tokens"], 100);
        assert!(r["results"][1]["prompt_usage"].is_null());
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

    #[test]
    fn tiers_split_answered_tasks_by_who_served_them() {
        let mut rs: Vec<TaskResult> = (1..=4).map(|i| result("c", i as f64, 10, 0)).collect();
        assert!(tiers(&rs).is_empty(), "no spill, no tier table");
        rs[0].served_by = Some("local".into());
        rs[1].served_by = Some("central".into());
        rs[2].served_by = Some("central".into());
        rs[3].error = Some("HTTP 503".into());
        let t = tiers(&rs);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].tier.as_str(), t[0].tasks), ("local", 1));
        assert_eq!((t[1].tier.as_str(), t[1].tasks), ("central", 2));
        assert!((t[1].share - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(t[1].latency_s.max, 6.0);
    }

    fn result(category: &str, ttft: f64, prompt: u64, cached: u64) -> TaskResult {
        TaskResult {
            id: format!("{category}-{ttft}"),
            category: category.into(),
            score: 1.0,
            latency_s: ttft * 2.0,
            ttft_s: Some(ttft),
            completion_tokens: Some(2),
            prompt_usage: Some(PromptUsage {
                prompt_tokens: Some(prompt),
                cached_tokens: Some(cached),
                prefilled_tokens: Some(prompt - cached),
                prefill_ms: Some((prompt - cached) as f64 * 10.0),
                predicted_tokens: Some(2),
            }),
            answer: String::new(),
            error: None,
            served_by: None,
        }
    }

    #[test]
    fn prompt_figures_split_cold_from_warm_per_category() {
        // Two categories in a row: each one's first task pays for its prefix.
        let results = [
            result("a", 2.0, 1000, 0),
            result("a", 0.2, 1010, 990),
            result("a", 0.3, 1005, 990),
            result("b", 1.8, 900, 0),
            result("b", 0.1, 905, 880),
        ];
        let f = PromptFigures::of(&results, Some(5.0));
        assert_eq!(f.reported, 5);
        assert_eq!(f.ttft_cold_s.count, 2);
        assert!((f.ttft_cold_s.mean - 1.9).abs() < 1e-9);
        assert_eq!(f.ttft_warm_s.count, 3);
        assert!((f.ttft_warm_s.mean - 0.2).abs() < 1e-9);
        assert!((f.prompt_tokens_per_task.unwrap() - 964.0).abs() < 1e-9);
        assert!((f.cached_tokens_per_task.unwrap() - 572.0).abs() < 1e-9);
        assert!((f.cached_share.unwrap() - 2860.0 / 4820.0).abs() < 1e-9);
        assert_eq!(f.prefill_s.max, 10.0);
        assert_eq!(f.backend_cpu_s_per_task, Some(1.0));
        // Nothing reported: unknown, not zero.
        let mut bare = result("a", 1.0, 1, 0);
        bare.prompt_usage = None;
        let f = PromptFigures::of(&[bare], None);
        assert_eq!(
            (f.reported, f.cached_share, f.prompt_tokens_per_task),
            (0, None, None)
        );
        assert_eq!(f.backend_cpu_s_per_task, None);
    }

    /// The sample report with a second model, a 2-shot run and the foreground probes.
    fn two_models_with_shots_and_foreground() -> Report {
        let mut report = sample_report();
        let alone = ForegroundSample {
            duration_s: 10.0,
            iterations: 4242,
            work_ms: Summary::of(&[4.0, 4.0, 5.0]),
            wake_late_ms: Summary::of(&[0.1, 0.1, 0.2]),
            probe_cpu_percent: Some(26.0),
        };
        let beside = |work: f64, wake: f64| ForegroundSample {
            work_ms: Summary::of(&[work, work, work + 1.0]),
            wake_late_ms: Summary::of(&[0.1, wake]),
            ..alone.clone()
        };
        let targets = report.targets.clone();
        let first = &mut report.profiles[0];
        let mut shots = first.runs[0].clone();
        shots.variant = Variant {
            shots: 2,
            prefix: Some("built-in".into()),
            cache_prompt: true,
        };
        shots.categories.get_mut("ioc").unwrap().correctness = 1.0;
        first.runs.push(shots);
        first.foreground = Some(crate::foreground::compare(
            &alone,
            beside(4.0, 0.2),
            &targets,
        ));
        let mut second = first.clone();
        second.model = Some("/m/qwen2.5-0.5b-q4.gguf".into());
        second.foreground = Some(crate::foreground::compare(
            &alone,
            beside(8.0, 4.2),
            &targets,
        ));
        report.profiles.push(second);
        report.foreground_alone = Some(alone);
        report.examples = Some(ExamplesInfo {
            shots: 2,
            source: Some("held-out tasks".into()),
            prefix: "built-in".into(),
            held_out: vec!["cmdline-01".into(), "cmdline-02".into()],
        });
        report
    }

    #[test]
    fn one_row_per_model_profile_and_run() {
        let report = two_models_with_shots_and_foreground();
        let table = report.summary_table();
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(rows.len(), 4, "{table}");
        assert!(rows[0].starts_with("| balanced (schema) | gemma-3-270m-q4_k_m.gguf |"));
        assert!(rows[1].starts_with("| balanced (schema), 2-shot | gemma-3-270m-q4_k_m.gguf |"));
        assert!(rows[2].starts_with("| balanced (schema) | qwen2.5-0.5b-q4.gguf |"));
        assert!(rows[3].starts_with("| balanced (schema), 2-shot | qwen2.5-0.5b-q4.gguf |"));

        let prompts = report.prompt_table();
        let rows: Vec<&str> = prompts.lines().skip(2).collect();
        assert_eq!(rows.len(), 4);
        // One of the two results reported usage: 100 prompt tokens, none cached, 0.8 s prefill;
        // 1 s of backend CPU over 2 tasks; cold = the first of each category.
        assert_eq!(
            rows[0],
            "| balanced (schema) | gemma-3-270m-q4_k_m.gguf | 0.75 | 100.0 | 0.0 | 0 % | 0.800 s \
             | 0.500 s | 0.300 s | n/a |"
        );

        let md = report.to_markdown(None);
        assert!(
            md.contains("held out of the scored tasks (scored in no run): cmdline-01, cmdline-02")
        );
        assert!(md.contains("| Category | balanced (schema) | balanced (schema), 2-shot |"));
        assert!(md.contains("| ioc | 0.50 | 1.00 |"), "{md}");
        assert!(md.contains(
            "| nothing | - | 4.00 ms | 5.00 ms | 0.20 ms | 1.00 | 1.00 | +0.00 ms | - |"
        ));
        assert!(md.contains("| balanced | gemma-3-270m-q4_k_m.gguf | 4.00 ms | 5.00 ms | 0.20 ms | 1.00 | 1.00 | +0.00 ms | PASS |"), "{md}");
        assert!(md.contains(
            "| balanced | qwen2.5-0.5b-q4.gguf | 8.00 ms | 9.00 ms | 4.20 ms | 2.00 | 1.80 | +4.00 ms | \
             FAIL (foreground_work_p50_ratio, foreground_work_p99_ratio, foreground_wake_p99_over_alone) |"
        ), "{md}");
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["profiles"].as_array().unwrap().len(), 2);
        assert_eq!(v["profiles"][1]["foreground"]["work_p50_ratio"], 2.0);
        assert_eq!(v["foreground_alone"]["iterations"], 4242);
        assert_eq!(v["examples"]["held_out"][1], "cmdline-02");
    }

    #[test]
    fn a_failed_foreground_fails_the_verdict() {
        let mut report = two_models_with_shots_and_foreground();
        for p in &mut report.profiles {
            for r in &mut p.runs {
                r.pass = true;
            }
        }
        assert_eq!(Report::verdict_of(&report.profiles), Verdict::Fail);
        report.profiles[1].foreground.as_mut().unwrap().pass = true;
        assert_eq!(Report::verdict_of(&report.profiles), Verdict::Pass);
    }
}
