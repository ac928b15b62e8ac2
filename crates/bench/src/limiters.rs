//! The CPU limiters `bench_governor` compares on llama-server: the scenarios (threads, limiter,
//! child setup), how a scenario's backend is started and made ready, and how its limiter
//! (cpulimit, a cgroup quota, `sentinel-supervisor limit`) is attached to it.

use super::stack::{GroupChild, Stack, StackError};
use sentinel_supervisor::governor::{self, cgroup};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// How long a backend may take to answer `/health` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How a scenario limits llama-server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limiter {
    Unlimited,
    /// `cpulimit -l PERCENT` (percent of one core).
    Cpulimit {
        percent: u32,
    },
    /// A kernel CPU quota of `cpus` cores.
    Cgroup {
        cpus: f64,
    },
    /// `sentinel-supervisor limit --cpus CPUS --period PERIOD --pid`.
    Governor {
        cpus: f64,
        period: Duration,
    },
}

/// One row of the comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: &'static str,
    /// llama-server `--threads` and `--threads-batch`.
    pub threads: usize,
    pub limiter: Limiter,
    /// The product's child setup: `--poll 0 --poll-batch 0`, no OpenMP spinning and few HTTP
    /// threads.
    pub no_spin: bool,
    /// Every backend thread pinned to the last allowed CPU (a profile's `pin = true`).
    pub pin: bool,
}

/// The scenarios, in table order, for a process that may use `allowed_cpus` CPUs.
pub fn scenarios(allowed_cpus: usize) -> Vec<Scenario> {
    let one = governor::threads_for_budget(Some(1.0), allowed_cpus);
    let half = governor::threads_for_budget(Some(0.5), allowed_cpus);
    let ms = Duration::from_millis;
    let row = |name, threads, limiter, no_spin| Scenario {
        name,
        threads,
        limiter,
        no_spin,
        pin: false,
    };
    let pinned = |name, limiter| Scenario {
        name,
        threads: 1,
        limiter,
        no_spin: true,
        pin: true,
    };
    vec![
        row("unlimited", allowed_cpus, Limiter::Unlimited, false),
        row("threads-1", 1, Limiter::Unlimited, false),
        row("threads-1-nospin", 1, Limiter::Unlimited, true),
        pinned("threads-1-pin", Limiter::Unlimited),
        row(
            "cpulimit-l100",
            allowed_cpus,
            Limiter::Cpulimit { percent: 100 },
            false,
        ),
        row("cpulimit-l50", 1, Limiter::Cpulimit { percent: 50 }, false),
        row("cgroup-1.0", one, Limiter::Cgroup { cpus: 1.0 }, true),
        row("cgroup-0.5", half, Limiter::Cgroup { cpus: 0.5 }, true),
        row("governor-1.0", one, governor_at(1.0, ms(20)), true),
        row("governor-0.5", half, governor_at(0.5, ms(20)), true),
        pinned("governor-1.0-pin", governor_at(1.0, ms(20))),
        pinned("governor-0.5-pin", governor_at(0.5, ms(20))),
        // Outside the default 10-20 ms range: longer run slices, fewer stops (see README).
        row("governor-0.5-50ms", half, governor_at(0.5, ms(50)), true),
        // Shorter run slices: a user's wake-up waits at most one slice for the model's CPU
        // (scripts/bench-wake); what they cost in stops and tokens per CPU-second.
        row("governor-0.5-5ms", half, governor_at(0.5, ms(5)), true),
        row("governor-0.5-2ms", half, governor_at(0.5, ms(2)), true),
        pinned("governor-0.5-2ms-pin", governor_at(0.5, ms(2))),
        row(
            "governor-0.5-2t",
            allowed_cpus,
            governor_at(0.5, ms(20)),
            true,
        ),
    ]
}

fn governor_at(cpus: f64, period: Duration) -> Limiter {
    Limiter::Governor { cpus, period }
}

