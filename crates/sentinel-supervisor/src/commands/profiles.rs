//! `sentinel-supervisor profiles`: prints the backend a start would use, then every profile of
//! the configuration as resolved on this host, with a note per value derived or adjusted.

use crate::cli::ConfigArgs;
use crate::host::Host;
use std::process::ExitCode;

pub(crate) fn run(args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let config = super::load_config(args)?;
    println!(
        "backend: {}",
        crate::backend::ladder::recorded(&config.cache_dir(), config.backend.bin.as_deref())
    );
    let host = Host::detect();
    println!("host: {}", host.describe());
    for name in config.profiles.keys() {
        let r = crate::profile::resolve(&config, name, &host)?;
        let default = if *name == config.default_profile {
            " (default)"
        } else {
            ""
        };
        println!("\n{}{default}", r.summary());
        if !r.description.is_empty() {
            println!("  {}", r.description);
        }
        for note in &r.notes {
            println!("  {name}: {note}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
