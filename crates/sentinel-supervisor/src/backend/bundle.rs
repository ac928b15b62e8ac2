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

use super::fetch::{self, io_err, FetchError};
use super::lock::FileLock;
use super::model::{self, ModelError};
use super::pin::{ModelPin, SourcePin};
use super::progress::{Step, Unit};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

/// The manifest format this binary writes and reads.
pub const FORMAT: u32 = 1;
/// The manifest's name at the bundle's top.
pub const MANIFEST: &str = "manifest.json";
/// The supervisor binary's name at the bundle's top.
pub const SUPERVISOR: &str = "sentinel-supervisor";
/// The directory holding llama-server and its libraries (the portable rung's `build/bin/`).
pub const SERVER_DIR: &str = "llama.cpp";
/// The directory holding the default model, when bundled.
pub const MODEL_DIR: &str = "models";

/// The target this binary was built for (`x86_64-unknown-linux-gnu`): a bundle installs only
/// on the target it was made for.
pub const TARGET: &str = env!("SENTINEL_TARGET");

/// Text files shipped in every bundle: (path in the bundle, contents, executable).
const SHIPPED: [(&str, &str, bool); 4] = [
    ("config.toml", crate::config::BUILTIN, false),
    (
        "scripts/install-service",
        include_str!("../../../../scripts/install-service"),
        true,
    ),
    (
        "scripts/sentinel-supervisor.service",
        include_str!("../../../../scripts/sentinel-supervisor.service"),
        false,
    ),
    (
        "scripts/com.sentinel.supervisor.plist",
        include_str!("../../../../scripts/com.sentinel.supervisor.plist"),
        false,
    ),
];

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

/// `manifest.json`: what a bundle holds, for whom, and the sha256 of every file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`] of the binary that wrote it.
    pub format: u32,
    /// The version of the bundled `sentinel-supervisor`.
    pub supervisor_version: String,
    /// The llama.cpp pin's cache key (`SourcePin::cache_key`) the bundled llama-server was built
    /// from.
    pub pin_key: String,
    /// The target triple the binaries are for.
    pub target: String,
    /// Where the llama-server files came from (the portable build, or a `--server-dir`).
    pub server_source: String,
    /// The bundled default model's path in the bundle, when there is one.
    pub model: Option<String>,
    /// Every regular file of the bundle but the manifest.
    pub files: Vec<FileEntry>,
    /// Symbolic links between the libraries (`libllama.so -> libllama.so.0`), each to a file
    /// of the same directory listed in `files`.
    #[serde(default)]
    pub links: Vec<LinkEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// `/`-separated, relative to the bundle's top.
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub executable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkEntry {
    pub path: String,
    /// A file name in the link's own directory.
    pub target: String,
}

impl Manifest {
    /// Parses a manifest, refusing a newer format before looking at its fields (a newer format
    /// may have fields this binary does not know).
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, BundleError> {
        let bad = |message: String| BundleError::BadManifest {
            path: path.to_path_buf(),
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let format = value
            .get("format")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| bad("no `format` number".into()))?;
        if format > u64::from(FORMAT) {
            return Err(BundleError::NewerFormat {
                found: u32::try_from(format).unwrap_or(u32::MAX),
            });
        }
        let manifest: Manifest = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        for path in manifest
            .files
            .iter()
            .map(|f| &f.path)
            .chain(manifest.links.iter().map(|l| &l.path))
            .chain(&manifest.model)
        {
            check_relative(path)?;
        }
        for link in &manifest.links {
            let sibling = match link.path.rsplit_once('/') {
                Some((dir, _)) => format!("{dir}/{}", link.target),
                None => link.target.clone(),
            };
            if link.target.contains('/') || manifest.file(&sibling).is_none() {
                return Err(bad(format!(
                    "the link {} points to {}, which is not a file of its directory",
                    link.path, link.target
                )));
            }
        }
        if let Some(model) = &manifest.model {
            if manifest.file(model).is_none() {
                return Err(bad(format!("the model {model} is not among the files")));
            }
        }
        Ok(manifest)
    }

    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    /// Refuses a bundle made for another target or another llama.cpp pin, or without the
    /// llama-server binary.
    pub fn check_compatible(&self, pin: &SourcePin, target: &str) -> Result<(), BundleError> {
        if self.target != target {
            return Err(BundleError::WrongTarget {
                found: self.target.clone(),
                expected: target.to_string(),
            });
        }
        let expected = pin.cache_key();
        if self.pin_key != expected {
            return Err(BundleError::WrongPin {
                found: self.pin_key.clone(),
                expected,
                version: env!("CARGO_PKG_VERSION"),
            });
        }
        let server = format!("{SERVER_DIR}/{}", pin.target);
        if self.file(&server).is_none() {
            return Err(BundleError::NoServer(server));
        }
        Ok(())
    }

