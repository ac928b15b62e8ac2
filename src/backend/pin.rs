//! The pins in `vendor/`: which llama.cpp source to build and how, and which default model to
//! fetch. Both files are compiled in, so a binary always knows its own pins.

use serde::Deserialize;
use sha2::{Digest, Sha256};

const LLAMA_PIN: &str = include_str!("../../vendor/llama.cpp.toml");
const MODEL_PIN: &str = include_str!("../../vendor/default-model.toml");

/// `vendor/llama.cpp.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcePin {
    pub package: String,
    pub version: String,
    pub sha256: String,
    pub subdirectory: String,
    pub target: String,
    pub cmake_flags: Vec<String>,
}

/// `vendor/default-model.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPin {
    pub file: String,
    pub sha256: String,
    pub packages: Vec<String>,
    pub parts: Vec<String>,
}

impl SourcePin {
    pub fn builtin() -> SourcePin {
        toml::from_str(LLAMA_PIN).expect("vendor/llama.cpp.toml is checked by a unit test")
    }

    /// `<version>-<hash>`: changes whenever anything that affects the build changes.
    pub fn cache_key(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            &self.package,
            &self.version,
            &self.sha256,
            &self.subdirectory,
            &self.target,
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        for flag in &self.cmake_flags {
            h.update(flag.as_bytes());
            h.update([0]);
        }
        format!("{}-{}", self.version, &hex::encode(h.finalize())[..12])
    }

    /// `llama-cpp-python==0.3.36`.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }

    /// The sdist's file name as pip saves it (`llama_cpp_python-0.3.36.tar.gz`).
    pub fn sdist_name(&self) -> String {
        format!("{}-{}.tar.gz", self.package.replace('-', "_"), self.version)
    }
}

impl ModelPin {
    pub fn builtin() -> ModelPin {
        toml::from_str(MODEL_PIN).expect("vendor/default-model.toml is checked by a unit test")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse() {
        let s = SourcePin::builtin();
        assert_eq!(s.package, "llama-cpp-python");
        assert_eq!(s.sha256.len(), 64);
        assert!(s.cmake_flags.iter().any(|f| f == "-DGGML_METAL=OFF"));
        assert!(s.cache_key().starts_with(&format!("{}-", s.version)));
        assert_eq!(
            s.sdist_name(),
            format!("llama_cpp_python-{}.tar.gz", s.version)
        );
        let m = ModelPin::builtin();
        assert_eq!(m.packages.len(), m.parts.len());
        assert_eq!(m.sha256.len(), 64);
    }

    #[test]
    fn cache_key_follows_flags() {
        let mut s = SourcePin::builtin();
        let before = s.cache_key();
        s.cmake_flags.push("-DGGML_AVX512=OFF".into());
        assert_ne!(before, s.cache_key());
    }
}
