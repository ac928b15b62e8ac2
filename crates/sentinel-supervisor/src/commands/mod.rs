//! The commands: each turns its clap arguments ([`crate::cli`]) into the domain's options once,
//! merging the command line over the configuration, then calls the library. This is the only
//! module that sees clap types; the domain modules take the options below.
//!
//! - `run` -> [`crate::supervisor::RunOptions`] -> [`crate::supervisor::run`]
//! - `setup` -> [`crate::backend::setup::SetupOptions`] -> [`crate::backend::setup::ensure`]
//!   (`setup --from` and `install` first [`crate::backend::bundle::install`])
//! - `bundle` -> [`crate::backend::bundle::BundleOptions`] -> [`crate::backend::bundle::create`]
//! - `profiles` -> the loaded [`Config`], every profile [`crate::profile::resolve`]d -> stdout
//! - `check-config` -> the loaded [`Config`], every profile resolved -> TOML on stdout
//! - `status` -> [`status::StatusOptions`] -> a running supervisor's `/status`, summarised
//! - `limit` -> [`limit::LimitOptions`] -> [`limit::limit`]
//! - `bench`, `bench-probe` -> [`bench::exec`]: the bench crate's `sentinel-bench`, arguments
//!   passed through

pub(crate) mod bench;
pub(crate) mod bundle;
pub(crate) mod check_config;
pub(crate) mod limit;
mod logging;
pub(crate) mod profiles;
pub(crate) mod run;
pub(crate) mod setup;
pub(crate) mod status;

use crate::cli::{self, Cli, Command, ConfigArgs};
use crate::config::{Config, ConfigError};
use bench::BenchCommand;
pub use logging::init_logging;
use std::process::ExitCode;

/// Runs the command of `cli` (`run` when none is named) to its exit code.
pub(crate) async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command.unwrap_or(Command::Run(cli.run)) {
        Command::Run(args) => run::run(args).await,
        Command::Setup(args) => match args.from {
            Some(from) => setup::run_from(args.setup, from).await,
            None => setup::run(args.setup).await,
        },
        Command::Install(args) => setup::run_from(args.setup, args.file).await,
        Command::Bundle(args) => bundle::run(args).await,
        Command::Profiles(args) => profiles::run(&args),
        Command::CheckConfig(args) => check_config::run(&args),
        Command::Status(args) => status::run(args).await,
        Command::Limit(args) => limit::run(args).await,
        Command::Bench(_) => Err(bench::exec(BenchCommand::Bench, std::env::args_os()).into()),
        Command::BenchProbe(_) => Err(bench::exec(BenchCommand::Probe, std::env::args_os()).into()),
    }
}

/// The built-in defaults with the user's file (`--config`, or the usual place) over them.
fn load_config(args: &ConfigArgs) -> Result<Config, ConfigError> {
    Config::load(args.config.as_deref())
}

impl From<cli::Method> for crate::governor::Method {
    fn from(method: cli::Method) -> Self {
        match method {
            cli::Method::Auto => Self::Auto,
            cli::Method::Signals => Self::Signals,
            cli::Method::Cgroup => Self::Cgroup,
            cli::Method::Off => Self::Off,
        }
    }
}

impl From<cli::Priority> for crate::governor::Priority {
    fn from(priority: cli::Priority) -> Self {
        match priority {
            cli::Priority::Normal => Self::Normal,
            cli::Priority::Background => Self::Background,
            cli::Priority::Idle => Self::Idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cli_method_maps_to_the_governor_method_of_the_same_name() {
        use clap::ValueEnum;
        for method in cli::Method::value_variants() {
            let name = method.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(crate::governor::Method::from(*method).to_string(), name);
        }
    }

    #[test]
    fn every_cli_priority_maps_to_the_governor_priority_of_the_same_name() {
        use clap::ValueEnum;
        for priority in cli::Priority::value_variants() {
            let name = priority.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(crate::governor::Priority::from(*priority).to_string(), name);
        }
    }
}
