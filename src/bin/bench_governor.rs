//! Benchmark of CPU limiting methods on llama-server, side by side on one model and workload:
//! unlimited, plain `--threads 1`, cpulimit, a kernel cgroup quota and the governor (the
//! `sentinel-supervisor limit --pid` process), at budgets of 1.0 and 0.5 cores.
//!
//! For each method: start llama-server, warm up, idle, send one request after the idle period
//! (the "after idle" spike), then a fixed sequential workload, sampling system CPU every 20 ms
//! (100 ms windows are five consecutive samples). Prints a table and writes it as Markdown.
//!
//! `bench_governor --backend-bin PATH --model PATH [--out FILE] [--only NAME,...]`

use anyhow::{bail, Context};
use clap::Parser;
use sentinel_supervisor::backend::launch;
use sentinel_supervisor::governor::{self, cgroup};
use sentinel_supervisor::meter::{self, SystemSource, SystemTimes};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Compare CPU limiters on llama-server (system CPU, spikes, speed, latency)")]
struct Args {
    /// The llama-server binary.
    #[arg(long)]
    backend_bin: PathBuf,
    /// The GGUF model.
    #[arg(long)]
    model: PathBuf,
    /// The sentinel-supervisor binary (default: next to this one).
    #[arg(long)]
    supervisor: Option<PathBuf>,
    /// Write the table as Markdown here.
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
}

/// How a scenario limits llama-server.
#[derive(Clone, Copy, Debug)]
enum Limiter {
    None,
    Cpulimit(u32),
    Cgroup(f64),
    /// `sentinel-supervisor limit`: budget in cores and duty-cycle period in ms.
    Governor(f64, u64),
}

struct Scenario {
    name: &'static str,
    threads: usize,
    limiter: Limiter,
    /// `--poll 0 --poll-batch 0`, the no-spin environment and `--threads-http 2` (the product's
    /// child setup).
    no_spin: bool,
}

#[derive(Default, Debug)]
struct Row {
    name: String,
    threads: usize,
    /// How many runs (rounds) the row pools.
    runs: usize,
    mean: f64,
    p99: f64,
    max100: f64,
    max20: f64,
    after_idle: f64,
    tokens_per_s: f64,
    /// Tokens per CPU second of the backend: how well the CPU it was given turned into work.
    tokens_per_core_s: f64,
    p50: f64,
    p95: f64,
    /// The p50 of each run, " / "-separated.
    p50_runs: String,
    limiter_cpu: Option<f64>,
    idle_cpu: f64,
    backend_cpu: f64,
    /// CPU of the backend's threads other than the one that computes (HTTP, logging, ...), % of
    /// a core: mostly what each stop and continue costs them (every one wakes every thread).
    helpers_cpu: f64,
    /// System CPU not explained by the backend and the limiter (other processes), % of machine.
    others: f64,
    /// The backend's own CPU in % of the machine: p99 / max of 100 ms windows, max of 20 ms,
    /// max 100 ms window in the first second after idle (immune to other processes' load).
    b_p99: f64,
    b_max100: f64,
    b_max20: f64,
    b_after_idle: f64,
    /// The same system figures read from `/proc/stat` (tick samples): p99 / max of 100 ms windows
    /// and the after-idle max.
    t_p99: f64,
    t_max100: f64,
    t_after_idle: f64,
    note: String,
}

