//! `bench_governor`: CPU limiting methods on llama-server side by side, on one model and
//! workload: unlimited, plain `--threads 1`, cpulimit, a kernel cgroup quota and the governor
//! (`sentinel-supervisor limit --pid`), at budgets of 1.0 and 0.5 cores. Run by
//! `scripts/bench-governor`.
//!
//! For each scenario: start llama-server, warm up, idle, send one request after the idle period
//! (the "after idle" spike), then a fixed sequential workload, sampling the machine's CPU and the
//! backend's every 20 ms (100 ms windows are five consecutive samples). Prints three tables and
//! writes them as Markdown. The scenarios, the spawning and the figures live in
//! `sentinel_bench::{limiters, limiter_report, sampler, stack, stats}`.

use anyhow::Context;
use clap::Parser;
use sentinel_bench::limiter_report::{self, AfterIdle, RunMeasurement, ScenarioRow};
use sentinel_bench::limiters::{self, Scenario};
use sentinel_bench::sampler::CounterSampler;
use sentinel_bench::stats;
use sentinel_supervisor::meter;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The sampling interval; windows are multiples of it.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
const WINDOW_100MS: Duration = Duration::from_millis(100);
const WINDOW_20MS: Duration = Duration::from_millis(20);

#[derive(Parser, Debug)]
#[command(
    name = "bench_governor",
    bin_name = "bench_governor",
    about = "Compare CPU limiters on llama-server (system CPU, spikes, speed, latency)"
)]
struct Args {
    /// The llama-server binary.
    #[arg(long)]
    backend_bin: PathBuf,
    /// The GGUF model.
    #[arg(long)]
    model: PathBuf,
    /// The sentinel-supervisor binary (default: the one beside this driver, in the same cargo
    /// profile directory).
    #[arg(long)]
    supervisor: Option<PathBuf>,
    /// Write the tables as Markdown here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Requests in the workload.
    #[arg(long, default_value_t = 12)]
    requests: usize,
    /// Tokens generated per request.
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    /// Idle time before the single "after idle" request.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// Run only these scenarios (comma-separated names from the table).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Go through the scenarios this many times in turn and pool the runs (latency differences
    /// of a few percent need several rounds on a noisy machine).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Added by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn prompt(i: usize) -> String {
    format!(
        "Case {i}. Review this endpoint telemetry from host ws-{i:03} and say whether it is \
         malicious. At 02:14 the user account svc_backup{i} started powershell.exe with an \
         encoded command line, which spawned rundll32.exe loading a DLL from the user's temp \
         directory. Ten seconds later the same process opened a handle to lsass.exe with read \
         access, wrote a file named dump{i}.bin to C:\\ProgramData, and made an outbound HTTPS \
         connection to 185.220.{i}.17 on port 443 that transferred 48 megabytes. The scheduled \
         task 'UpdaterCheck{i}' was created to run the same DLL at every logon, and the Windows \
         event log was cleared shortly after. Antivirus reported no detection. List the \
         techniques you recognise with their MITRE ATT&CK identifiers, rate the severity from \
         one to five, and recommend the first three containment steps for the security team."
    )
}

/// One answered chat completion.
struct Completion {
    latency_s: f64,
    tokens: u64,
}

