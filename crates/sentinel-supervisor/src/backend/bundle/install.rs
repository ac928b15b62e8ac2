//! Installing a bundle: [`open`] one (an archive, extracted into a scratch directory, or an
//! extracted directory), [`Bundle::verify`] it against this binary and its manifest, and
//! [`install`] its llama.cpp files as the cache's portable rung (assembled beside it, then
//! renamed into place) and its model where the default model is looked for.

use super::manifest::Manifest;
use super::{bin_dir, portable_dir, stamp, BundleError, MANIFEST, SERVER_DIR, TARGET};
use crate::backend::fetch::{self, io_err};
use crate::backend::lock::FileLock;
use crate::backend::model;
use crate::backend::pin::{ModelPin, SourcePin};
use crate::backend::progress::{Step, Unit};
use std::io::Read;
use std::path::{Path, PathBuf};

/// An opened bundle: its top directory and manifest (extracted into a scratch directory when
/// it was an archive, removed when this is dropped).
#[derive(Debug)]
pub(crate) struct Bundle {
    pub root: PathBuf,
    pub manifest: Manifest,
    /// Whether `root` is our own scratch copy (its files may be moved instead of copied).
    scratch: Option<tempfile::TempDir>,
}

/// Opens a bundle: a `.tar.gz` (extracted into a scratch directory under `scratch_in`), or a
/// directory holding `manifest.json` (or holding the one directory that does).
pub(crate) fn open(path: &Path, scratch_in: &Path) -> Result<Bundle, BundleError> {
    let meta = std::fs::metadata(path).map_err(|_| BundleError::NotABundle(path.to_path_buf()))?;
    let (root, scratch) = if meta.is_dir() {
        (find_root(path)?, None)
    } else {
        std::fs::create_dir_all(scratch_in).map_err(io_err(scratch_in))?;
        let scratch = tempfile::Builder::new()
            .prefix(".bundle-")
            .tempdir_in(scratch_in)
            .map_err(io_err(scratch_in))?;
        extract(path, scratch.path())?;
        let root = find_root(scratch.path()).map_err(|e| match e {
            BundleError::NotABundle(_) => BundleError::NotABundle(path.to_path_buf()),
            other => other,
        })?;
        (root, Some(scratch))
    };
    let manifest_path = root.join(MANIFEST);
    let text = std::fs::read_to_string(&manifest_path).map_err(io_err(&manifest_path))?;
    let manifest = Manifest::parse(&text, &manifest_path)?;
    Ok(Bundle {
        root,
        manifest,
        scratch,
    })
}

/// The bundle's top: `dir` itself when it holds the manifest, else its one subdirectory that
/// does (an archive extracted as it is, with its top directory).
pub(super) fn find_root(dir: &Path) -> Result<PathBuf, BundleError> {
    if dir.join(MANIFEST).is_file() {
        return Ok(dir.to_path_buf());
    }
    let subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    match subdirs.as_slice() {
        [only] if only.join(MANIFEST).is_file() => Ok(only.clone()),
        _ => Err(BundleError::NotABundle(dir.to_path_buf())),
    }
}

/// Unpacks a gzip archive into `dest` (an `extract` progress step); anything else is not a
/// bundle.
pub(super) fn extract(archive: &Path, dest: &Path) -> Result<(), BundleError> {
    let ext = |source| BundleError::Extract {
        archive: archive.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(archive).map_err(ext)?;
    let mut magic = [0u8; 2];
    let gz = (&file).read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    if !gz {
        return Err(BundleError::NotABundle(archive.to_path_buf()));
    }
    let file = std::fs::File::open(archive).map_err(ext)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let step = Step::bar("extract", len, Unit::Bytes);
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(step.wrap_read(file)));
    // `unpack` refuses entries that would land outside `dest`.
    tar.unpack(dest).map_err(ext)?;
    step.finish(format!("{} into {}", archive.display(), dest.display()));
    Ok(())
}

