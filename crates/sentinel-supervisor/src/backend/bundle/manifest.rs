//! `manifest.json`: what a bundle holds, for which target and llama.cpp pin, and the sha256 of
//! every file; parsed strictly (a newer format is refused before its fields are read, and every
//! path must stay inside the bundle).

use super::{BundleError, FORMAT, SERVER_DIR};
use crate::backend::pin::SourcePin;
use serde::{Deserialize, Serialize};
use std::path::{Component, Path};

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
    pub(crate) fn check_compatible(
        &self,
        pin: &SourcePin,
        target: &str,
    ) -> Result<(), BundleError> {
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
    pub(crate) fn digest(&self) -> String {
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
    if !plain {
        return Err(BundleError::UnsafePath(path.to_string()));
    }
    Ok(())
}
