//! Logging setup: `tracing` to stderr, `-v/-q` map to levels, `RUST_LOG` overrides, JSON for
//! services.

use crate::cli::{LogArgs, LogFormat};
use tracing_subscriber::EnvFilter;

pub fn init(args: &LogArgs) {
    let level = match i16::from(args.verbose) - i16::from(args.quiet) {
        i16::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{level},hyper=warn,reqwest=warn,hyper_util=warn,h2=warn"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
