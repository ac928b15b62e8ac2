//! sentinel-supervisor: keeps llama.cpp's `llama-server` running in the background with a
//! predictable CPU footprint, behind an OpenAI-compatible HTTP endpoint.
//!
//! See `ARCHITECTURE.md` for how the modules fit together.

pub mod backend;
pub mod bench;
pub mod cli;
pub mod config;
pub mod governor;
pub mod logging;
pub mod meter;
pub mod profile;
pub mod proxy;
pub mod supervisor;

use anyhow::Context;
use cli::{Cli, Command};
use std::process::ExitCode;

/// Runs the command the user asked for and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let command = cli.command.unwrap_or(Command::Run(cli.run));
    runtime.block_on(async move {
        match command {
            Command::Run(args) => supervisor::run(args).await,
            Command::Setup(args) => backend::setup::run(args).await,
            Command::Profiles(args) => profile::print_profiles(&args),
            Command::Limit(args) => governor::limit::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::BenchProbe(args) => {
                let probe = match args.probe {
                    cli::ProbeKind::Work => bench::foreground::Probe::Work,
                    cli::ProbeKind::Wake => bench::foreground::Probe::Wake,
                };
                bench::foreground::probe_main(probe, args.iterations, args.run_for)
            }
        }
    })
}
