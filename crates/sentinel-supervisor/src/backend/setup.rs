//! `setup`: make sure a llama-server binary and a model are at hand, building and fetching the
//! pinned ones into the cache when nothing else is configured.

use super::build::{self, BuildError};
use super::bundle::{self, BundleError};
use super::ladder::{Ladder, LadderError, Rung};
use super::model::{self, ModelError};
use super::pin::{ModelPin, SourcePin};
use super::runner::{BuildLimits, Runner};
use super::smoke::SmokeLaunch;
use super::verdict::{self, VerdictError, VerdictKey};
use crate::host::{CpuSignature, Host};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    #[error("llama-server binary not found: {0} (fix `backend.bin` in config.toml or --backend-bin, or leave both empty to build the pinned one)")]
    BinNotFound(PathBuf),
    #[error("{0} is not an executable file (fix `backend.bin` in config.toml or --backend-bin)")]
    BinNotExecutable(PathBuf),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Ladder(#[from] LadderError),
    #[error(transparent)]
    Verdict(#[from] VerdictError),
    #[error("the llama-server of `backend.bin` ({path}) failed its smoke test on this CPU: {reason} (it is used as given, never replaced: fix or rebuild it for this CPU, or leave `backend.bin` empty to let setup build one that runs here)")]
    BinFailed { path: PathBuf, reason: String },
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

/// What a launch needs.
#[derive(Debug, Clone)]
pub(crate) struct Installed {
    pub server: PathBuf,
    pub model: PathBuf,
    /// Which configuration of llama-server this is, its run-time flags and why it was chosen.
    pub rung: RungInUse,
}

/// The backend in use: the ladder's rung (`backend::ladder`), or the user's `backend.bin`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub(crate) struct RungInUse {
    /// `native`, `native --no-repack`, `portable`, ..., or `backend.bin`.
    pub name: String,
    /// llama-server flags the rung adds to every launch (`--no-repack`).
    pub args: Vec<String>,
    /// Why this one: its verdict, and the rungs below it that failed.
    pub why: String,
}

impl RungInUse {
    /// The user's `backend.bin`, as given.
    pub(crate) fn given(why: impl Into<String>) -> RungInUse {
        RungInUse {
            name: "backend.bin".into(),
            args: Vec::new(),
            why: why.into(),
        }
    }

    /// Whether this is a rung of the ladder (which can move to the next one), not the user's
    /// own binary.
    pub(crate) fn is_ladder(&self) -> bool {
        self.name != "backend.bin"
    }
}

/// Where the backend comes from: the command line merged over the configuration.
#[derive(Debug, Clone)]
pub(crate) struct SetupOptions {
    /// Where builds and the default model are kept.
    pub cache_dir: PathBuf,
    /// A GGUF model (`--model` or `model`); `None` = the pinned default model.
    pub model: Option<PathBuf>,
    /// A llama-server binary (`--backend-bin` or `backend.bin`); `None` = build the pinned one.
    pub backend_bin: Option<PathBuf>,
    /// The launch the smoke test runs (the profile's flags); `None` = no smoke test (the
    /// native build is used untested).
    pub smoke: Option<SmokeLaunch>,
    /// Build and test every rung of the ladder (`setup --all-rungs`).
    pub all_rungs: bool,
    /// How a build may use the machine (`--cpus`/`--jobs` over `[setup]`).
    pub limits: BuildLimits,
    /// The host the command detected (the profile was resolved against it): the CPUs the
    /// build's limits apply to.
    pub host: Host,
}

/// Resolves the backend binary and the model: the ones given, else the pinned defaults. With a
/// smoke launch, the pinned build is the ladder's choice for this host (`backend::ladder`),
/// and a given `backend.bin` is smoke-tested when the default model is at hand.
/// Blocking (it may build for minutes): call from a blocking context.
pub(crate) fn ensure(options: &SetupOptions) -> Result<Installed, SetupError> {
    Ok(ensure_reporting(options)?.0)
}

/// [`ensure`], with one line per rung the ladder tried (for `setup` to print).
pub(crate) fn ensure_reporting(
    options: &SetupOptions,
) -> Result<(Installed, Vec<String>), SetupError> {
    // Every program setup starts runs at idle priority under the build's limits.
    let _runner = Runner::new(options.limits, options.host).enter();
    let cache = &options.cache_dir;
    // Cheap checks of what the user gave come first, then the build (so a missing build tool
    // is reported before a long model download), then the default model.
    if let Some(path) = &options.model {
        model::check_gguf(path)?;
    }
    let mut tried = Vec::new();
    let (server, rung) = match (&options.backend_bin, &options.smoke) {
        (Some(path), smoke) => {
            check_executable(path)?;
            let rung = match smoke {
                Some(launch) => smoke_given(cache, path, launch)?,
                None => RungInUse::given("set by `backend.bin` (not smoke-tested)"),
            };
            (path.clone(), rung)
        }
        (None, Some(launch)) => {
            let pin = SourcePin::builtin();
            let from_bundle = bundled_portable(cache, &pin)?.is_some();
            let climbed = Ladder {
                cache,
                pin: &pin,
                launch,
                cpu: CpuSignature::detect(),
                all_rungs: options.all_rungs,
                from_bundle,
                model: options.model.as_deref(),
            }
            .climb()?;
            tried = climbed.tried;
            (climbed.server, climbed.rung)
        }
        (None, None) => unverified_server(cache)?,
    };
    let model = match &options.model {
        Some(path) => path.clone(),
        None => model::ensure_default(cache, &ModelPin::builtin())?,
    };
    let installed = Installed {
        server,
        model,
        rung,
    };
    Ok((installed, tried))
}

/// Without a smoke test: the native build when there is one, else a portable llama-server
/// installed from a bundle (or packaged beside this binary), else build the native one.
fn unverified_server(cache: &Path) -> Result<(PathBuf, RungInUse), SetupError> {
    let pin = SourcePin::builtin();
    let (server, rung, what) = if let Some(server) = bundled_portable(cache, &pin)? {
        (server, Rung::Portable, "the portable build from a bundle")
    } else {
        let bin_dir = build::ensure_build(cache, &pin, build::Flavor::Native)?;
        (bin_dir.join(&pin.target), Rung::Native, "the native build")
    };
    Ok((server, rung.in_use(format!("{what} (not smoke-tested)"))))
}

/// Smoke-tests the user's binary on the default model when it is at hand (never downloading
/// it for this), once per binary and host; a failure is an error, since a given binary is
/// never replaced.
fn smoke_given(cache: &Path, path: &Path, launch: &SmokeLaunch) -> Result<RungInUse, SetupError> {
    let model = model::default_model_path(cache, &ModelPin::builtin());
    if !model.is_file() {
        return Ok(RungInUse::given(
            "set by `backend.bin` (not smoke-tested: the default model is not in the cache)",
        ));
    }
    let cpu = CpuSignature::detect();
    let key = VerdictKey::of(path, &cpu, "backend.bin")?;
    let verdict = if let Some(v) = verdict::load(cache, &key) {
        v
    } else {
        let installed = Installed {
            server: path.to_path_buf(),
            model,
            rung: RungInUse::given("smoke test"),
        };
        let (v, conclusive) = super::ladder::test(&installed, launch, &cpu);
        if !conclusive {
            tracing::warn!(reason = %v.reason, "the smoke test of backend.bin was inconclusive; using it untested");
            return Ok(RungInUse::given(format!(
                "set by `backend.bin` (not verified: {})",
                v.reason
            )));
        }
        verdict::store(cache, &key, &v)?;
        v
    };
    if !verdict.passed {
        return Err(SetupError::BinFailed {
            path: path.to_path_buf(),
            reason: verdict.reason,
        });
    }
    Ok(RungInUse::given(format!(
        "set by `backend.bin`; {}",
        verdict.describe()
    )))
}

/// When there is no native build, a portable llama-server from a bundle: installed in the
/// cache, or packaged beside this binary (installed now). The ladder then starts at the
/// portable rung, so an endpoint installed from a bundle never compiles.
fn bundled_portable(cache: &Path, pin: &SourcePin) -> Result<Option<PathBuf>, SetupError> {
    if build::existing_build(cache, pin, build::Flavor::Native).is_some() {
        return Ok(None);
    }
    Ok(bundle::portable_server(cache, pin, &ModelPin::builtin())?)
}

fn check_executable(path: &Path) -> Result<(), SetupError> {
    if !path.exists() {
        return Err(SetupError::BinNotFound(path.to_path_buf()));
    }
    if !super::tools::is_executable(path) {
        return Err(SetupError::BinNotExecutable(path.to_path_buf()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_backend_bin_and_model_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        std::fs::write(&model, b"GGUF....").unwrap();
        let options = |model, backend_bin| SetupOptions {
            cache_dir: dir.path().join("cache"),
            model,
            backend_bin,
            smoke: None,
            all_rungs: false,
            limits: BuildLimits::default(),
            host: Host::unrestricted(2),
        };
        let e = ensure(&options(
            Some(model.clone()),
            Some(dir.path().join("missing-server")),
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("llama-server binary not found"), "{e}");
        assert!(e.contains("--backend-bin"), "{e}");

        let e = ensure(&options(Some(model), Some(dir.path().to_path_buf())))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an executable"), "{e}");

        let e = ensure(&options(Some(dir.path().join("absent.gguf")), None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("model file not found"), "{e}");
    }
}
