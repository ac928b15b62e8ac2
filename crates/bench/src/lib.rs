//! sentinel-bench, the experiment harness of sentinel-supervisor, in a crate of its own so what
//! `cargo install` puts on a user's machine is the supervisor alone. It depends on the product's
//! library and reads its facts from there (the configuration and `[slo]`, `/status`, the
//! meter, the governor, how llama-server is launched, token usage); the product's
//! `sentinel-supervisor bench` runs this crate's `sentinel-bench` (one command name for users,
//! no harness in the installed product; see the product's `commands::bench`).
//!
//! `bench`: for each profile, start (or attach to) the supervisor stack, measure idle CPU, run
//! the endpoint-security task set through the OpenAI endpoint while sampling CPU and memory, and
//! write `report.json`, `report.md` and `cpu.svg`.
//!
//! With `--shots K` / `--prefix FILE` (`prefix`) every run is done without and with a shared
//! per-category prefix, and once with the prompt cache off; with `--foreground` (`foreground`)
//! two probes measure what a user at the machine feels, alone and during each profile's tasks;
//! with several `--model`s every profile is measured on every model, into one report.
//!
//! Files: `cli` and `options` (the command line, turned into [`BenchOptions`] once), `task`
//! (the task set), `score` (scorers), `prefix` (shared prefixes and solved examples), `stack`
//! (the supervisor under test), `sampler` (CPU over time), `tree` (a process tree's CPU and memory), `workload` (one streamed request, its token
//! usage read by the product's `metrics::tokens`), `foreground` (the probes), `stats`, `target`, `settings`
//! (`bench.toml`), `report` and `chart`; `limiters` and `limiter_report` are the limiter
//! comparison of the `bench_governor` driver (`src/bin/`), `wake` the stand-in scenarios of
//! `bench_wake`. The binaries: `sentinel-bench`, the drivers `bench_governor`, `bench_wake` and
//! `bench_proxy`, and the test support `fake-backend` and
//! `cpu-burner`.

pub mod chart;
pub mod cli;
pub mod command;
pub mod foreground;
pub mod limiter_report;
pub mod limiters;
pub mod options;
pub mod prefix;
pub mod report;
pub mod sampler;
pub mod score;
pub mod settings;
pub mod stack;
pub mod stats;
pub mod target;
pub mod task;
pub mod tree;
pub mod wake;
pub mod workload;

use anyhow::Context;
use foreground::{ForegroundSample, Probes};
use prefix::{Framing, PrefixOptions};
use report::{Phase, ProfileReport, Report, RunReport, TaskResult, Variant};
use sampler::Sampler;
use sentinel_supervisor::host::Host;
use sentinel_supervisor::status::StatusReport;
use settings::BenchConfig;
use stack::{Launch, Stack};
use stats::Summary;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use task::Task;

/// Whether tasks are sent with `response_format: json_schema`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaMode {
    Off,
    On,
    /// Every task twice, without then with the schema.
    Both,
}

/// What `bench` measures and how: the command line merged over the settings (`bench.toml`).
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The bench's settings.
    pub settings: BenchConfig,
    /// What each run is judged against: the product's `[slo]` and the settings' targets.
    pub targets: target::Targets,
    pub subject: Subject,
    /// Flags given to every supervisor started here.
    pub launch: LaunchFlags,
    /// Models to measure every profile on (`--model`, repeatable); empty = the configured one.
    pub models: Vec<PathBuf>,
    /// Solved examples per category in a shared prefix (`--shots`, 0 = none).
    pub shots: usize,
    /// A user's own instruction prefix (`--prefix`).
    pub prefix: Option<PathBuf>,
    /// Solved examples from a file instead of held-out tasks (`--examples`).
    pub examples: Option<PathBuf>,
    /// With a shared prefix: one more run with the prompt cache off (not `--no-cache-off`).
    pub cache_off_run: bool,
    /// Run the foreground-impact probes (`--foreground`).
    pub foreground: bool,
    /// A JSONL task file; `None` = the shipped task set.
    pub tasks: Option<PathBuf>,
    /// Run only the first N tasks (N >= 1).
    pub task_limit: Option<usize>,
    /// Where the reports go.
    pub out: PathBuf,
    /// Idle window measured before the tasks.
    pub idle: Duration,
    pub schema_mode: SchemaMode,
    /// Upper bound on generated tokens per task.
    pub max_tokens: u32,
    /// Sent as `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// The machine whose share the CPU figures are (detected once by the command).
    pub host: Host,
}

