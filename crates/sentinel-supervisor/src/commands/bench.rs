//! `sentinel-supervisor bench`: what to measure (`--profile`s or `--url`), `--max-tokens` and
//! `--api-key` over the configuration, then the harness.

use crate::bench::{self, BenchOptions, LaunchFlags, Subject};
use crate::cli::BenchArgs;
use crate::config::Config;
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

/// The command line over `config`.
pub fn options(config: &Config, args: BenchArgs) -> Result<BenchOptions, BenchArgsError> {
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
        settings: config.bench.clone(),
        subject,
        launch: LaunchFlags {
            config: args.config.config,
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
        max_tokens: args.max_tokens.unwrap_or(config.bench.max_tokens),
        host: crate::host::Host::detect(),
        // The key of a supervisor started here comes from the same configuration.
        api_key: args
            .api_key
            .or_else(|| config.effective_api_keys().into_iter().next()),
    })
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&args.config)?;
    if !args.command.is_empty() {
        let (command, window, out) = (args.command, config.bench.sample_interval, args.out);
        let report =
            tokio::task::spawn_blocking(move || bench::command::run(&command, window, &out))
                .await??;
        println!("{}", report.describe());
        return Ok(ExitCode::SUCCESS);
    }
    let options = options(&config, args)?;
    bench::run(options).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn parse(args: &[&str]) -> BenchArgs {
        let cli = Cli::try_parse_from(["s", "bench"].iter().chain(args)).unwrap();
        match cli.command {
            Some(crate::cli::Command::Bench(args)) => args,
            other => panic!("not bench: {other:?}"),
        }
    }

    #[test]
    fn profiles_or_one_url_and_the_flags_over_the_file() {
        let config = Config::builtin().unwrap();
        let o = options(&config, parse(&["-p", "fast", "-p", "balanced"])).unwrap();
        assert_eq!(
            o.subject,
            Subject::Start {
                profiles: vec!["fast".into(), "balanced".into()]
            }
        );
        assert_eq!(o.max_tokens, config.bench.max_tokens);
        assert_eq!(o.schema_mode, bench::SchemaMode::Both);

        let o = options(
            &config,
            parse(&["--url", "http://x", "-p", "mine", "--max-tokens", "7"]),
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
        let err = |args: &[&str]| options(&config, parse(args)).unwrap_err();
        assert_eq!(err(&[]), BenchArgsError::NothingToMeasure);
        assert!(err(&[]).to_string().contains("--profile NAME"));
        assert_eq!(
            err(&["--url", "http://x", "-p", "a", "-p", "b"]),
            BenchArgsError::ProfilesWithUrl
        );
        assert_eq!(err(&["-p", "a", "--limit", "0"]), BenchArgsError::NoTasks);
    }
}
