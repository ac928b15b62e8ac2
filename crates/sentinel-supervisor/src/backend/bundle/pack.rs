//! Packing a bundle ([`create`]): the supervisor binary, llama-server with the libraries beside
//! it, optionally the default model, and the shipped text files, hashed into the manifest and
//! written into one `.tar.gz` under the archive's one top directory.

use super::manifest::{FileEntry, LinkEntry, Manifest};
use super::{
    archive_name, top_dir_name, BundleError, FORMAT, MANIFEST, MODEL_DIR, SERVER_DIR, SUPERVISOR,
    TARGET,
};
use crate::backend::fetch::{self, io_err};
use crate::backend::pin::SourcePin;
use crate::backend::progress::{Step, Unit};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Text files shipped in every bundle: (path in the bundle, contents, executable).
const SHIPPED: [(&str, &str, bool); 4] = [
    ("config.toml", crate::config::BUILTIN, false),
    (
        "scripts/install-service",
        include_str!("../../../../../scripts/install-service"),
        true,
    ),
    (
        "scripts/sentinel-supervisor.service",
        include_str!("../../../../../scripts/sentinel-supervisor.service"),
        false,
    ),
    (
        "scripts/com.sentinel.supervisor.plist",
        include_str!("../../../../../scripts/com.sentinel.supervisor.plist"),
        false,
    ),
];

/// What [`create`] packs.
#[derive(Debug, Clone)]
pub(crate) struct BundleOptions {
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
pub(crate) struct Written {
    pub archive: PathBuf,
    pub manifest: Manifest,
    /// The archive's size.
    pub bytes: u64,
}

/// Where an item's bytes come from.
enum Source {
    File(PathBuf),
    Text(&'static str),
}

/// One file of the bundle, before it is hashed.
struct Item {
    /// `/`-separated, relative to the bundle's top.
    path: String,
    source: Source,
    executable: bool,
}

impl Item {
    /// Its size as it stands now, for the progress bars.
    fn len(&self) -> u64 {
        self.open().map_or(0, |(size, _)| size)
    }

    /// Its size and its bytes, from the start.
    fn open(&self) -> Result<(u64, Box<dyn Read + '_>), BundleError> {
        match &self.source {
            Source::File(p) => {
                let f = std::fs::File::open(p).map_err(io_err(p))?;
                let size = f.metadata().map_err(io_err(p))?.len();
                Ok((size, Box::new(f)))
            }
            Source::Text(t) => Ok((t.len() as u64, Box::new(t.as_bytes()))),
        }
    }

    /// The file it is read from, or its place in the bundle for a shipped text.
    fn origin(&self) -> &Path {
        match &self.source {
            Source::File(p) => p,
            Source::Text(_) => Path::new(&self.path),
        }
    }
}

/// Writes `<out>/sentinel-supervisor-<version>-<arch>-<os>.tar.gz` (through a `.partial` file,
/// renamed when complete).
pub(crate) fn create(options: &BundleOptions, pin: &SourcePin) -> Result<Written, BundleError> {
    let (items, links, model) = gather(options, &pin.target)?;
    let total: u64 = items.iter().map(Item::len).sum();
    let manifest = Manifest {
        format: FORMAT,
        supervisor_version: env!("CARGO_PKG_VERSION").to_string(),
        pin_key: pin.cache_key(),
        target: TARGET.to_string(),
        server_source: options.server_source.clone(),
        model,
        files: hash(&items, total)?,
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

/// Everything [`create`] packs, in the manifest's order (the supervisor, the server's files,
/// the model, the shipped texts), with the library links and the model's path in the bundle.
type Contents = (Vec<Item>, Vec<LinkEntry>, Option<String>);

fn gather(options: &BundleOptions, target: &str) -> Result<Contents, BundleError> {
    let (server, links) = server_items(&options.server_dir, target)?;
    let mut items = vec![Item {
        path: SUPERVISOR.to_string(),
        source: Source::File(options.supervisor.clone()),
        executable: true,
    }];
    items.extend(server);
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
    items.extend(SHIPPED.map(|(path, text, executable)| Item {
        path: path.to_string(),
        source: Source::Text(text),
        executable,
    }));
    Ok((items, links, model))
}

/// The manifest's entry of every item (a `hash` progress step over `total` bytes).
fn hash(items: &[Item], total: u64) -> Result<Vec<FileEntry>, BundleError> {
    let step = Step::bar("hash", total, Unit::Bytes);
    let mut files = Vec::with_capacity(items.len());
    for item in items {
        let (size, reader) = item.open()?;
        files.push(FileEntry {
            path: item.path.clone(),
            size,
            sha256: fetch::sha256_reader(step.wrap_read(reader), item.origin())?,
            executable: item.executable,
        });
    }
    step.finish(format!("{} files", files.len()));
    Ok(files)
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
            executable: meta.permissions().mode() & 0o111 != 0,
        });
    }
    Ok((items, links))
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
    let header = |size: u64, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(mtime);
        h
    };
    let w = |e: std::io::Error| BundleError::Io(io_err(path)(e));
    let json = serde_json::to_vec_pretty(manifest).expect("a manifest serializes");
    tar.append_data(
        &mut header(json.len() as u64, 0o644),
        format!("{top}/{MANIFEST}"),
        json.as_slice(),
    )
    .map_err(w)?;
    for (item, entry) in items.iter().zip(&manifest.files) {
        let (_, reader) = item.open()?;
        let mode = if item.executable { 0o755 } else { 0o644 };
        // The size hashed: a file that changed since would make a bad bundle.
        tar.append_data(
            &mut header(entry.size, mode),
            format!("{top}/{}", item.path),
            step.wrap_read(reader.take(entry.size)),
        )
        .map_err(w)?;
    }
    for link in &manifest.links {
        let mut h = header(0, 0o777);
        h.set_entry_type(tar::EntryType::Symlink);
        tar.append_link(&mut h, format!("{top}/{}", link.path), &link.target)
            .map_err(w)?;
    }
    let out = tar.into_inner().map_err(w)?.finish().map_err(w)?;
    // `into_inner` writes out what is buffered.
    let file = out.into_inner().map_err(|e| w(e.into_error()))?;
    file.sync_all().map_err(w)?;
    Ok(())
}