    /// The sha256 of the manifest's canonical JSON: the bundle's identity, recorded in the
    /// installed rung's `BUILD-OK` so installing the same bundle again changes nothing.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let json = serde_json::to_vec(self).expect("a manifest serializes");
        hex::encode(Sha256::digest(json))
    }
}

/// A bundle path must be relative and stay inside the bundle.
fn check_relative(path: &str) -> Result<(), BundleError> {
    let p = Path::new(path);
    let plain = !path.is_empty()
        && !path.contains('\\')
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    if plain {
        Ok(())
    } else {
        Err(BundleError::UnsafePath(path.to_string()))
    }
}

/// The archive's name: `sentinel-supervisor-<version>-<arch>-<os>.tar.gz`.
pub fn archive_name() -> String {
    format!("{}.tar.gz", top_dir_name())
}

/// The archive's one top directory: `sentinel-supervisor-<version>-<arch>-<os>`.
fn top_dir_name() -> String {
    format!(
        "{SUPERVISOR}-{}-{}-{}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS
    )
}

/// The portable rung's directory, `<cache>/llama.cpp/<pin-key>-portable/` (the layout shared
/// with `backend::build`'s portable flavor).
pub fn portable_dir(cache: &Path, pin: &SourcePin) -> PathBuf {
    super::build::BuildDir::new(cache, pin, super::build::Flavor::Portable).root
}

fn stamp(rung: &Path) -> PathBuf {
    rung.join("BUILD-OK")
}

fn bin_dir(rung: &Path) -> PathBuf {
    rung.join("build").join("bin")
}

/// The portable rung's `build/bin/`, when a build or an install of it completed.
pub fn existing_portable(cache: &Path, pin: &SourcePin) -> Option<PathBuf> {
    let rung = portable_dir(cache, pin);
    let bin = bin_dir(&rung);
    (stamp(&rung).is_file() && bin.join(&pin.target).is_file()).then_some(bin)
}

/// What [`create`] packs.
#[derive(Debug, Clone)]
pub struct BundleOptions {
    /// The directory the archive is written to (created when missing).
    pub out: PathBuf,
    /// The supervisor binary (the running one).
    pub supervisor: PathBuf,
    /// The directory holding llama-server and its libraries.
    pub server_dir: PathBuf,
    /// Where `server_dir` came from, recorded in the manifest.
    pub server_source: String,
    /// The default model file, when it is bundled.
    pub model: Option<PathBuf>,
}

/// A written bundle.
#[derive(Debug)]
pub struct Written {
    pub archive: PathBuf,
    pub manifest: Manifest,
    /// The archive's size.
    pub bytes: u64,
}

enum Source {
    File(PathBuf),
    Text(&'static str),
}

struct Item {
    path: String,
    source: Source,
    executable: bool,
}

/// Writes `<out>/sentinel-supervisor-<version>-<arch>-<os>.tar.gz` (through a `.partial` file,
/// renamed when complete).
pub fn create(options: &BundleOptions, pin: &SourcePin) -> Result<Written, BundleError> {
    let (mut items, links) = server_items(&options.server_dir, &pin.target)?;
    items.insert(
        0,
        Item {
            path: SUPERVISOR.to_string(),
            source: Source::File(options.supervisor.clone()),
            executable: true,
        },
    );
    let model = match &options.model {
        Some(path) => {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| BundleError::UnsafePath(path.display().to_string()))?;
            let inner = format!("{MODEL_DIR}/{name}");
            items.push(Item {
                path: inner.clone(),
                source: Source::File(path.clone()),
                executable: false,
            });
            Some(inner)
        }
        None => None,
    };
    for (path, text, executable) in SHIPPED {
        items.push(Item {
            path: path.to_string(),
            source: Source::Text(text),
            executable,
        });
    }

