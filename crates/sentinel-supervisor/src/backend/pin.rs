//! The pins in `vendor/`: which llama.cpp source to build and how, which default model to
//! fetch, and which cmake and ninja to install from PyPI when they are not on PATH. The files are
//! compiled in, so a binary always knows its own pins.

use serde::Deserialize;
use sha2::{Digest, Sha256};

const LLAMA_PIN: &str = include_str!("../../../../vendor/llama.cpp.toml");
const MODEL_PIN: &str = include_str!("../../../../vendor/default-model.toml");
const TOOLS_PIN: &str = include_str!("../../../../vendor/build-tools.toml");

/// `vendor/llama.cpp.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcePin {
    pub package: String,
    pub version: String,
    pub sha256: String,
    pub subdirectory: String,
    pub target: String,
    /// The native build's flags; the other flavors' come after them.
    pub cmake_flags: Vec<String>,
    /// The portable and baseline builds' own flags (`[flavor.*]`).
    pub flavor: FlavorPins,
}

/// `[flavor.portable]` and `[flavor.baseline]` of `vendor/llama.cpp.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlavorPins {
    pub portable: FlavorFlags,
    pub baseline: FlavorFlags,
}

/// One flavor's cmake flags: for every architecture, then per architecture.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlavorFlags {
    pub cmake_flags: Vec<String>,
    #[serde(default)]
    pub x86_64: Vec<String>,
    #[serde(default)]
    pub aarch64: Vec<String>,
}

impl FlavorFlags {
    /// The flags for one architecture (`std::env::consts::ARCH`).
    pub(crate) fn for_arch(&self, arch: &str) -> Vec<String> {
        let specific: &[String] = match arch {
            "x86_64" => &self.x86_64,
            "aarch64" => &self.aarch64,
            _ => &[],
        };
        self.cmake_flags.iter().chain(specific).cloned().collect()
    }
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

/// `vendor/build-tools.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsPin {
    #[serde(rename = "tool")]
    pub tools: Vec<ToolPin>,
}

/// One build tool shipped as a PyPI package with binary wheels.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolPin {
    /// The executable's name (`cmake`).
    pub name: String,
    pub package: String,
    pub version: String,
    /// The accepted wheels' sha256 (one per platform).
    pub sha256: Vec<String>,
}

impl ToolsPin {
    pub fn builtin() -> ToolsPin {
        toml::from_str(TOOLS_PIN).expect("vendor/build-tools.toml is checked by a unit test")
    }

    /// The pin for one tool by executable name.
    pub fn get(&self, name: &str) -> Option<&ToolPin> {
        self.tools.iter().find(|t| t.name == name)
    }

    /// A hash of every pin: the private environment's directory name, so a changed pin
    /// installs afresh instead of mixing versions.
    pub(crate) fn cache_key(&self) -> String {
        let parts = self.tools.iter().flat_map(|t| {
            [&t.name, &t.package, &t.version]
                .into_iter()
                .chain(&t.sha256)
        });
        hash_parts(parts)[..12].to_string()
    }
}

/// The sha256 (hex) of `parts`, each followed by a NUL byte.
fn hash_parts<'a>(parts: impl IntoIterator<Item = &'a String>) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

impl ToolPin {
    /// One line of a pip requirements file for `--require-hashes`:
    /// `cmake==3.31.6 --hash=sha256:... --hash=sha256:...`.
    pub(crate) fn requirement_line(&self) -> String {
        let mut line = format!("{}=={}", self.package, self.version);
        for h in &self.sha256 {
            line.push_str(&format!(" --hash=sha256:{h}"));
        }
        line
    }
}

impl SourcePin {
    pub fn builtin() -> SourcePin {
        toml::from_str(LLAMA_PIN).expect("vendor/llama.cpp.toml is checked by a unit test")
    }

    /// `<version>-<hash>`: changes whenever anything that affects the build changes.
    pub(crate) fn cache_key(&self) -> String {
        let parts = [
            &self.package,
            &self.version,
            &self.sha256,
            &self.subdirectory,
            &self.target,
        ];
        let hash = hash_parts(parts.into_iter().chain(&self.cmake_flags));
        format!("{}-{}", self.version, &hash[..12])
    }

    /// `llama-cpp-python==0.3.36`.
    pub(crate) fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }

    /// The sdist's file name as pip saves it (`llama_cpp_python-0.3.36.tar.gz`).
    pub(crate) fn sdist_name(&self) -> String {
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
    fn tool_pins_parse_and_hash_every_wheel() {
        let t = ToolsPin::builtin();
        for name in ["cmake", "ninja"] {
            let pin = t.get(name).unwrap_or_else(|| panic!("{name} is pinned"));
            assert!(!pin.sha256.is_empty());
            assert!(pin
                .sha256
                .iter()
                .all(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit())));
            let line = pin.requirement_line();
            assert!(line.starts_with(&format!("{}=={} --hash=sha256:", pin.package, pin.version)));
            assert_eq!(line.matches("--hash=").count(), pin.sha256.len());
        }
        let mut changed = t.clone();
        changed.tools[0].version.push_str(".1");
        assert_ne!(t.cache_key(), changed.cache_key());
    }

    #[test]
    fn cache_key_follows_flags() {
        let mut s = SourcePin::builtin();
        let before = s.cache_key();
        s.cmake_flags.push("-DGGML_AVX512=OFF".into());
        assert_ne!(before, s.cache_key());
    }

    #[test]
    fn flavor_flags_leave_the_native_key_alone() {
        let mut s = SourcePin::builtin();
        let before = s.cache_key();
        s.flavor
            .portable
            .cmake_flags
            .push("-DGGML_AVX512=OFF".into());
        s.flavor.baseline.aarch64.clear();
        assert_eq!(before, s.cache_key());
        assert!(s.flavor.baseline.for_arch("x86_64").len() > s.flavor.baseline.cmake_flags.len());
        assert_eq!(
            s.flavor.baseline.for_arch("riscv64"),
            s.flavor.baseline.cmake_flags
        );
    }
}
