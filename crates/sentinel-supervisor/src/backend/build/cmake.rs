//! cmake's two steps for one flavor, configure and build, run through the setup's runner (idle
//! priority, its own group, the build's CPU cap: [`crate::backend::runner`]), each a progress
//! step, their output kept in the build directory's `build.log` and its last lines in the error.

use super::{BuildDir, BuildError};
use crate::backend::fetch::io_err;
use crate::backend::output::LogTail;
use crate::backend::pin::SourcePin;
use crate::backend::progress::{Step, Unit};
use crate::backend::runner;
use crate::backend::tools::BuildTools;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// How many of a failed step's last output lines its error shows.
const TAIL_LINES: usize = 20;

/// `build.log`: every line cmake and what it runs printed, and the build's own notes.
pub(super) struct BuildLog {
    file: std::fs::File,
    path: PathBuf,
}

impl BuildLog {
    /// Starts `<dir>/build.log` afresh.
    pub(super) fn create(dir: &BuildDir) -> Result<BuildLog, BuildError> {
        let path = dir.root.join("build.log");
        let file = std::fs::File::create(&path).map_err(io_err(&path))?;
        Ok(BuildLog { file, path })
    }

    /// Appends one line (a log that cannot be written does not stop the build).
    pub(super) fn note(&mut self, line: impl std::fmt::Display) {
        let _ = writeln!(self.file, "{line}");
    }

    /// Runs a command through the setup's runner, appending its output to the log and passing
    /// each line of its standard output to `on_line`.
    fn run(
        &mut self,
        mut cmd: Command,
        step: &'static str,
        mut on_line: impl FnMut(&str),
    ) -> Result<(), BuildError> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut running = runner::current().spawn(cmd).map_err(io_err(&self.path))?;
        let child = running.child();
        let stderr = child.stderr.take().map(|s| BufReader::new(s).lines());
        let err_thread = std::thread::spawn(move || {
            let lines = stderr.into_iter().flatten();
            lines.map_while(Result::ok).collect::<Vec<String>>()
        });
        let tail = LogTail::default();
        let stdout = child.stdout.take().map(|s| BufReader::new(s).lines());
        for line in stdout.into_iter().flatten().map_while(Result::ok) {
            on_line(&line);
            self.note(&line);
            tail.push(line);
        }
        let status = running.wait().map_err(io_err(&self.path))?;
        for line in err_thread.join().unwrap_or_default() {
            self.note(&line);
            tail.push(line);
        }
        if status.success() {
            return Ok(());
        }
        Err(BuildError::Cmake {
            step,
            code: status.code(),
            tail: tail.last(TAIL_LINES).join("\n"),
            log: self.path.clone(),
        })
    }
}

/// Configures `src` into the flavor's build tree with Ninja, then builds the pin's target with
/// the runner's job count. Returns the build's progress step, for the caller to finish once
/// the binary is checked.
pub(super) fn configure_and_build(
    tools: &BuildTools,
    pin: &SourcePin,
    dir: &BuildDir,
    src: &Path,
    log: &mut BuildLog,
) -> Result<Step, BuildError> {
    let flavor = dir.flavor;
    let flags = flavor.cmake_flags(pin, std::env::consts::ARCH);
    log.note(format_args!("flavor {flavor}: {}", flags.join(" ")));
    let ninja = format!("-DCMAKE_MAKE_PROGRAM={}", tools.ninja.path.display());
    let mut configure = Command::new(&tools.cmake.path);
    configure.arg("-S").arg(src).arg("-B").arg(dir.build());
    configure.args(["-G", "Ninja", &ninja]).args(&flags);
    let step = Step::spinner("configure", format!("cmake ({flavor})"));
    log.run(configure, "configure", |line| {
        step.set_message(line.trim().to_string());
    })?;
    step.finish("cmake configured the build");

    let jobs = runner::current().jobs().to_string();
    let mut build = Command::new(&tools.cmake.path);
    build.arg("--build").arg(dir.build());
    build.args(["--target", &pin.target, "-j", &jobs]);
    let step = Step::bar("build", 0, Unit::Count("objects"));
    log.run(build, "build", |line| {
        if let Some((done, total)) = parse_progress(line) {
            step.set_length(total);
            step.set_position(done);
        }
    })?;
    Ok(step)
}

/// Steps done and total from a build-tool line: ninja's `[93/206] ...`, or make's `[ 45%] ...`
/// as a count out of 100.
fn parse_progress(line: &str) -> Option<(u64, u64)> {
    let (inner, _) = line.trim_start().strip_prefix('[')?.split_once(']')?;
    if let Some((done, total)) = inner.split_once('/') {
        let done: u64 = done.trim().parse().ok()?;
        let total: u64 = total.trim().parse().ok()?;
        return (total > 0 && done <= total).then_some((done, total));
    }
    let pct: u64 = inner.trim().strip_suffix('%')?.trim().parse().ok()?;
    (pct <= 100).then_some((pct, 100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_from_ninja_and_make() {
        assert_eq!(
            parse_progress("[93/206] Building CXX object x.o"),
            Some((93, 206))
        );
        assert_eq!(
            parse_progress("[206/206] Linking CXX executable bin/llama-server"),
            Some((206, 206))
        );
        assert_eq!(
            parse_progress("[ 45%] Building CXX object"),
            Some((45, 100))
        );
        assert_eq!(
            parse_progress("[100%] Built target llama-server"),
            Some((100, 100))
        );
        assert_eq!(parse_progress("[7/3] impossible"), None);
        assert_eq!(parse_progress("-- Configuring done"), None);
        assert_eq!(parse_progress("[x/y] nope"), None);
    }
}
