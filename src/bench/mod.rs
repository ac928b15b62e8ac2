//! The experiment harness: workloads, the endpoint-security task set, scoring and reports.

pub mod score;
pub mod settings;
pub mod stats;
pub mod target;
pub mod task;

pub async fn run(_args: crate::cli::BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("`bench` is being built (issue 5)")
}
