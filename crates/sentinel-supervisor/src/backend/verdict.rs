//! Smoke-test verdicts, kept in the cache so a binary is tested once per host:
//! `<cache>/verdicts/<binary hash>-<CPU signature key>-<rung>.toml`. The binary's hash covers
//! the program and every shared library beside it (a portable build's CPU variants), so a
//! rebuilt or replaced binary is tested again; the CPU signature, so a cache copied to another
//! host is tested again there.

use crate::host::CpuSignature;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// One smoke test's outcome for one binary, rung and host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Verdict {
    /// The rung's name (`native`, `native --no-repack`, `portable`, ...).
    pub rung: String,
    pub passed: bool,
    /// Why it failed (the first line of the failure), or what it did when it passed.
    pub reason: String,
    pub tokens_per_second: Option<f64>,
    /// The CPU variant ggml loaded, for builds with runtime dispatch.
    pub cpu_variant: Option<String>,
    pub program: PathBuf,
    /// The CPU it was tested on ([`CpuSignature::describe`]).
    pub cpu: String,
    /// When (RFC 3339, UTC).
    pub date: String,
}

impl Verdict {
    /// One line for `setup`: `passed (38.2 tokens/s, CPU variant icelake)` or `failed: why`.
    pub(crate) fn describe(&self) -> String {
        if !self.passed {
            return format!("failed: {}", self.reason);
        }
        let tps = self.tokens_per_second.unwrap_or(0.0);
        match &self.cpu_variant {
            Some(v) => format!("passed ({tps:.1} tokens/s, CPU variant {v})"),
            None => format!("passed ({tps:.1} tokens/s)"),
        }
    }
}

/// Where one verdict is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VerdictKey {
    /// The first 16 hex digits of [`binary_hash`].
    pub binary: String,
    /// [`CpuSignature::key`].
    pub cpu: String,
    /// The rung's name made file-safe.
    pub rung: String,
}

impl VerdictKey {
    pub(crate) fn new(binary_hash: &str, cpu: &CpuSignature, rung: &str) -> VerdictKey {
        VerdictKey {
            binary: binary_hash.chars().take(16).collect(),
            cpu: cpu.key(),
            rung: rung
                .split(|c: char| !c.is_ascii_alphanumeric())
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join("-"),
        }
    }

    /// The key of `program` (hashed with [`binary_hash`]) tested as `rung` on `cpu`.
    pub(crate) fn of(program: &Path, cpu: &CpuSignature, rung: &str) -> Result<Self, VerdictError> {
        Ok(VerdictKey::new(&binary_hash(program)?, cpu, rung))
    }

    pub(crate) fn path(&self, cache: &Path) -> PathBuf {
        cache
            .join("verdicts")
            .join(format!("{}-{}-{}.toml", self.binary, self.cpu, self.rung))
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum VerdictError {
    #[error("cannot read {path} to hash it: {source} (check the backend's files)")]
    Hash {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the smoke-test verdict {path}: {source} (check that the cache directory is writable)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The sha256 of `program` and of every shared library in its directory (`lib*.so*`,
/// `*.dylib`), in name order.
pub(crate) fn binary_hash(program: &Path) -> Result<String, VerdictError> {
    let unreadable = |path: &Path| {
        let path = path.to_path_buf();
        move |source| VerdictError::Hash { path, source }
    };
    let mut files = vec![program.to_path_buf()];
    if let Some(dir) = program.parent() {
        let mut libs: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(unreadable(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                (name.starts_with("lib") && name.contains(".so")) || name.ends_with(".dylib")
            })
            .collect();
        libs.sort();
        files.extend(libs);
    }
    let mut h = Sha256::new();
    for file in &files {
        let mut f = std::fs::File::open(file).map_err(unreadable(file))?;
        h.update(file.file_name().unwrap_or_default().as_encoded_bytes());
        h.update([0]);
        std::io::copy(&mut f, &mut h).map_err(unreadable(file))?;
    }
    Ok(hex::encode(h.finalize()))
}

/// The verdict recorded under `key`, if any (an unreadable file counts as none: test again).
pub(crate) fn load(cache: &Path, key: &VerdictKey) -> Option<Verdict> {
    let path = key.path(cache);
    let text = std::fs::read_to_string(&path).ok()?;
    toml::from_str(&text)
        .inspect_err(|e| {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable smoke-test verdict; testing again");
        })
        .ok()
}

/// Records `verdict` under `key` (written whole, then renamed into place).
pub(crate) fn store(
    cache: &Path,
    key: &VerdictKey,
    verdict: &Verdict,
) -> Result<PathBuf, VerdictError> {
    let path = key.path(cache);
    let write = |source| VerdictError::Write {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(path.parent().unwrap_or(cache)).map_err(write)?;
    let text = toml::to_string(verdict).map_err(|e| write(std::io::Error::other(e)))?;
    let partial = path.with_extension("toml.partial");
    std::fs::write(&partial, text).map_err(write)?;
    std::fs::rename(&partial, &path).map_err(write)?;
    Ok(path)
}

/// Now, as RFC 3339 UTC to the second.
pub(crate) fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(model: &str) -> CpuSignature {
        CpuSignature {
            arch: "x86_64".into(),
            model: model.into(),
            flags: vec!["avx2".into()],
        }
    }

    #[test]
    fn verdicts_are_keyed_by_binary_libraries_cpu_and_rung() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let server = bin.join("llama-server");
        std::fs::write(&server, b"server v1").unwrap();
        let h1 = binary_hash(&server).unwrap();
        assert_eq!(h1, binary_hash(&server).unwrap());
        // A library beside it is part of the binary.
        std::fs::write(bin.join("libggml-cpu-haswell.so"), b"haswell").unwrap();
        let h2 = binary_hash(&server).unwrap();
        assert_ne!(h1, h2);
        std::fs::write(bin.join("README"), b"not a library").unwrap();
        assert_eq!(h2, binary_hash(&server).unwrap());
        std::fs::write(&server, b"server v2").unwrap();
        assert_ne!(h2, binary_hash(&server).unwrap());

        let epyc = VerdictKey::new(&h2, &cpu("AMD EPYC"), "native --no-repack");
        assert_eq!(epyc.rung, "native-no-repack");
        assert_eq!(epyc.binary.len(), 16);
        let xeon = VerdictKey::new(&h2, &cpu("Intel Xeon"), "native --no-repack");
        assert_ne!(epyc.path(dir.path()), xeon.path(dir.path()));
        let plain = VerdictKey::new(&h2, &cpu("AMD EPYC"), "native");
        assert_ne!(epyc.path(dir.path()), plain.path(dir.path()));
        assert!(epyc
            .path(dir.path())
            .starts_with(dir.path().join("verdicts")));
    }

    #[test]
    fn a_stored_verdict_reads_back_and_a_broken_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let key = VerdictKey::new("ab12", &cpu("AMD EPYC"), "portable");
        assert_eq!(load(dir.path(), &key), None);
        let v = Verdict {
            rung: "portable".into(),
            passed: true,
            reason: "generated 8 tokens".into(),
            tokens_per_second: Some(40.5),
            cpu_variant: Some("icelake".into()),
            program: "/c/llama-server".into(),
            cpu: cpu("AMD EPYC").describe(),
            date: now(),
        };
        let path = store(dir.path(), &key, &v).unwrap();
        assert_eq!(load(dir.path(), &key), Some(v.clone()));
        assert_eq!(v.describe(), "passed (40.5 tokens/s, CPU variant icelake)");
        std::fs::write(&path, "passed = maybe").unwrap();
        assert_eq!(load(dir.path(), &key), None);
    }
}
