//! `sentinel-supervisor setup`: builds or finds llama-server and the model, then prints where
//! they are; `setup --from FILE` (and `install FILE`) installs them from a bundle first.

use crate::backend::bundle;
use crate::backend::pin::{ModelPin, SourcePin};
use crate::backend::setup::{self, SetupOptions};
use crate::cli::SetupArgs;
use crate::config::Config;
use std::process::ExitCode;

/// `--model` and `--backend-bin` over `model` and `backend.bin` of the configuration.
pub fn options(config: &Config, args: &SetupArgs) -> SetupOptions {
    SetupOptions {
        cache_dir: config.cache_dir(),
        model: args.model.clone().or_else(|| config.model.clone()),
        backend_bin: args
            .backend_bin
            .clone()
            .or_else(|| config.backend.bin.clone()),
    }
}

pub async fn run(args: SetupArgs) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&args.config)?;
    let options = options(&config, &args);
    let started = std::time::Instant::now();
    let installed = tokio::task::spawn_blocking(move || setup::ensure(&options)).await??;
    println!("llama-server: {}", installed.server.display());
    println!("model: {}", installed.model.display());
    eprintln!("setup: done in {:.1?}", started.elapsed());
    Ok(ExitCode::SUCCESS)
}

/// `setup --from FILE` and `install FILE`: verify and install the bundle into the cache, then
/// the normal setup (which finds the installed llama-server).
pub async fn run_from(args: SetupArgs, from: std::path::PathBuf) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&args.config)?;
    let options = options(&config, &args);
    let started = std::time::Instant::now();
    let (installed, ready) = tokio::task::spawn_blocking(move || {
        let pin = SourcePin::builtin();
        let opened = bundle::open(&from, &options.cache_dir)?;
        let installed = bundle::install(&opened, &options.cache_dir, &pin, &ModelPin::builtin())?;
        drop(opened);
        anyhow::Ok((installed, setup::ensure(&options)?))
    })
    .await??;
    let verb = if installed.changed {
        "installed"
    } else {
        "already installed"
    };
    println!("bundle: {verb}: {}", installed.server.display());
    println!("llama-server: {}", ready.server.display());
    println!("model: {}", ready.model.display());
    eprintln!("setup: done in {:.1?}", started.elapsed());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    #[test]
    fn flags_win_over_the_file_and_the_file_over_nothing() {
        let config = Config::from_layers(Some((
            Path::new("mine.toml"),
            "model = \"/file/m.gguf\"\n[backend]\nbin = \"/file/llama-server\"\n",
        )))
        .unwrap();
        let from_file = options(&config, &SetupArgs::default());
        assert_eq!(from_file.model, Some(PathBuf::from("/file/m.gguf")));
        assert_eq!(
            from_file.backend_bin,
            Some(PathBuf::from("/file/llama-server"))
        );
        let args = SetupArgs {
            model: Some("/flag/m.gguf".into()),
            ..Default::default()
        };
        let merged = options(&config, &args);
        assert_eq!(merged.model, Some(PathBuf::from("/flag/m.gguf")));
        assert_eq!(merged.backend_bin, from_file.backend_bin);
        let none = options(&Config::builtin().unwrap(), &SetupArgs::default());
        assert_eq!((none.model, none.backend_bin), (None, None));
    }
}
