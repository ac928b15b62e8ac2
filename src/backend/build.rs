//! Building llama-server from the pinned source: download, verify, extract, the build tools
//! (installed into the cache when missing), cmake configure and build, each a progress step
//! (`backend::progress`), into a cache directory keyed by the pin and reused while the pin is
//! unchanged.

use super::fetch::{self, io_err, FetchError};
use super::pin::{SourcePin, ToolsPin};
use super::progress::{Step, Unit};
use super::tools::{self, ToolsError};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Tools(#[from] ToolsError),
    #[error("the sdist {archive} has no `{subdirectory}` directory; check `subdirectory` in vendor/llama.cpp.toml")]
    MissingSubdirectory {
        archive: PathBuf,
        subdirectory: String,
    },
    #[error("cannot extract {archive}: {source}")]
    Extract {
        archive: PathBuf,
        source: std::io::Error,
    },
    #[error("cmake {step} failed (exit {code:?}); last output:\n{tail}\nfull log: {log}")]
    Cmake {
        step: &'static str,
        code: Option<i32>,
        tail: String,
        log: PathBuf,
    },
    #[error("the build finished but {0} is missing; check `target` in vendor/llama.cpp.toml")]
    MissingBinary(PathBuf),
}

/// Where one pin's build lives: `<cache>/llama.cpp/<key>/`.
pub struct BuildDir {
    pub root: PathBuf,
}

impl BuildDir {
    pub fn new(cache: &Path, pin: &SourcePin) -> BuildDir {
        BuildDir {
            root: cache.join("llama.cpp").join(pin.cache_key()),
        }
    }
    fn src(&self) -> PathBuf {
        self.root.join("src")
    }
    fn build(&self) -> PathBuf {
        self.root.join("build")
    }
    fn stamp(&self) -> PathBuf {
        self.root.join("BUILD-OK")
    }
    pub fn binary(&self, pin: &SourcePin) -> PathBuf {
        self.build().join("bin").join(&pin.target)
    }
    /// The built binary, when a previous build of this pin completed.
    pub fn existing(&self, pin: &SourcePin) -> Option<PathBuf> {
        let bin = self.binary(pin);
        (self.stamp().is_file() && bin.is_file()).then_some(bin)
    }
}

/// Returns the pinned llama-server, building it first when the cache has no build of this pin.
/// Missing cmake or ninja are installed into the cache first (see [`super::tools`]).
pub fn ensure_server(cache: &Path, pin: &SourcePin) -> Result<PathBuf, BuildError> {
    let dir = BuildDir::new(cache, pin);
    if let Some(bin) = dir.existing(pin) {
        tracing::debug!(bin = %bin.display(), "reusing the cached llama-server build");
        return Ok(bin);
    }
    std::fs::create_dir_all(&dir.root).map_err(io_err(&dir.root))?;
    // One build at a time per pin, across processes.
    let _lock = super::lock::FileLock::acquire(&dir.root.join(".lock"))?;
    if let Some(bin) = dir.existing(pin) {
        return Ok(bin);
    }
    // What setup cannot install itself comes first, before any download.
    fetch::require_pip()?;
    fetch::require_compilers()?;
    let started = std::time::Instant::now();

    let downloads = cache.join("downloads");
    let cached = fetch::find_download(&downloads, &pin.sdist_name(), "")
        .filter(|a| fetch::verify_sha256(a, &pin.sha256).is_ok());
    let archive = match cached {
        Some(a) => a,
        None => {
            let step = Step::spinner(
                "download",
                format!("{} (sdist) from PyPI", pin.requirement()),
            );
            fetch::pip_download(&pin.requirement(), &downloads, true)?;
            let a = fetch::find_download(&downloads, &pin.sdist_name(), "").ok_or_else(|| {
                FetchError::NotFound {
                    requirement: pin.requirement(),
                    dir: downloads.clone(),
                }
            })?;
            step.finish(format!("{}", a.display()));
            fetch::verify_sha256(&a, &pin.sha256)?;
            a
        }
    };
    let src = dir.src();
    if src.exists() {
        std::fs::remove_dir_all(&src).map_err(io_err(&src))?;
    }
    extract_subdirectory(&archive, &pin.subdirectory, &src)?;

    let path = std::env::var_os("PATH").unwrap_or_default();
    let tools = tools::ensure(cache, &fetch::python(), &path, &ToolsPin::builtin())?;
    eprintln!("tools: {}", tools.describe());

    let log_path = dir.root.join("build.log");
    let mut log = std::fs::File::create(&log_path).map_err(io_err(&log_path))?;
    let _ = writeln!(log, "tools: {}", tools.describe());
    let mut configure = Command::new(&tools.cmake.path);
    configure
        .arg("-S")
        .arg(&src)
        .arg("-B")
        .arg(dir.build())
        .args(["-G", "Ninja"])
        .arg(format!(
            "-DCMAKE_MAKE_PROGRAM={}",
            tools.ninja.path.display()
        ));
    configure.args(&pin.cmake_flags);
    let step = Step::spinner("configure", "cmake");
    run_logged(configure, "configure", &mut log, &log_path, |line| {
        step.set_message(line.trim().to_string())
    })?;
    step.finish("cmake configured the build");

    let jobs = super::runner::current().jobs();
    let mut build = Command::new(&tools.cmake.path);
    build
        .arg("--build")
        .arg(dir.build())
        .args(["--target", &pin.target, "-j", &jobs.to_string()]);
    let step = Step::bar("build", 0, Unit::Count("objects"));
    run_logged(build, "build", &mut log, &log_path, |line| {
        if let Some((done, total)) = parse_progress(line) {
            step.set_length(total);
            step.set_position(done);
        }
    })?;

    let bin = dir.binary(pin);
    if !bin.is_file() {
        return Err(BuildError::MissingBinary(bin));
    }
    let _ = writeln!(log, "built in {:.1?}", started.elapsed());
    std::fs::write(dir.stamp(), pin.cache_key()).map_err(io_err(&dir.stamp()))?;
    // The extracted source is no longer needed; the build tree keeps what cmake needs.
    let _ = std::fs::remove_dir_all(&src);
    step.finish(format!("built {}: {}", pin.target, bin.display()));
    Ok(bin)
}

