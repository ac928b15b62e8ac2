//! The saved slots on disk: `<cache>/slots/<model-key>-<prefix-hash>.bin` with its
//! measurements beside it (`.json`), in a directory only the service user can enter, opened
//! without following symlinks (any client of the backend can name a file there).

use super::{short_hash, Prefix};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What a saved slot depends on besides the prefix: the llama-server binary and the model
/// (path, size and modification time of each; hashing a multi-GB model at every start would
/// cost more than the prefill it saves).
pub(crate) fn model_key(server: &Path, model: &Path) -> String {
    let identity = |p: &Path| {
        let meta = std::fs::metadata(p).ok();
        let size = meta.as_ref().map(std::fs::Metadata::len).unwrap_or(0);
        let mtime = meta
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{}\0{size}\0{mtime}", p.display())
    };
    short_hash(&[identity(server).as_bytes(), identity(model).as_bytes()])
}

/// What was measured for a saved slot (the `.json` beside the `.bin`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct SlotRecord {
    /// Wall time of the prefill that produced the slot.
    pub prefill_ms: f64,
    /// Wall time of the last restore, when there was one.
    pub restore_ms: Option<f64>,
}

impl SlotRecord {
    /// Whether restoring is worth it: no restore measured yet, or the last one beat the prefill.
    pub(crate) fn restore_pays(&self) -> bool {
        self.restore_ms.map_or(true, |r| r < self.prefill_ms)
    }
}

/// Why the slot directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SlotDirError {
    #[error("cannot create the slot directory {dir}: {source} (check the permissions of backend.cache_dir)")]
    Create {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("the slot directory {dir} is a symlink; remove it (the supervisor creates the directory itself, 0700)")]
    Symlink { dir: PathBuf },
    #[error("the slot directory {dir} is not a directory; remove it or move backend.cache_dir")]
    NotADirectory { dir: PathBuf },
    #[error("the slot directory {dir} is owned by uid {owner}, not by this service's user (uid {me}); remove it, or chown it to the service user")]
    Owner { dir: PathBuf, owner: u32, me: u32 },
    #[error("cannot make the slot directory {dir} private (0700): {source}")]
    Mode {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Creates `dir` (and its parents) for `--slot-save-path`: 0700, owned by this process's user,
/// not a symlink; an existing one with a looser mode is tightened to 0700.
pub(crate) fn secure_slot_dir(dir: &Path) -> Result<(), SlotDirError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let at = || dir.to_path_buf();
    let create = |source| SlotDirError::Create { dir: at(), source };
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(create)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(create(e)),
        _ => Ok(()),
    }?;
    let meta = std::fs::symlink_metadata(dir).map_err(create)?;
    if meta.file_type().is_symlink() {
        return Err(SlotDirError::Symlink { dir: at() });
    }
    if !meta.is_dir() {
        return Err(SlotDirError::NotADirectory { dir: at() });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(SlotDirError::Owner {
            dir: at(),
            owner: meta.uid(),
            me,
        });
    }
    if meta.mode() & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|source| SlotDirError::Mode { dir: at(), source })?;
    }
    Ok(())
}

/// Opens a file in the slot directory without following a symlink (`O_NOFOLLOW`).
fn open_nofollow(path: &Path, write: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .create(write)
        .truncate(write)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
}

/// The slot files of one model in `<cache>/slots/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotStore {
    pub dir: PathBuf,
    pub model_key: String,
}

impl SlotStore {
    /// `<model-key>-<prefix-hash>.bin`, as llama-server's `filename` (a bare name, relative to
    /// `--slot-save-path`).
    pub(crate) fn file_name(&self, prefix: &Prefix) -> String {
        format!("{}-{}.bin", self.model_key, prefix.hash)
    }

    pub(super) fn record_path(&self, prefix: &Prefix) -> PathBuf {
        self.dir.join(self.file_name(prefix)).with_extension("json")
    }

    /// The record of a usable saved slot for `prefix` (its file exists).
    pub(crate) fn record(&self, prefix: &Prefix) -> Option<SlotRecord> {
        let bin = std::fs::symlink_metadata(self.dir.join(self.file_name(prefix))).ok()?;
        if !bin.file_type().is_file() {
            return None;
        }
        self.measured(prefix)
    }

    /// What was measured for `prefix`, whether or not its slot file is still there.
    pub(crate) fn measured(&self, prefix: &Prefix) -> Option<SlotRecord> {
        let file = open_nofollow(&self.record_path(prefix), false).ok()?;
        serde_json::from_reader(std::io::BufReader::new(file)).ok()
    }

    pub(crate) fn write_record(&self, prefix: &Prefix, record: SlotRecord) -> std::io::Result<()> {
        let text = serde_json::to_string(&record).map_err(std::io::Error::other)?;
        std::io::Write::write_all(
            &mut open_nofollow(&self.record_path(prefix), true)?,
            text.as_bytes(),
        )
    }

    /// Drops the slot file (the record stays, so a slower restore is not tried again).
    pub(crate) fn drop_slot(&self, prefix: &Prefix) {
        let _ = std::fs::remove_file(self.dir.join(self.file_name(prefix)));
    }

    /// Removes every slot file and record that is not one of `keep`'s: those of another model
    /// or binary, or of a prefix no longer configured (or changed). Returns how many.
    pub(crate) fn prune(&self, keep: &[Prefix]) -> usize {
        let wanted: Vec<String> = keep.iter().map(|p| self.file_name(p)).collect();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let ext = path.extension().and_then(|e| e.to_str());
            if !matches!(ext, Some("bin" | "json")) {
                continue;
            }
            let bin = path.with_extension("bin");
            let name = bin.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !wanted.iter().any(|w| w == name) && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}
