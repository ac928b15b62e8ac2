//! The manifest's checks and a whole bundle's round trip (create, open, verify, install twice)
//! on small files standing in for the binaries.

use super::install::{extract, find_root, Installed};
use super::manifest::LinkEntry;
use super::pack::Written;
use super::*;
use crate::backend::model;
use sha2::{Digest, Sha256};

struct Fixture {
    dir: tempfile::TempDir,
    pin: SourcePin,
    model_pin: ModelPin,
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A server directory (llama-server, a library with its soname link, an unrelated tool), a
/// supervisor stand-in and a model, all small.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let server = dir.path().join("server");
    std::fs::create_dir_all(&server).unwrap();
    let write = |path: &Path, body: &[u8], mode: u32| {
        std::fs::write(path, body).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    };
    let pin = SourcePin::builtin();
    write(
        &server.join(&pin.target),
        b"#!/bin/sh\necho server\n",
        0o755,
    );
    write(&server.join("libggml-cpu-haswell.so"), b"variant", 0o755);
    write(&server.join("libllama.so.0"), b"llama library", 0o755);
    std::os::unix::fs::symlink("libllama.so.0", server.join("libllama.so")).unwrap();
    // A chain, as cmake lays out versioned libraries.
    write(&server.join("libggml-base.so.0.25.3"), b"ggml base", 0o755);
    std::os::unix::fs::symlink("libggml-base.so.0.25.3", server.join("libggml-base.so.0")).unwrap();
    std::os::unix::fs::symlink("libggml-base.so.0", server.join("libggml-base.so")).unwrap();
    write(&server.join("llama-cli"), b"not needed", 0o755);
    write(&dir.path().join("supervisor"), b"supervisor binary", 0o755);
    let model_body = b"GGUF a tiny model";
    write(&dir.path().join("tiny.gguf"), model_body, 0o644);
    let model_pin = ModelPin {
        file: "tiny.gguf".into(),
        sha256: sha(model_body),
        packages: vec![],
        parts: vec![],
    };
    Fixture {
        dir,
        pin,
        model_pin,
    }
}

impl Fixture {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn create(&self, with_model: bool) -> Written {
        let options = BundleOptions {
            out: self.path("out"),
            supervisor: self.path("supervisor"),
            server_dir: self.path("server"),
            server_source: "--server-dir server".into(),
            model: with_model.then(|| self.path("tiny.gguf")),
        };
        create(&options, &self.pin).unwrap()
    }

    /// The bundle extracted into `name/`, for tampering.
    fn extracted(&self, written: &Written, name: &str) -> PathBuf {
        let dest = self.path(name);
        extract(&written.archive, &dest).unwrap();
        find_root(&dest).unwrap()
    }
}

