//! The build tools the llama.cpp build needs besides a compiler: `cmake` and `ninja`. Taken from
//! `PATH` when there; otherwise installed without root from PyPI (the `cmake` and `ninja`
//! packages ship binaries in their wheels; versions and wheel hashes pinned in
//! `vendor/build-tools.toml`) into a private environment in the cache,
//! `<cache>/tools/<pin-key>/`: a venv, or `pip install --target` where `python3 -m venv` is
//! unavailable. Later runs find it there and need no network.

use super::fetch::{io_err, FetchError};
use super::lock::FileLock;
use super::pin::{ToolPin, ToolsPin};
use super::progress::Step;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The tools every llama.cpp build needs, by executable name.
pub(crate) const REQUIRED: [&str; 2] = ["cmake", "ninja"];

#[derive(Debug, thiserror::Error)]
pub enum ToolsError {
    #[error("{0} is needed but has no pin in vendor/build-tools.toml; add one or install {0}")]
    Unpinned(String),
    #[error("installing {requirements} from PyPI into {dir} failed: {detail}\n(check the network access to PyPI, or install cmake and ninja yourself: Debian/Ubuntu `sudo apt-get install cmake ninja-build`, macOS `brew install cmake ninja`)")]
    Install {
        requirements: String,
        dir: PathBuf,
        detail: String,
    },
    #[error("pip installed {package} into {dir} but no runnable `{tool}` was found there; remove {dir} and run setup again")]
    NotRunnable {
        tool: String,
        package: String,
        dir: PathBuf,
    },
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

/// Where each tool comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Found on `PATH`.
    Path,
    /// Installed in (or reused from) the private environment.
    Provisioned,
}

/// A tool ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    pub path: PathBuf,
    pub origin: Origin,
}

/// cmake and ninja, ready to run.
#[derive(Debug, Clone)]
pub struct BuildTools {
    pub cmake: Tool,
    pub ninja: Tool,
}

impl BuildTools {
    /// `cmake /usr/bin/cmake (PATH), ninja /c/tools/…/ninja (provisioned)`.
    pub fn describe(&self) -> String {
        let one = |name: &str, t: &Tool| {
            let origin = match t.origin {
                Origin::Path => "PATH",
                Origin::Provisioned => "provisioned from PyPI",
            };
            format!("{name} {} ({origin})", t.path.display())
        };
        [one("cmake", &self.cmake), one("ninja", &self.ninja)].join(", ")
    }
}

