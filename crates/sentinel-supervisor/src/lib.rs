//! sentinel-supervisor: keeps llama.cpp's `llama-server` running in the background with a
//! predictable CPU footprint, behind an OpenAI-compatible HTTP endpoint.
//!
//! See `ARCHITECTURE.md` for how the modules fit together.

pub mod backend;
pub mod cli;
pub mod commands;
pub mod config;
pub mod governor;
pub mod host;
pub mod meter;
pub mod metrics;
pub(crate) mod notify;
pub mod os;
pub(crate) mod profile;
pub mod proxy;
pub(crate) mod requests;
pub(crate) mod situation;
pub mod status;
pub mod supervisor;
pub mod units;
pub mod upstream;

use anyhow::Context;
use cli::Cli;
use std::process::ExitCode;

/// Runs the command the user asked for and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    runtime.block_on(commands::dispatch(cli))
}
