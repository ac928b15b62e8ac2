//! Building llama-server from the pinned source: download, verify, extract, the build tools
//! (installed into the cache when missing), cmake configure and build, each a progress step
//! (`backend::progress`), into a cache directory keyed by the pin and reused while the pin is
//! unchanged. Three [`Flavor`]s of the build (native, portable, baseline), each in a
//! directory of its own; which one runs is the backend ladder's choice (`backend::ladder`).

mod cmake;
mod source;

use super::fetch::{self, io_err, FetchError};
use super::pin::{SourcePin, ToolsPin};
use super::tools::{self, ToolsError};
use cmake::BuildLog;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
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

/// One of the builds of the pinned source (`[flavor.*]` in `vendor/llama.cpp.toml`), in order of
/// speed: what the backend ladder climbs when a faster one does not run on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// `GGML_NATIVE`: every instruction the build host has.
    Native,
    /// Runtime CPU dispatch: shared libraries with one CPU variant per CPU generation, the best
    /// for this host chosen at load; relocatable (what a bundle carries).
    Portable,
    /// The oldest ISA worth serving from: x86-64-v2, armv8-a.
    Baseline,
}

impl Flavor {
    /// Every cmake flag of this flavor for this architecture: the pin's, then the flavor's
    /// own (a later `-D` wins).
    pub(crate) fn cmake_flags(self, pin: &SourcePin, arch: &str) -> Vec<String> {
        let own = match self {
            Flavor::Native => Vec::new(),
            Flavor::Portable => pin.flavor.portable.for_arch(arch),
            Flavor::Baseline => pin.flavor.baseline.for_arch(arch),
        };
        pin.cmake_flags.iter().cloned().chain(own).collect()
    }

    /// The build directory's name under `<cache>/llama.cpp/`: the pin's key, with the flavor
    /// appended except for the native build (whose directory predates the flavors).
    pub(crate) fn dir_name(self, pin: &SourcePin) -> String {
        match self {
            Flavor::Native => pin.cache_key(),
            other => format!("{}-{other}", pin.cache_key()),
        }
    }
}

impl std::fmt::Display for Flavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Flavor::Native => "native",
            Flavor::Portable => "portable",
            Flavor::Baseline => "baseline",
        })
    }
}

/// Where one flavor of one pin's build lives: `<cache>/llama.cpp/<key>[-<flavor>]/`. A finished
/// build holds `build/bin/<target>` (and, for the portable flavor, every library beside it) and
/// a `BUILD-OK` stamp.
pub struct BuildDir {
    pub root: PathBuf,
    pub flavor: Flavor,
}

impl BuildDir {
    pub fn new(cache: &Path, pin: &SourcePin, flavor: Flavor) -> BuildDir {
        BuildDir {
            root: cache.join("llama.cpp").join(flavor.dir_name(pin)),
            flavor,
        }
    }
    fn build(&self) -> PathBuf {
        self.root.join("build")
    }
    /// The file whose presence says the build finished (its text says how it was made).
    pub fn stamp(&self) -> PathBuf {
        self.root.join("BUILD-OK")
    }
    /// `build/bin/`: llama-server and, for the portable flavor, its libraries.
    pub fn bin_dir(&self) -> PathBuf {
        self.build().join("bin")
    }
    pub fn binary(&self, pin: &SourcePin) -> PathBuf {
        self.bin_dir().join(&pin.target)
    }
    /// The built binary, when a previous build of this pin completed.
    pub(crate) fn existing(&self, pin: &SourcePin) -> Option<PathBuf> {
        let bin = self.binary(pin);
        (self.stamp().is_file() && bin.is_file()).then_some(bin)
    }
}

/// The bin directory of a finished build of `flavor`, if the cache holds one (never builds).
pub(crate) fn existing_build(cache: &Path, pin: &SourcePin, flavor: Flavor) -> Option<PathBuf> {
    let dir = BuildDir::new(cache, pin, flavor);
    dir.existing(pin).map(|_| dir.bin_dir())
}

/// Returns the bin directory (`build/bin/`) of the pinned llama-server's `flavor`, building it
/// first when the cache has no finished build of it. Missing cmake or ninja are installed into
/// the cache first (see [`super::tools`]).
pub(crate) fn ensure_build(
    cache: &Path,
    pin: &SourcePin,
    flavor: Flavor,
) -> Result<PathBuf, BuildError> {
    let dir = BuildDir::new(cache, pin, flavor);
    if let Some(bin) = dir.existing(pin) {
        tracing::debug!(bin = %bin.display(), %flavor, "reusing the cached llama-server build");
        return Ok(dir.bin_dir());
    }
    std::fs::create_dir_all(&dir.root).map_err(io_err(&dir.root))?;
    // One build at a time per pin and flavor, across processes.
    let _lock = super::lock::FileLock::acquire(&dir.root.join(".lock"))?;
    if dir.existing(pin).is_none() {
        build_from_source(cache, pin, &dir)?;
    }
    Ok(dir.bin_dir())
}

