//! The backend ladder: which build of the pinned llama-server, with which run-time flags, runs
//! on this host. Rungs in order of speed: the native build; the same binary with
//! `--no-repack` (no extra buffer types: AMX and the other repacked kernels off at run time);
//! the portable build (ggml picks a CPU variant at load); the portable build without the
//! variant that failed here; the baseline build. Each rung is smoke-tested once
//! ([`super::smoke`]), its verdict recorded ([`super::verdict`]), and a failed rung is skipped
//! next time; a rung's build happens only when the ladder reaches it.

mod rung;

use super::build::{self, BuildError, Flavor};
use super::model::{self, ModelError};
use super::pin::{ModelPin, SourcePin};
use super::setup::{Installed, RungInUse};
use super::smoke::{self, SmokeLaunch};
use super::verdict::{self, Verdict, VerdictError, VerdictKey};
use crate::host::CpuSignature;
use rung::{rungs, without_variant, Rung};
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

/// What the ladder found for one rung.
#[derive(Debug, Clone)]
pub(crate) struct Tried {
    pub rung: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// Tested now or before (`fresh` says which).
    Verdict { verdict: Verdict, fresh: bool },
    /// The rung could not be built.
    BuildFailed(String),
}

impl Tried {
    /// One line for `setup`: `native: failed: llama-server used ... (recorded 2026-...)`.
    pub(crate) fn describe(&self) -> String {
        match &self.outcome {
            Outcome::Verdict { verdict, fresh } => format!(
                "{}: {}{}",
                self.rung,
                verdict.describe(),
                if *fresh {
                    String::new()
                } else {
                    format!(" (recorded {})", verdict.date)
                }
            ),
            Outcome::BuildFailed(why) => format!("{}: not built: {why}", self.rung),
        }
    }
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
    pub tried: Vec<Tried>,
}