/// The first executable file called `name` in the directories of `path` (a `PATH` value).
pub(crate) fn find_on_path(name: &str, path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn runs(path: &Path) -> bool {
    let mut cmd = Command::new(path);
    cmd.arg("--version");
    super::runner::current().probe(cmd)
}

/// The private environment for one set of tool pins: `<cache>/tools/<key>/`.
#[derive(Debug, Clone)]
pub(crate) struct ToolEnv {
    pub root: PathBuf,
}

impl ToolEnv {
    pub(crate) fn new(cache: &Path, pins: &ToolsPin) -> ToolEnv {
        ToolEnv {
            root: cache.join("tools").join(pins.cache_key()),
        }
    }

    fn venv(&self) -> PathBuf {
        self.root.join("venv")
    }

    /// The `pip install --target` directory (the fallback without venv).
    fn target(&self) -> PathBuf {
        self.root.join("site")
    }

    /// Where a package's executable may be, in order: the binary inside the package
    /// (`cmake/data/bin/cmake`; the `bin/cmake` next to it is a Python shim), then the scripts
    /// directory (`bin/ninja` is the binary itself).
    fn candidates(&self, pin: &ToolPin) -> Vec<PathBuf> {
        let inside = |site: &Path| site.join(&pin.package).join("data/bin").join(&pin.name);
        let mut out: Vec<PathBuf> = std::fs::read_dir(self.venv().join("lib"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| inside(&e.path().join("site-packages")))
            .collect();
        out.extend([
            self.venv().join("bin").join(&pin.name),
            inside(&self.target()),
            self.target().join("bin").join(&pin.name),
        ]);
        out
    }

    /// The installed tool, when it is there and runs.
    pub(crate) fn installed(&self, pin: &ToolPin) -> Option<PathBuf> {
        self.candidates(pin)
            .into_iter()
            .find(|p| is_executable(p) && runs(p))
    }

    /// Installs `pins` with pip (hash-checked wheels only) into a venv, or with
    /// `pip install --target` when `python -m venv` fails. The caller has created `root` and
    /// holds its lock.
    fn install(&self, python: &str, pins: &[&ToolPin]) -> Result<(), ToolsError> {
        let requirements: Vec<String> = pins.iter().map(|p| p.requirement_line()).collect();
        let req_file = self.root.join("requirements.txt");
        std::fs::write(&req_file, requirements.join("\n") + "\n").map_err(io_err(&req_file))?;
        let names = pins
            .iter()
            .map(|p| format!("{}=={}", p.package, p.version))
            .collect::<Vec<_>>()
            .join(", ");

        let venv_python = self.venv().join("bin").join("python");
        let in_venv = venv_python.is_file() || self.create_venv(python);
        let mut cmd = Command::new(if in_venv {
            venv_python.as_os_str()
        } else {
            OsStr::new(python)
        });
        cmd.args(["-m", "pip", "install"]);
        if !in_venv {
            tracing::info!(
                dir = %self.target().display(),
                "`python3 -m venv` is unavailable; installing with `pip install --target`"
            );
            cmd.args(["--upgrade", "--target"]).arg(self.target());
        }
        cmd.args([
            "--no-deps",
            "--require-hashes",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "--no-input",
            "-r",
        ])
        .arg(&req_file);
        tracing::debug!(?cmd, "installing build tools");
        let failed = |detail: String| ToolsError::Install {
            requirements: names.clone(),
            dir: self.root.clone(),
            detail,
        };
        let out = super::runner::current()
            .output(cmd)
            .map_err(|e| failed(format!("cannot run {python}: {e}")))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = stderr.lines().collect();
            return Err(failed(lines[lines.len().saturating_sub(8)..].join("\n")));
        }
        Ok(())
    }

    /// `python -m venv <root>/venv`; a failed attempt (no `venv`/`ensurepip` module, as on
    /// Debian without python3-venv) is removed so it is not mistaken for an environment.
    fn create_venv(&self, python: &str) -> bool {
        let mut cmd = Command::new(python);
        cmd.args(["-m", "venv"])
            .arg(self.venv())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let ok = super::runner::current()
            .status(cmd)
            .is_ok_and(|s| s.success())
            && self.venv().join("bin").join("python").is_file();
        if !ok {
            let _ = std::fs::remove_dir_all(self.venv());
        }
        ok
    }
}

/// cmake and ninja from `path` (a `PATH` value), installing the missing ones into the cache's
/// private environment with `python` (`python3`) first. Takes the environment's file lock while
/// installing, so concurrent setups install once.
pub fn ensure(
    cache: &Path,
    python: &str,
    path: &OsStr,
    pins: &ToolsPin,
) -> Result<BuildTools, ToolsError> {
    let env = ToolEnv::new(cache, pins);
    let on_path = REQUIRED.map(|name| find_on_path(name, path));
    let mut missing: Vec<&ToolPin> = Vec::new();
    for (name, _) in REQUIRED.iter().zip(&on_path).filter(|(_, p)| p.is_none()) {
        missing.push(
            pins.get(name)
                .ok_or_else(|| ToolsError::Unpinned(name.to_string()))?,
        );
    }
    if !missing.iter().all(|pin| env.installed(pin).is_some()) {
        std::fs::create_dir_all(&env.root).map_err(io_err(&env.root))?;
        let _lock = FileLock::acquire(&env.root.join(".lock"))?;
        let absent: Vec<&ToolPin> = missing
            .iter()
            .copied()
            .filter(|pin| env.installed(pin).is_none())
            .collect();
        if !absent.is_empty() {
            let list = absent
                .iter()
                .map(|p| format!("{} {}", p.package, p.version))
                .collect::<Vec<_>>()
                .join(" and ");
            let step = Step::spinner(
                "tools",
                format!("installing {list} from PyPI (not on PATH)"),
            );
            env.install(python, &absent)?;
            step.finish(format!("installed {list} into {}", env.root.display()));
        }
    }
    let resolve = |name: &str, on_path: Option<PathBuf>| -> Result<Tool, ToolsError> {
        let (path, origin) = if let Some(path) = on_path {
            (path, Origin::Path)
        } else {
            let pin = pins.get(name).expect("a missing tool has a pin");
            let path = env.installed(pin).ok_or_else(|| ToolsError::NotRunnable {
                tool: pin.name.clone(),
                package: pin.package.clone(),
                dir: env.root.clone(),
            })?;
            (path, Origin::Provisioned)
        };
        Ok(Tool { path, origin })
    };
    let [cmake, ninja] = on_path;
    Ok(BuildTools {
        cmake: resolve("cmake", cmake)?,
        ninja: resolve("ninja", ninja)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(path: &Path, body: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn finds_only_executable_files_on_path() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("cmake"), "not executable").unwrap();
        std::fs::create_dir(a.path().join("ninja")).unwrap();
        script(&b.path().join("cmake"), "exit 0");
        let path = std::env::join_paths([a.path(), b.path()]).unwrap();
        assert_eq!(find_on_path("cmake", &path), Some(b.path().join("cmake")));
        assert_eq!(find_on_path("ninja", &path), None);
        assert_eq!(find_on_path("cmake", OsStr::new("")), None);
    }

    /// A fake `python3`: `-m venv` fails (as without python3-venv); `-m pip install --target D`
    /// lays out the two wheels the way pip does and logs its arguments.
    fn fake_python_without_venv(dir: &Path) -> PathBuf {
        let py = dir.join("python3");
        script(
            &py,
            &format!(
                r#"echo "$@" >> {log}
[ "$2" = venv ] && {{ mkdir -p "$3/bin"; exit 1; }}
while [ $# -gt 0 ]; do [ "$1" = --target ] && t="$2"; shift; done
mkdir -p "$t/cmake/data/bin" "$t/bin"
printf '#!/bin/sh\necho cmake version 3.31.6\n' > "$t/cmake/data/bin/cmake"
printf '#!/bin/sh\nexit 1\n' > "$t/bin/cmake"
printf '#!/bin/sh\necho 1.11.1\n' > "$t/bin/ninja"
chmod +x "$t/cmake/data/bin/cmake" "$t/bin/cmake" "$t/bin/ninja""#,
                log = dir.join("calls.log").display()
            ),
        );
        py
    }

    #[test]
    fn tools_on_path_are_used_as_they_are() {
        let cache = tempfile::tempdir().unwrap();
        let bin = tempfile::tempdir().unwrap();
        script(&bin.path().join("cmake"), "exit 0");
        script(&bin.path().join("ninja"), "exit 0");
        let tools = ensure(
            cache.path(),
            "/nonexistent/python3",
            bin.path().as_os_str(),
            &ToolsPin::builtin(),
        )
        .unwrap();
        assert_eq!(tools.cmake.path, bin.path().join("cmake"));
        assert_eq!(tools.cmake.origin, Origin::Path);
        assert_eq!(tools.ninja.origin, Origin::Path);
        assert!(!cache.path().join("tools").exists());
    }

    #[test]
    fn missing_tools_are_provisioned_with_pip_target_when_venv_fails_then_reused() {
        let cache = tempfile::tempdir().unwrap();
        let fake = tempfile::tempdir().unwrap();
        let py = fake_python_without_venv(fake.path());
        let bin = tempfile::tempdir().unwrap();
        script(&bin.path().join("ninja"), "exit 0");
        let pins = ToolsPin::builtin();
        let env = ToolEnv::new(cache.path(), &pins);

        // cmake is missing: only cmake is installed; ninja stays the one on PATH.
        let tools = ensure(
            cache.path(),
            py.to_str().unwrap(),
            bin.path().as_os_str(),
            &pins,
        )
        .unwrap();
        assert_eq!(tools.cmake.origin, Origin::Provisioned);
        assert_eq!(tools.cmake.path, env.root.join("site/cmake/data/bin/cmake"));
        assert_eq!(tools.ninja.path, bin.path().join("ninja"));
        assert!(
            !env.root.join("venv").exists(),
            "the failed venv is removed"
        );
        let calls = std::fs::read_to_string(fake.path().join("calls.log")).unwrap();
        let pip = calls.lines().find(|l| l.contains("pip install")).unwrap();
        for arg in [
            "--require-hashes",
            "--no-deps",
            "--only-binary :all:",
            "--target",
        ] {
            assert!(pip.contains(arg), "{pip}");
        }
        let req = std::fs::read_to_string(env.root.join("requirements.txt")).unwrap();
        assert!(req.starts_with("cmake==3.31.6 --hash=sha256:"), "{req}");
        assert!(!req.contains("ninja"), "{req}");

        // Both missing now: ninja is added, cmake reused; then nothing runs python at all.
        let empty = tempfile::tempdir().unwrap();
        let tools = ensure(
            cache.path(),
            py.to_str().unwrap(),
            empty.path().as_os_str(),
            &pins,
        )
        .unwrap();
        assert_eq!(tools.ninja.path, env.root.join("site/bin/ninja"));
        assert_eq!(tools.ninja.origin, Origin::Provisioned);
        let again = ensure(
            cache.path(),
            "/nonexistent/python3",
            empty.path().as_os_str(),
            &pins,
        )
        .unwrap();
        assert_eq!(again.cmake.path, tools.cmake.path);
        assert_eq!(again.ninja.path, tools.ninja.path);
        assert!(again.describe().contains("provisioned from PyPI"));
    }

    #[test]
    fn a_failed_install_says_what_to_do() {
        let cache = tempfile::tempdir().unwrap();
        let fake = tempfile::tempdir().unwrap();
        let py = fake.path().join("python3");
        script(
            &py,
            "echo 'ERROR: No matching distribution found for cmake==3.31.6' >&2; exit 1",
        );
        let e = ensure(
            cache.path(),
            py.to_str().unwrap(),
            OsStr::new(""),
            &ToolsPin::builtin(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("No matching distribution"), "{e}");
        assert!(e.contains("apt-get install cmake ninja-build"), "{e}");
        assert!(e.contains("brew install cmake ninja"), "{e}");
    }
}
