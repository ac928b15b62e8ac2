//! `sentinel-supervisor setup`: builds or finds llama-server and the model, then prints where
//! they are; `setup --from FILE` (and `install FILE`) installs them from a bundle first.

use crate::backend::bundle;
use crate::backend::pin::{ModelPin, SourcePin};
use crate::backend::runner::BuildLimits;
use crate::backend::setup::{self, SetupOptions};
use crate::backend::smoke::SmokeLaunch;
use crate::cli::SetupArgs;
use crate::config::Config;
use std::process::ExitCode;

/// `--model`, `--backend-bin`, `--cpus` and `--jobs` over `model`, `backend.bin` and `[setup]`
/// of the configuration; the smoke test launches the default profile as resolved on this host
/// (`run` puts its own profile there).
pub(crate) fn options(config: &Config, args: &SetupArgs) -> SetupOptions {
    let host = crate::host::Host::detect();
    let profile = crate::profile::resolve(config, &config.default_profile, &host).ok();
    SetupOptions {
        smoke: profile.map(|profile| SmokeLaunch {
            config: config.clone(),
            profile,
        }),
        all_rungs: args.all_rungs,
        cache_dir: config.cache_dir(),
        model: args.model.clone().or_else(|| config.model.clone()),
        backend_bin: args
            .backend_bin
            .clone()
            .or_else(|| config.backend.bin.clone()),
        limits: BuildLimits {
            cpus: args.cpus.or(config.setup.cpus),
            jobs: args.jobs.or(config.setup.jobs),
        },
        host,
    }
}

pub(crate) async fn run(args: SetupArgs) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&args.config)?;
    let options = options(&config, &args);
    let started = std::time::Instant::now();
    let setup = tokio::task::spawn_blocking(move || setup::ensure_reporting(&options));
    let (installed, tried) = tokio::select! {
        done = setup => done??,
        signal = interrupted() => {
            // The build's programs are in groups of their own, out of reach of Ctrl-C.
            crate::backend::runner::stop_all();
            eprintln!("setup: interrupted; the build's programs were stopped");
            return Ok(ExitCode::from(128 + signal as u8));
        }
    };
    for line in &tried {
        println!("rung {line}");
    }
    println!("llama-server: {}", installed.server.display());
    println!("backend: {}", installed.rung.name);
    println!("backend args: {}", installed.rung.args.join(" "));
    println!("backend why: {}", installed.rung.why);
    println!("model: {}", installed.model.display());
    eprintln!("setup: done in {:.1?}", started.elapsed());
    Ok(ExitCode::SUCCESS)
}

/// The first SIGINT or SIGTERM, as its number (a failure to listen waits forever).
async fn interrupted() -> i32 {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => libc::SIGINT,
        _ = term.recv() => libc::SIGTERM,
    }
}

/// `setup --from FILE` and `install FILE`: verify and install the bundle into the cache, then
/// the normal setup (which finds the installed llama-server).
pub(crate) async fn run_from(
    args: SetupArgs,
    from: std::path::PathBuf,
) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&args.config)?;
    let options = options(&config, &args);
    let started = std::time::Instant::now();
    let (installed, (ready, tried)) = tokio::task::spawn_blocking(move || {
        let pin = SourcePin::builtin();
        let opened = bundle::open(&from, &options.cache_dir)?;
        let installed = bundle::install(&opened, &options.cache_dir, &pin, &ModelPin::builtin())?;
        drop(opened);
        anyhow::Ok((installed, setup::ensure_reporting(&options)?))
    })
    .await??;
    let verb = if installed.changed {
        "installed"
    } else {
        "already installed"
    };
    println!("bundle: {verb}: {}", installed.server.display());
    for line in &tried {
        println!("rung {line}");
    }
    println!("llama-server: {}", ready.server.display());
    println!("backend: {}", ready.rung.name);
    println!("backend args: {}", ready.rung.args.join(" "));
    println!("backend why: {}", ready.rung.why);
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
        assert_eq!(none.limits, BuildLimits::default());
        let config = Config::from_layers(Some((
            Path::new("mine.toml"),
            "[setup]\ncpus = 0.5\njobs = 3\n",
        )))
        .unwrap();
        let args = SetupArgs {
            cpus: Some("1.5".parse().unwrap()),
            ..Default::default()
        };
        let limits = options(&config, &args).limits;
        assert_eq!(limits.cpus.map(crate::units::Cores::get), Some(1.5));
        assert_eq!(limits.jobs.map(std::num::NonZero::get), Some(3));
    }
}