impl Ladder<'_> {
    /// Climbs from the fastest rung to the first whose smoke test passes on this host (a
    /// recorded verdict counts; a recorded failure is skipped). Blocking: builds and tests.
    pub(crate) fn climb(&self) -> Result<Climbed, LadderError> {
        let mut tried: Vec<Tried> = Vec::new();
        let mut chosen: Option<(PathBuf, RungInUse)> = None;
        let mut failed_variant: Option<String> = None;
        let mut index = 0;
        loop {
            let all = rungs(failed_variant.as_deref());
            let Some(rung) = all.get(index).cloned() else {
                break;
            };
            index += 1;
            if chosen.is_some() && !self.all_rungs {
                break;
            }
            if self.from_bundle && matches!(rung, Rung::Native | Rung::NativeNoRepack) {
                continue;
            }
            let program = match self.prepare(&rung) {
                Ok(p) => p,
                Err(PrepareError::Build(e)) => {
                    tracing::warn!(rung = %rung.name(), error = %e, "this rung cannot be built; trying the next");
                    tried.push(Tried {
                        rung: rung.name(),
                        outcome: Outcome::BuildFailed(first_line(&e.to_string())),
                    });
                    continue;
                }
                Err(PrepareError::Io(dir, source)) => {
                    return Err(LadderError::Prepare {
                        rung: rung.name(),
                        dir,
                        source,
                    })
                }
            };
            let (verdict, fresh) = self.verdict(&rung, &program)?;
            if !verdict.passed && rung == Rung::Portable {
                failed_variant.clone_from(&verdict.cpu_variant);
            }
            if verdict.passed && chosen.is_none() {
                let why = why(&rung, &verdict, &tried);
                chosen = Some((
                    program.clone(),
                    RungInUse {
                        name: rung.name(),
                        args: rung.args(),
                        why,
                    },
                ));
            }
            tried.push(Tried {
                rung: rung.name(),
                outcome: Outcome::Verdict { verdict, fresh },
            });
        }
        match chosen {
            Some((server, rung)) => Ok(Climbed {
                server,
                rung,
                tried,
            }),
            None => Err(LadderError::NoRung {
                cpu: self.cpu.describe(),
                tried: tried
                    .iter()
                    .map(|t| format!("  {}", t.describe()))
                    .collect::<Vec<_>>()
                    .join("\n"),
                verdicts: self.cache.join("verdicts"),
            }),
        }
    }

    /// The rung's program, building its flavor first when needed.
    fn prepare(&self, rung: &Rung) -> Result<PathBuf, PrepareError> {
        let bin_dir = build::ensure_build(self.cache, self.pin, rung.flavor())
            .map_err(|e| PrepareError::Build(Box::new(e)))?;
        match rung {
            Rung::PortableWithout(variant) => {
                let dir = self.without_dir(variant);
                without_variant(&bin_dir, &dir, variant)
                    .map_err(|e| PrepareError::Io(dir.clone(), e))?;
                Ok(dir.join(&self.pin.target))
            }
            _ => Ok(bin_dir.join(&self.pin.target)),
        }
    }

    /// This host's copy of the portable build without one variant:
    /// `<cache>/llama.cpp/<key>-portable-<cpu key>-without-<variant>/`.
    fn without_dir(&self, variant: &str) -> PathBuf {
        self.cache.join("llama.cpp").join(format!(
            "{}-{}-without-{variant}",
            Flavor::Portable.dir_name(self.pin),
            self.cpu.key()
        ))
    }

    /// The recorded verdict for this rung's binary on this CPU, else a fresh smoke test.
    fn verdict(&self, rung: &Rung, program: &Path) -> Result<(Verdict, bool), LadderError> {
        let key = VerdictKey::new(&verdict::binary_hash(program)?, &self.cpu, &rung.name());
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
            rung: RungInUse {
                name: rung.name(),
                args: rung.args(),
                why: "smoke test".into(),
            },
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
        Err(smoke::Failure::Timeout { .. }
            | smoke::Failure::BadExit { .. }
            | smoke::Failure::Spawn(_))
    );
    let (passed, reason, tokens_per_second, cpu_variant) = match result {
        Ok(p) => (
            true,
            format!(
                "generated {} tokens, clean exit in {:.1?}",
                smoke::PREDICT,
                p.took
            ),
            Some(p.tokens_per_second),
            p.cpu_variant,
        ),
        Err(f) => {
            tracing::warn!(rung = %installed.rung.name, error = %f, "smoke test failed");
            (
                false,
                f.summary(),
                None,
                f.cpu_variant().map(str::to_string),
            )
        }
    };
    let verdict = Verdict {
        rung: installed.rung.name.clone(),
        passed,
        reason,
        tokens_per_second,
        cpu_variant,
        program: installed.server.clone(),
        cpu: cpu.describe(),
        date: verdict::now(),
    };
    (verdict, conclusive)
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
    let key = VerdictKey::new(
        &verdict::binary_hash(&installed.server)?,
        &cpu,
        &installed.rung.name,
    );
    verdict::store(
        cache,
        &key,
        &Verdict {
            rung: installed.rung.name.clone(),
            passed: false,
            reason: format!("at run time: {reason}"),
            tokens_per_second: None,
            cpu_variant: cpu_variant.map(str::to_string),
            program: installed.server.clone(),
            cpu: cpu.describe(),
            date: verdict::now(),
        },
    )
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
        let Some(bin_dir) = build::existing_build(cache, &pin, rung.flavor()) else {
            continue;
        };
        let program = bin_dir.join(&pin.target);
        let Ok(hash) = verdict::binary_hash(&program) else {
            continue;
        };
        match verdict::load(cache, &VerdictKey::new(&hash, &cpu, &rung.name())) {
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

enum PrepareError {
    Build(Box<BuildError>),
    Io(PathBuf, std::io::Error),
}

fn why(rung: &Rung, verdict: &Verdict, below: &[Tried]) -> String {
    let mut why = format!(
        "the fastest rung that passed the smoke test on this CPU ({})",
        verdict.describe()
    );
    if *rung == Rung::Native {
        why = format!(
            "the native build passed the smoke test on this CPU ({})",
            verdict.describe()
        );
    }
    let failed: Vec<String> = below.iter().map(Tried::describe).collect();
    if !failed.is_empty() {
        why.push_str(&format!("; {}", failed.join("; ")));
    }
    why
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}
