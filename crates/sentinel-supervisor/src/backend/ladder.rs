//! The backend ladder: which build of the pinned llama-server, with which run-time flags, runs
//! on this host. Rungs in order of speed: the native build; the same binary with
//! `--no-repack` (no extra buffer types: AMX and the other repacked kernels off at run time);
//! the portable build (ggml picks a CPU variant at load); the portable build without the
//! variant that failed here; the baseline build. Each rung is smoke-tested once
//! ([`super::smoke`]), its verdict recorded ([`super::verdict`]), and a failed rung is skipped
//! next time; a rung's build happens only when the ladder reaches it.

mod rung;

use super::build::{self, Flavor};
use super::model::{self, ModelError};
use super::pin::{ModelPin, SourcePin};
use super::setup::{Installed, RungInUse};
use super::smoke::{self, Failure, SmokeLaunch};
use super::verdict::{self, Verdict, VerdictError, VerdictKey};
use crate::host::CpuSignature;
pub(crate) use rung::Rung;
use rung::{rungs, without_variant};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub(crate) enum LadderError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Verdict(#[from] VerdictError),
    #[error("no build of llama-server runs on this CPU ({cpu}); every rung of the ladder failed:\n{tried}\n(verdicts in {verdicts}; delete them to test again, or set `backend.bin` to a llama-server that runs here)")]
    NoRung {
        cpu: String,
        tried: String,
        verdicts: PathBuf,
    },
    #[error("cannot prepare the `{rung}` rung in {dir}: {source} (check that the cache directory is writable)")]
    Prepare {
        rung: String,
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Where the ladder climbs and how it tests.
pub(crate) struct Ladder<'a> {
    pub cache: &'a Path,
    pub pin: &'a SourcePin,
    pub launch: &'a SmokeLaunch,
    pub cpu: CpuSignature,
    /// Test every rung instead of stopping at the first that runs (`setup --all-rungs`).
    pub all_rungs: bool,
    /// Start at the portable rung: a portable llama-server came from a bundle and there is no
    /// native build, so a fleet endpoint never compiles one (`backend::bundle`).
    pub from_bundle: bool,
    /// The model this host will serve (`--model`): the smoke test's model when the small
    /// default one is not in the cache, so a host given its own model needs no download.
    pub model: Option<&'a Path>,
}

/// The ladder's answer: the rung in use, and what it found on the way.
#[derive(Debug, Clone)]
pub(crate) struct Climbed {
    pub server: PathBuf,
    pub rung: RungInUse,
    /// What it found on each rung, one line each for `setup`: `native: failed: llama-server
    /// used ... (recorded 2026-...)`, `baseline: not built: ...`.
    pub tried: Vec<String>,
}

impl Ladder<'_> {
    /// Climbs from the fastest rung to the first whose smoke test passes on this host (a
    /// recorded verdict counts; a recorded failure is skipped). Blocking: builds and tests.
    pub(crate) fn climb(&self) -> Result<Climbed, LadderError> {
        let mut tried: Vec<String> = Vec::new();
        let mut chosen: Option<(PathBuf, RungInUse)> = None;
        // Grows by the rung without the portable rung's failed variant, once it fails.
        let mut all = rungs(None);
        let mut index = 0;
        while let Some(rung) = all.get(index).cloned() {
            index += 1;
            if chosen.is_some() && !self.all_rungs {
                break;
            }
            if self.from_bundle && rung.flavor() == Flavor::Native {
                continue;
            }
            let bin_dir = match build::ensure_build(self.cache, self.pin, rung.flavor()) {
                Ok(dir) => dir,
                Err(e) => {
                    tracing::warn!(rung = %rung.name(), error = %e, "this rung cannot be built; trying the next");
                    let first_line = e.to_string().lines().next().unwrap_or_default().to_string();
                    tried.push(format!("{}: not built: {first_line}", rung.name()));
                    continue;
                }
            };
            let program = self.program(&rung, bin_dir)?;
            let (verdict, fresh) = self.verdict(&rung, &program)?;
            if !verdict.passed && rung == Rung::Portable {
                all = rungs(verdict.cpu_variant.as_deref());
            }
            if verdict.passed && chosen.is_none() {
                chosen = Some((program, rung.in_use(why(&rung, &verdict, &tried))));
            }
            let recorded = if fresh {
                String::new()
            } else {
                format!(" (recorded {})", verdict.date)
            };
            tried.push(format!("{}: {}{recorded}", rung.name(), verdict.describe()));
        }
        let Some((server, rung)) = chosen else {
            return Err(LadderError::NoRung {
                cpu: self.cpu.describe(),
                tried: format!("  {}", tried.join("\n  ")),
                verdicts: self.cache.join("verdicts"),
            });
        };
        Ok(Climbed {
            server,
            rung,
            tried,
        })
    }

    /// The rung's program: in its flavor's `bin_dir`, or for the rung without a variant, in
    /// this host's copy of it without that variant,
    /// `<cache>/llama.cpp/<key>-portable-<cpu key>-without-<variant>/`.
    fn program(&self, rung: &Rung, bin_dir: PathBuf) -> Result<PathBuf, LadderError> {
        let Rung::PortableWithout(variant) = rung else {
            return Ok(bin_dir.join(&self.pin.target));
        };
        let dir = self.cache.join("llama.cpp").join(format!(
            "{}-{}-without-{variant}",
            Flavor::Portable.dir_name(self.pin),
            self.cpu.key()
        ));
        without_variant(&bin_dir, &dir, variant).map_err(|source| LadderError::Prepare {
            rung: rung.name(),
            dir: dir.clone(),
            source,
        })?;
        Ok(dir.join(&self.pin.target))
    }

    /// The recorded verdict for this rung's binary on this CPU, else a fresh smoke test.
    fn verdict(&self, rung: &Rung, program: &Path) -> Result<(Verdict, bool), LadderError> {
        let key = VerdictKey::of(program, &self.cpu, &rung.name())?;
        if let Some(v) = verdict::load(self.cache, &key) {
            tracing::debug!(rung = %rung.name(), passed = v.passed, "smoke-test verdict reused");
            return Ok((v, false));
        }
        let default = model::default_model_path(self.cache, &ModelPin::builtin());
        let model = match self.model {
            Some(given) if !default.is_file() => given.to_path_buf(),
            _ => model::ensure_default(self.cache, &ModelPin::builtin())?,
        };
        let installed = Installed {
            server: program.to_path_buf(),
            model,
            rung: rung.in_use("smoke test"),
        };
        let (v, conclusive) = test(&installed, self.launch, &self.cpu);
        if !conclusive {
            // A timeout on a busy host or an exit of the program's own says nothing about the
            // CPU: use the rung untested (the real start reports the cause) and test it again
            // at the next start, rather than climb for nothing.
            tracing::warn!(rung = %rung.name(), reason = %v.reason, "the smoke test was inconclusive; using this rung untested");
            let used = Verdict {
                passed: true,
                reason: format!("not verified: {}", v.reason),
                ..v
            };
            return Ok((used, true));
        }
        let path = verdict::store(self.cache, &key, &v)?;
        tracing::info!(rung = %rung.name(), passed = v.passed, verdict = %v.describe(), path = %path.display(), "smoke test done");
        Ok((v, true))
    }
}

