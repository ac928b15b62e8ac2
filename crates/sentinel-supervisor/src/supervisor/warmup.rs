//! Warm prefixes across restarts: after every backend start (the first, each restart, and the
//! new backend of a blue-green reload), before the lifecycle reports it ready, each configured
//! prefix (`backend.warm_prefixes`) is put in the backend's prompt cache, so the first real task
//! behind it pays only for its own suffix.
//!
//! A prefix is the system message the security tools send in front of their tasks, so the
//! warm-up is a chat completion with that system message (the same chat template, hence the
//! same token prefix as the real requests), one token to generate and `cache_prompt` on. The
//! first prefix is also saved with llama-server's slot save (`--slot-save-path`) to
//! `<cache>/slots/<model-key>-<prefix-hash>.bin`, with the prefill's time beside it
//! (`.json`); the next start restores that file instead of prefilling, as long as restoring
//! measures faster than the recorded prefill (else the file is dropped and it prefills). The
//! others are prefilled in order, each one pushing the previous into llama-server's host-RAM
//! prompt cache (`--cache-ram`). The whole warm-up counts as governor activity, so the duty
//! cycle throttles it like a request.
//!
//! The slot directory is llama-server's `--slot-save-path`, where any client of the backend
//! could name a file: [`secure_slot_dir`] creates it 0700, owned by the service user, and
//! refuses a symlink; the supervisor opens the files in it without following symlinks.

use super::state::BackendInfo;
use crate::backend::setup::Installed;
use crate::governor::Activity;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The user message behind the prefix in the warm-up request. Anything short works: llama-server
/// reuses the longest common token prefix, which ends where the real task's text begins.
pub const WARM_SUFFIX: &str = ".";

/// Changes whenever the warm-up request's shape changes, so slot files saved from an older
/// shape are not restored (part of the prefix hash).
const REQUEST_SHAPE: &str = "chat-system-v1";

#[derive(Debug, thiserror::Error)]
pub enum WarmupError {
    #[error(
        "cannot read the warm prefix {path}: {source} (fix or remove it in backend.warm_prefixes)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the warm prefix {path} is empty (write the system text the tools send, or remove it from backend.warm_prefixes)")]
    Empty { path: PathBuf },
    #[error("{what} failed: {source}")]
    Request {
        what: &'static str,
        source: reqwest::Error,
    },
    #[error("{what} answered {status}: {body}")]
    Status {
        what: &'static str,
        status: reqwest::StatusCode,
        body: String,
    },
}

/// One configured prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix {
    pub path: PathBuf,
    pub text: String,
    /// 16 hex digits of the SHA-256 of the request shape and the text.
    pub hash: String,
}

impl Prefix {
    pub fn new(path: PathBuf, text: String) -> Prefix {
        let hash = short_hash(&[REQUEST_SHAPE.as_bytes(), text.as_bytes()]);
        Prefix { path, text, hash }
    }

    /// Reads a prefix file.
    pub fn read(path: &Path) -> Result<Prefix, WarmupError> {
        let text = std::fs::read_to_string(path).map_err(|source| WarmupError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if text.trim().is_empty() {
            return Err(WarmupError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Prefix::new(path.to_path_buf(), text))
    }
}

/// The body of the warm-up request for `prefix`: the prefix as the system message, as the
/// tools send it, one token to generate, kept in the cache.
pub fn chat_request(prefix: &str) -> serde_json::Value {
    serde_json::json!({
        "messages": [
            {"role": "system", "content": prefix},
            {"role": "user", "content": WARM_SUFFIX},
        ],
        "max_tokens": 1,
        "temperature": 0,
        "stream": false,
        "cache_prompt": true,
    })
}

/// 16 hex digits of the SHA-256 of `parts` (each length-prefixed, so parts cannot run together).
fn short_hash(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..8])
}

