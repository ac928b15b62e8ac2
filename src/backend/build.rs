//! Building llama-server from the pinned source: download, verify, extract, cmake, with
//! progress, into a cache directory keyed by the pin and reused while the pin is unchanged.

use super::fetch::{self, io_err, FetchError};
use super::pin::SourcePin;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
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
    fetch::require_pip()?;
    fetch::require_build_tools()?;
    let started = std::time::Instant::now();

    let downloads = cache.join("downloads");
    let archive = match fetch::find_download(&downloads, &pin.sdist_name(), "") {
        Some(a) if fetch::verify_sha256(&a, &pin.sha256).is_ok() => a,
        _ => {
            eprintln!("setup: downloading {} (sdist) ...", pin.requirement());
            fetch::pip_download(&pin.requirement(), &downloads, true)?;
            let a = fetch::find_download(&downloads, &pin.sdist_name(), "").ok_or_else(|| {
                FetchError::NotFound {
                    requirement: pin.requirement(),
                    dir: downloads.clone(),
                }
            })?;
            fetch::verify_sha256(&a, &pin.sha256)?;
            a
        }
    };
    eprintln!(
        "setup: sha256 verified ({}), extracting {} ...",
        &pin.sha256[..12],
        pin.subdirectory
    );
    let src = dir.src();
    if src.exists() {
        std::fs::remove_dir_all(&src).map_err(io_err(&src))?;
    }
    extract_subdirectory(&archive, &pin.subdirectory, &src)?;

    let log_path = dir.root.join("build.log");
    let mut log = std::fs::File::create(&log_path).map_err(io_err(&log_path))?;
    let mut configure = Command::new("cmake");
    configure.arg("-S").arg(&src).arg("-B").arg(dir.build());
    if which("ninja") {
        configure.args(["-G", "Ninja"]);
    }
    configure.args(&pin.cmake_flags);
    eprintln!("setup: configuring llama.cpp with cmake ...");
    run_logged(configure, "configure", &mut log, &log_path, |_| {})?;

    let jobs = crate::host::Host::detect().allowed_cpus();
    let mut build = Command::new("cmake");
    build
        .arg("--build")
        .arg(dir.build())
        .args(["--target", &pin.target, "-j", &jobs.to_string()]);
    let mut progress = Progress::new(format!("building {}", pin.target));
    run_logged(build, "build", &mut log, &log_path, |line| {
        if let Some(pct) = parse_progress(line) {
            progress.update(pct);
        }
    })?;
    progress.finish();

    let bin = dir.binary(pin);
    if !bin.is_file() {
        return Err(BuildError::MissingBinary(bin));
    }
    let _ = writeln!(log, "built in {:.1?}", started.elapsed());
    std::fs::write(dir.stamp(), pin.cache_key()).map_err(io_err(&dir.stamp()))?;
    // The extracted source is no longer needed; the build tree keeps what cmake needs.
    let _ = std::fs::remove_dir_all(&src);
    eprintln!(
        "setup: built {} in {:.0?}: {}",
        pin.target,
        started.elapsed(),
        bin.display()
    );
    Ok(bin)
}

fn which(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Extracts `<top>/<subdirectory>/**` of a `.tar.gz` sdist into `dest`.
fn extract_subdirectory(archive: &Path, subdirectory: &str, dest: &Path) -> Result<(), BuildError> {
    let ext = |source| BuildError::Extract {
        archive: archive.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(archive).map_err(ext)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
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
    Ok(())
}

/// Runs a command, appending its output to the log and passing each line to `on_line`.
fn run_logged(
    mut cmd: Command,
    step: &'static str,
    log: &mut std::fs::File,
    log_path: &Path,
    mut on_line: impl FnMut(&str),
) -> Result<(), BuildError> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(log_path))
        .map_err(BuildError::Fetch)?;
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
    let status = child.wait().map_err(io_err(log_path))?;
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

/// Percent done from a build-tool line: ninja's `[93/206] ...` or make's `[ 45%] ...`.
pub fn parse_progress(line: &str) -> Option<u32> {
    let inner = line.trim_start().strip_prefix('[')?;
    let inner = &inner[..inner.find(']')?];
    if let Some((done, total)) = inner.split_once('/') {
        let done: u32 = done.trim().parse().ok()?;
        let total: u32 = total.trim().parse().ok()?;
        return (total > 0).then(|| done * 100 / total);
    }
    inner.trim().strip_suffix('%')?.trim().parse().ok()
}

/// A percentage on one line when stderr is a terminal, else a line every 10 %.
struct Progress {
    label: String,
    last: Option<u32>,
    tty: bool,
}

impl Progress {
    fn new(label: String) -> Progress {
        Progress {
            label,
            last: None,
            tty: std::io::stderr().is_terminal(),
        }
    }
    fn update(&mut self, pct: u32) {
        let pct = pct.min(100);
        let step = if self.tty { 1 } else { 10 };
        if self.last.is_some_and(|l| pct / step <= l / step) {
            return;
        }
        self.last = Some(pct);
        if self.tty {
            let filled = (pct / 5) as usize;
            eprint!(
                "\rsetup: {} [{}{}] {pct:>3}%",
                self.label,
                "#".repeat(filled),
                " ".repeat(20 - filled)
            );
        } else {
            eprintln!("setup: {} {pct}%", self.label);
        }
    }
    fn finish(&mut self) {
        if self.tty && self.last.is_some() {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_from_ninja_and_make() {
        assert_eq!(parse_progress("[93/206] Building CXX object x.o"), Some(45));
        assert_eq!(
            parse_progress("[206/206] Linking CXX executable bin/llama-server"),
            Some(100)
        );
        assert_eq!(parse_progress("[ 45%] Building CXX object"), Some(45));
        assert_eq!(
            parse_progress("[100%] Built target llama-server"),
            Some(100)
        );
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