/// Why a scenario could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    #[error("--only: no scenario named `{name}` (the scenarios are: {known})")]
    UnknownScenario { name: String, known: String },
    #[error("cannot start {program}: {source}{hint}")]
    Spawn {
        program: PathBuf,
        hint: &'static str,
        source: std::io::Error,
    },
    #[error("a pinned scenario needs this process's CPU affinity, which cannot be read here (leave the `-pin` rows out with --only)")]
    NoAffinity,
    #[error("no free port for llama-server: {0}")]
    Port(std::io::Error),
    #[error("llama-server did not become ready: {0}")]
    NotReady(#[from] StackError),
    #[error("cannot cap llama-server in a cgroup: {0} (run as root to include the cgroup rows)")]
    Cgroup(#[from] cgroup::CgroupError),
}

/// The scenarios named in `only` (all when empty), in table order.
pub fn select<'a>(all: &'a [Scenario], only: &[String]) -> Result<Vec<&'a Scenario>, LimiterError> {
    if let Some(unknown) = only.iter().find(|o| !all.iter().any(|s| s.name == *o)) {
        let known: Vec<&str> = all.iter().map(|s| s.name).collect();
        return Err(LimiterError::UnknownScenario {
            name: unknown.clone(),
            known: known.join(", "),
        });
    }
    Ok(all
        .iter()
        .filter(|s| only.is_empty() || only.iter().any(|o| o == s.name))
        .collect())
}

/// A running llama-server of one scenario; dropping it kills it.
pub struct Backend {
    pub process: GroupChild,
    pub url: String,
}