/// What a saved slot depends on besides the prefix: the llama-server binary and the model
/// (path, size and modification time of each; hashing a multi-GB model at every start would
/// cost more than the prefill it saves).
pub fn model_key(server: &Path, model: &Path) -> String {
    let identity = |p: &Path| {
        let meta = std::fs::metadata(p).ok();
        let size = meta.as_ref().map(|m| m.len()).unwrap_or(0);
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
pub struct SlotRecord {
    /// Wall time of the prefill that produced the slot.
    pub prefill_ms: f64,
    /// Wall time of the last restore, when there was one.
    pub restore_ms: Option<f64>,
}

impl SlotRecord {
    /// Whether restoring is worth it: no restore measured yet, or the last one beat the prefill.
    pub fn restore_pays(&self) -> bool {
        self.restore_ms.map_or(true, |r| r < self.prefill_ms)
    }
}

/// Why the slot directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SlotDirError {
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
pub fn secure_slot_dir(dir: &Path) -> Result<(), SlotDirError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|source| SlotDirError::Create {
            dir: dir.to_path_buf(),
            source,
        })?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(SlotDirError::Create {
                dir: dir.to_path_buf(),
                source,
            })
        }
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|source| SlotDirError::Create {
        dir: dir.to_path_buf(),
        source,
    })?;
    let at = || dir.to_path_buf();
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
pub struct SlotStore {
    pub dir: PathBuf,
    pub model_key: String,
}

impl SlotStore {
    /// `<model-key>-<prefix-hash>.bin`, as llama-server's `filename` (a bare name, relative to
    /// `--slot-save-path`).
    pub fn file_name(&self, prefix: &Prefix) -> String {
        format!("{}-{}.bin", self.model_key, prefix.hash)
    }

    fn record_path(&self, prefix: &Prefix) -> PathBuf {
        self.dir.join(self.file_name(prefix)).with_extension("json")
    }

    /// The record of a usable saved slot for `prefix` (its file exists).
    pub fn record(&self, prefix: &Prefix) -> Option<SlotRecord> {
        let bin = std::fs::symlink_metadata(self.dir.join(self.file_name(prefix))).ok()?;
        if !bin.file_type().is_file() {
            return None;
        }
        self.measured(prefix)
    }

    /// What was measured for `prefix`, whether or not its slot file is still there.
    pub fn measured(&self, prefix: &Prefix) -> Option<SlotRecord> {
        let file = open_nofollow(&self.record_path(prefix), false).ok()?;
        serde_json::from_reader(std::io::BufReader::new(file)).ok()
    }

    pub fn write_record(&self, prefix: &Prefix, record: SlotRecord) -> std::io::Result<()> {
        let text = serde_json::to_string(&record).map_err(std::io::Error::other)?;
        std::io::Write::write_all(
            &mut open_nofollow(&self.record_path(prefix), true)?,
            text.as_bytes(),
        )
    }

    /// Drops the slot file (the record stays, so a slower restore is not tried again).
    pub fn drop_slot(&self, prefix: &Prefix) {
        let _ = std::fs::remove_file(self.dir.join(self.file_name(prefix)));
    }

    /// Removes every slot file and record that is not one of `keep`'s: those of another model
    /// or binary, or of a prefix no longer configured (or changed). Returns how many.
    pub fn prune(&self, keep: &[Prefix]) -> usize {
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

/// The warm-up of one plan: its prefixes and where their slots are kept.
#[derive(Debug, Clone)]
pub struct Warmup {
    pub prefixes: Vec<Prefix>,
    pub slots: SlotStore,
    /// Per request (a slow prefill of a big model on one throttled core takes minutes).
    pub timeout: Duration,
}

/// How one prefix was warmed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Warmed {
    Restored { ms: f64 },
    Prefilled { ms: f64, cached: u64, prompt: u64 },
}

impl Warmup {
    /// The warm-up for `paths` (`None` when there are none). An unreadable or empty file is
    /// logged and left out: the backend serves anyway, only colder.
    pub fn load(
        paths: &[PathBuf],
        installed: &Installed,
        cache_dir: &Path,
        timeout: Duration,
    ) -> Option<Warmup> {
        let prefixes: Vec<Prefix> = paths
            .iter()
            .filter_map(|p| match Prefix::read(p) {
                Ok(prefix) => Some(prefix),
                Err(e) => {
                    tracing::error!(error = %e, "warm prefix left out");
                    None
                }
            })
            .collect();
        if prefixes.is_empty() {
            return None;
        }
        let slots = SlotStore {
            dir: cache_dir.join("slots"),
            model_key: model_key(&installed.server, &installed.model),
        };
        Some(Warmup {
            prefixes,
            slots,
            timeout,
        })
    }