/// Kills the process group on drop (after SIGCONT, a stopped process ignores SIGTERM).
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let pid = self.0.id() as i32;
        // SAFETY: plain kill(2) on a process group we created.
        unsafe {
            libc::kill(-pid, libc::SIGCONT);
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

/// System CPU samples every 20 ms on a dedicated thread.
/// (when, machine counters from the precise source, from `/proc/stat`, backend run time).
type Sample = (Instant, SystemTimes, SystemTimes, Duration);

struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(backend: i32) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::with_capacity(10_000)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (samples, stop) = (Arc::clone(&samples), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    // Read both counters back to back and stamp the pair with the time between
                    // them, so a preempted sampler does not skew windows.
                    let before = Instant::now();
                    let run = meter::process_cpu(backend).unwrap_or_default();
                    let sys = meter::system_times();
                    let ticks = meter::system_times_from(SystemSource::ProcStat);
                    let after = Instant::now();
                    if let (Ok(t), Ok(ticks)) = (sys, ticks) {
                        if let Ok(mut s) = samples.lock() {
                            s.push((before + (after - before) / 2, t, ticks, run));
                        }
                    }
                    next += Duration::from_millis(20);
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now;
                    }
                }
            })
        };
        Sampler {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// Busy percentages of consecutive windows of `k` samples (k=1: 20 ms, k=5: 100 ms) between
    /// two instants.
    fn windows(&self, from: Instant, to: Instant, k: usize) -> Vec<f64> {
        self.busy_windows(from, to, k, |s| &s.1)
    }

    /// [`Self::windows`] read from `/proc/stat`'s tick samples instead.
    fn tick_windows(&self, from: Instant, to: Instant, k: usize) -> Vec<f64> {
        self.busy_windows(from, to, k, |s| &s.2)
    }

    fn busy_windows(
        &self,
        from: Instant,
        to: Instant,
        k: usize,
        counters: fn(&Sample) -> &SystemTimes,
    ) -> Vec<f64> {
        self.inside(from, to)
            .windows(k + 1)
            .step_by(k)
            .map(|w| counters(&w[k]).busy_fraction_since(counters(&w[0])) * 100.0)
            .collect()
    }

    fn inside(&self, from: Instant, to: Instant) -> Vec<Sample> {
        let samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        samples
            .into_iter()
            .filter(|(t, ..)| *t >= from && *t <= to)
            .collect()
    }

    /// The backend's own CPU in % of the machine, over the same windows as [`Self::windows`].
    fn backend_windows(&self, from: Instant, to: Instant, k: usize) -> Vec<f64> {
        let ncpus = sentinel_supervisor::host::online_cpus() as f64;
        self.inside(from, to)
            .windows(k + 1)
            .step_by(k)
            .map(|w| {
                let wall = (w[k].0 - w[0].0).as_secs_f64().max(1e-6);
                w[k].3.saturating_sub(w[0].3).as_secs_f64() / wall / ncpus * 100.0
            })
            .collect()
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let idx = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[idx]
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

struct Backend {
    group: Group,
    port: u16,
}

/// SIGKILL the children if the bench dies (the main thread spawns them and lives as long).
trait DieWithParent {
    fn die_with_parent(&mut self) -> &mut Self;
}

impl DieWithParent for Command {
    fn die_with_parent(&mut self) -> &mut Self {
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            self.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

async fn start_backend(
    args: &Args,
    s: &Scenario,
    http: &reqwest::Client,
) -> anyhow::Result<Backend> {
    let port = free_port()?;
    let mut cmd = Command::new(&args.backend_bin);
    let t = s.threads.to_string();
    cmd.arg("-m").arg(&args.model);
    cmd.args([
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "-ngl",
        "0",
    ]);
    cmd.args([
        "--threads",
        &t,
        "--threads-batch",
        &t,
        "-c",
        "2048",
        "-np",
        "1",
    ]);
    if s.no_spin {
        // The product's child setup: no polling, no OpenMP spinning, few HTTP threads.
        cmd.args(launch::child_args());
        cmd.envs(launch::child_env());
        cmd.args(["--threads-http", &launch::http_threads(1).to_string()]);
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .die_with_parent();
    let group = Group(
        cmd.spawn()
            .with_context(|| format!("start {}", args.backend_bin.display()))?,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let url = format!("http://127.0.0.1:{port}/health");
        if let Ok(r) = http.get(&url).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("llama-server did not become ready in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Backend { group, port })
}

/// One chat completion; returns (latency, completion tokens).
async fn complete(
    http: &reqwest::Client,
    port: u16,
    i: usize,
    max_tokens: u32,
) -> anyhow::Result<(f64, u64)> {
    let body = serde_json::json!({
        "messages": [
            {"role": "system", "content": "You are a concise endpoint-security analyst."},
            {"role": "user", "content": prompt(i)}
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": true
    });
    let t0 = Instant::now();
    let resp: serde_json::Value = http
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let tokens = resp["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    Ok((t0.elapsed().as_secs_f64(), tokens))
}

/// The external limiter process of a scenario, if any.
enum Attached {
    Nothing,
    Process(Group),
    Cgroup(cgroup::CpuCgroup),
}

fn attach(args: &Args, s: &Scenario, pid: i32) -> anyhow::Result<Attached> {
    let supervisor = match &args.supervisor {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("sentinel-supervisor"),
    };
    Ok(match s.limiter {
        Limiter::None => Attached::Nothing,
        Limiter::Cpulimit(l) => Attached::Process(Group(
            Command::new("cpulimit")
                .args(["-l", &l.to_string(), "-p", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .die_with_parent()
                .spawn()
                .context("start cpulimit (apt-get install cpulimit)")?,
        )),
        Limiter::Governor(cpus, period_ms) => Attached::Process(Group(
            Command::new(&supervisor)
                .args([
                    "limit",
                    "-q",
                    "--cpus",
                    &cpus.to_string(),
                    "--pid",
                    &pid.to_string(),
                ])
                .args(["--threads", &s.threads.to_string()])
                .args(["--period", &format!("{period_ms}ms")])
                .process_group(0)
                .die_with_parent()
                .spawn()
                .with_context(|| format!("start {}", supervisor.display()))?,
        )),
        Limiter::Cgroup(cpus) => {
            let support = cgroup::detect().context("no writable cgroup")?;
            Attached::Cgroup(cgroup::CpuCgroup::create(
                &support,
                pid,
                cpus,
                Duration::from_millis(10),
            )?)
        }
    })
}

async fn run_scenario(
    args: &Args,
    s: &Scenario,
    http: &reqwest::Client,
) -> anyhow::Result<Measurement> {
    let backend = start_backend(args, s, http).await?;
    let pid = backend.group.0.id() as i32;
    let attached = attach(args, s, pid)?;
    let limiter_pid = match &attached {
        Attached::Process(g) => Some(g.0.id() as i32),
        Attached::Cgroup(g) => {
            eprintln!("  capped in {}", g.path().display());
            None
        }
        Attached::Nothing => None,
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    complete(http, backend.port, 1000, 8)
        .await
        .context("warm-up request")?;
    let sampler = Sampler::start(pid);
    let idle0 = (Instant::now(), meter::process_cpu(pid).unwrap_or_default());
    tokio::time::sleep(args.idle).await;
    let idle_cpu = meter::process_cpu(pid)
        .unwrap_or_default()
        .saturating_sub(idle0.1)
        .as_secs_f64()
        / idle0.0.elapsed().as_secs_f64()
        * 100.0;
    let t_idle_req = Instant::now();
    complete(http, backend.port, 2000, args.max_tokens).await?;
    let first_second = t_idle_req + Duration::from_secs(1);
    let after_idle = max(&sampler.windows(t_idle_req, first_second, 5));
    let b_after_idle = max(&sampler.backend_windows(t_idle_req, first_second, 5));
    let t_after_idle = max(&sampler.tick_windows(t_idle_req, first_second, 5));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lim0 = limiter_pid.and_then(meter::process_cpu);
    let backend0 = meter::process_cpu(pid).unwrap_or_default();
    let helpers0 = helpers_run_time(pid);
    let t0 = Instant::now();
    let mut latencies = Vec::new();
    let mut tokens = 0;
    for i in 0..args.requests {
        let (lat, n) = complete(http, backend.port, i, args.max_tokens).await?;
        latencies.push(lat);
        tokens += n;
    }
    let t1 = Instant::now();
    let wall = (t1 - t0).as_secs_f64();
    let lim1 = limiter_pid.and_then(meter::process_cpu);
    let backend1 = meter::process_cpu(pid).unwrap_or_default();
    let helpers1 = helpers_run_time(pid);
    let measured = Measurement {
        w100: sampler.windows(t0, t1, 5),
        w20: sampler.windows(t0, t1, 1),
        b100: sampler.backend_windows(t0, t1, 5),
        b20: sampler.backend_windows(t0, t1, 1),
        t100: sampler.tick_windows(t0, t1, 5),
        after_idle,
        b_after_idle,
        t_after_idle,
        system: {
            let samples = sampler.inside(t0, t1);
            match (samples.first(), samples.last()) {
                (Some(a), Some(b)) => SystemTimes {
                    busy: b.1.busy.saturating_sub(a.1.busy),
                    total: b.1.total.saturating_sub(a.1.total),
                },
                _ => SystemTimes::default(),
            }
        },
        latencies,
        tokens,
        wall,
        backend_cpu_s: backend1.saturating_sub(backend0).as_secs_f64(),
        helpers_cpu_s: helpers1.saturating_sub(helpers0).as_secs_f64(),
        limiter_cpu_s: match (lim0, lim1) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
            _ => None,
        },
        idle_cpu,
    };
    drop(attached);
    drop(backend);
    Ok(measured)
}

/// Scheduler run time of a process's threads other than its main one (llama-server computes on
/// its main thread with one thread; the others serve HTTP, logging and queues and mostly sleep).
fn helpers_run_time(pid: i32) -> Duration {
    meter::thread_run_times(pid)
        .unwrap_or_default()
        .into_iter()
        .filter(|(tid, _)| *tid != pid)
        .map(|(_, run)| run)
        .sum()
}

/// What one run of a scenario recorded.
#[derive(Debug, Clone, Default)]
struct Measurement {
    /// System CPU % of consecutive 100 ms and 20 ms windows, the backend's own, and the system's
    /// from `/proc/stat`.
    w100: Vec<f64>,
    w20: Vec<f64>,
    b100: Vec<f64>,
    b20: Vec<f64>,
    t100: Vec<f64>,
    after_idle: f64,
    b_after_idle: f64,
    t_after_idle: f64,
    /// The machine's busy and total CPU time during the workload.
    system: SystemTimes,
    latencies: Vec<f64>,
    tokens: u64,
    wall: f64,
    backend_cpu_s: f64,
    /// Run time of the backend's threads other than the main (computing) one.
    helpers_cpu_s: f64,
    limiter_cpu_s: Option<f64>,
    /// The backend's CPU while idle, % of a core.
    idle_cpu: f64,
}

/// One table row from every run of a scenario: windows and latencies pooled, spikes the worst
/// of any run, rates over the summed time.
fn summarize(s: &Scenario, runs: &[Measurement]) -> Row {
    let ncpus = sentinel_supervisor::host::online_cpus() as f64;
    let pool = |f: fn(&Measurement) -> &Vec<f64>| -> Vec<f64> {
        runs.iter().flat_map(|m| f(m).iter().copied()).collect()
    };
    let worst = |f: fn(&Measurement) -> f64| runs.iter().map(f).fold(0.0, f64::max);
    let (w100, w20, b100, b20, t100) = (
        pool(|m| &m.w100),
        pool(|m| &m.w20),
        pool(|m| &m.b100),
        pool(|m| &m.b20),
        pool(|m| &m.t100),
    );
    let latencies = pool(|m| &m.latencies);
    let wall: f64 = runs.iter().map(|m| m.wall).sum();
    let tokens: u64 = runs.iter().map(|m| m.tokens).sum();
    let backend_s: f64 = runs.iter().map(|m| m.backend_cpu_s).sum();
    let helpers_s: f64 = runs.iter().map(|m| m.helpers_cpu_s).sum();
    let system = runs
        .iter()
        .fold(SystemTimes::default(), |sum, m| SystemTimes {
            busy: sum.busy + m.system.busy,
            total: sum.total + m.system.total,
        });
    let limiter_s: Option<f64> = runs.iter().map(|m| m.limiter_cpu_s).sum();
    let mean = system.busy_fraction_since(&SystemTimes::default()) * 100.0;
    let backend_cpu = backend_s / wall * 100.0;
    let limiter_cpu = limiter_s.map(|l| l / wall * 100.0);
    Row {
        name: s.name.to_string(),
        threads: s.threads,
        runs: runs.len(),
        mean,
        p99: percentile(&w100, 0.99),
        max100: max(&w100),
        max20: max(&w20),
        after_idle: worst(|m| m.after_idle),
        tokens_per_s: tokens as f64 / wall,
        tokens_per_core_s: tokens as f64 / backend_s.max(1e-9),
        p50: percentile(&latencies, 0.5),
        p95: percentile(&latencies, 0.95),
        p50_runs: runs
            .iter()
            .map(|m| format!("{:.2}", percentile(&m.latencies, 0.5)))
            .collect::<Vec<_>>()
            .join(" / "),
        limiter_cpu,
        idle_cpu: runs.iter().map(|m| m.idle_cpu).sum::<f64>() / runs.len().max(1) as f64,
        backend_cpu,
        helpers_cpu: helpers_s / wall * 100.0,
        others: (mean - (backend_cpu + limiter_cpu.unwrap_or(0.0)) / ncpus).max(0.0),
        b_p99: percentile(&b100, 0.99),
        b_max100: max(&b100),
        b_max20: max(&b20),
        b_after_idle: worst(|m| m.b_after_idle),
        t_p99: percentile(&t100, 0.99),
        t_max100: max(&t100),
        t_after_idle: worst(|m| m.t_after_idle),
        note: String::new(),
    }
}

fn table(rows: &[Row]) -> String {
    const HEADER: [&str; 25] = [
        "scenario",
        "threads",
        "runs",
        "mean %",
        "p99 % (100ms)",
        "max % (100ms)",
        "max % (20ms)",
        "after-idle max %",
        "tokens/s",
        "tokens per backend core-s",
        "p50 s",
        "p95 s",
        "p50 s per run",
        "limiter % of a core",
        "backend idle % of a core",
        "backend % of a core",
        "backend's other threads % of a core",
        "others %",
        "backend p99 % (100ms)",
        "backend max % (100ms)",
        "backend max % (20ms)",
        "backend after-idle max %",
        "/proc/stat p99 %",
        "/proc/stat max %",
        "/proc/stat after-idle max %",
    ];
    let mut out = format!(
        "| {} |\n|{}\n",
        HEADER.join(" | "),
        "---|".repeat(HEADER.len())
    );
    for r in rows {
        if !r.note.is_empty() {
            out.push_str(&format!(
                "| {} | {} | {} |{}\n",
                r.name,
                r.threads,
                r.note,
                "|".repeat(HEADER.len() - 3)
            ));
            continue;
        }
        let lim = r.limiter_cpu.map_or("-".into(), |c| format!("{c:.2}"));
        let cells = [
            r.name.clone(),
            r.threads.to_string(),
            r.runs.to_string(),
            format!("{:.1}", r.mean),
            format!("{:.1}", r.p99),
            format!("{:.1}", r.max100),
            format!("{:.1}", r.max20),
            format!("{:.1}", r.after_idle),
            format!("{:.1}", r.tokens_per_s),
            format!("{:.1}", r.tokens_per_core_s),
            format!("{:.2}", r.p50),
            format!("{:.2}", r.p95),
            r.p50_runs.clone(),
            lim,
            format!("{:.2}", r.idle_cpu),
            format!("{:.1}", r.backend_cpu),
            format!("{:.2}", r.helpers_cpu),
            format!("{:.1}", r.others),
            format!("{:.1}", r.b_p99),
            format!("{:.1}", r.b_max100),
            format!("{:.1}", r.b_max20),
            format!("{:.1}", r.b_after_idle),
            format!("{:.1}", r.t_p99),
            format!("{:.1}", r.t_max100),
            format!("{:.1}", r.t_after_idle),
        ];
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Threads: the CPUs this process (and the backends it starts) may run on.
    let allowed = sentinel_supervisor::host::Host::detect().allowed_cpus();
    let t1 = governor::threads_for_budget(Some(1.0), allowed);
    let t05 = governor::threads_for_budget(Some(0.5), allowed);
    let scenarios = [
        Scenario {
            name: "unlimited",
            threads: allowed,
            limiter: Limiter::None,
            no_spin: false,
        },
        Scenario {
            name: "threads-1",
            threads: 1,
            limiter: Limiter::None,
            no_spin: false,
        },
        Scenario {
            name: "threads-1-nospin",
            threads: 1,
            limiter: Limiter::None,
            no_spin: true,
        },
        Scenario {
            name: "cpulimit-l100",
            threads: allowed,
            limiter: Limiter::Cpulimit(100),
            no_spin: false,
        },
        Scenario {
            name: "cpulimit-l50",
            threads: 1,
            limiter: Limiter::Cpulimit(50),
            no_spin: false,
        },
        Scenario {
            name: "cgroup-1.0",
            threads: t1,
            limiter: Limiter::Cgroup(1.0),
            no_spin: true,
        },
        Scenario {
            name: "cgroup-0.5",
            threads: t05,
            limiter: Limiter::Cgroup(0.5),
            no_spin: true,
        },
        Scenario {
            name: "governor-1.0",
            threads: t1,
            limiter: Limiter::Governor(1.0, 20),
            no_spin: true,
        },
        Scenario {
            name: "governor-0.5",
            threads: t05,
            limiter: Limiter::Governor(0.5, 20),
            no_spin: true,
        },
        // Outside the default 10-20 ms range: longer run slices, fewer stops (see README).
        Scenario {
            name: "governor-0.5-50ms",
            threads: t05,
            limiter: Limiter::Governor(0.5, 50),
            no_spin: true,
        },
        Scenario {
            name: "governor-0.5-2t",
            threads: allowed,
            limiter: Limiter::Governor(0.5, 20),
            no_spin: true,
        },
    ];
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?;
    let selected: Vec<&Scenario> = scenarios
        .iter()
        .filter(|s| args.only.is_empty() || args.only.iter().any(|o| o == s.name))
        .collect();
    if let Some(unknown) = args
        .only
        .iter()
        .find(|o| !scenarios.iter().any(|s| s.name == o.as_str()))
    {
        let names: Vec<&str> = scenarios.iter().map(|s| s.name).collect();
        bail!(
            "--only: no scenario named `{unknown}` (the scenarios are: {})",
            names.join(", ")
        );
    }
    // Rounds go through every scenario in turn, so slow drift on the machine hits all alike.
    let mut runs: Vec<Vec<Measurement>> = vec![Vec::new(); selected.len()];
    let mut failures: Vec<Option<String>> = vec![None; selected.len()];
    for round in 1..=args.rounds {
        for (i, s) in selected.iter().enumerate() {
            if failures[i].is_some() {
                continue;
            }
            eprintln!(
                "bench-governor: {} (round {round}/{}) ...",
                s.name, args.rounds
            );
            match run_scenario(&args, s, &http).await {
                Ok(m) => {
                    eprintln!(
                        "  p50 {:.2} s, backend {:.1} % of a core, system p99 {:.1} %",
                        percentile(&m.latencies, 0.5),
                        m.backend_cpu_s / m.wall * 100.0,
                        percentile(&m.w100, 0.99)
                    );
                    runs[i].push(m);
                }
                Err(err) => failures[i] = Some(format!("not measured: {err:#}")),
            }
        }
    }
    let rows: Vec<Row> = selected
        .iter()
        .zip(runs.iter().zip(failures))
        .map(|(s, (runs, failure))| match failure {
            Some(note) => Row {
                name: s.name.to_string(),
                threads: s.threads,
                note,
                ..Row::default()
            },
            None => summarize(s, runs),
        })
        .collect();
    let text = format!(
        "System CPU in % of the whole machine ({} CPUs) read from {}, in 100 ms and 20 ms \
         windows; {} requests of ~200 prompt tokens, {} generated tokens each, sequential; {} \
         round(s) through the scenarios in turn (windows and latencies pooled, spikes the worst \
         of any round).\n\n{}",
        sentinel_supervisor::host::online_cpus(),
        meter::system_source().describe(),
        args.requests,
        args.max_tokens,
        args.rounds,
        table(&rows)
    );
    println!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, &text).with_context(|| format!("write {}", out.display()))?;
    }
    Ok(())
}