/// Extracts `<top>/<subdirectory>/**` of a `.tar.gz` sdist into `dest`.
fn extract_subdirectory(archive: &Path, subdirectory: &str, dest: &Path) -> Result<(), BuildError> {
    let ext = |source| BuildError::Extract {
        archive: archive.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(archive).map_err(ext)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let step = Step::bar("extract", len, Unit::Bytes);
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(step.wrap_read(file)));
    let mut files = 0u64;
    let prefix = Path::new(subdirectory);
    let mut found = false;
    for entry in tar.entries().map_err(ext)? {
        let mut entry = entry.map_err(ext)?;
        let path = entry.path().map_err(ext)?.into_owned();
        // Drop the sdist's top directory (`llama_cpp_python-0.3.36/`).
        let inner: PathBuf = path.components().skip(1).collect();
        let Ok(rel) = inner.strip_prefix(prefix) else {
            continue;
        };
        if rel.as_os_str().is_empty() {
            continue;
        }
        found = true;
        files += 1;
        let target = dest.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(ext)?;
        }
        entry.unpack(&target).map_err(ext)?;
    }
    if !found {
        return Err(BuildError::MissingSubdirectory {
            archive: archive.to_path_buf(),
            subdirectory: subdirectory.to_string(),
        });
    }
    step.finish(format!(
        "{files} files of {subdirectory} into {}",
        dest.display()
    ));
    Ok(())
}

/// Runs a command through the setup's runner (idle priority, its own group, the build's CPU
/// cap: [`super::runner`]), appending its output to the log and passing each line to `on_line`.
fn run_logged(
    mut cmd: Command,
    step: &'static str,
    log: &mut std::fs::File,
    log_path: &Path,
    mut on_line: impl FnMut(&str),
) -> Result<(), BuildError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut running = super::runner::current()
        .spawn(cmd)
        .map_err(io_err(log_path))
        .map_err(BuildError::Fetch)?;
    let child = running.child();
    let stderr = child.stderr.take();
    let err_thread = std::thread::spawn(move || {
        let mut lines = Vec::new();
        if let Some(s) = stderr {
            for line in BufReader::new(s).lines().map_while(Result::ok) {
                lines.push(line);
            }
        }
        lines
    });
    let mut tail = std::collections::VecDeque::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
            on_line(&line);
            tail.push_back(line);
            if tail.len() > 20 {
                tail.pop_front();
            }
        }
    }
    let status = running.wait().map_err(io_err(log_path))?;
    for line in err_thread.join().unwrap_or_default() {
        let _ = writeln!(log, "{line}");
        tail.push_back(line);
        if tail.len() > 20 {
            tail.pop_front();
        }
    }
    if status.success() {
        return Ok(());
    }
    Err(BuildError::Cmake {
        step,
        code: status.code(),
        tail: Vec::from(tail).join("\n"),
        log: log_path.to_path_buf(),
    })
}

/// Steps done and total from a build-tool line: ninja's `[93/206] ...`, or make's `[ 45%] ...`
/// as a count out of 100.
pub fn parse_progress(line: &str) -> Option<(u64, u64)> {
    let inner = line.trim_start().strip_prefix('[')?;
    let inner = &inner[..inner.find(']')?];
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

    #[test]
    fn extracts_only_the_subdirectory() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("pkg-1.0.tar.gz");
        {
            let f = std::fs::File::create(&archive).unwrap();
            let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            let mut b = tar::Builder::new(gz);
            for (path, body) in [
                ("pkg-1.0/setup.py", "x"),
                ("pkg-1.0/vendor/llama.cpp/CMakeLists.txt", "cmake"),
                ("pkg-1.0/vendor/llama.cpp/src/a.cpp", "int a;"),
            ] {
                let mut h = tar::Header::new_gnu();
                h.set_size(body.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, path, body.as_bytes()).unwrap();
            }
            b.into_inner().unwrap().finish().unwrap();
        }
        let dest = dir.path().join("out");
        extract_subdirectory(&archive, "vendor/llama.cpp", &dest).unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("CMakeLists.txt")).unwrap(),
            "cmake"
        );
        assert!(dest.join("src/a.cpp").is_file());
        assert!(!dest.join("setup.py").exists());
        let err = extract_subdirectory(&archive, "vendor/nope", &dir.path().join("o2"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("vendor/nope"), "{err}");
    }
}
