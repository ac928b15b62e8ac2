//! The command line: `run` (the default), `setup`, `install`, `bundle`, `profiles`,
//! `check-config`, `status`, `limit`, and `bench`, which runs the bench crate's `sentinel-bench`.
//!
//! Only clap types live here, with their own value enums; [`crate::commands`] turns them into the
//! domain's options (merging them over the configuration), so no domain module sees clap.

use crate::units::{Cores, Share};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "sentinel-supervisor",
    version,
    about = "Keeps a local llama.cpp server running in the background with a predictable CPU \
             footprint, behind an OpenAI-compatible endpoint.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Options of `run`, accepted without the subcommand name.
    #[command(flatten)]
    pub run: RunArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the supervisor (the default): set up if needed, launch llama-server, serve the API.
    Run(RunArgs),
    /// Fetch and build llama-server and the default model into the cache, then exit (or, with
    /// --from, install them from a bundle, without a compiler).
    Setup(SetupCommandArgs),
    /// Install a bundle made by `bundle` into the cache (the same as `setup --from FILE`).
    Install(InstallArgs),
    /// Pack this binary, the portable llama-server and optionally the default model into one
    /// relocatable archive, to install on other machines with `setup --from`.
    Bundle(BundleArgs),
    /// Print every profile's values as resolved against this host, and why.
    Profiles(ConfigArgs),
    /// Check the configuration and print it as it takes effect (defaults filled in, API keys
    /// redacted); exit 1 with the key and file at fault when it is invalid.
    CheckConfig(ConfigArgs),
    /// Show a running supervisor's state: profile, governor, restarts, requests, model (exit 0
    /// when ready, 1 when not, 2 when it cannot be asked).
    Status(StatusArgs),
    /// Hold any process to a CPU budget, like cpulimit but smooth.
    Limit(LimitArgs),
    /// Measure profiles: CPU, memory, latency and correctness on endpoint-security tasks (runs
    /// `sentinel-bench bench`, built with `cargo build --release -p sentinel-bench`; every
    /// argument, --help too, is its).
    #[command(disable_help_flag = true)]
    Bench(PassThroughArgs),
    /// Internal: one foreground-impact probe of `bench --foreground` (`sentinel-bench probe`).
    #[command(hide = true, disable_help_flag = true)]
    BenchProbe(PassThroughArgs),
}

/// The arguments of a command that the bench crate's `sentinel-bench` runs: accepted whatever
/// they are, and passed on as typed (`commands::bench` takes them from the raw command line).
#[derive(Args, Debug, Clone, Default)]
pub struct PassThroughArgs {
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<std::ffi::OsString>,
}

/// Where the configuration comes from.
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// A TOML file overriding the built-in defaults (otherwise
    /// `$XDG_CONFIG_HOME/sentinel-supervisor/config.toml` when it exists).
    #[arg(long, global = true, env = "SENTINEL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// What `status` may be told.
#[derive(Args, Debug, Clone, Default)]
pub struct StatusArgs {
    /// Where `listen` comes from when --url is not given.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The supervisor's URL (default: `listen` of the configuration).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Print the whole `/status` report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub key: ApiKeyArgs,
}

/// How a client of a running supervisor authenticates (`status`, and `sentinel-bench`'s
/// `bench --url`).
#[derive(Args, Debug, Clone, Default)]
pub struct ApiKeyArgs {
    /// API key for the supervisor, sent as `Authorization: Bearer KEY`.
    #[arg(
        long,
        env = "SENTINEL_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
}

/// What `setup` may be told.
#[derive(Args, Debug, Clone, Default)]
pub struct SetupArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Use this GGUF model instead of the default one.
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Use this llama-server binary instead of building the pinned one.
    #[arg(long, value_name = "PATH")]
    pub backend_bin: Option<PathBuf>,
    /// `setup` only: build and smoke-test every rung of the backend ladder (native, native
    /// --no-repack, portable, baseline) and print each one's verdict, not only up to the first
    /// that runs.
    #[arg(long)]
    pub all_rungs: bool,
    /// CPU cap of a llama.cpp build, in cores (over `[setup] cpus`; default: no cap, idle
    /// priority only).
    #[arg(long, env = "SENTINEL_SETUP_CPUS", value_name = "CORES")]
    pub cpus: Option<Cores>,
    /// Parallel compile jobs of a llama.cpp build (over `[setup] jobs`).
    #[arg(long, value_name = "N")]
    pub jobs: Option<std::num::NonZeroUsize>,
}