    /// Warms `backend` (counted as `activity`), beating `heartbeat` every `beat` meanwhile;
    /// stops early when `cancel` fires. Failures are logged: the backend serves anyway.
    pub async fn run(
        &self,
        backend: &BackendInfo,
        activity: &Activity,
        heartbeat: &crate::notify::Heartbeat,
        beat: Duration,
        cancel: &CancellationToken,
    ) {
        let _active = activity.begin();
        let started = Instant::now();
        let warm = self.warm_all(backend);
        tokio::pin!(warm);
        let mut ticker = tokio::time::interval(beat);
        loop {
            tokio::select! {
                () = &mut warm => break,
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => heartbeat.beat(),
            }
        }
        tracing::info!(generation = backend.generation, prefixes = self.prefixes.len(), took = ?started.elapsed(), "warm prefixes in the backend's cache");
    }

    async fn warm_all(&self, backend: &BackendInfo) {
        if let Err(e) = secure_slot_dir(&self.slots.dir) {
            tracing::warn!(dir = %self.slots.dir.display(), error = %e, "cannot create the slot directory; prefilling without saving");
        }
        let pruned = self.slots.prune(&self.prefixes);
        if pruned > 0 {
            tracing::info!(pruned, dir = %self.slots.dir.display(), "removed slot files of another model or of prefixes no longer configured");
        }
        let client = match reqwest::Client::builder().timeout(self.timeout).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the warm-up client");
                return;
            }
        };
        for (i, prefix) in self.prefixes.iter().enumerate() {
            // Only the first can be restored: a restore replaces the slot without saving what
            // it held, while each later prefill moves the previous prefix to the host-RAM cache.
            match self.warm_one(&client, backend, prefix, i == 0).await {
                Ok(how) => {
                    tracing::info!(prefix = %prefix.path.display(), generation = backend.generation, ?how, "warm prefix ready")
                }
                Err(e) => {
                    tracing::warn!(prefix = %prefix.path.display(), generation = backend.generation, error = %e, "warm-up failed; the first task behind this prefix pays its prefill")
                }
            }
        }
    }

    async fn warm_one(
        &self,
        client: &reqwest::Client,
        backend: &BackendInfo,
        prefix: &Prefix,
        first: bool,
    ) -> Result<Warmed, WarmupError> {
        let name = self.slots.file_name(prefix);
        if first {
            if let Some(mut record) = self.slots.record(prefix).filter(|r| r.restore_pays()) {
                let t = Instant::now();
                match slot_action(client, backend, "restore", &name).await {
                    Ok(()) => {
                        let ms = t.elapsed().as_secs_f64() * 1e3;
                        record.restore_ms = Some(ms);
                        if !record.restore_pays() {
                            tracing::info!(restore_ms = ms, prefill_ms = record.prefill_ms, "restoring the slot was slower than prefilling: prefilling from now on");
                            self.slots.drop_slot(prefix);
                        }
                        let _ = self.slots.write_record(prefix, record);
                        return Ok(Warmed::Restored { ms });
                    }
                    Err(e) => {
                        tracing::warn!(file = %name, error = %e, "cannot restore the saved slot; prefilling");
                        self.slots.drop_slot(prefix);
                    }
                }
            }
        }
        let t = Instant::now();
        let (prompt, cached) = prefill(client, backend, prefix).await?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let slower = self
            .slots
            .measured(prefix)
            .is_some_and(|r| !r.restore_pays());
        if first && !slower && cached == 0 {
            match slot_action(client, backend, "save", &name).await {
                Ok(()) => {
                    let record = SlotRecord {
                        prefill_ms: ms,
                        restore_ms: None,
                    };
                    if let Err(e) = self.slots.write_record(prefix, record) {
                        tracing::warn!(file = %name, error = %e, "cannot write the slot record");
                    }
                }
                Err(e) => tracing::warn!(file = %name, error = %e, "cannot save the slot"),
            }
        }
        Ok(Warmed::Prefilled { ms, cached, prompt })
    }
}

