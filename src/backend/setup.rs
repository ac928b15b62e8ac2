//! `setup`: make sure a llama-server binary and a model are at hand, building and fetching the
//! pinned ones into the cache when nothing else is configured.

use super::build::{self, BuildError};
use super::bundle::{self, BundleError};
use super::model::{self, ModelError};
use super::pin::{ModelPin, SourcePin};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("llama-server binary not found: {0} (fix `backend.bin` in config.toml or --backend-bin, or leave both empty to build the pinned one)")]
    BinNotFound(PathBuf),
    #[error("{0} is not an executable file (fix `backend.bin` in config.toml or --backend-bin)")]
    BinNotExecutable(PathBuf),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

/// What a launch needs.
#[derive(Debug, Clone)]
pub struct Installed {
    pub server: PathBuf,
    pub model: PathBuf,
}

/// Where the backend comes from: the command line merged over the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct SetupOptions {
    /// Where builds and the default model are kept.
    pub cache_dir: PathBuf,
    /// A GGUF model (`--model` or `model`); `None` = the pinned default model.
    pub model: Option<PathBuf>,
    /// A llama-server binary (`--backend-bin` or `backend.bin`); `None` = build the pinned one.
    pub backend_bin: Option<PathBuf>,
}

/// Resolves the backend binary and the model: the ones given, else the pinned defaults.
/// Blocking (it may build for minutes): call from a blocking context.
pub fn ensure(options: &SetupOptions) -> Result<Installed, SetupError> {
    let cache = &options.cache_dir;
    // Cheap checks of what the user gave come first, then the build (so a missing build tool
    // is reported before a long model download), then the default model.
    if let Some(path) = &options.model {
        model::check_gguf(path)?;
    }
    let server = match &options.backend_bin {
        Some(path) => {
            check_executable(path)?;
            path.clone()
        }
        None => {
            // The native build when there is one, else a portable llama-server installed from a
            // bundle (or packaged beside this binary), else build the native one.
            let pin = SourcePin::builtin();
            match build::BuildDir::new(cache, &pin).existing(&pin) {
                Some(bin) => bin,
                None => match bundle::portable_server(cache, &pin, &ModelPin::builtin())? {
                    Some(bin) => bin,
                    None => build::ensure_server(cache, &pin)?,
                },
            }
        }
    };
    let model = match &options.model {
        Some(path) => path.clone(),
        None => model::ensure_default(cache, &ModelPin::builtin())?,
    };
    Ok(Installed { server, model })
}

fn check_executable(path: &Path) -> Result<(), SetupError> {
    let meta = std::fs::metadata(path).map_err(|_| SetupError::BinNotFound(path.to_path_buf()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(SetupError::BinNotExecutable(path.to_path_buf()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_backend_bin_and_model_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        std::fs::write(&model, b"GGUF....").unwrap();
        let options = |model, backend_bin| SetupOptions {
            cache_dir: dir.path().join("cache"),
            model,
            backend_bin,
        };
        let e = ensure(&options(
            Some(model.clone()),
            Some(dir.path().join("missing-server")),
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("llama-server binary not found"), "{e}");
        assert!(e.contains("--backend-bin"), "{e}");

        let e = ensure(&options(Some(model), Some(dir.path().to_path_buf())))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an executable"), "{e}");

        let e = ensure(&options(Some(dir.path().join("absent.gguf")), None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("model file not found"), "{e}");
    }
}
