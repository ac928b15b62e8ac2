//! The backend's memory, estimated before it starts and checked against `backend.memory_limit`:
//! the model file, the KV cache for the context (from the GGUF header's hyperparameters), the
//! prompt cache (`--cache-ram`) and a fixed overhead. Over the limit the supervisor refuses to
//! start and says which key to lower; close to it, it warns.

use super::gguf::Header;
use crate::profile::Resolved;
use crate::units::ByteSize;
use std::path::{Path, PathBuf};

/// What llama-server needs beyond the weights, the KV cache and the prompt cache: compute
/// buffers, the tokenizer, HTTP threads, the C++ runtime (measured with the 270M default model
/// at ctx 4096: 363 MB RSS for a 253 MB file and a 74 MB KV cache, i.e. about 36 MB; a bigger
/// model's compute buffers grow with its width, hence the margin).
pub(crate) const OVERHEAD_BYTES: u64 = 256 << 20;

/// Above this share of the limit the estimate is logged as a warning.
pub(crate) const WARN_SHARE: f64 = 0.9;

/// Bytes per KV cache element: llama-server's default cache type is f16.
const KV_ELEMENT_BYTES: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub(crate) enum MemoryError {
    #[error(
        "the backend would need about {total} ({detail}), more than backend.memory_limit = \
         {limit}. Lower `profiles.{profile}.cache_ram_mib` (or `backend.cache_ram_mib`), lower \
         `profiles.{profile}.ctx_size` (or `backend.ctx_size`), use a smaller model, or raise \
         `backend.memory_limit`"
    )]
    OverLimit {
        total: ByteSize,
        detail: String,
        limit: ByteSize,
        profile: String,
    },
    #[error("cannot read the model file {path}: {source}")]
    Model {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The parts of the estimate.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Estimate {
    pub model_bytes: u64,
    /// `None` when the GGUF header lacks the hyperparameters (the reason is in `note`).
    pub kv_bytes: Option<u64>,
    pub cache_bytes: u64,
    pub overhead_bytes: u64,
    /// Why the KV cache is unknown, or how it was computed.
    pub note: String,
}

impl Estimate {
    pub(crate) fn total(&self) -> u64 {
        self.model_bytes + self.kv_bytes.unwrap_or(0) + self.cache_bytes + self.overhead_bytes
    }

    /// `model 241.4 MiB + KV cache 72.0 MiB + prompt cache 256.0 MiB + overhead 256.0 MiB`.
    pub(crate) fn detail(&self) -> String {
        let kv = self.kv_bytes.map_or("unknown".to_string(), |b| {
            ByteSize::from_bytes(b).to_string()
        });
        format!(
            "model {} + KV cache {kv} + prompt cache {} + overhead {}",
            ByteSize::from_bytes(self.model_bytes),
            ByteSize::from_bytes(self.cache_bytes),
            ByteSize::from_bytes(self.overhead_bytes)
        )
    }
}

/// The KV cache for `ctx` tokens: n_ctx * n_layer * n_head_kv * (key length + value length) *
/// 2 bytes (f16), from the header's `<arch>.*` keys. Key and value lengths default to
/// embedding_length / head_count, as in llama.cpp. An upper bound for models with sliding-window
/// layers, whose cache llama.cpp makes smaller.
pub(crate) fn kv_cache_bytes(header: &Header, ctx: u32) -> Result<(u64, String), String> {
    let need = |key: &str| {
        header
            .arch_int(key)
            .ok_or_else(|| format!("the GGUF header has no `{key}`"))
    };
    let arch = header
        .architecture()
        .ok_or("the GGUF header has no general.architecture")?;
    let layers = need("block_count")?;
    let heads = need("attention.head_count")?;
    let kv_heads = header.arch_int("attention.head_count_kv").unwrap_or(heads);
    let head_dim = || {
        let embd = need("embedding_length")?;
        embd.checked_div(heads)
            .ok_or_else(|| "attention.head_count is 0".to_string())
    };
    let key_len = header
        .arch_int("attention.key_length")
        .map_or_else(head_dim, Ok)?;
    let value_len = header
        .arch_int("attention.value_length")
        .map_or_else(head_dim, Ok)?;
    let bytes = u64::from(ctx) * layers * kv_heads * (key_len + value_len) * KV_ELEMENT_BYTES;
    Ok((
        bytes,
        format!(
            "{arch}: {ctx} tokens x {layers} layers x {kv_heads} KV heads x ({key_len} + {value_len}) x 2 bytes"
        ),
    ))
}

/// Estimates what llama-server will use for `model` with `profile`'s context and prompt cache.
pub(crate) fn estimate(model: &Path, profile: &Resolved) -> Result<Estimate, MemoryError> {
    let model_bytes = std::fs::metadata(model)
        .map_err(|source| MemoryError::Model {
            path: model.to_path_buf(),
            source,
        })?
        .len();
    let (kv_bytes, note) = match Header::read(model)
        .map_err(|e| e.to_string())
        .and_then(|h| kv_cache_bytes(&h, profile.ctx_size))
    {
        Ok((bytes, how)) => (Some(bytes), how),
        Err(why) => (None, format!("KV cache not estimated: {why}")),
    };
    Ok(Estimate {
        model_bytes,
        kv_bytes,
        cache_bytes: u64::from(profile.cache_ram_mib) << 20,
        overhead_bytes: OVERHEAD_BYTES,
        note,
    })
}

/// How the estimate compares with the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Fits,
    Close,
}