async fn complete(
    http: &reqwest::Client,
    base_url: &str,
    case: usize,
    max_tokens: u32,
) -> anyhow::Result<Completion> {
    let body = serde_json::json!({
        "messages": [
            {"role": "system", "content": "You are a concise endpoint-security analyst."},
            {"role": "user", "content": prompt(case)}
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": true
    });
    let started = Instant::now();
    let answer: serde_json::Value = http
        .post(format!("{base_url}/v1/chat/completions"))
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(Completion {
        latency_s: started.elapsed().as_secs_f64(),
        tokens: answer["usage"]["completion_tokens"].as_u64().unwrap_or(0),
    })
}

/// CPU time of a process (its exact clock), zero when it is gone.
fn cpu_s(pid: i32) -> f64 {
    meter::process_cpu(pid).unwrap_or_default().as_secs_f64()
}

/// Scheduler run time of a process's threads other than its main one (llama-server computes on
/// its main thread with one thread; the others serve HTTP, logging and queues and mostly sleep).
fn helpers_cpu_s(pid: i32) -> f64 {
    meter::thread_run_times(pid)
        .unwrap_or_default()
        .into_iter()
        .filter(|(tid, _)| *tid != pid)
        .map(|(_, run)| run.as_secs_f64())
        .sum()
}

async fn run_scenario(
    args: &Args,
    supervisor: &std::path::Path,
    scenario: &Scenario,
    host: &sentinel_supervisor::host::Host,
    http: &reqwest::Client,
) -> anyhow::Result<RunMeasurement> {
    let backend =
        limiters::start_backend(&args.backend_bin, &args.model, scenario, host, http).await?;
    let pid = backend.process.pid();
    let limiter = limiters::attach(supervisor, scenario, pid).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    complete(http, &backend.url, 1000, 8)
        .await
        .context("warm-up request")?;
    let cpus = host.online_cpus;
    let sampler =
        CounterSampler::start(pid, SAMPLE_EVERY, cpus).context("start the CPU sampler")?;

    let (idle_from, idle_cpu0) = (Instant::now(), cpu_s(pid));
    tokio::time::sleep(args.idle).await;
    let backend_idle_percent_of_core =
        (cpu_s(pid) - idle_cpu0) / idle_from.elapsed().as_secs_f64() * 100.0;
    let after_idle_from = Instant::now();
    complete(http, &backend.url, 2000, args.max_tokens).await?;
    let first_second = sampler.between(after_idle_from, after_idle_from + Duration::from_secs(1));
    let after_idle = AfterIdle {
        system: stats::max(&first_second.system_percent(WINDOW_100MS)),
        system_ticks: stats::max(&first_second.system_ticks_percent(WINDOW_100MS)),
        backend: stats::max(&first_second.process_percent(WINDOW_100MS, cpus)),
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let limiter_pid = limiter.limiter_pid();
    let limiter0 = limiter_pid.map(cpu_s);
    let (backend0, helpers0) = (cpu_s(pid), helpers_cpu_s(pid));
    let from = Instant::now();
    let mut latencies_s = Vec::with_capacity(args.requests);
    let mut completion_tokens = 0;
    for case in 0..args.requests {
        let done = complete(http, &backend.url, case, args.max_tokens).await?;
        latencies_s.push(done.latency_s);
        completion_tokens += done.tokens;
    }
    let to = Instant::now();
    let workload = sampler.between(from, to);
    let measured = RunMeasurement {
        system_100ms: workload.system_percent(WINDOW_100MS),
        system_20ms: workload.system_percent(WINDOW_20MS),
        system_ticks_100ms: workload.system_ticks_percent(WINDOW_100MS),
        backend_100ms: workload.process_percent(WINDOW_100MS, cpus),
        backend_20ms: workload.process_percent(WINDOW_20MS, cpus),
        after_idle,
        system_times: workload.system_elapsed(),
        latencies_s,
        completion_tokens,
        wall_s: (to - from).as_secs_f64(),
        backend_cpu_s: cpu_s(pid) - backend0,
        backend_helpers_cpu_s: helpers_cpu_s(pid) - helpers0,
        limiter_cpu_s: limiter_pid.zip(limiter0).map(|(p, c0)| cpu_s(p) - c0),
        backend_idle_percent_of_core,
    };
    drop(sampler);
    limiter.detach().await;
    backend.process.kill().await;
    Ok(measured)
}

/// `sentinel-supervisor` of the same cargo profile: cargo builds it beside this driver.
fn default_supervisor() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    Ok(exe.with_file_name("sentinel-supervisor"))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let supervisor = match &args.supervisor {
        Some(p) => p.clone(),
        None => default_supervisor()?,
    };
    // Threads: the CPUs this process (and the backends it starts) may run on.
    let host = sentinel_supervisor::host::Host::detect();
    let all = limiters::scenarios(host.allowed_cpus());
    let selected = limiters::select(&all, &args.only)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?;
    // Rounds go through every scenario in turn, so slow drift on the machine hits all alike.
    let mut runs: Vec<Vec<RunMeasurement>> = vec![Vec::new(); selected.len()];
    let mut failures: Vec<Option<String>> = vec![None; selected.len()];
    for round in 1..=args.rounds {
        for (i, scenario) in selected.iter().enumerate() {
            if failures[i].is_some() {
                continue;
            }
            eprintln!(
                "bench-governor: {} (round {round}/{}) ...",
                scenario.name, args.rounds
            );
            match run_scenario(&args, &supervisor, scenario, &host, &http).await {
                Ok(m) => {
                    eprintln!("  {}", m.progress_line());
                    runs[i].push(m);
                }
                Err(err) => failures[i] = Some(format!("not measured: {err:#}")),
            }
        }
    }
    let cpus = host.online_cpus;
    let rows: Vec<ScenarioRow> = selected
        .iter()
        .zip(runs.iter().zip(failures))
        .map(|(s, (runs, failure))| ScenarioRow {
            name: s.name.to_string(),
            threads: s.threads,
            outcome: failure.map_or_else(|| Ok(limiter_report::pool(runs, cpus)), Err),
        })
        .collect();
    let text = format!(
        "System CPU in % of the whole machine ({cpus} CPUs) read from {}, in 100 ms and 20 ms \
         windows; {} requests of ~200 prompt tokens, {} generated tokens each, sequential; {} \
         round(s) through the scenarios in turn (windows and latencies pooled, spikes the worst \
         of any round).\n\n{}",
        meter::system_source().describe(),
        args.requests,
        args.max_tokens,
        args.rounds,
        limiter_report::tables(&rows)
    );
    println!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, &text).with_context(|| format!("write {}", out.display()))?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match runtime
        .context("could not start the async runtime")
        .and_then(|rt| rt.block_on(run(args)))
    {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench_governor: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