/// Smoke-tests `installed` and turns the outcome into a verdict for its rung, and whether it
/// is conclusive about this CPU: a pass, a CPU fault or a wrong answer is; a timeout (the host
/// may just be busy), an exit status (a bad model, flag or environment: the program decided to
/// stop) and a failed spawn are not, and are never recorded, so that they are reported as they
/// are at the real start and tested again at the next.
pub(crate) fn test(
    installed: &Installed,
    launch: &SmokeLaunch,
    cpu: &CpuSignature,
) -> (Verdict, bool) {
    eprintln!(
        "smoke test: {} ({})",
        installed.rung.name,
        installed.server.display()
    );
    let result = smoke::run(installed, launch);
    let conclusive = !matches!(
        result,
        Err(Failure::Timeout { .. } | Failure::BadExit { .. } | Failure::Spawn(_))
    );
    let verdict = match result {
        Ok(p) => Verdict {
            passed: true,
            reason: format!(
                "generated {} tokens, clean exit in {:.1?}",
                smoke::PREDICT,
                p.took
            ),
            tokens_per_second: Some(p.tokens_per_second),
            cpu_variant: p.cpu_variant,
            ..failed_verdict(installed, cpu)
        },
        Err(f) => {
            tracing::warn!(rung = %installed.rung.name, error = %f, "smoke test failed");
            Verdict {
                reason: f.summary(),
                cpu_variant: f.cpu_variant().map(str::to_string),
                ..failed_verdict(installed, cpu)
            }
        }
    };
    (verdict, conclusive)
}

/// A failed verdict for `installed` on `cpu`, dated now, its reason yet to be said.
fn failed_verdict(installed: &Installed, cpu: &CpuSignature) -> Verdict {
    Verdict {
        rung: installed.rung.name.clone(),
        passed: false,
        reason: String::new(),
        tokens_per_second: None,
        cpu_variant: None,
        program: installed.server.clone(),
        cpu: cpu.describe(),
        date: verdict::now(),
    }
}

/// Records that `installed` failed at run time (a SIGILL, a crash while loading), so the ladder
/// skips its rung from now on.
pub(crate) fn record_failure(
    cache: &Path,
    installed: &Installed,
    reason: &str,
    cpu_variant: Option<&str>,
) -> Result<PathBuf, VerdictError> {
    let cpu = CpuSignature::detect();
    let key = VerdictKey::of(&installed.server, &cpu, &installed.rung.name)?;
    let verdict = Verdict {
        reason: format!("at run time: {reason}"),
        cpu_variant: cpu_variant.map(str::to_string),
        ..failed_verdict(installed, &cpu)
    };
    verdict::store(cache, &key, &verdict)
}

/// The backend a start would use, from what is recorded (never builds or tests): for
/// `profiles` and `check-config`.
pub(crate) fn recorded(cache: &Path, backend_bin: Option<&Path>) -> String {
    if let Some(bin) = backend_bin {
        return format!("backend.bin {} (used as given)", bin.display());
    }
    let pin = SourcePin::builtin();
    let cpu = CpuSignature::detect();
    let mut failed = Vec::new();
    for rung in rungs(None) {
        let program =
            build::existing_build(cache, &pin, rung.flavor()).map(|d| d.join(&pin.target));
        let key = program.and_then(|p| VerdictKey::of(&p, &cpu, &rung.name()).ok());
        match key.and_then(|key| verdict::load(cache, &key)) {
            Some(v) if v.passed => {
                let mut line = format!("{} ({})", rung.name(), v.describe());
                if !failed.is_empty() {
                    line.push_str(&format!("; failed here: {}", failed.join(", ")));
                }
                return line;
            }
            Some(_) => failed.push(rung.name()),
            None => {}
        }
    }
    "not chosen yet: `setup` (or the first start) smoke-tests the builds on this CPU".into()
}

fn why(rung: &Rung, verdict: &Verdict, below: &[String]) -> String {
    let who = if *rung == Rung::Native {
        "the native build"
    } else {
        "the fastest rung that"
    };
    let failed: String = below.iter().flat_map(|t| ["; ", t]).collect();
    format!(
        "{who} passed the smoke test on this CPU ({}){failed}",
        verdict.describe()
    )
}
