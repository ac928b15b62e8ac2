//! `bench_wake`: where the user's wake-up lateness comes from, with a CPU-bound stand-in for the
//! model beside the foreground probes. Run by `scripts/bench-wake`; the scenarios, the children
//! and the rows live in `sentinel_bench::wake`.

use anyhow::Context;
use clap::Parser;
use sentinel_bench::wake::{self, WakeOptions};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "bench_wake",
    bin_name = "bench_wake",
    about = "Wake-up lateness and work-unit time of the foreground probes beside a CPU-bound \
             stand-in for the model, free, pinned or limited"
)]
struct Args {
    /// Seconds each row is measured.
    #[arg(long, default_value_t = 15.0)]
    secs: f64,
    /// Passes through the scenarios.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// The sentinel-supervisor binary (default: the one beside this driver, in the same cargo
    /// profile directory).
    #[arg(long)]
    supervisor: Option<PathBuf>,
}

impl Args {
    fn options(self) -> anyhow::Result<WakeOptions> {
        anyhow::ensure!(
            self.secs.is_finite() && self.secs >= 0.1,
            "--secs {} is too short (give at least 0.1)",
            self.secs
        );
        let supervisor = match self.supervisor {
            Some(p) => p,
            None => std::env::current_exe()
                .context("cannot find this executable's path (pass --supervisor)")?
                .with_file_name("sentinel-supervisor"),
        };
        Ok(WakeOptions {
            window: Duration::from_secs_f64(self.secs),
            rounds: self.rounds,
            supervisor,
        })
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime");
    match args
        .options()
        .and_then(|options| runtime.and_then(|rt| rt.block_on(wake::run(&options))))
    {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench_wake: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
