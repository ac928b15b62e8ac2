//! Bundles: build once, run on a fleet. [`create`] packs the supervisor binary, a relocatable
//! llama-server with its libraries and CPU variants, optionally the default model, the shipped
//! config and service files, and a manifest (the sha256 of every file) into one `.tar.gz`.
//! [`install`] verifies a bundle (an archive or an extracted directory) and lays its llama.cpp
//! files into the cache's portable rung, `<cache>/llama.cpp/<pin-key>-portable/build/bin/`, and
//! its model where [`super::model::ensure_default`] looks: no compiler, cmake or Python.
//! [`portable_server`] is what setup asks: the installed portable rung, else the bundle laid out
//! beside the running binary ([`packaged_backend`]: the `.deb`'s `/usr/lib/sentinel-supervisor/`
//! or an extracted archive), installed on first use.
//!
//! Bundle layout (inside the archive's one top directory):
//! `manifest.json`, `sentinel-supervisor`, `llama.cpp/{llama-server,lib*.so*}`,
//! `models/<default model>` (optional), `config.toml` (the built-in defaults, for reference),
//! `scripts/{install-service,sentinel-supervisor.service,com.sentinel.supervisor.plist}`.

mod install;
mod manifest;
mod pack;

pub(crate) use install::{install, open};
pub use manifest::Manifest;
pub(crate) use pack::{create, BundleOptions};

use super::build::{self, Flavor};
use super::fetch::FetchError;
use super::model::ModelError;
use super::pin::{ModelPin, SourcePin};
use std::env::consts::{ARCH, OS};
use std::path::{Path, PathBuf};

/// The manifest format this binary writes and reads.
pub(crate) const FORMAT: u32 = 1;
/// The manifest's name at the bundle's top.
pub(crate) const MANIFEST: &str = "manifest.json";
/// The supervisor binary's name at the bundle's top.
pub(crate) const SUPERVISOR: &str = "sentinel-supervisor";
/// The directory holding llama-server and its libraries (the portable rung's `build/bin/`).
pub(crate) const SERVER_DIR: &str = "llama.cpp";
/// The directory holding the default model, when bundled.
pub(crate) const MODEL_DIR: &str = "models";

/// The target this binary was built for (`x86_64-unknown-linux-gnu`): a bundle installs only
/// on the target it was made for.
pub(crate) const TARGET: &str = env!("SENTINEL_TARGET");

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0} is not a bundle: neither a .tar.gz made by `sentinel-supervisor bundle` nor a directory holding {MANIFEST} (pass the archive, or the directory it was extracted to)")]
    NotABundle(PathBuf),
    #[error("cannot extract the bundle {archive}: {source} (the archive is damaged or truncated: copy it again)")]
    Extract {
        archive: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a valid bundle manifest: {message} (the bundle is damaged: copy it again)"
    )]
    BadManifest { path: PathBuf, message: String },
    #[error("the bundle's manifest is format {found}, this sentinel-supervisor reads format {FORMAT} (install it with the sentinel-supervisor inside the bundle: `<bundle>/sentinel-supervisor setup --from <bundle>`)")]
    NewerFormat { found: u32 },
    #[error("the bundle is for {found}, this sentinel-supervisor is for {expected} (make a bundle on a {expected} machine with `sentinel-supervisor bundle`)")]
    WrongTarget { found: String, expected: String },
    #[error("the bundle holds llama.cpp {found}, this sentinel-supervisor {version} uses {expected} (install it with the sentinel-supervisor inside the bundle: `<bundle>/sentinel-supervisor setup --from <bundle>`)")]
    WrongPin {
        found: String,
        expected: String,
        version: &'static str,
    },
    #[error("the bundle is incomplete: {file} (listed in {MANIFEST}) is missing from {root} (copy the whole bundle again)")]
    Missing { file: String, root: PathBuf },
    #[error("the bundle is corrupted: {file} has sha256 {actual}, its manifest says {expected} (copy the bundle again)")]
    Corrupted {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("the bundle's manifest names {0:?}, which is not a plain relative path inside the bundle (the bundle is damaged or not made by `sentinel-supervisor bundle`)")]
    UnsafePath(String),
    #[error("the bundle's manifest lists no {0} (make the bundle again with `sentinel-supervisor bundle`)")]
    NoServer(String),
    #[error("the bundle's model {file} is not this version's default model (sha256 {actual}, the pin says {expected} for {pinned}); pass your own model with --model instead")]
    ModelNotPinned {
        file: String,
        actual: String,
        expected: String,
        pinned: String,
    },
    #[error("{dir} holds no {target} (pass the directory holding llama-server and its libraries with --server-dir)")]
    NoServerInDir { dir: PathBuf, target: String },
    #[error("cannot install the bundle into {dir}: {source}")]
    Install {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] FetchError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// The archive's name: `sentinel-supervisor-<version>-<arch>-<os>.tar.gz`.
pub fn archive_name() -> String {
    format!("{}.tar.gz", top_dir_name())
}

/// The archive's one top directory: `sentinel-supervisor-<version>-<arch>-<os>`.
fn top_dir_name() -> String {
    format!("{SUPERVISOR}-{}-{ARCH}-{OS}", env!("CARGO_PKG_VERSION"))
}

/// The portable rung's directory, `<cache>/llama.cpp/<pin-key>-portable/` (the layout shared
/// with `backend::build`'s portable flavor).
pub fn portable_dir(cache: &Path, pin: &SourcePin) -> PathBuf {
    build::BuildDir::new(cache, pin, Flavor::Portable).root
}

fn stamp(rung: &Path) -> PathBuf {
    rung.join("BUILD-OK")
}

fn bin_dir(rung: &Path) -> PathBuf {
    rung.join("build").join("bin")
}

/// The bundle laid out beside the running binary (its symlinks resolved): the `.deb`'s
/// `/usr/lib/sentinel-supervisor/`, or an extracted archive run in place.
pub(crate) fn packaged_backend() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?.canonicalize().ok()?;
    let dir = exe.parent()?;
    dir.join(MANIFEST).is_file().then(|| dir.to_path_buf())
}

/// The portable llama-server for setup: the installed portable rung, else the bundle packaged
/// beside this binary, installed now (verified, once); `None` when there is neither.
pub(crate) fn portable_server(
    cache: &Path,
    pin: &SourcePin,
    model_pin: &ModelPin,
) -> Result<Option<PathBuf>, BundleError> {
    if let Some(bin) = build::existing_build(cache, pin, Flavor::Portable) {
        return Ok(Some(bin.join(&pin.target)));
    }
    let Some(dir) = packaged_backend() else {
        return Ok(None);
    };
    tracing::info!(bundle = %dir.display(), "installing the llama-server packaged beside this binary");
    let bundle = open(&dir, cache)?;
    Ok(Some(install(&bundle, cache, pin, model_pin)?.server))
}

#[cfg(test)]
mod tests;