/// Which supervisors are measured.
#[derive(Debug, Clone, PartialEq)]
pub enum Subject {
    /// One already running; `profile` is its name in the report (else `/status` says).
    Running {
        url: String,
        profile: Option<String>,
    },
    /// One started per profile, in order.
    Start { profiles: Vec<String> },
}

/// What a started supervisor is told on its command line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LaunchFlags {
    pub config: Option<PathBuf>,
    pub backend_bin: Option<PathBuf>,
}

impl SchemaMode {
    fn runs(self) -> &'static [bool] {
        match self {
            SchemaMode::Off => &[false],
            SchemaMode::On => &[true],
            SchemaMode::Both => &[false, true],
        }
    }
}

/// File names written into `--out`.
pub const REPORT_JSON: &str = "report.json";
pub const REPORT_MD: &str = "report.md";
pub const CHART_SVG: &str = "cpu.svg";

/// Runs `bench`. Exit code 0 when every measurement completed (whatever the verdict), 1 when
/// some requests failed (the report is still written); errors stop the run.
pub async fn run(options: BenchOptions) -> anyhow::Result<ExitCode> {
    let settings = &options.settings;
    // Examples are held out of the whole set first, so --limit counts scored tasks only.
    let plan = prefix::plan(
        task::load(options.tasks.as_deref())?,
        &PrefixOptions {
            shots: options.shots,
            prefix_file: options.prefix.clone(),
            examples_file: options.examples.clone(),
        },
    )?;
    let mut tasks = plan.scored;
    if let Some(n) = options.task_limit {
        tasks.truncate(n);
    }
    // `None`: the configured model.
    let models: Vec<Option<PathBuf>> = if options.models.is_empty() {
        vec![None]
    } else {
        options.models.iter().cloned().map(Some).collect()
    };
    let profiles: Vec<Option<String>> = match &options.subject {
        Subject::Running { profile, .. } => vec![profile.clone()],
        Subject::Start { profiles } => profiles.iter().cloned().map(Some).collect(),
    };
    std::fs::create_dir_all(&options.out).with_context(|| {
        format!(
            "cannot create the output directory {}",
            options.out.display()
        )
    })?;
    let client = reqwest::Client::builder()
        .build()
        .context("cannot build the HTTP client")?;
    let foreground_alone = if options.foreground {
        Some(measure_foreground_alone(settings.foreground_alone, &options.host).await?)
    } else {
        None
    };
    let examples = plan.framing.as_ref().map(|f| report::ExamplesInfo {
        shots: f.shots,
        source: plan.examples_source.clone(),
        prefix: f.source.clone(),
        held_out: plan.held_out.clone(),
    });

    let session = Session {
        options: &options,
        client,
        tasks: &tasks,
        host: options.host,
        framing: plan.framing.as_ref(),
        foreground_alone: foreground_alone.as_ref(),
    };
    let source = options
        .tasks
        .as_ref()
        .map_or("built-in".to_string(), |p| p.display().to_string());
    let assemble = |profiles: Vec<ProfileReport>| Report {
        format_version: report::FORMAT_VERSION,
        generated_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        host: report::Machine {
            host: session.host,
            cpu_source: sentinel_supervisor::meter::system_source()
                .describe()
                .to_string(),
        },
        tasks: report::TaskSource {
            source: source.clone(),
            count: tasks.len(),
        },
        targets: options.targets.clone(),
        verdict: Report::verdict_of(&profiles),
        examples: examples.clone(),
        foreground_alone: foreground_alone.clone(),
        profiles,
    };
    let mut reports = Vec::new();
    for (index, model) in models.iter().enumerate() {
        // Several models: every log name says which one it was.
        let model_index = (models.len() > 1).then_some(index + 1);
        for profile in &profiles {
            let report = session
                .measure_profile(profile.as_deref(), model.as_ref(), model_index)
                .await
                .with_context(|| {
                    format!(
                        "measuring profile `{}`{}",
                        profile.as_deref().unwrap_or("(running)"),
                        model
                            .as_ref()
                            .map_or(String::new(), |m| format!(" on model {}", m.display()))
                    )
                })?;
            reports.push(report);
            // Written after every profile, so a long run never loses the profiles it finished.
            write_outputs(&options.out, &assemble(reports.clone()))?;
        }
    }
    let report = assemble(reports);
    write_outputs(&options.out, &report)?;
    println!("{}", report.summary_table());
    println!(
        "Verdict: {:?}. Reports in {}",
        report.verdict,
        options.out.display()
    );
    if let Some(alone) = &report.foreground_alone {
        println!("{}", report::foreground_table(alone, &report.profiles));
    }
    let errors: usize = report
        .profiles
        .iter()
        .flat_map(|p| &p.runs)
        .map(|r| r.errors)
        .sum();
    if errors > 0 {
        eprintln!("bench: {errors} request(s) failed; see `error` in {REPORT_JSON}");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `sentinel-supervisor`, to start `run` from: beside this executable (where cargo builds both,
/// and where the product found this one), else on `PATH`.
fn supervisor_executable() -> anyhow::Result<PathBuf> {
    const NAME: &str = "sentinel-supervisor";
    let beside = std::env::current_exe()
        .context("cannot locate this executable")?
        .with_file_name(NAME);
    let on_path = || {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join(NAME))
            .find(|p| p.is_file())
    };
    match beside.is_file() {
        true => Ok(beside),
        false => on_path().with_context(|| {
            format!(
                "{NAME} was found neither at {} nor on PATH (build it with `cargo build \
                 --release -p sentinel-supervisor`)",
                beside.display()
            )
        }),
    }
}

/// This very binary, to start the foreground probes from. On Linux `/proc/self/exe` still works
/// when the file was replaced or deleted since this process started (a rebuild during a long
/// bench).
fn own_executable() -> anyhow::Result<std::path::PathBuf> {
    #[cfg(target_os = "linux")]
    {
        let proc_exe = std::path::PathBuf::from("/proc/self/exe");
        if proc_exe.exists() {
            return Ok(proc_exe);
        }
    }
    std::env::current_exe().context("cannot locate this executable to start the probes")
}

/// Runs the foreground probes alone for `window`, before any supervisor starts; the work unit
/// is calibrated here and kept for every later run.
async fn measure_foreground_alone(
    window: Duration,
    host: &Host,
) -> anyhow::Result<ForegroundSample> {
    eprintln!(
        "bench: foreground probes alone for {}",
        humantime::format_duration(window)
    );
    let probes = Probes::start(&own_executable()?, None).await?;
    let before = probes_cpu(&probes);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let cpu = probe_cpu_percent(&probes, before, started, host);
    let alone = probes.stop(cpu).await?;
    anyhow::ensure!(
        alone.work_ms.count > 0 && alone.wake_late_ms.count > 0,
        "the foreground probes recorded nothing alone in {} (raise [bench] foreground_alone)",
        humantime::format_duration(window)
    );
    Ok(alone)
}

/// Both probes' CPU time so far.
fn probes_cpu(probes: &Probes) -> Option<Duration> {
    probes
        .pids()
        .into_iter()
        .map(|p| crate::tree::tree_usage(p).map(|u| u.cpu_time))
        .sum()
}

/// The probes' CPU since `before`, percent of the machine.
fn probe_cpu_percent(
    probes: &Probes,
    before: Option<Duration>,
    since: Instant,
    host: &Host,
) -> Option<f64> {
    let after = probes_cpu(probes)?;
    Some(share_of_machine(
        after.saturating_sub(before?),
        since.elapsed().as_secs_f64(),
        host,
    ))
}

/// CPU time used over `wall_s` seconds, as a percentage of the whole machine.
fn share_of_machine(cpu: Duration, wall_s: f64, host: &Host) -> f64 {
    if wall_s <= 0.0 {
        return 0.0;
    }
    cpu.as_secs_f64() / (wall_s * host.online_cpus as f64) * 100.0
}

fn write_outputs(out: &std::path::Path, report: &Report) -> anyhow::Result<()> {
    let write = |name: &str, text: String| {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write(REPORT_JSON, serde_json::to_string_pretty(report)?)?;
    write(REPORT_MD, report.to_markdown(Some(CHART_SVG)))?;
    write(CHART_SVG, chart::render(report))?;
    Ok(())
}

/// One pass over the tasks, before the CPU timeline is known.
struct PendingRun {
    schema_mode: bool,
    variant: Variant,
    start_s: f64,
    end_s: f64,
    backend_cpu: Option<Duration>,
    results: Vec<TaskResult>,
}

/// What every profile's measurement shares.
struct Session<'a> {
    options: &'a BenchOptions,
    client: reqwest::Client,
    tasks: &'a [Task],
    /// The machine whose share the CPU figures are (detected once by the command).
    host: Host,
    /// The shared prefixes, with --shots or --prefix.
    framing: Option<&'a Framing>,
    /// With --foreground: the probes alone (their work unit is reused beside every profile).
    foreground_alone: Option<&'a ForegroundSample>,
}

/// One pass over the tasks: its variant and how its requests are shaped.
struct RunPlan<'a> {
    variant: Variant,
    shape: workload::Shape<'a>,
}

impl<'a> Session<'a> {
    /// The runs of one profile: for each schema mode, the tasks as written, then (with a shared
    /// prefix) behind it, then behind it with caching off (in the first schema mode only, unless
    /// --no-cache-off: it costs a full prefill per task).
    fn run_plans(&self) -> Vec<RunPlan<'a>> {
        let mut plans = Vec::new();
        for (i, &schema_mode) in self.options.schema_mode.runs().iter().enumerate() {
            let plain = workload::Shape {
                framing: None,
                cache_prompt: true,
                schema_mode,
            };
            plans.push(RunPlan {
                variant: Variant::plain(),
                shape: plain,
            });
            let Some(framing) = self.framing else {
                continue;
            };
            let prefixed = |cache_prompt| RunPlan {
                variant: Variant {
                    shots: framing.shots,
                    prefix: Some(framing.source.clone()),
                    cache_prompt,
                },
                shape: workload::Shape {
                    framing: Some(framing),
                    cache_prompt,
                    schema_mode,
                },
            };
            plans.push(prefixed(true));
            if i == 0 && self.options.cache_off_run {
                plans.push(prefixed(false));
            }
        }
        plans
    }
}

