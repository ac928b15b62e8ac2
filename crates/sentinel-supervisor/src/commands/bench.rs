//! `sentinel-supervisor bench` and `bench-probe`: the experiment harness lives in its own crate
//! (`crates/bench`, binary `sentinel-bench`), which depends on this one, so this crate cannot
//! link it. These commands run `sentinel-bench` instead, found beside this executable (where
//! cargo builds both) and then on `PATH`, with every argument passed through: users keep one
//! command name, and what `cargo install` puts on their machine is the supervisor alone.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The bench crate's binary.
pub(crate) const BENCH_BIN: &str = "sentinel-bench";

/// Which `sentinel-bench` command to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BenchCommand {
    /// `bench`: measure profiles or a command.
    Bench,
    /// `bench-probe`: one foreground probe (`sentinel-bench probe`).
    Probe,
}

impl BenchCommand {
    /// Its name on this program's command line, and on `sentinel-bench`'s.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            BenchCommand::Bench => ("bench", "bench"),
            BenchCommand::Probe => ("bench-probe", "probe"),
        }
    }
}

/// Why `sentinel-bench` could not be run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchLaunchError {
    #[error(
        "`{BENCH_BIN}` was found neither at {beside} nor on PATH (build it with \
         `cargo build --release -p sentinel-bench`, or install it with \
         `cargo install --path crates/bench`)"
    )]
    Missing { beside: String },
    #[error("cannot run {program}: {source} (check that it is an executable file)")]
    Exec {
        program: String,
        source: std::io::Error,
    },
}

/// Replaces this process with `sentinel-bench`, given `args` (this program's command line,
/// its name first) with the command's name in its place; returns only when that failed, with
/// why (the caller reports it and exits 2).
pub(crate) fn exec(
    command: BenchCommand,
    args: impl IntoIterator<Item = OsString>,
) -> BenchLaunchError {
    use std::os::unix::process::CommandExt;
    let own = std::env::current_exe().ok();
    let beside = own
        .as_deref()
        .and_then(Path::parent)
        .map(|d| d.join(BENCH_BIN));
    let program = beside
        .as_ref()
        .filter(|p| p.is_file())
        .map_or_else(|| PathBuf::from(BENCH_BIN), Clone::clone);
    let argv = argv(command, args);
    tracing::debug!(program = %program.display(), ?argv, "running the bench crate's binary");
    let source = Command::new(&program).args(argv).exec();
    if source.kind() == std::io::ErrorKind::NotFound {
        let beside = beside.map_or_else(|| "this executable".into(), |p| p.display().to_string());
        return BenchLaunchError::Missing { beside };
    }
    BenchLaunchError::Exec {
        program: program.display().to_string(),
        source,
    }
}

/// `sentinel-bench`'s arguments: this program's, as the user typed them (clap would drop a
/// `--` that follows the command at once), with the command's name replaced by
/// `sentinel-bench`'s. Nothing comes before the name: this program takes no option before a
/// command.
fn argv(command: BenchCommand, args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut argv: Vec<OsString> = args.into_iter().skip(1).collect();
    let (ours, theirs) = command.names();
    if let Some(name) = argv.iter_mut().find(|a| *a == ours) {
        *name = theirs.into();
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command as CliCommand};
    use clap::Parser;

    /// What `sentinel-bench` is given for `line`, which this program must accept.
    fn passed(line: &[&str]) -> Vec<OsString> {
        let command = match Cli::try_parse_from(line).unwrap().command {
            Some(CliCommand::Bench(_)) => BenchCommand::Bench,
            Some(CliCommand::BenchProbe(_)) => BenchCommand::Probe,
            other => panic!("not bench: {other:?}"),
        };
        argv(command, line.iter().map(OsString::from))
    }

    #[test]
    fn every_argument_reaches_the_harness_in_order() {
        assert_eq!(
            passed(&["s", "bench", "-p", "fast", "--config", "c.toml", "--", "make", "-j2"]),
            ["bench", "-p", "fast", "--config", "c.toml", "--", "make", "-j2"]
        );
        assert_eq!(passed(&["s", "bench", "--help"]), ["bench", "--help"]);
        assert_eq!(
            passed(&["s", "bench", "--", "make"]),
            ["bench", "--", "make"]
        );
        assert_eq!(
            passed(&["s", "bench-probe", "work", "--for", "2s"]),
            ["probe", "work", "--for", "2s"]
        );
    }

    #[test]
    fn options_after_the_command_go_along_as_typed() {
        assert_eq!(
            passed(&["s", "bench", "-vv", "--config", "bench", "-p", "fast"]),
            ["bench", "-vv", "--config", "bench", "-p", "fast"]
        );
        assert_eq!(
            passed(&[
                "s",
                "bench",
                "--log-format",
                "json",
                "-q",
                "--url",
                "http://x"
            ]),
            ["bench", "--log-format", "json", "-q", "--url", "http://x"]
        );
    }

    #[test]
    fn a_missing_harness_says_how_to_build_it() {
        let err = BenchLaunchError::Missing {
            beside: "/x/sentinel-supervisor".into(),
        };
        let msg = err.to_string();
        assert!(
            msg.contains("cargo build --release -p sentinel-bench") && msg.contains("PATH"),
            "{msg}"
        );
    }
}