/// `setup`: what any setup may be told, and a bundle to install from.
#[derive(Args, Debug, Clone, Default)]
pub struct SetupCommandArgs {
    #[command(flatten)]
    pub setup: SetupArgs,
    /// Install llama-server (and the model, when bundled) from this bundle (.tar.gz or an
    /// extracted directory) after verifying every file's sha256; no compiler, cmake or Python.
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
}

/// `install FILE`: `setup --from FILE`.
#[derive(Args, Debug, Clone)]
pub struct InstallArgs {
    /// The bundle (.tar.gz or an extracted directory).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub setup: SetupArgs,
}

/// `bundle`: what goes in the archive and where it goes.
#[derive(Args, Debug, Clone)]
pub struct BundleArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The directory the archive is written to.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Also pack the default model (fetched into the cache first when missing), so the
    /// machines installing the bundle download nothing.
    #[arg(long)]
    pub with_model: bool,
    /// Pack this directory's llama-server and its libraries instead of the portable build in
    /// the cache.
    #[arg(long, value_name = "DIR")]
    pub server_dir: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    #[command(flatten)]
    pub setup: SetupArgs,
    /// The profile to run (see `sentinel-supervisor profiles`).
    #[arg(long, short = 'p', value_name = "NAME")]
    pub profile: Option<String>,
    /// Address of the OpenAI-compatible endpoint (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct LogArgs {
    /// More logging (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less logging (-q warnings only, -qq errors only).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub quiet: u8,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `limit`: hold a process (and its process group) to a CPU budget.
#[derive(Args, Debug, Clone)]
pub struct LimitArgs {
    /// The budget in cores, like Docker's --cpus (cpulimit -l L is L/100 cores; P % of the
    /// whole machine is P/100 * ncpus cores).
    #[arg(long, value_name = "CORES")]
    pub cpus: Cores,
    /// An existing process to limit (its whole process group when it leads one).
    #[arg(long, value_name = "PID", conflicts_with = "command")]
    pub pid: Option<i32>,
    /// Duty-cycle period.
    #[arg(long, value_name = "DURATION", default_value = "20ms", value_parser = humantime::parse_duration)]
    pub period: std::time::Duration,
    /// Threads the target keeps busy (default: follow its thread count).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// How to enforce the budget: `signals` works on any process; `cgroup` moves it into a
    /// kernel-capped cgroup (root or a delegated cgroup v2 subtree); `auto` picks.
    #[arg(long, value_enum, default_value_t = Method::Signals)]
    pub method: Method,
    /// Yield to the user: shrink the budget while total system CPU is above this share of the
    /// machine (0-1), recovering slowly when it falls.
    #[arg(long, value_name = "SHARE")]
    pub adaptive: Option<Share>,
    /// Scheduling class of the target, and of a cgroup of its own where one is writable (the
    /// capped one under `--method cgroup`, an uncapped one otherwise, so it holds outside this
    /// session): `background` is nice 19, `idle` runs only on CPU time nothing else wants.
    #[arg(long, value_enum, default_value_t = Priority::Normal)]
    pub priority: Priority,
    /// A command to start and limit (after `--`).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `--method` of `limit` (the governor's `Method`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A kernel cgroup cap when a writable cgroup exists, the duty cycle otherwise (and the duty
    /// cycle whenever the adaptive mode is on, since it changes the budget every second).
    Auto,
    /// SIGSTOP/SIGCONT duty cycle (every platform; throttles only while requests are in flight).
    Signals,
    /// Kernel cap (cgroup v2 `cpu.max` or v1 CFS quota); fails when no writable cgroup exists.
    Cgroup,
    /// No limiting (thread sizing and priority still apply).
    Off,
}

/// `--priority` of `limit` (the governor's `Priority`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Leave the scheduler alone.
    Normal,
    /// Lowest normal priority (nice 19 / Darwin background), lowest cgroup weight.
    Background,
    /// Only spare cycles (`SCHED_IDLE` / Darwin background), `cpu.idle` cgroup.
    Idle,
}