/// Checks `estimate` against `limit`: an error over it, `Close` within [`WARN_SHARE`] of it.
pub(crate) fn check(
    estimate: &Estimate,
    limit: ByteSize,
    profile: &str,
) -> Result<Verdict, MemoryError> {
    let total = estimate.total();
    if total > limit.bytes() {
        return Err(MemoryError::OverLimit {
            total: ByteSize::from_bytes(total),
            detail: estimate.detail(),
            limit,
            profile: profile.to_string(),
        });
    }
    let close = total as f64 > limit.bytes() as f64 * WARN_SHARE;
    Ok(if close { Verdict::Close } else { Verdict::Fits })
}

/// At start: estimates, logs, and refuses when over `limit`.
pub(crate) fn check_at_start(
    model: &Path,
    profile: &Resolved,
    limit: ByteSize,
) -> Result<Estimate, MemoryError> {
    let e = estimate(model, profile)?;
    let total = ByteSize::from_bytes(e.total());
    match check(&e, limit, &profile.name)? {
        Verdict::Fits => tracing::info!(
            estimate = %total, %limit, detail = %e.detail(), kv = %e.note,
            "backend memory estimate"
        ),
        Verdict::Close => tracing::warn!(
            estimate = %total, %limit, detail = %e.detail(), kv = %e.note,
            "the backend's estimated memory is within 10 % of backend.memory_limit; lower cache_ram_mib or ctx_size to leave room"
        ),
    }
    if e.kv_bytes.is_none() {
        tracing::warn!(kv = %e.note, "the estimate leaves out the KV cache");
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::gguf::tests::{header_bytes, llama_like, string};

    fn profile(ctx: u32, cache: u32) -> Resolved {
        Resolved {
            ctx_size: ctx,
            cache_ram_mib: cache,
            ..crate::status::example().resolved_profile
        }
    }

    #[test]
    fn kv_cache_follows_the_formula() {
        let bytes = llama_like(26, 4, 64);
        let h = Header::parse(&mut bytes.as_slice(), Path::new("m")).unwrap();
        // No head_count: the key length is given, the value length is not.
        let e = kv_cache_bytes(&h, 4096).unwrap_err();
        assert!(e.contains("head_count"), "{e}");
    }

    #[test]
    fn estimate_adds_model_kv_cache_and_overhead_and_checks_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let mut bytes = header_bytes(&[
            ("general.architecture", 8, string("llama")),
            ("llama.block_count", 4, 26u32.to_le_bytes().to_vec()),
            ("llama.attention.head_count", 4, 8u32.to_le_bytes().to_vec()),
            (
                "llama.attention.head_count_kv",
                4,
                4u32.to_le_bytes().to_vec(),
            ),
            ("llama.embedding_length", 4, 512u32.to_le_bytes().to_vec()),
        ]);
        // Stand-in tensor data.
        bytes.extend([0u8; 1000]);
        std::fs::write(&path, &bytes).unwrap();
        let e = estimate(&path, &profile(4096, 256)).unwrap();
        assert_eq!(e.model_bytes, bytes.len() as u64);
        // 4096 * 26 * 4 * (64 + 64) * 2
        assert_eq!(e.kv_bytes, Some(4096 * 26 * 4 * 128 * 2));
        assert_eq!(e.cache_bytes, 256 << 20);
        assert_eq!(
            e.total(),
            e.model_bytes + 4096 * 26 * 4 * 128 * 2 + (256 << 20) + OVERHEAD_BYTES
        );
        assert_eq!(
            check(&e, ByteSize::from_bytes(6 << 30), "balanced").unwrap(),
            Verdict::Fits
        );
        let close = ByteSize::from_bytes(e.total() + 1);
        assert_eq!(check(&e, close, "balanced").unwrap(), Verdict::Close);
        let err = check(&e, ByteSize::from_bytes(e.total() - 1), "balanced")
            .unwrap_err()
            .to_string();
        for want in [
            "profiles.balanced.cache_ram_mib",
            "backend.memory_limit",
            "ctx_size",
            "prompt cache 256.0 MiB",
        ] {
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn a_model_without_hyperparameters_is_estimated_without_kv() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake.gguf");
        std::fs::write(&path, b"GGUF fake model for tests").unwrap();
        let e = estimate(&path, &profile(4096, 0)).unwrap();
        assert_eq!(e.kv_bytes, None);
        assert!(e.note.contains("not estimated"), "{}", e.note);
        assert_eq!(e.total(), 25 + OVERHEAD_BYTES);
        let missing = estimate(&dir.path().join("none.gguf"), &profile(4096, 0));
        assert!(matches!(missing, Err(MemoryError::Model { .. })));
    }
}
