//! Profiles resolved against this host.

pub fn print_profiles(_args: &crate::cli::ConfigArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("in progress")
}
