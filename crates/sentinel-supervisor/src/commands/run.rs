//! `sentinel-supervisor run` (the default command): `--profile`, `--listen`, `--model` and
//! `--backend-bin` over the configuration, the profile resolved against this host, then the
//! supervisor.

use crate::cli::RunArgs;
use crate::config::{Config, ConfigError};
use crate::host::Host;
use crate::profile;
use crate::supervisor::reload::Reloader;
use crate::supervisor::{self, RunOptions};
use std::process::ExitCode;
use std::sync::Arc;

/// The command line over `config`, with the profile resolved against `host`.
pub(crate) fn options(
    config: Config,
    args: &RunArgs,
    host: &Host,
) -> Result<RunOptions, ConfigError> {
    let name = args.profile.as_deref().unwrap_or(&config.default_profile);
    let profile = profile::resolve(&config, name, host)?;
    let mut setup = super::setup::options(&config, &args.setup);
    // The smoke test runs the backend with the flags this profile will use.
    setup.smoke = Some(crate::backend::smoke::SmokeLaunch {
        config: config.clone(),
        profile: profile.clone(),
    });
    Ok(RunOptions {
        listen: args.listen.unwrap_or(config.listen),
        api_keys: config.effective_api_keys(),
        setup,
        profile,
        host: *host,
        config_path: args
            .setup
            .config
            .config
            .clone()
            .or_else(crate::config::default_user_path),
        config,
        reloader: None,
    })
}

pub(crate) async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&args.setup.config)?;
    let host = Host::detect();
    let mut run_options = options(config, &args, &host)?;
    // A reload reads the file again and merges the same command line over it.
    run_options.reloader = Some(Reloader(Arc::new(move || {
        let config = super::load_config(&args.setup.config)?;
        options(config, &args, &host)
    })));
    supervisor::run(run_options).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host::unrestricted(2)
    }

    #[test]
    fn flags_win_over_the_configuration() {
        let config = Config::builtin().unwrap();
        let defaults = options(config.clone(), &RunArgs::default(), &host()).unwrap();
        assert_eq!(defaults.profile.name, config.default_profile);
        assert_eq!(defaults.listen, config.listen);
        let args = RunArgs {
            profile: Some("fast".into()),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        };
        let chosen = options(config, &args, &host()).unwrap();
        assert_eq!(chosen.profile.name, "fast");
        assert_eq!(chosen.listen.port(), 0);
    }

    #[test]
    fn an_unknown_profile_is_refused_before_anything_starts() {
        let args = RunArgs {
            profile: Some("turbo".into()),
            ..Default::default()
        };
        let err = options(Config::builtin().unwrap(), &args, &host())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown profile `turbo`"), "{err}");
    }
}
