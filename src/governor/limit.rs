//! `sentinel-supervisor limit`: hold any process to a CPU budget.

pub async fn run(_args: crate::cli::LimitArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("`limit` is being built (issue 4)")
}
