//! `sentinel-bench`: parse the command line, run the harness, map the result to an exit code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = sentinel_bench::cli::Cli::parse();
    sentinel_supervisor::commands::init_logging(&cli.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(sentinel_bench::options::dispatch(cli)),
        Err(err) => Err(anyhow::Error::new(err).context("could not start the async runtime")),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}