/// The warm-up request; returns llama-server's prompt and cached token counts.
async fn prefill(
    client: &reqwest::Client,
    backend: &BackendInfo,
    prefix: &Prefix,
) -> Result<(u64, u64), WarmupError> {
    const WHAT: &str = "the warm-up request";
    let response = client
        .post(format!("{}/v1/chat/completions", backend.base_url))
        .bearer_auth(backend.api_key.expose())
        .json(&chat_request(&prefix.text))
        .send()
        .await
        .map_err(|source| WarmupError::Request { what: WHAT, source })?;
    let body = checked(response, WHAT).await?;
    let timings = &body["timings"];
    let prompt = timings["prompt_n"].as_u64().unwrap_or(0);
    let cached = timings["cache_n"].as_u64().unwrap_or(0);
    Ok((prompt + cached, cached))
}

/// `POST /slots/0?action=ACTION` with `{"filename": name}`.
async fn slot_action(
    client: &reqwest::Client,
    backend: &BackendInfo,
    action: &'static str,
    name: &str,
) -> Result<(), WarmupError> {
    let response = client
        .post(format!("{}/slots/0?action={action}", backend.base_url))
        .bearer_auth(backend.api_key.expose())
        .json(&serde_json::json!({ "filename": name }))
        .send()
        .await
        .map_err(|source| WarmupError::Request {
            what: action,
            source,
        })?;
    checked(response, action).await.map(drop)
}