impl Session<'_> {
    /// Starts (or attaches to) the stack for one profile, measures it, and stops it.
    async fn measure_profile(
        &self,
        profile: Option<&str>,
        model: Option<&PathBuf>,
        model_index: Option<usize>,
    ) -> anyhow::Result<ProfileReport> {
        let (options, client) = (self.options, &self.client);
        let settings = &options.settings;
        let api_key = options.api_key.clone();
        let stack = match &options.subject {
            Subject::Running { url, .. } => Stack::attach(url, api_key),
            Subject::Start { .. } => {
                let name = profile.unwrap_or_default();
                eprintln!("bench: starting the supervisor with profile `{name}`");
                let log = match model_index {
                    Some(i) => format!("supervisor-model{i}-{name}.log"),
                    None => format!("supervisor-{name}.log"),
                };
                let launch = Launch {
                    exe: supervisor_executable()?,
                    profile: name.to_string(),
                    model: model.cloned(),
                    backend_bin: options.launch.backend_bin.clone(),
                    config: options.launch.config.clone(),
                    log: options.out.join(log),
                    listen_timeout: settings.ready_timeout,
                };
                Stack::start(&launch, api_key).await?
            }
        };
        let mut backend_pid = None;
        let result = async {
            stack.wait_ready(client, settings.ready_timeout).await?;
            let status = stack.status(client).await?;
            backend_pid = status.backend.as_ref().map(|b| b.pid);
            self.measure_ready(&stack, profile, status).await
        }
        .await;
        stack.stop(backend_pid).await;
        result
    }

    async fn measure_ready(
        &self,
        stack: &Stack,
        profile: Option<&str>,
        status: StatusReport,
    ) -> anyhow::Result<ProfileReport> {
        let options = self.options;
        let settings = &options.settings;
        let name = profile
            .map(str::to_string)
            .unwrap_or_else(|| status.profile.clone());
        let pid = status.backend.as_ref().map(|b| b.pid);
        if pid.is_none() {
            tracing::warn!(profile = %name, "/status reports no backend pid; backend CPU and RSS will be n/a");
        }
        let sampler = Sampler::start(settings.sample_interval, pid, self.host.online_cpus)
            .context("cannot read system CPU counters")?;
        eprintln!(
            "bench: {name}: measuring idle for {}",
            humantime::format_duration(options.idle)
        );
        let idle_cpu_before = pid.and_then(crate::tree::tree_usage).map(|u| u.cpu_time);
        tokio::time::sleep(options.idle).await;
        let idle_end = sampler.now_s();
        let idle_backend = idle_cpu_before
            .zip(pid.and_then(crate::tree::tree_usage).map(|u| u.cpu_time))
            .map(|(b, a)| share_of_machine(a.saturating_sub(b), idle_end, &self.host));
        sampler.set_phase(Phase::Active);
        let probes = match self.foreground_alone {
            Some(alone) => Some(Probes::start(&own_executable()?, Some(alone.iterations)).await?),
            None => None,
        };
        let probes_before = probes.as_ref().and_then(probes_cpu);
        let active_start = Instant::now();

        let mut runs = Vec::new();
        for plan in self.run_plans() {
            runs.push(self.run_tasks(stack, &sampler, &name, pid, plan).await);
        }
        let foreground = match (probes, self.foreground_alone) {
            (Some(probes), Some(alone)) => {
                let cpu = probe_cpu_percent(&probes, probes_before, active_start, &self.host);
                let beside = probes.stop(cpu).await?;
                Some(foreground::compare(alone, beside, &options.targets))
            }
            _ => None,
        };
        let (timeline, max_tree_rss) = sampler.finish();
        let idle_cpu = Summary::of(&sampler::window(&timeline, 0.0, idle_end));
        let peak_rss = pid
            .and_then(crate::tree::peak_rss_bytes)
            .max((max_tree_rss > 0).then_some(max_tree_rss));
        let runs = runs
            .into_iter()
            .map(|r| r.finish(&timeline, &idle_cpu, peak_rss, &options.targets, &self.host))
            .collect();
        Ok(ProfileReport {
            profile: name,
            model: Some(status.model.clone()),
            backend: status.backend.clone(),
            limit_cpus: status.governor.as_ref().and_then(|g| g.budget_cpus),
            governor: status.governor,
            idle: report::IdlePhase {
                duration_s: idle_end,
                system_cpu: idle_cpu,
                backend_cpu_percent: idle_backend,
            },
            cpu_timeline: timeline,
            foreground,
            runs,
        })
    }

    async fn run_tasks(
        &self,
        stack: &Stack,
        sampler: &Sampler,
        name: &str,
        pid: Option<i32>,
        plan: RunPlan<'_>,
    ) -> PendingRun {
        let (settings, client, tasks, max_tokens) = (
            &self.options.settings,
            &self.client,
            self.tasks,
            self.options.max_tokens,
        );
        let schema_mode = plan.shape.schema_mode;
        let label = format!(
            "{name}{}{}",
            if schema_mode { " (schema)" } else { "" },
            plan.variant.suffix()
        );
        let cpu_before = pid.and_then(crate::tree::tree_usage).map(|u| u.cpu_time);
        let start_s = sampler.now_s();
        let started = Instant::now();
        let mut results = Vec::with_capacity(tasks.len());
        for (i, task) in tasks.iter().enumerate() {
            let asked = Instant::now();
            let outcome = workload::ask(
                client,
                stack,
                task,
                plan.shape,
                max_tokens,
                settings.request_timeout,
            )
            .await;
            let result = match outcome {
                Ok(o) => TaskResult {
                    id: task.id.clone(),
                    category: task.category.clone(),
                    score: task.scorer.score(&o.answer),
                    latency_s: o.latency.as_secs_f64(),
                    ttft_s: o.ttft.map(|t| t.as_secs_f64()),
                    completion_tokens: o.completion_tokens,
                    prompt_usage: o.prompt_usage,
                    answer: o.answer,
                    error: None,
                    served_by: o.served_by,
                },
                Err(e) => {
                    tracing::warn!(task = %task.id, error = %e, "task request failed");
                    TaskResult {
                        id: task.id.clone(),
                        category: task.category.clone(),
                        score: 0.0,
                        latency_s: asked.elapsed().as_secs_f64(),
                        ttft_s: None,
                        completion_tokens: None,
                        prompt_usage: None,
                        answer: String::new(),
                        error: Some(e.to_string()),
                        served_by: None,
                    }
                }
            };
            results.push(result);
            eprintln!(
                "bench: {label}: {}/{} tasks done, {:.1} s elapsed, CPU {}",
                i + 1,
                tasks.len(),
                started.elapsed().as_secs_f64(),
                sampler
                    .current_percent()
                    .map_or("n/a".to_string(), |c| format!("{c:.0} %"))
            );
        }
        let cpu_after = pid.and_then(crate::tree::tree_usage).map(|u| u.cpu_time);
        PendingRun {
            schema_mode,
            variant: plan.variant,
            start_s,
            end_s: sampler.now_s(),
            backend_cpu: cpu_before.zip(cpu_after).map(|(b, a)| a.saturating_sub(b)),
            results,
        }
    }
}

