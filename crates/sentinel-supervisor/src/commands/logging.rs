//! Logging setup: `tracing` to stderr, `-v/-q` map to levels, `RUST_LOG` overrides, JSON for
//! services. Colour only when stderr is a terminal and `NO_COLOR` is unset or empty, so a log
//! written to a file, a pipe or the journal has no escape codes.

use crate::cli::{LogArgs, LogFormat};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Sets up logging from `-v`, `-q` and `--log-format`.
pub fn init_logging(args: &LogArgs) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{},hyper=warn,reqwest=warn,hyper_util=warn,h2=warn",
            level(args)
        ))
    });
    let colour = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour && args.log_format == LogFormat::Text)
        .with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The level of `-v` and `-q`: info, each `-v` one more (debug, trace), each `-q` one less
/// (warn, error).
fn level(args: &LogArgs) -> &'static str {
    match i16::from(args.verbose) - i16::from(args.quiet) {
        i16::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    }
}

/// Colour on a terminal only, and not when `NO_COLOR` has any non-empty value
/// (<https://no-color.org>).
fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && !matches!(no_color, Some(v) if !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::ffi::OsStr;

    #[test]
    fn verbosity_is_verbose_minus_quiet() {
        let cli = crate::cli::Cli::try_parse_from(["s", "-vv", "-q", "--log-format", "json"]);
        let log = cli.unwrap().log;
        assert_eq!(level(&log), "debug");
        assert_eq!(log.log_format, LogFormat::Json);
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(true, Some(OsStr::new("false"))));
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, Some(OsStr::new(""))));
    }
}