    let total: u64 = items
        .iter()
        .map(|i| match &i.source {
            Source::File(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            Source::Text(t) => t.len() as u64,
        })
        .sum();
    let step = Step::bar("hash", total, Unit::Bytes);
    let mut files = Vec::with_capacity(items.len());
    for item in &items {
        let (size, sha256) = match &item.source {
            Source::File(p) => {
                let f = std::fs::File::open(p).map_err(io_err(p))?;
                let size = f.metadata().map_err(io_err(p))?.len();
                (size, fetch::sha256_reader(step.wrap_read(f), p)?)
            }
            Source::Text(t) => {
                use sha2::{Digest, Sha256};
                step.inc(t.len() as u64);
                (t.len() as u64, hex::encode(Sha256::digest(t.as_bytes())))
            }
        };
        files.push(FileEntry {
            path: item.path.clone(),
            size,
            sha256,
            executable: item.executable,
        });
    }
    step.finish(format!("{} files", files.len()));
    let manifest = Manifest {
        format: FORMAT,
        supervisor_version: env!("CARGO_PKG_VERSION").to_string(),
        pin_key: pin.cache_key(),
        target: TARGET.to_string(),
        server_source: options.server_source.clone(),
        model,
        files,
        links,
    };

    std::fs::create_dir_all(&options.out).map_err(io_err(&options.out))?;
    let archive = options.out.join(archive_name());
    let partial = options.out.join(format!(".{}.partial", archive_name()));
    let step = Step::bar("pack", total, Unit::Bytes);
    write_archive(&partial, &manifest, &items, &step)?;
    std::fs::rename(&partial, &archive).map_err(io_err(&archive))?;
    let bytes = std::fs::metadata(&archive).map_err(io_err(&archive))?.len();
    step.finish(format!("{} ({} bytes)", archive.display(), bytes));
    Ok(Written {
        archive,
        manifest,
        bytes,
    })
}

/// llama-server and the shared libraries beside it (`lib*.so*`, `lib*.dylib`): other build
/// outputs are left out. A library symlink to a file of the same directory stays a link; any
/// other symlink is packed as the file it points to.
fn server_items(dir: &Path, target: &str) -> Result<(Vec<Item>, Vec<LinkEntry>), BundleError> {
    if !dir.join(target).is_file() {
        return Err(BundleError::NoServerInDir {
            dir: dir.to_path_buf(),
            target: target.to_string(),
        });
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            n == target || (n.starts_with("lib") && (n.contains(".so") || n.ends_with(".dylib")))
        })
        .collect();
    names.sort();
    let canonical_dir = std::fs::canonicalize(dir).ok();
    let mut items = Vec::new();
    let mut links = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let inner = format!("{SERVER_DIR}/{name}");
        // A link (or chain of links: `libggml.so -> libggml.so.0 -> libggml.so.0.25.3`) to a
        // file of the same directory becomes one link straight to that file.
        let sibling_link = std::fs::symlink_metadata(&path)
            .ok()
            .filter(|m| m.file_type().is_symlink())
            .and_then(|_| std::fs::canonicalize(&path).ok())
            .filter(|t| t.is_file() && t.parent() == canonical_dir.as_deref())
            .and_then(|t| t.file_name()?.to_str().map(str::to_string));
        if let (Some(link_target), false) = (sibling_link, name == target) {
            links.push(LinkEntry {
                path: inner,
                target: link_target,
            });
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(io_err(&path))?;
        if !meta.is_file() {
            continue;
        }
        items.push(Item {
            path: inner,
            source: Source::File(path),
            executable: is_executable(&meta),
        });
    }
    Ok((items, links))
}

