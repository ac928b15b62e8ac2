//! `sentinel-supervisor profiles`: prints every profile of the configuration as resolved on this
//! host.

use crate::cli::ConfigArgs;
use std::process::ExitCode;

pub fn run(args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let config = super::load_config(args)?;
    println!(
        "backend: {}",
        crate::backend::ladder::recorded(&config.cache_dir(), config.backend.bin.as_deref())
    );
    crate::profile::print_profiles(&config)
}
