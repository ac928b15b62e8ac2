//! The pinned llama.cpp source: the `llama-cpp-python` sdist from PyPI (downloaded once into
//! `<cache>/downloads/`, its sha256 checked against the pin), and the llama.cpp directory
//! inside it extracted for cmake.

use super::BuildError;
use crate::backend::fetch::{self, FetchError};
use crate::backend::pin::SourcePin;
use crate::backend::progress::{Step, Unit};
use std::path::{Path, PathBuf};

/// The pin's sdist in `<cache>/downloads/`, downloaded with pip when it is not there or does
/// not match the pin's sha256.
pub(super) fn sdist(cache: &Path, pin: &SourcePin) -> Result<PathBuf, BuildError> {
    let downloads = cache.join("downloads");
    let cached = fetch::find_download(&downloads, &pin.sdist_name(), "")
        .filter(|a| fetch::verify_sha256(a, &pin.sha256).is_ok());
    if let Some(archive) = cached {
        return Ok(archive);
    }
    let step = Step::spinner(
        "download",
        format!("{} (sdist) from PyPI", pin.requirement()),
    );
    fetch::pip_download(&pin.requirement(), &downloads, true)?;
    let archive = fetch::find_download(&downloads, &pin.sdist_name(), "").ok_or_else(|| {
        FetchError::NotFound {
            requirement: pin.requirement(),
            dir: downloads.clone(),
        }
    })?;
    step.finish(format!("{}", archive.display()));
    fetch::verify_sha256(&archive, &pin.sha256)?;
    Ok(archive)
}

/// Extracts `<top>/<subdirectory>/**` of a `.tar.gz` sdist into `dest`.
pub(super) fn extract_subdirectory(
    archive: &Path,
    subdirectory: &str,
    dest: &Path,
) -> Result<(), BuildError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
