//! `setup`: make sure a llama-server binary and a model are at hand, building and fetching the
//! pinned ones into the cache when nothing else is configured.

use super::build::{self, BuildError};
use super::model::{self, ModelError};
use super::pin::{ModelPin, SourcePin};
use crate::cli::SetupArgs;
use crate::config::Config;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
}

/// What a launch needs.
#[derive(Debug, Clone)]
pub struct Installed {
    pub server: PathBuf,
    pub model: PathBuf,
}

/// Resolves the backend binary and the model: CLI flags over config over the pinned defaults.
/// Blocking (it may build for minutes): call from a blocking context.
pub fn ensure(config: &Config, args: &SetupArgs) -> Result<Installed, SetupError> {
    let cache = config.cache_dir();
    // Cheap checks of what the user gave come first, then the build (so a missing build tool
    // is reported before a long model download), then the default model.
    let explicit_model = args.model.clone().or_else(|| config.model.clone());
    if let Some(path) = &explicit_model {
        model::check_gguf(path)?;
    }
    let server = match args
        .backend_bin
        .clone()
        .or_else(|| config.backend.bin.clone())
    {
        Some(path) => {
            check_executable(&path)?;
            path
        }
        None => build::ensure_server(&cache, &SourcePin::builtin())?,
    };
    let model = match explicit_model {
        Some(path) => path,
        None => model::ensure_default(&cache, &ModelPin::builtin())?,
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

/// `sentinel-supervisor setup`: prints where the binary and the model are.
pub async fn run(args: SetupArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.config.as_deref())?;
    let started = std::time::Instant::now();
    let installed = tokio::task::spawn_blocking(move || ensure(&config, &args)).await??;
    println!("llama-server: {}", installed.server.display());
    println!("model: {}", installed.model.display());
    eprintln!("setup: done in {:.1?}", started.elapsed());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_backend_bin_and_model_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::builtin().unwrap();
        let model = dir.path().join("m.gguf");
        std::fs::write(&model, b"GGUF....").unwrap();
        let args = SetupArgs {
            model: Some(model.clone()),
            backend_bin: Some(dir.path().join("missing-server")),
            ..Default::default()
        };
        let e = ensure(&config, &args).unwrap_err().to_string();
        assert!(e.contains("llama-server binary not found"), "{e}");
        assert!(e.contains("--backend-bin"), "{e}");

        let args = SetupArgs {
            model: Some(model),
            backend_bin: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let e = ensure(&config, &args).unwrap_err().to_string();
        assert!(e.contains("not an executable"), "{e}");

        let args = SetupArgs {
            model: Some(dir.path().join("absent.gguf")),
            ..Default::default()
        };
        let e = ensure(&config, &args).unwrap_err().to_string();
        assert!(e.contains("model file not found"), "{e}");
    }
}