/// Builds `dir`'s flavor from the pinned source, then stamps it.
fn build_from_source(cache: &Path, pin: &SourcePin, dir: &BuildDir) -> Result<(), BuildError> {
    // What setup cannot install itself comes first, before any download.
    fetch::require_pip()?;
    fetch::require_compilers()?;
    let started = std::time::Instant::now();
    let archive = source::sdist(cache, pin)?;
    let src = dir.root.join("src");
    if src.exists() {
        std::fs::remove_dir_all(&src).map_err(io_err(&src))?;
    }
    source::extract_subdirectory(&archive, &pin.subdirectory, &src)?;

    let path = std::env::var_os("PATH").unwrap_or_default();
    let tools = tools::ensure(cache, &fetch::python(), &path, &ToolsPin::builtin())?;
    eprintln!("tools: {}", tools.describe());
    let mut log = BuildLog::create(dir)?;
    log.note(format_args!("tools: {}", tools.describe()));
    let step = cmake::configure_and_build(&tools, pin, dir, &src, &mut log)?;

    let bin = dir.binary(pin);
    if !bin.is_file() {
        return Err(BuildError::MissingBinary(bin));
    }
    log.note(format_args!("built in {:.1?}", started.elapsed()));
    let flavor = dir.flavor;
    let stamp = match flavor {
        // The native stamp's text is what it always was.
        Flavor::Native => pin.cache_key(),
        other => format!("{} {other}: built from source\n", pin.cache_key()),
    };
    std::fs::write(dir.stamp(), stamp).map_err(io_err(&dir.stamp()))?;
    // The extracted source is no longer needed; the build tree keeps what cmake needs.
    let _ = std::fs::remove_dir_all(&src);
    step.finish(format!(
        "built {} ({flavor}): {}",
        pin.target,
        bin.display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavors_have_their_own_directories_and_flags() {
        let pin = SourcePin::builtin();
        let cache = Path::new("/c");
        let native = BuildDir::new(cache, &pin, Flavor::Native);
        // The native directory is where builds before the flavors put it.
        assert_eq!(native.root, cache.join("llama.cpp").join(pin.cache_key()));
        assert_eq!(
            BuildDir::new(cache, &pin, Flavor::Portable).root,
            cache
                .join("llama.cpp")
                .join(format!("{}-portable", pin.cache_key()))
        );
        assert_eq!(
            BuildDir::new(cache, &pin, Flavor::Baseline).bin_dir(),
            cache
                .join("llama.cpp")
                .join(format!("{}-baseline", pin.cache_key()))
                .join("build/bin")
        );
        assert_eq!(Flavor::Native.cmake_flags(&pin, "x86_64"), pin.cmake_flags);
        // The last value of a variable is the one cmake keeps.
        let last = |flags: &[String], var: &str| {
            flags
                .iter()
                .rev()
                .find_map(|f| f.strip_prefix(&format!("-D{var}=")).map(str::to_string))
        };
        let portable = Flavor::Portable.cmake_flags(&pin, "x86_64");
        for (var, value) in [
            ("GGML_NATIVE", "OFF"),
            ("GGML_BACKEND_DL", "ON"),
            ("GGML_CPU_ALL_VARIANTS", "ON"),
            ("BUILD_SHARED_LIBS", "ON"),
            ("CMAKE_BUILD_WITH_INSTALL_RPATH", "ON"),
            ("CMAKE_INSTALL_RPATH", "$ORIGIN"),
            ("GGML_OPENMP", "OFF"),
        ] {
            assert_eq!(last(&portable, var).as_deref(), Some(value), "{var}");
        }
        let x86 = Flavor::Baseline.cmake_flags(&pin, "x86_64");
        for (var, value) in [
            ("GGML_NATIVE", "OFF"),
            ("GGML_AVX", "OFF"),
            ("GGML_AVX2", "OFF"),
            ("GGML_FMA", "OFF"),
            ("GGML_F16C", "OFF"),
            ("GGML_BMI2", "OFF"),
            ("GGML_AVX512", "OFF"),
            ("GGML_SSE42", "ON"),
            ("BUILD_SHARED_LIBS", "OFF"),
        ] {
            assert_eq!(last(&x86, var).as_deref(), Some(value), "{var}");
        }
        assert_eq!(last(&x86, "GGML_CPU_ARM_ARCH"), None);
        let arm = Flavor::Baseline.cmake_flags(&pin, "aarch64");
        assert_eq!(last(&arm, "GGML_CPU_ARM_ARCH").as_deref(), Some("armv8-a"));
        assert_eq!(last(&arm, "GGML_AVX2"), None);
    }

    #[test]
    fn a_build_counts_once_stamped() {
        let pin = SourcePin::builtin();
        let cache = tempfile::tempdir().unwrap();
        let dir = BuildDir::new(cache.path(), &pin, Flavor::Portable);
        assert_eq!(existing_build(cache.path(), &pin, Flavor::Portable), None);
        std::fs::create_dir_all(dir.bin_dir()).unwrap();
        std::fs::write(dir.binary(&pin), b"#!/bin/sh\n").unwrap();
        assert_eq!(existing_build(cache.path(), &pin, Flavor::Portable), None);
        std::fs::write(dir.stamp(), "from a bundle").unwrap();
        assert_eq!(
            existing_build(cache.path(), &pin, Flavor::Portable),
            Some(dir.bin_dir())
        );
        assert_eq!(existing_build(cache.path(), &pin, Flavor::Native), None);
    }
}