#[test]
fn a_bundle_round_trips_and_installs_once() {
    let f = fixture();
    let written = f.create(true);
    assert_eq!(
        written.archive.file_name().unwrap().to_str().unwrap(),
        archive_name()
    );
    assert!(archive_name().starts_with(&format!(
        "sentinel-supervisor-{}-",
        env!("CARGO_PKG_VERSION")
    )));
    let m = &written.manifest;
    assert_eq!((m.format, m.target.as_str()), (FORMAT, TARGET));
    assert_eq!(m.pin_key, f.pin.cache_key());
    let paths: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "sentinel-supervisor",
            "llama.cpp/libggml-base.so.0.25.3",
            "llama.cpp/libggml-cpu-haswell.so",
            "llama.cpp/libllama.so.0",
            "llama.cpp/llama-server",
            "models/tiny.gguf",
            "config.toml",
            "scripts/install-service",
            "scripts/sentinel-supervisor.service",
            "scripts/com.sentinel.supervisor.plist",
        ]
    );
    assert_eq!(
        m.links,
        [
            LinkEntry {
                path: "llama.cpp/libggml-base.so".into(),
                target: "libggml-base.so.0.25.3".into()
            },
            LinkEntry {
                path: "llama.cpp/libggml-base.so.0".into(),
                target: "libggml-base.so.0.25.3".into()
            },
            LinkEntry {
                path: "llama.cpp/libllama.so".into(),
                target: "libllama.so.0".into()
            }
        ]
    );
    let server = m.file("llama.cpp/llama-server").unwrap();
    assert!(server.executable);
    assert_eq!(server.sha256, sha(b"#!/bin/sh\necho server\n"));
    assert_eq!(server.size, 22);
    assert!(!m.file("config.toml").unwrap().executable);
    assert!(m.file("scripts/install-service").unwrap().executable);

    let cache = f.path("cache");
    let bundle = open(&written.archive, &cache).unwrap();
    assert_eq!(&bundle.manifest, m);
    let first = install(&bundle, &cache, &f.pin, &f.model_pin).unwrap();
    drop(bundle);
    let bin = portable_dir(&cache, &f.pin).join("build/bin");
    assert_eq!(first.server, bin.join("llama-server"));
    assert!(first.changed);
    assert_eq!(
        build::existing_build(&cache, &f.pin, Flavor::Portable),
        Some(bin.clone())
    );
    assert_eq!(
        std::fs::read(&first.server).unwrap(),
        b"#!/bin/sh\necho server\n"
    );
    assert_eq!(
        std::fs::read_link(bin.join("libllama.so")).unwrap(),
        Path::new("libllama.so.0")
    );
    assert_eq!(
        std::fs::read(bin.join("libggml-base.so")).unwrap(),
        b"ggml base"
    );
    assert!(bin.join("libggml-cpu-haswell.so").is_file());
    assert!(
        !bin.join("llama-cli").exists(),
        "only the server and its libraries"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&first.server)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }
    let stamp = std::fs::read_to_string(portable_dir(&cache, &f.pin).join("BUILD-OK")).unwrap();
    assert!(stamp.contains("installed from a bundle"), "{stamp}");
    assert!(stamp.contains(&m.digest()), "{stamp}");
    // The model is where ensure_default looks, verified: no download would happen.
    let model = first.model.clone().unwrap();
    assert_eq!(model, model::default_model_path(&cache, &f.model_pin));
    assert_eq!(model::ensure_default(&cache, &f.model_pin).unwrap(), model);
    // No scratch or staging directory is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .chain(std::fs::read_dir(cache.join("llama.cpp")).unwrap())
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("bundle-") || n.contains("staging") || n.contains(".old-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The same bundle again, from its extracted directory: verified, nothing changes.
    let root = f.extracted(&written, "x");
    let again = install(&open(&root, &cache).unwrap(), &cache, &f.pin, &f.model_pin).unwrap();
    assert_eq!(
        again,
        Installed {
            changed: false,
            ..first
        }
    );
    assert!(
        root.join("llama.cpp/llama-server").is_file(),
        "a given directory is copied from, never moved"
    );
}

#[test]
fn a_corrupted_file_is_named_with_both_hashes() {
    let f = fixture();
    let written = f.create(false);
    let root = f.extracted(&written, "x");
    std::fs::write(root.join("llama.cpp/libllama.so.0"), b"llama librarY").unwrap();
    let cache = f.path("cache");
    let e = install(&open(&root, &cache).unwrap(), &cache, &f.pin, &f.model_pin).unwrap_err();
    let expected = sha(b"llama library");
    let actual = sha(b"llama librarY");
    assert!(matches!(&e, BundleError::Corrupted { file, .. } if file == "llama.cpp/libllama.so.0"));
    let text = e.to_string();
    assert!(text.contains("llama.cpp/libllama.so.0"), "{text}");
    assert!(text.contains(&expected) && text.contains(&actual), "{text}");
    assert!(!portable_dir(&cache, &f.pin).exists(), "nothing installed");
}