/// The llama-server command line of `scenario` on `port`; a pinned scenario's backend runs on
/// `pin_cpu` (the host's last allowed CPU), set before exec as the supervisor does.
pub fn backend_command(
    bin: &Path,
    model: &Path,
    port: u16,
    scenario: &Scenario,
    pin_cpu: Option<usize>,
) -> tokio::process::Command {
    use sentinel_supervisor::backend::launch;
    let threads = (scenario.threads, scenario.threads);
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(launch::core_args(model, port, threads, 2048, 1));
    if scenario.no_spin {
        cmd.args(launch::CHILD_ARGS);
        cmd.envs(launch::CHILD_ENV);
        cmd.args(["--threads-http", &launch::http_threads(1).to_string()]);
    }
    if let Some(cpu) = pin_cpu.filter(|_| scenario.pin) {
        // SAFETY: one async-signal-safe system call on a stack value between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                sentinel_supervisor::backend::process::affinity::pin_current_process(cpu)
                    .map_err(std::io::Error::from)
            });
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Starts the backend of `scenario` (pinned ones on `host`'s last allowed CPU) and waits until
/// `/health` answers 200.
pub async fn start_backend(
    bin: &Path,
    model: &Path,
    scenario: &Scenario,
    host: &sentinel_supervisor::host::Host,
    client: &reqwest::Client,
) -> Result<Backend, LimiterError> {
    let port = sentinel_supervisor::backend::launch::free_port().map_err(LimiterError::Port)?;
    if scenario.pin && host.last_allowed_cpu.is_none() {
        return Err(LimiterError::NoAffinity);
    }
    let command = backend_command(bin, model, port, scenario, host.last_allowed_cpu);
    let process = GroupChild::spawn(command)
        .await
        .map_err(|source| LimiterError::Spawn {
            program: bin.to_path_buf(),
            hint: "",
            source,
        })?;
    let url = format!("http://127.0.0.1:{port}");
    Stack::attach(&url, None)
        .wait_ready(client, READY_TIMEOUT)
        .await?;
    Ok(Backend { process, url })
}

/// What limits a scenario's backend from outside, if anything; dropping it lets go.
pub enum Attached {
    Nothing,
    Process(GroupChild),
    Cgroup(cgroup::CpuCgroup),
}

impl Attached {
    /// The limiter's own process, whose CPU the comparison counts.
    pub fn limiter_pid(&self) -> Option<i32> {
        match self {
            Attached::Process(p) => Some(p.pid()),
            Attached::Nothing | Attached::Cgroup(_) => None,
        }
    }

    /// Stops the limiter (and waits for its process).
    pub async fn detach(self) {
        match self {
            Attached::Process(p) => p.kill().await,
            Attached::Nothing | Attached::Cgroup(_) => {}
        }
    }
}

/// The command line of a limiter process for `scenario` on `pid`, if it has one.
pub fn limiter_command(
    supervisor: &Path,
    scenario: &Scenario,
    pid: i32,
) -> Option<(tokio::process::Command, &'static str)> {
    let pid = pid.to_string();
    match scenario.limiter {
        Limiter::Unlimited | Limiter::Cgroup { .. } => None,
        Limiter::Cpulimit { percent } => {
            let mut cmd = tokio::process::Command::new("cpulimit");
            cmd.args(["-l", &percent.to_string(), "-p", &pid])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            Some((cmd, " (apt-get install cpulimit)"))
        }
        Limiter::Governor { cpus, period } => {
            let mut cmd = tokio::process::Command::new(supervisor);
            cmd.args(["limit", "-q", "--cpus", &cpus.to_string(), "--pid", &pid])
                .args(["--threads", &scenario.threads.to_string()])
                .args(["--period", &format!("{}ms", period.as_millis())]);
            Some((cmd, " (build it: cargo build --release)"))
        }
    }
}

/// Attaches `scenario`'s limiter to the backend `pid`.
pub async fn attach(
    supervisor: &Path,
    scenario: &Scenario,
    pid: i32,
) -> Result<Attached, LimiterError> {
    if let Limiter::Cgroup { cpus } = scenario.limiter {
        let support = cgroup::detect().ok_or(cgroup::CgroupError::Unavailable)?;
        // The plain kernel cap, the baseline the governor is compared with: default weight.
        let group = cgroup::CpuCgroup::create(
            &support,
            pid,
            cpus,
            Duration::from_millis(10),
            sentinel_supervisor::governor::Priority::Normal,
        )?;
        tracing::info!(path = %group.path().display(), pid, cpus, "backend capped in a cgroup");
        return Ok(Attached::Cgroup(group));
    }
    let Some((cmd, hint)) = limiter_command(supervisor, scenario, pid) else {
        return Ok(Attached::Nothing);
    };
    let program = PathBuf::from(cmd.as_std().get_program());
    GroupChild::spawn(cmd)
        .await
        .map(Attached::Process)
        .map_err(|source| LimiterError::Spawn {
            program,
            hint,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &tokio::process::Command) -> Vec<String> {
        cmd.as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn scenario_names_are_unique_and_selectable() {
        let all = scenarios(2);
        assert_eq!(all.len(), 17);
        let mut names: Vec<&str> = all.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        let picked = select(&all, &["governor-0.5".into(), "unlimited".into()]).unwrap();
        // Table order, not the order asked.
        assert_eq!(
            picked.iter().map(|s| s.name).collect::<Vec<_>>(),
            ["unlimited", "governor-0.5"]
        );
        assert_eq!(select(&all, &[]).unwrap().len(), 17);
        let err = select(&all, &["governor-2".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`governor-2`") && err.contains("cgroup-0.5, governor-1.0"),
            "{err}"
        );
    }

    #[test]
    fn command_lines_carry_threads_setup_and_budget() {
        let all = scenarios(2);
        let by = |name| all.iter().find(|s| s.name == name).unwrap();
        let gov = by("governor-0.5-50ms");
        let backend = args(&backend_command(
            Path::new("/llama"),
            Path::new("/m.gguf"),
            4242,
            gov,
            Some(1),
        ));
        let joined = backend.join(" ");
        assert!(joined.contains("--port 4242"), "{joined}");
        assert!(
            joined.contains(&format!("--threads {0} --threads-batch {0}", gov.threads)),
            "{joined}"
        );
        assert!(joined.contains("--poll 0"), "{joined}");
        let plain = args(&backend_command(
            Path::new("/llama"),
            Path::new("/m.gguf"),
            1,
            by("threads-1"),
            Some(1),
        ));
        assert!(!plain.iter().any(|a| a == "--poll"), "{plain:?}");

        // Pinned rows are the one-thread product setup; the others are never pinned.
        for s in &all {
            assert_eq!(s.pin, s.name.ends_with("-pin"), "{}", s.name);
            assert!(!s.pin || (s.threads == 1 && s.no_spin), "{}", s.name);
        }

        let (limit, _) = limiter_command(Path::new("/sup"), gov, 77).unwrap();
        assert_eq!(limit.as_std().get_program(), "/sup");
        assert_eq!(
            args(&limit).join(" "),
            format!(
                "limit -q --cpus 0.5 --pid 77 --threads {} --period 50ms",
                gov.threads
            )
        );
        let (cpulimit, hint) = limiter_command(Path::new("/sup"), by("cpulimit-l50"), 77).unwrap();
        assert_eq!(args(&cpulimit), ["-l", "50", "-p", "77"]);
        assert!(hint.contains("apt-get"));
        assert!(limiter_command(Path::new("/sup"), by("cgroup-1.0"), 77).is_none());
        assert!(limiter_command(Path::new("/sup"), by("unlimited"), 77).is_none());
    }
}
