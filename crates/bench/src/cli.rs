//! `sentinel-bench`'s command line: `bench` (what `sentinel-supervisor bench` runs) and the
//! hidden `probe` that `bench --foreground` starts as its own processes. The global options are
//! the product's own (`--config`, `-v`, `-q`, `--log-format`), so the product can pass them on.

use clap::{Args, Parser, Subcommand, ValueEnum};
use sentinel_supervisor::cli::{ApiKeyArgs, ConfigArgs, LogArgs};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "sentinel-bench",
    version,
    about = "Measures sentinel-supervisor's profiles: CPU, memory, latency and correctness on \
             endpoint-security tasks (also run as `sentinel-supervisor bench`)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// The product's configuration: its profiles, `[slo]` and API keys, and the file given to
    /// every supervisor started here.
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Measure profiles: CPU, memory, latency and correctness on endpoint-security tasks.
    Bench(Box<BenchArgs>),
    /// Internal: one foreground-impact probe of `bench --foreground`, run as its own process.
    #[command(hide = true)]
    Probe(ProbeArgs),
}

/// `bench`: measure one or more profiles.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// This crate's own settings (`bench.toml`'s shape) merged over the built-in ones.
    #[arg(long, env = "SENTINEL_BENCH_SETTINGS", value_name = "FILE")]
    pub settings: Option<PathBuf>,
    /// GGUF models to measure, each under every profile (repeat the flag; default: the
    /// configured model).
    #[arg(long = "model", value_name = "PATH")]
    pub models: Vec<PathBuf>,
    /// Use this llama-server binary instead of building the pinned one.
    #[arg(long, value_name = "PATH")]
    pub backend_bin: Option<PathBuf>,
    /// Profiles to measure, in order (repeat the flag).
    #[arg(long = "profile", short = 'p', value_name = "NAME")]
    pub profiles: Vec<String>,
    /// Measure an already running supervisor instead of starting one per profile.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// A JSONL task file (defaults to the shipped endpoint-security task set).
    #[arg(long, value_name = "FILE")]
    pub tasks: Option<PathBuf>,
    /// Run only the first N tasks.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Where to write report.json, report.md and the CPU chart.
    #[arg(long, value_name = "DIR", default_value = "bench-out")]
    pub out: PathBuf,
    /// Idle window measured before the tasks.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub idle: std::time::Duration,
    /// Send tasks' JSON schemas as `response_format` (off, on, or both: every task twice).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = SchemaMode::Both)]
    pub schema_mode: SchemaMode,
    /// Upper bound on generated tokens per task (default: `[bench] max_tokens` of the settings).
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<u32>,
    #[command(flatten)]
    pub key: ApiKeyArgs,
    /// Send each category's tasks behind one shared prefix with K solved examples (held out of
    /// the scored tasks); every run is done without and with it, and once with caching off.
    #[arg(long, value_name = "K")]
    pub shots: Option<usize>,
    /// The shared prefix's system text from this file instead of the built-in policy and format.
    #[arg(long, value_name = "FILE")]
    pub prefix: Option<PathBuf>,
    /// Solved examples from this task file (same format as --tasks) instead of held-out tasks.
    #[arg(long, value_name = "FILE", requires = "shots")]
    pub examples: Option<PathBuf>,
    /// With --shots or --prefix, skip the comparison run with `cache_prompt: false`.
    #[arg(long)]
    pub no_cache_off: bool,
    /// Measure what a user at the machine feels: an interactive loop and a wake-up probe, alone
    /// and during each profile's tasks.
    #[arg(long)]
    pub foreground: bool,
    /// Instead of profiles: run this command (after `--`) and report the machine's CPU and the
    /// command's own (all it starts) per sample window, e.g. an install:
    /// `sentinel-supervisor bench -- sentinel-supervisor setup --cpus 0.5`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `probe`: one foreground probe; prints its samples as JSON when stdin closes.
#[derive(Args, Debug, Clone)]
pub struct ProbeArgs {
    #[arg(value_enum)]
    pub probe: ProbeKind,
    /// Work probe: spin iterations of one work unit (default: calibrate to about 5 ms).
    #[arg(long, value_name = "N")]
    pub iterations: Option<u64>,
    /// Stop after this long instead of when stdin closes.
    #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub run_for: Option<std::time::Duration>,
}

/// Which foreground probe.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// 5 ms of work, 5 ms of sleep; records each work unit's wall time.
    Work,
    /// Sleeps 1 ms again and again; records how late it wakes.
    Wake,
}

/// `--schema-mode` of `bench` (the bench's `SchemaMode`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaMode {
    Off,
    On,
    Both,
}
