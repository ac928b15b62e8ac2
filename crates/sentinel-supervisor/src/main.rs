//! Entry point: parse the command line, run the library, map the result to an exit code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = sentinel_supervisor::cli::Cli::parse();
    sentinel_supervisor::commands::init_logging(&cli.log);
    match sentinel_supervisor::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}