#[cfg(unix)]
fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &std::fs::Metadata) -> bool {
    false
}

fn write_archive(
    path: &Path,
    manifest: &Manifest,
    items: &[Item],
    step: &Step,
) -> Result<(), BundleError> {
    let file = std::fs::File::create(path).map_err(io_err(path))?;
    let gz = flate2::write::GzEncoder::new(
        std::io::BufWriter::new(file),
        flate2::Compression::default(),
    );
    let mut tar = tar::Builder::new(gz);
    let top = top_dir_name();
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = |size: u64, executable: bool| {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(if executable { 0o755 } else { 0o644 });
        h.set_mtime(mtime);
        h
    };
    let w = |e: std::io::Error| BundleError::Io(io_err(path)(e));
    let json = serde_json::to_vec_pretty(manifest).expect("a manifest serializes");
    tar.append_data(
        &mut header(json.len() as u64, false),
        format!("{top}/{MANIFEST}"),
        json.as_slice(),
    )
    .map_err(w)?;
    for (item, entry) in items.iter().zip(&manifest.files) {
        let name = format!("{top}/{}", item.path);
        match &item.source {
            Source::File(p) => {
                let f = std::fs::File::open(p).map_err(io_err(p))?;
                // The size hashed: a file that changed since would make a bad bundle.
                tar.append_data(
                    &mut header(entry.size, item.executable),
                    name,
                    step.wrap_read(f.take(entry.size)),
                )
                .map_err(w)?;
            }
            Source::Text(t) => {
                step.inc(t.len() as u64);
                tar.append_data(&mut header(entry.size, item.executable), name, t.as_bytes())
                    .map_err(w)?;
            }
        }
    }
    for link in &manifest.links {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_mtime(mtime);
        tar.append_link(&mut h, format!("{top}/{}", link.path), &link.target)
            .map_err(w)?;
    }
    let gz = tar.into_inner().map_err(w)?;
    let mut out = gz.finish().map_err(w)?;
    out.flush().map_err(w)?;
    out.into_inner()
        .map_err(|e| w(e.into_error()))?
        .sync_all()
        .map_err(w)?;
    Ok(())
}

/// An opened bundle: its top directory and manifest (extracted into a scratch directory when
/// it was an archive, removed when this is dropped).
#[derive(Debug)]
pub struct Bundle {
    pub root: PathBuf,
    pub manifest: Manifest,
    /// Whether `root` is our own scratch copy (its files may be moved instead of copied).
    scratch: Option<tempfile::TempDir>,
}

/// Opens a bundle: a `.tar.gz` (extracted into a scratch directory under `scratch_in`), or a
/// directory holding `manifest.json` (or holding the one directory that does).
pub fn open(path: &Path, scratch_in: &Path) -> Result<Bundle, BundleError> {
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

fn find_root(dir: &Path) -> Result<PathBuf, BundleError> {
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

fn extract(archive: &Path, dest: &Path) -> Result<(), BundleError> {
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
    pub fn verify(&self, pin: &SourcePin, target: &str) -> Result<(), BundleError> {
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
pub struct Installed {
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
pub fn install(
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

/// The bundle laid out beside the running binary (its symlinks resolved): the `.deb`'s
/// `/usr/lib/sentinel-supervisor/`, or an extracted archive run in place.
pub fn packaged_backend() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?.canonicalize().ok()?;
    let dir = exe.parent()?;
    dir.join(MANIFEST).is_file().then(|| dir.to_path_buf())
}

/// The portable llama-server for setup: the installed portable rung, else the bundle packaged
/// beside this binary, installed now (verified, once); `None` when there is neither.
pub fn portable_server(
    cache: &Path,
    pin: &SourcePin,
    model_pin: &ModelPin,
) -> Result<Option<PathBuf>, BundleError> {
    if let Some(bin) = existing_portable(cache, pin) {
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