async fn checked(
    response: reqwest::Response,
    what: &'static str,
) -> Result<serde_json::Value, WarmupError> {
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|source| WarmupError::Request { what, source })?;
    if !status.is_success() {
        let mut body = text;
        body.truncate(300);
        return Err(WarmupError::Status { what, status, body });
    }
    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> SlotStore {
        SlotStore {
            dir: dir.to_path_buf(),
            model_key: "0123456789abcdef".into(),
        }
    }

    #[test]
    fn the_warm_up_sends_the_prefix_as_the_system_message_and_caches_it() {
        let body = chat_request("POLICY");
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["messages"][0]["content"], "POLICY");
        assert_eq!(body["messages"][1]["role"], "user");
        assert_eq!(body["messages"][1]["content"], WARM_SUFFIX);
        assert_eq!(body["max_tokens"], 1);
        assert_eq!(body["cache_prompt"], true);
        assert_eq!(body["stream"], false);
    }

    #[test]
    fn the_slot_dir_is_private_and_never_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache/slots");
        secure_slot_dir(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        secure_slot_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let link = tmp.path().join("cache/linked");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let e = secure_slot_dir(&link).unwrap_err();
        assert!(matches!(e, SlotDirError::Symlink { .. }), "{e}");
        // A record that is a symlink is not followed, for reading or writing.
        let store = SlotStore {
            dir: dir.clone(),
            model_key: "m".into(),
        };
        let prefix = Prefix {
            path: "p".into(),
            text: "t".into(),
            hash: "h".into(),
        };
        let target = tmp.path().join("target.json");
        std::fs::write(&target, r#"{"prefill_ms": 1.0, "restore_ms": null}"#).unwrap();
        std::os::unix::fs::symlink(&target, store.record_path(&prefix)).unwrap();
        assert!(store.measured(&prefix).is_none());
        let record = SlotRecord {
            prefill_ms: 2.0,
            restore_ms: None,
        };
        assert!(store.write_record(&prefix, record).is_err());
        assert!(std::fs::read_to_string(&target).unwrap().contains("1.0"));
    }

    #[test]
    fn slot_files_are_named_by_model_and_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let a = Prefix::new("/a".into(), "policy A".into());
        let b = Prefix::new("/b".into(), "policy B".into());
        let a_moved = Prefix::new("/elsewhere".into(), "policy A".into());
        let name = s.file_name(&a);
        assert!(name.starts_with("0123456789abcdef-") && name.ends_with(".bin"));
        assert_eq!(name.len(), 16 + 1 + 16 + 4);
        assert_ne!(name, s.file_name(&b), "another text, another file");
        assert_eq!(
            name,
            s.file_name(&a_moved),
            "only the text matters, not its path"
        );
        assert!(!name.contains('/'), "llama-server takes a bare file name");
    }

    #[test]
    fn the_model_key_changes_with_the_model_file() {
        let dir = tempfile::tempdir().unwrap();
        let (server, model) = (dir.path().join("server"), dir.path().join("m.gguf"));
        std::fs::write(&server, "bin").unwrap();
        std::fs::write(&model, "weights").unwrap();
        let before = model_key(&server, &model);
        assert_eq!(before, model_key(&server, &model));
        std::fs::write(&model, "other weights").unwrap();
        assert_ne!(before, model_key(&server, &model));
        assert_ne!(before, model_key(&server, &dir.path().join("other.gguf")));
    }

    #[test]
    fn a_record_counts_only_with_its_slot_file_and_prune_keeps_only_current_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let a = Prefix::new("/a".into(), "policy A".into());
        let gone = Prefix::new("/g".into(), "old policy".into());
        let record = SlotRecord {
            prefill_ms: 9000.0,
            restore_ms: None,
        };
        s.write_record(&a, record).unwrap();
        assert_eq!(s.record(&a), None, "no slot file yet");
        std::fs::write(dir.path().join(s.file_name(&a)), "kv").unwrap();
        assert_eq!(s.record(&a), Some(record));
        std::fs::write(dir.path().join(s.file_name(&gone)), "kv").unwrap();
        s.write_record(&gone, record).unwrap();
        let other_model = SlotStore {
            model_key: "fedcba9876543210".into(),
            ..s.clone()
        };
        std::fs::write(dir.path().join(other_model.file_name(&a)), "kv").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        assert_eq!(s.prune(std::slice::from_ref(&a)), 3);
        assert_eq!(s.record(&a), Some(record));
        assert_eq!(s.record(&gone), None);
        assert_eq!(other_model.record(&a), None);
        assert!(
            dir.path().join("notes.txt").exists(),
            "only slot files are pruned"
        );
    }

    #[test]
    fn restoring_stops_once_it_measured_slower_than_the_prefill() {
        let r = |restore_ms| SlotRecord {
            prefill_ms: 100.0,
            restore_ms,
        };
        assert!(r(None).restore_pays());
        assert!(r(Some(3.0)).restore_pays());
        assert!(!r(Some(100.0)).restore_pays());
        assert!(!r(Some(250.0)).restore_pays());
    }

    #[test]
    fn an_empty_or_missing_prefix_file_says_what_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "  \n").unwrap();
        let e = Prefix::read(&empty).unwrap_err().to_string();
        assert!(
            e.contains("empty") && e.contains("backend.warm_prefixes"),
            "{e}"
        );
        let e = Prefix::read(&dir.path().join("none.txt"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot read") && e.contains("backend.warm_prefixes"),
            "{e}"
        );
    }
}
