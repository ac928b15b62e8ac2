//! The backend's lifecycle.

pub async fn run(_args: crate::cli::RunArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("in progress")
}
