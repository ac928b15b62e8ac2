//! `sentinel-supervisor profiles`: prints every profile of the configuration as resolved on this
//! host.

use crate::cli::ConfigArgs;
use std::process::ExitCode;

pub fn run(args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let config = super::load_config(args)?;
    crate::profile::print_profiles(&config)
}