impl Bundle {
    /// Checks the bundle is for this binary (target, pin, format) and that every file the
    /// manifest lists is there with its sha256.
    pub(crate) fn verify(&self, pin: &SourcePin, target: &str) -> Result<(), BundleError> {
        self.manifest.check_compatible(pin, target)?;
        let total = self.manifest.files.iter().map(|f| f.size).sum();
        let step = Step::bar("verify", total, Unit::Bytes);
        for entry in &self.manifest.files {
            let path = self.root.join(&entry.path);
            let file = match std::fs::File::open(&path) {
                Ok(f) if f.metadata().map(|m| m.is_file()).unwrap_or(false) => f,
                _ => {
                    return Err(BundleError::Missing {
                        file: entry.path.clone(),
                        root: self.root.clone(),
                    })
                }
            };
            let actual = fetch::sha256_reader(step.wrap_read(file), &path)?;
            if !actual.eq_ignore_ascii_case(&entry.sha256) {
                return Err(BundleError::Corrupted {
                    file: entry.path.clone(),
                    expected: entry.sha256.clone(),
                    actual,
                });
            }
        }
        step.finish(format!(
            "{} files match {MANIFEST} ({} from {})",
            self.manifest.files.len(),
            self.manifest.pin_key,
            self.manifest.server_source
        ));
        Ok(())
    }
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Installed {
    /// The installed llama-server.
    pub server: PathBuf,
    /// The installed default model, when the bundle holds one.
    pub model: Option<PathBuf>,
    /// False when this very bundle was installed already (nothing changed).
    pub changed: bool,
}

/// Verifies `bundle` and installs it into `cache`: the llama.cpp files as the portable rung
/// (assembled in a scratch directory, then renamed into place, so an interrupted install leaves
/// no half rung), the default model where `model::ensure_default` finds it.
pub(crate) fn install(
    bundle: &Bundle,
    cache: &Path,
    pin: &SourcePin,
    model_pin: &ModelPin,
) -> Result<Installed, BundleError> {
    bundle.verify(pin, TARGET)?;
    let model = match &bundle.manifest.model {
        Some(inner) => Some(install_model(bundle, inner, cache, model_pin)?),
        None => None,
    };
    let rung = portable_dir(cache, pin);
    let parent = rung.parent().expect("the rung has a parent").to_path_buf();
    std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let _lock = FileLock::acquire(&parent.join(format!(
        ".{}.install.lock",
        rung.file_name().unwrap_or_default().to_string_lossy()
    )))?;
    let digest = bundle.manifest.digest();
    let server = bin_dir(&rung).join(&pin.target);
    if installed_digest(&rung).as_deref() == Some(digest.as_str())
        && bundle_files_present(&bundle.manifest, &bin_dir(&rung))
    {
        tracing::info!(rung = %rung.display(), "this bundle is installed already");
        return Ok(Installed {
            server,
            model,
            changed: false,
        });
    }
    let fail = |source| BundleError::Install {
        dir: rung.clone(),
        source,
    };
    let staging = tempfile::Builder::new()
        .prefix(&format!(
            ".{}.staging-",
            rung.file_name().unwrap_or_default().to_string_lossy()
        ))
        .tempdir_in(&parent)
        .map_err(fail)?;
    let bin = bin_dir(staging.path());
    std::fs::create_dir_all(&bin).map_err(fail)?;
    let prefix = format!("{SERVER_DIR}/");
    for entry in &bundle.manifest.files {
        let Some(name) = entry.path.strip_prefix(&prefix) else {
            continue;
        };
        place(
            &bundle.root.join(&entry.path),
            &bin.join(name),
            bundle.scratch.is_some(),
            entry.executable,
        )
        .map_err(fail)?;
    }
    for link in &bundle.manifest.links {
        if let Some(name) = link.path.strip_prefix(&prefix) {
            symlink(&link.target, &bin.join(name)).map_err(fail)?;
        }
    }
    let m = &bundle.manifest;
    let text = format!(
        "installed from a bundle (not built here): sentinel-supervisor {} for {}, llama.cpp {}\n\
         llama-server from: {}\nmanifest-sha256: {digest}\n",
        m.supervisor_version, m.target, m.pin_key, m.server_source
    );
    std::fs::write(stamp(staging.path()), text).map_err(fail)?;
    swap_into_place(staging, &rung).map_err(fail)?;
    tracing::info!(rung = %rung.display(), server_source = %m.server_source, "bundle installed as the portable llama-server");
    Ok(Installed {
        server,
        model,
        changed: true,
    })
}

/// The `manifest-sha256:` an installed rung's `BUILD-OK` records (a bundle install's).
fn installed_digest(rung: &Path) -> Option<String> {
    let text = std::fs::read_to_string(stamp(rung)).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("manifest-sha256: "))
        .map(|s| s.trim().to_string())
}

fn bundle_files_present(manifest: &Manifest, bin: &Path) -> bool {
    let prefix = format!("{SERVER_DIR}/");
    manifest
        .files
        .iter()
        .filter_map(|f| Some((f.path.strip_prefix(&prefix)?, f.size)))
        .all(|(name, size)| {
            std::fs::metadata(bin.join(name))
                .map(|m| m.is_file() && m.len() == size)
                .unwrap_or(false)
        })
}

/// Renames the assembled `staging` to `rung`, moving an existing rung aside first (a running
/// llama-server keeps its open files).
fn swap_into_place(staging: tempfile::TempDir, rung: &Path) -> std::io::Result<()> {
    let staged = staging.keep();
    let old = rung.with_file_name(format!(
        ".{}.old-{}",
        rung.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let had_old = rung.exists();
    if had_old {
        std::fs::rename(rung, &old)?;
    }
    if let Err(e) = std::fs::rename(&staged, rung) {
        if had_old {
            let _ = std::fs::rename(&old, rung);
        }
        let _ = std::fs::remove_dir_all(&staged);
        return Err(e);
    }
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

/// Moves (our own scratch copy) or copies one file, then sets its mode.
fn place(from: &Path, to: &Path, movable: bool, executable: bool) -> std::io::Result<()> {
    if !(movable && std::fs::rename(from, to).is_ok()) {
        std::fs::copy(from, to)?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = if executable { 0o755 } else { 0o644 };
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(unix)]
fn symlink(target: &str, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(target: &str, link: &Path) -> std::io::Result<()> {
    std::fs::copy(link.with_file_name(target), link).map(|_| ())
}

/// Puts the bundled model where `model::ensure_default` looks; it must be the pinned one.
fn install_model(
    bundle: &Bundle,
    inner: &str,
    cache: &Path,
    pin: &ModelPin,
) -> Result<PathBuf, BundleError> {
    let entry = bundle
        .manifest
        .file(inner)
        .expect("Manifest::parse checks the model is a file");
    let name = inner.rsplit('/').next().unwrap_or(inner);
    if !entry.sha256.eq_ignore_ascii_case(&pin.sha256) || name != pin.file {
        return Err(BundleError::ModelNotPinned {
            file: inner.to_string(),
            actual: entry.sha256.clone(),
            expected: pin.sha256.clone(),
            pinned: pin.file.clone(),
        });
    }
    let source = bundle.root.join(inner);
    let movable = bundle.scratch.is_some();
    Ok(model::install_default(cache, pin, |to| {
        place(&source, to, movable, false)
    })?)
}