#[test]
fn an_incomplete_bundle_names_the_missing_file() {
    let f = fixture();
    let written = f.create(false);
    let root = f.extracted(&written, "x");
    std::fs::remove_file(root.join("llama.cpp/libggml-cpu-haswell.so")).unwrap();
    let cache = f.path("cache");
    let e = install(&open(&root, &cache).unwrap(), &cache, &f.pin, &f.model_pin)
        .unwrap_err()
        .to_string();
    assert!(e.contains("incomplete"), "{e}");
    assert!(e.contains("llama.cpp/libggml-cpu-haswell.so"), "{e}");
    assert!(!portable_dir(&cache, &f.pin).exists());

    // A truncated archive is refused too, whatever the cut hits.
    let bytes = std::fs::read(&written.archive).unwrap();
    let cut = f.path("cut.tar.gz");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = open(&cut, &cache)
        .and_then(|b| install(&b, &cache, &f.pin, &f.model_pin))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("damaged or truncated") || e.contains("incomplete"),
        "{e}"
    );
    assert!(!portable_dir(&cache, &f.pin).exists());
}

#[test]
fn another_pin_or_target_or_a_newer_format_is_refused() {
    let f = fixture();
    let written = f.create(false);
    let m = &written.manifest;
    let mut other_pin = f.pin.clone();
    other_pin.version = "9.9.9".into();
    let e = m
        .check_compatible(&other_pin, TARGET)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&m.pin_key) && e.contains(&other_pin.cache_key()),
        "{e}"
    );
    let e = m
        .check_compatible(&f.pin, "riscv64gc-unknown-linux-gnu")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("riscv64gc-unknown-linux-gnu") && e.contains(TARGET),
        "{e}"
    );

    let path = Path::new("manifest.json");
    let mut value = serde_json::to_value(m).unwrap();
    value["format"] = (FORMAT + 1).into();
    value["a_future_field"] = true.into();
    let e = Manifest::parse(&value.to_string(), path).unwrap_err();
    assert!(matches!(e, BundleError::NewerFormat { found } if found == FORMAT + 1));
    assert!(matches!(
        Manifest::parse("{\"format\": 1}", path),
        Err(BundleError::BadManifest { .. })
    ));
}

#[test]
fn manifest_paths_stay_inside_the_bundle() {
    let f = fixture();
    let m = f.create(false).manifest;
    let path = Path::new("manifest.json");
    for bad in ["../evil", "/etc/passwd", "llama.cpp/../../x", "", "a\\b"] {
        let mut evil = m.clone();
        evil.files[1].path = bad.to_string();
        let e = Manifest::parse(&serde_json::to_string(&evil).unwrap(), path).unwrap_err();
        assert!(matches!(e, BundleError::UnsafePath(_)), "{bad}: {e}");
    }
    let mut dangling = m.clone();
    dangling.links[0].target = "libnothing.so".into();
    let e = Manifest::parse(&serde_json::to_string(&dangling).unwrap(), path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("libnothing.so"), "{e}");
    let mut escaping = m;
    escaping.links[0].target = "../../../bin/sh".into();
    assert!(Manifest::parse(&serde_json::to_string(&escaping).unwrap(), path).is_err());
}

#[test]
fn only_the_pinned_default_model_is_installed() {
    let f = fixture();
    let written = f.create(true);
    let cache = f.path("cache");
    let other = ModelPin {
        sha256: sha(b"another model"),
        ..f.model_pin.clone()
    };
    let e = install(
        &open(&written.archive, &cache).unwrap(),
        &cache,
        &f.pin,
        &other,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not this version's default model"), "{e}");
    assert!(e.contains("--model"), "{e}");
}

#[test]
fn a_server_dir_without_llama_server_is_named() {
    let f = fixture();
    let options = BundleOptions {
        out: f.path("out"),
        supervisor: f.path("supervisor"),
        server_dir: f.path("out"),
        server_source: "x".into(),
        model: None,
    };
    std::fs::create_dir_all(f.path("out")).unwrap();
    let e = create(&options, &f.pin).unwrap_err().to_string();
    assert!(
        e.contains("holds no llama-server") && e.contains("--server-dir"),
        "{e}"
    );
    assert!(
        std::fs::read_dir(f.path("out")).unwrap().next().is_none(),
        "no partial archive left"
    );
}