impl PendingRun {
    fn finish(
        self,
        timeline: &[report::CpuPoint],
        idle_cpu: &Summary,
        peak_rss: Option<u64>,
        targets: &target::Targets,
        host: &Host,
    ) -> RunReport {
        let duration_s = self.end_s - self.start_s;
        let system_cpu = Summary::of(&sampler::window(timeline, self.start_s, self.end_s));
        let ok: Vec<&TaskResult> = self.results.iter().filter(|r| r.error.is_none()).collect();
        let latency_s = Summary::of(&ok.iter().map(|r| r.latency_s).collect::<Vec<_>>());
        let ttft_s = Summary::of(&ok.iter().filter_map(|r| r.ttft_s).collect::<Vec<_>>());
        let completion_tokens: u64 = ok.iter().filter_map(|r| r.completion_tokens).sum();
        let busy: f64 = ok.iter().map(|r| r.latency_s).sum();
        let (correctness, categories) = report::correctness(&self.results);
        let backend_cpu_percent = self
            .backend_cpu
            .filter(|_| duration_s > 0.0)
            .map(|c| share_of_machine(c, duration_s, host));
        let checks = targets.evaluate(&target::Measured {
            idle_cpu_mean: (idle_cpu.count > 0).then_some(idle_cpu.mean),
            active_cpu_mean: system_cpu.mean,
            active_cpu_p99: system_cpu.p99,
            peak_rss_bytes: peak_rss,
            latency_p95: Duration::from_secs_f64(latency_s.p95.max(0.0)),
            latency_p99_over_p50: latency_s.p99_over_p50(),
            correctness,
        });
        let prompt =
            report::PromptFigures::of(&self.results, self.backend_cpu.map(|c| c.as_secs_f64()));
        RunReport {
            schema_mode: self.schema_mode,
            variant: self.variant,
            tasks: self.results.len(),
            errors: self.results.len() - ok.len(),
            correctness,
            categories,
            latency_s,
            latency_p99_over_p50: latency_s.p99_over_p50(),
            ttft_s,
            completion_tokens,
            tokens_per_s: if busy > 0.0 {
                completion_tokens as f64 / busy
            } else {
                0.0
            },
            duration_s,
            system_cpu,
            backend_cpu_percent,
            peak_rss_bytes: peak_rss,
            prompt,
            pass: checks.iter().all(|c| c.pass),
            checks,
            tiers: report::tiers(&self.results),
            results: self.results,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use report::CpuPoint;

    fn result(category: &str, score: f64, latency_s: f64, tokens: u64, error: bool) -> TaskResult {
        TaskResult {
            id: format!("{category}-{score}"),
            category: category.into(),
            score,
            latency_s,
            ttft_s: (!error).then_some(latency_s / 4.0),
            completion_tokens: (!error).then_some(tokens),
            prompt_usage: None,
            answer: String::new(),
            error: error.then(|| "HTTP 503".to_string()),
            served_by: None,
        }
    }

    #[test]
    fn a_run_is_summarised_from_its_own_window() {
        let point = |t_s, percent| CpuPoint {
            t_s,
            percent,
            phase: Phase::Active,
        };
        // Idle before 1.0 s, this run from 1.0 to 2.0 s, another run after.
        let timeline = [
            point(0.5, 90.0),
            point(1.0, 20.0),
            point(1.5, 40.0),
            point(2.0, 30.0),
            point(2.5, 99.0),
        ];
        let pending = PendingRun {
            schema_mode: true,
            variant: Variant::plain(),
            start_s: 1.0,
            end_s: 2.0,
            backend_cpu: Some(Duration::from_millis(500)),
            results: vec![
                result("a", 1.0, 1.0, 10, false),
                result("a", 0.0, 3.0, 20, false),
                result("b", 0.0, 9.0, 0, true),
            ],
        };
        let idle = Summary::of(&[1.0]);
        let run = pending.finish(
            &timeline,
            &idle,
            Some(2_000_000_000),
            &target::Targets::shipped(),
            &Host::unrestricted(4),
        );
        assert_eq!(run.system_cpu.count, 3);
        assert!((run.system_cpu.mean - 30.0).abs() < 1e-9);
        assert_eq!(run.system_cpu.max, 40.0);
        assert_eq!((run.tasks, run.errors), (3, 1));
        // The failed request scores 0 but does not enter the latency figures.
        assert!((run.correctness - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(run.latency_s.count, 2);
        assert_eq!(run.latency_s.max, 3.0);
        assert_eq!(run.completion_tokens, 30);
        assert!((run.tokens_per_s - 7.5).abs() < 1e-9);
        let expected_backend = 0.5 / 4.0 * 100.0;
        assert!((run.backend_cpu_percent.unwrap() - expected_backend).abs() < 1e-9);
        assert_eq!(run.categories["b"].correctness, 0.0);
        assert!(!run.pass);
        assert_eq!(SchemaMode::Both.runs(), &[false, true]);
    }
}
