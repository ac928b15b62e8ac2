//! `sentinel-supervisor bundle`: `--out`, `--with-model` and `--server-dir` over the
//! configuration's cache, then [`bundle::create`].

use crate::backend::bundle::{self, BundleOptions};
use crate::backend::pin::{ModelPin, SourcePin};
use crate::backend::{build, model};
use crate::cli::BundleArgs;
use anyhow::Context;
use std::process::ExitCode;

pub(crate) async fn run(args: BundleArgs) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&args.config)?;
    let cache = config.cache_dir();
    let supervisor = std::env::current_exe().context("cannot find this binary to bundle it")?;
    let written = tokio::task::spawn_blocking(move || {
        let pin = SourcePin::builtin();
        let (server_source, server_dir) = match args.server_dir {
            Some(dir) => (format!("--server-dir {}", dir.display()), dir),
            None => (
                "the portable build".to_string(),
                // Built once here when missing (minutes), at idle priority like every build.
                build::ensure_build(&cache, &pin, build::Flavor::Portable)?,
            ),
        };
        let model = args
            .with_model
            .then(|| model::ensure_default(&cache, &ModelPin::builtin()))
            .transpose()?;
        let options = BundleOptions {
            out: args.out,
            supervisor,
            server_dir,
            server_source,
            model,
        };
        anyhow::Ok(bundle::create(&options, &pin)?)
    })
    .await??;
    println!("bundle: {}", written.archive.display());
    println!(
        "size: {} bytes, {} files, llama.cpp {} for {}",
        written.bytes,
        written.manifest.files.len(),
        written.manifest.pin_key,
        written.manifest.target
    );
    Ok(ExitCode::SUCCESS)
}
