//! `setup`: fetch and build llama-server and the default model.

pub async fn run(_args: crate::cli::SetupArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("in progress")
}
