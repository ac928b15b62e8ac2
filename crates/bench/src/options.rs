//! `bench`'s arguments turned into [`BenchOptions`] once: what to measure (`--profile`s or
//! `--url`), `--max-tokens` and `--api-key` over the settings and the product's configuration.

use crate::cli::{BenchArgs, Cli, Command, ProbeKind};
use crate::foreground::{self, Probe};
use crate::settings::BenchConfig;
use crate::target::Targets;
use crate::{BenchOptions, LaunchFlags, SchemaMode, Subject};
use sentinel_supervisor::cli::ConfigArgs;
use sentinel_supervisor::config::Config;
use std::process::ExitCode;

/// Why the arguments of `bench` cannot be measured.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum BenchArgsError {
    #[error("nothing to measure: pass --profile NAME (repeatable) or --url URL")]
    NothingToMeasure,
    #[error(
        "--url measures the one running supervisor; pass at most one --profile with it (its name \
         in the report)"
    )]
    ProfilesWithUrl,
    #[error("--limit 0 leaves no task to run (use N >= 1)")]
    NoTasks,
    #[error(
        "--url measures the one running supervisor and its model; pass at most one --model with it"
    )]
    ModelsWithUrl,
}

/// The command line over `settings` and the product's `config` (read from `config_args`).
pub fn options(
    config: &Config,
    config_args: &ConfigArgs,
    settings: BenchConfig,
    args: BenchArgs,
) -> Result<BenchOptions, BenchArgsError> {
    if args.limit == Some(0) {
        return Err(BenchArgsError::NoTasks);
    }
    if args.url.is_some() && args.models.len() > 1 {
        return Err(BenchArgsError::ModelsWithUrl);
    }
    let subject = match (args.url, args.profiles.as_slice()) {
        (None, []) => return Err(BenchArgsError::NothingToMeasure),
        (Some(_), [_, _, ..]) => return Err(BenchArgsError::ProfilesWithUrl),
        (Some(url), profiles) => Subject::Running {
            url,
            profile: profiles.first().cloned(),
        },
        (None, _) => Subject::Start {
            profiles: args.profiles,
        },
    };
    Ok(BenchOptions {
        targets: Targets {
            slo: config.slo.clone(),
            bench: settings.targets.clone(),
        },
        max_tokens: args.max_tokens.unwrap_or(settings.max_tokens),
        settings,
        subject,
        launch: LaunchFlags {
            config: config_args.config.clone(),
            backend_bin: args.backend_bin,
        },
        models: args.models,
        shots: args.shots.unwrap_or(0),
        prefix: args.prefix,
        examples: args.examples,
        cache_off_run: !args.no_cache_off,
        foreground: args.foreground,
        tasks: args.tasks,
        task_limit: args.limit,
        out: args.out,
        idle: args.idle,
        schema_mode: args.schema_mode.into(),
        host: sentinel_supervisor::host::Host::detect(),
        // The key of a supervisor started here comes from the same configuration.
        api_key: args
            .key
            .api_key
            .or_else(|| config.effective_api_keys().into_iter().next()),
    })
}

/// Runs `sentinel-bench`'s command to its exit code.
pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Bench(args) => run(&cli.config, *args).await,
        Command::Probe(args) => {
            let probe = match args.probe {
                ProbeKind::Work => Probe::Work,
                ProbeKind::Wake => Probe::Wake,
            };
            foreground::probe_main(probe, args.iterations, args.run_for)
        }
    }
}

/// `bench`: a command measured as it runs (after `--`), or the profiles.
async fn run(config_args: &ConfigArgs, args: BenchArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_args.config.as_deref())?;
    let settings = BenchConfig::load(args.settings.as_deref())?;
    if !args.command.is_empty() {
        let (command, window, out) = (args.command, settings.sample_interval, args.out);
        let report =
            tokio::task::spawn_blocking(move || crate::command::run(&command, window, &out))
                .await??;
        println!("{}", report.describe());
        return Ok(ExitCode::SUCCESS);
    }
    let options = options(&config, config_args, settings, args)?;
    crate::run(options).await
}

impl From<crate::cli::SchemaMode> for SchemaMode {
    fn from(mode: crate::cli::SchemaMode) -> Self {
        match mode {
            crate::cli::SchemaMode::Off => Self::Off,
            crate::cli::SchemaMode::On => Self::On,
            crate::cli::SchemaMode::Both => Self::Both,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> BenchArgs {
        let cli = Cli::try_parse_from(["s", "bench"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Bench(args) => *args,
            other => panic!("not bench: {other:?}"),
        }
    }

    fn options_of(config: &Config, args: &[&str]) -> Result<BenchOptions, BenchArgsError> {
        let settings = BenchConfig::from_layers(None).unwrap();
        options(config, &ConfigArgs::default(), settings, parse(args))
    }

    #[test]
    fn profiles_or_one_url_and_the_flags_over_the_file() {
        let config = Config::builtin().unwrap();
        let o = options_of(&config, &["-p", "fast", "-p", "balanced"]).unwrap();
        assert_eq!(
            o.subject,
            Subject::Start {
                profiles: vec!["fast".into(), "balanced".into()]
            }
        );
        assert_eq!(o.max_tokens, 96);
        assert_eq!(o.schema_mode, SchemaMode::Both);
        assert_eq!(o.targets.slo, config.slo);

        let o = options_of(
            &config,
            &["--url", "http://x", "-p", "mine", "--max-tokens", "7"],
        )
        .unwrap();
        assert_eq!(
            o.subject,
            Subject::Running {
                url: "http://x".into(),
                profile: Some("mine".into())
            }
        );
        assert_eq!(o.max_tokens, 7);
    }

    #[test]
    fn a_command_after_the_double_dash_is_measured_as_is() {
        let args = parse(&["--out", "o", "--", "make", "-j2", "--cpus"]);
        assert_eq!(args.command, ["make", "-j2", "--cpus"]);
        assert!(parse(&["-p", "fast"]).command.is_empty());
    }

    #[test]
    fn impossible_requests_say_what_to_pass() {
        let config = Config::builtin().unwrap();
        let err = |args: &[&str]| options_of(&config, args).unwrap_err();
        assert_eq!(err(&[]), BenchArgsError::NothingToMeasure);
        assert!(err(&[]).to_string().contains("--profile NAME"));
        assert_eq!(
            err(&["--url", "http://x", "-p", "a", "-p", "b"]),
            BenchArgsError::ProfilesWithUrl
        );
        assert_eq!(err(&["-p", "a", "--limit", "0"]), BenchArgsError::NoTasks);
    }
}
