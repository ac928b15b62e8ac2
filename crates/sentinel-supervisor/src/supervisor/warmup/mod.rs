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

mod slots;

pub(crate) use slots::{model_key, secure_slot_dir, SlotRecord, SlotStore};

use super::state::BackendInfo;
use crate::backend::setup::Installed;
use crate::governor::Activity;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The user message behind the prefix in the warm-up request. Anything short works: llama-server
/// reuses the longest common token prefix, which ends where the real task's text begins.
pub(crate) const WARM_SUFFIX: &str = ".";

/// Changes whenever the warm-up request's shape changes, so slot files saved from an older
/// shape are not restored (part of the prefix hash).
const REQUEST_SHAPE: &str = "chat-system-v1";

#[derive(Debug, thiserror::Error)]
pub(crate) enum WarmupError {
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
pub(crate) struct Prefix {
    pub path: PathBuf,
    pub text: String,
    /// 16 hex digits of the SHA-256 of the request shape and the text.
    pub hash: String,
}

impl Prefix {
    pub(crate) fn new(path: PathBuf, text: String) -> Prefix {
        let hash = short_hash(&[REQUEST_SHAPE.as_bytes(), text.as_bytes()]);
        Prefix { path, text, hash }
    }

    /// Reads a prefix file.
    pub(crate) fn read(path: &Path) -> Result<Prefix, WarmupError> {
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
pub(crate) fn chat_request(prefix: &str) -> serde_json::Value {
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

/// The warm-up of one plan: its prefixes and where their slots are kept.
#[derive(Debug, Clone)]
pub(crate) struct Warmup {
    pub prefixes: Vec<Prefix>,
    pub slots: SlotStore,
    /// Per request (a slow prefill of a big model on one throttled core takes minutes).
    pub timeout: Duration,
}

/// How one prefix was warmed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Warmed {
    Restored { ms: f64 },
    Prefilled { ms: f64, cached: u64, prompt: u64 },
}

impl Warmup {
    /// The warm-up for `paths` (`None` when there are none). An unreadable or empty file is
    /// logged and left out: the backend serves anyway, only colder.
    pub(crate) fn load(
        paths: &[PathBuf],
        installed: &Installed,
        cache_dir: &Path,
        timeout: Duration,
    ) -> Option<Warmup> {
        let prefixes: Vec<Prefix> = paths
            .iter()
            .filter_map(|p| {
                Prefix::read(p)
                    .map_err(|e| tracing::error!(error = %e, "warm prefix left out"))
                    .ok()
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
    pub(crate) async fn run(
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
                    tracing::info!(prefix = %prefix.path.display(), generation = backend.generation, ?how, "warm prefix ready");
                }
                Err(e) => {
                    tracing::warn!(prefix = %prefix.path.display(), generation = backend.generation, error = %e, "warm-up failed; the first task behind this prefix pays its prefill");
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
        let saved = first.then(|| self.slots.record(prefix)).flatten();
        if let Some(mut record) = saved.filter(SlotRecord::restore_pays) {
            let t = Instant::now();
            match slot_action(client, backend, "restore", &name).await {
                Ok(()) => {
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    record.restore_ms = Some(ms);
                    if !record.restore_pays() {
                        tracing::info!(
                            restore_ms = ms,
                            prefill_ms = record.prefill_ms,
                            "restoring the slot was slower than prefilling: prefilling from now on"
                        );
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
    let request = chat_request(&prefix.text);
    let path = "/v1/chat/completions";
    let body = post(client, backend, path, &request, "the warm-up request").await?;
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
    let path = format!("/slots/0?action={action}");
    let body = serde_json::json!({ "filename": name });
    post(client, backend, &path, &body, action).await.map(drop)
}

/// `POST <path>` of `backend` with the JSON `body`; the answer's JSON (`what` names the request
/// in errors).
async fn post(
    client: &reqwest::Client,
    backend: &BackendInfo,
    path: &str,
    body: &serde_json::Value,
    what: &'static str,
) -> Result<serde_json::Value, WarmupError> {
    let response = client
        .post(format!("{}{path}", backend.base_url))
        .bearer_auth(backend.api_key.expose())
        .json(body)
        .send()
        .await
        .map_err(|source| WarmupError::Request { what, source })?;
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
mod tests;
